"""tests/integration/test_inbox.py - MongooseIM's inbox (erlang-solutions.com:xmpp:inbox:0) with raw XML, on sqlite and PostgreSQL: entries with the last message, time and unread count, reset by a displayed marker and by a #conversation read, RSM paging by time, order and hidden_read, bad requests."""
import pytest

from harness import cluster_on, wait_until
from xmpp import C, error_condition, login

NS = "erlang-solutions.com:xmpp:inbox:0"
CONV = NS + "#conversation"
RSM = "http://jabber.org/protocol/rsm"
FW = "urn:xmpp:forward:0"
USERS = ["ia", "ib", "ic", "id"]


@pytest.fixture(scope="module", params=["sqlite", "pgsql"])
def cl(request, tmp_path_factory):
    """2 c2s, 2 router shards, the inbox on."""
    with cluster_on(request.param, tmp_path_factory.mktemp("inbox"), extra="modules:\n  inbox: {enabled: true}") as c:
        for u in USERS:
            c.ctl("register", f"{u}@localhost", "pw")
        yield c


def online(cl, user, c2s):
    c = login(cl, user, "pw", "r", c2s=c2s)
    c.presence()
    c.wait("presence", frm=c.jid)
    return c


def query(c, form="", rsm="", qid="q1"):
    """The inbox query: (entries as (peer, body, unread, read, stamp), fin element)."""
    iid = f"inbox-{qid}"
    c.send(f"<iq type='set' id='{iid}'><inbox xmlns='{NS}' queryid='{qid}'>{form}{rsm}</inbox></iq>")
    fin = c.wait("iq", id=iid)
    assert fin.get("type") == "result", fin
    out = []
    while True:
        with c.cond:
            msgs = [e for e in c.inbox if e.find(f"{{{NS}}}result") is not None]
            for e in msgs:
                c.inbox.remove(e)
        if not msgs:
            break
        for m in msgs:
            r = m.find(f"{{{NS}}}result")
            assert r.get("queryid") == qid and m.get("from") == c.bare and m.get("to") == c.jid
            inner = r.find(f"{{{FW}}}forwarded/{C}message")
            stamp = r.find(f"{{{FW}}}forwarded/{{urn:xmpp:delay}}delay").get("stamp")
            peer = inner.get("to").split("/")[0] if inner.get("from").split("/")[0] == c.bare \
                else inner.get("from").split("/")[0]
            out.append((peer, inner.findtext(f"{C}body"), int(r.get("unread")), r.findtext(f"{{{NS}}}read"), stamp))
    return out, fin.find(f"{{{NS}}}fin")


def form(**fields):
    f = "".join(f"<field var='{k}'><value>{v}</value></field>" for k, v in fields.items())
    return f"<x xmlns='jabber:x:data' type='submit'><field type='hidden' var='FORM_TYPE'><value>{NS}</value></field>{f}</x>"


def settle(c, want, **kw):
    """Queries until the entries (peer, body, unread) are want: the writes are queued off
    the delivery path, so the last one may still be on its way."""
    got = []

    def ok():
        nonlocal got
        got = query(c, **kw)[0]
        return [(p, b, u) for p, b, u, _, _ in got] == want
    assert wait_until(ok, 10), got
    return got


def test_inbox(cl):
    a = online(cl, "ia", "c2s.0")
    b = online(cl, "ib", "c2s.1")
    c = online(cl, "ic", "c2s.0")
    r = a.iq("<query xmlns='http://jabber.org/protocol/disco#info'/>", to="localhost")
    assert NS in {f.get("var") for f in r.iter("{http://jabber.org/protocol/disco#info}feature")}
    # The form a get answers.
    r = a.iq(f"<query xmlns='{NS}'/>")
    assert {f.get("var") for f in r.iter("{jabber:x:data}field")} >= {"FORM_TYPE", "start", "end", "order",
                                                                        "hidden_read", "box"}

    for text in ("one", "two"):
        a.send(f"<message to='{b.bare}' type='chat' id='a-{text}'><body>{text}</body></message>")
        b.wait("message", pred=lambda el, t=text: el.findtext(f"{C}body") == t)
    settle(b, [(a.bare, "two", 2)])
    settle(a, [(b.bare, "two", 0)])
    b.send(f"<message to='{a.jid}' type='chat'><body>three</body></message>")
    a.wait("message", pred=lambda el: el.findtext(f"{C}body") == "three")
    c.send(f"<message to='{a.bare}'><body>four \U0001F43E</body></message>")
    a.wait("message", pred=lambda el: el.findtext(f"{C}body") == "four \U0001F43E")
    # Newest first; b's entry: b's own message reset its count.
    got = settle(a, [(c.bare, "four \U0001F43E", 1), (b.bare, "three", 1)])
    assert [g[3] for g in got] == ["false", "false"]
    settle(b, [(a.bare, "three", 0)])
    _, fin = query(a)
    assert (fin.findtext(f"{{{NS}}}count"), fin.findtext(f"{{{NS}}}unread-messages"),
            fin.findtext(f"{{{NS}}}active-conversations")) == ("2", "2", "2")

    # A displayed marker from a to b marks b's conversation read in a's inbox.
    a.send(f"<message to='{b.jid}'><displayed xmlns='urn:xmpp:chat-markers:0' id='x'/></message>")
    got = settle(a, [(c.bare, "four \U0001F43E", 1), (b.bare, "three", 0)])
    assert got[1][3] == "true"
    # hidden_read leaves it out; asc turns the order.
    got, fin = query(a, form=form(hidden_read="true"))
    assert [g[0] for g in got] == [c.bare]
    got, _ = query(a, form=form(order="asc"))
    assert [g[0] for g in got] == [b.bare, c.bare]

    # RSM: one per page, the second page after the first's last id.
    got, fin = query(a, rsm=f"<set xmlns='{RSM}'><max>1</max></set>")
    assert [g[0] for g in got] == [c.bare]
    s = fin.find(f"{{{RSM}}}set")
    assert s.findtext(f"{{{RSM}}}count") == "2"
    last = s.findtext(f"{{{RSM}}}last")
    got, fin = query(a, rsm=f"<set xmlns='{RSM}'><max>1</max><after>{last}</after></set>")
    assert [g[0] for g in got] == [b.bare]
    got, _ = query(a, rsm=f"<set xmlns='{RSM}'><max>1</max><after>{fin.find(f'{{{RSM}}}set').findtext(f'{{{RSM}}}last')}"
                        "</after></set>")
    assert got == []
    # start/end filter by time: only the entry at or after c's message time.
    stamps = {g[0]: g[4] for g in query(a)[0]}
    got, _ = query(a, form=form(start=stamps[c.bare]))
    assert [g[0] for g in got] == [c.bare]

    # #conversation: read false gives one unread, read true none; get tells it.
    r = a.iq(f"<query xmlns='{CONV}' jid='{c.bare}'><read>true</read></query>", type="set")
    assert r.get("type") == "result"
    r = a.iq(f"<query xmlns='{CONV}' jid='{c.bare}'/>")
    assert r.find(f"{{{CONV}}}query").findtext(f"{{{CONV}}}read") == "true"
    a.iq(f"<query xmlns='{CONV}' jid='{b.bare}'><read>false</read></query>", type="set")
    settle(a, [(c.bare, "four \U0001F43E", 0), (b.bare, "three", 1)])
    r = a.iq(f"<reset xmlns='{CONV}' jid='{b.bare}'/>", type="set")
    assert r.get("type") == "result"
    settle(a, [(c.bare, "four \U0001F43E", 0), (b.bare, "three", 0)])

    # Bad requests.
    for bad in (form(order="sideways"), form(start="yesterday"), f"<set xmlns='{RSM}'><max>-1</max></set>"):
        a.send(f"<iq type='set' id='bad1'><inbox xmlns='{NS}'>{bad}</inbox></iq>")
        assert error_condition(a.wait("iq", id="bad1")) == "bad-request"
    assert error_condition(a.iq(f"<query xmlns='{CONV}'/>")) == "bad-request"
    assert error_condition(a.iq(f"<query xmlns='{CONV}' jid='nobody@localhost'/>")) == "item-not-found"
    assert error_condition(a.iq(f"<inbox xmlns='{NS}'/>", type="set", to=b.bare)) == "forbidden"
    for x in (a, b, c):
        x.close()
