"""tests/integration/test_roster_presence.py - rosters, versioning, pushes across c2s, the subscription state machine, presence."""
import pytest

from harness import Cluster, cluster_on
from xmpp import error_condition, login, q

R = "{jabber:iq:roster}"
USERS = ["ra", "rb", "sa", "sb", "pc", "pd", "pe", "pf", "xa", "xb", "da", "db", "na", "nb", "ua", "ub"]


@pytest.fixture(scope="module", params=["sqlite", "pgsql"])
def cl(request, tmp_path_factory):
    """2 c2s, 2 router shards and a mam, on sqlite and on a real PostgreSQL."""
    with cluster_on(request.param, tmp_path_factory.mktemp("roster")) as c:
        for u in USERS:
            c.ctl("register", f"{u}@localhost", "pw")
        yield c


def roster_get(c, ver=None):
    v = f" ver='{ver}'" if ver is not None else ""
    return c.iq(f"<query xmlns='jabber:iq:roster'{v}/>")


def item_of(el, jid):
    for it in el.iter(f"{R}item"):
        if it.get("jid") == jid:
            return it
    return None


def wait_push(c, jid, **attrs):
    """The next roster push about jid whose item has attrs (subscription, ask ...)."""
    def ok(el):
        it = item_of(el, jid)
        return it is not None and all(it.get(k) == v for k, v in attrs.items())
    el = c.wait("iq", type="set", child=f"{R}query", pred=ok)
    assert el.get("from") in (None, c.bare)
    return item_of(el, jid)


def test_roster_set_get_remove_with_pushes_on_other_c2s(cl):
    a1 = login(cl, "ra", "pw", "one", c2s="c2s.0")
    a2 = login(cl, "ra", "pw", "two", c2s="c2s.1")
    try:
        first = roster_get(a1)
        assert first.get("type") == "result" and len(list(q(first, "r:query"))) == 0
        roster_get(a2)
        r = a1.iq("<query xmlns='jabber:iq:roster'><item jid='rb@localhost' name='Bee'>"
                  "<group>Friends</group><group>Work</group></item></query>", type="set")
        assert r.get("type") == "result"
        for c in (a1, a2):
            it = wait_push(c, "rb@localhost", subscription="none")
            assert it.get("name") == "Bee"
            assert sorted(g.text for g in it.findall(f"{R}group")) == ["Friends", "Work"]
        got = roster_get(a2)
        query = q(got, "r:query")
        ver = query.get("ver")
        assert ver and item_of(got, "rb@localhost").get("name") == "Bee"
        # XEP-0237: same version -> empty result; an older one -> the whole roster.
        same = roster_get(a2, ver)
        assert same.get("type") == "result" and q(same, "r:query") is None
        older = roster_get(a2, "0")
        assert item_of(older, "rb@localhost") is not None
        # Update, then remove: pushes carry a newer version.
        a1.iq("<query xmlns='jabber:iq:roster'><item jid='rb@localhost' name='B2'/></query>", type="set")
        for c in (a1, a2):
            assert wait_push(c, "rb@localhost").get("name") == "B2"
        assert roster_get(a2, ver).find(f"{R}query") is not None
        r = a2.iq("<query xmlns='jabber:iq:roster'><item jid='rb@localhost' subscription='remove'/></query>",
                  type="set")
        assert r.get("type") == "result"
        for c in (a1, a2):
            wait_push(c, "rb@localhost", subscription="remove")
        assert item_of(roster_get(a1), "rb@localhost") is None
        # Refusals.
        bad = a1.iq("<query xmlns='jabber:iq:roster'><item jid='ra@localhost'/></query>", type="set")
        assert error_condition(bad) == "not-allowed"
        bad = a1.iq("<query xmlns='jabber:iq:roster'><item jid='a@b@c'/></query>", type="set")
        assert error_condition(bad) == "bad-request"
        bad = a1.iq("<query xmlns='jabber:iq:roster'><item jid='nobody@localhost' subscription='remove'/></query>",
                    type="set")
        assert error_condition(bad) == "item-not-found"
        bad = a1.iq("<query xmlns='jabber:iq:roster'/>", type="get", to="rb@localhost")
        assert error_condition(bad) == "forbidden"
    finally:
        a1.close()
        a2.close()


def online(cl, user, resource, prio=None, c2s=None):
    c = login(cl, user, "pw", resource, c2s=c2s)
    roster_get(c)
    c.presence(children=f"<priority>{prio}</priority>" if prio is not None else "")
    c.wait("presence", frm=c.jid)       # our own presence comes back
    return c


def test_subscription_state_machine(cl):
    a = online(cl, "sa", "r", c2s="c2s.0")
    b = online(cl, "sb", "r", c2s="c2s.1")
    try:
        a.presence("subscribe", "sb@localhost")
        wait_push(a, "sb@localhost", subscription="none", ask="subscribe")
        req = b.wait("presence", type="subscribe", frm="sa@localhost")
        assert req is not None
        # b's roster shows nothing for a request alone.
        assert item_of(roster_get(b), "sa@localhost") is None
        b.presence("subscribed", "sa@localhost")
        wait_push(b, "sa@localhost", subscription="from")
        wait_push(a, "sb@localhost", subscription="to")
        a.wait("presence", type="subscribed", frm="sb@localhost")
        a.wait("presence", type="available", frm=b.jid)     # b's presence follows the approval
        # The other way round: both.
        b.presence("subscribe", "sa@localhost")
        a.wait("presence", type="subscribe", frm="sb@localhost")
        wait_push(b, "sa@localhost", subscription="from", ask="subscribe")
        a.presence("subscribed", "sb@localhost")
        wait_push(a, "sb@localhost", subscription="both")
        wait_push(b, "sa@localhost", subscription="both")
        b.wait("presence", type="subscribed", frm="sa@localhost")
        b.wait("presence", type="available", frm=a.jid)
        # a unsubscribes from b: a 'from', b 'to'.
        a.presence("unsubscribe", "sb@localhost")
        wait_push(a, "sb@localhost", subscription="from")
        wait_push(b, "sa@localhost", subscription="to")
        b.wait("presence", type="unsubscribe", frm="sa@localhost")
        # a cancels b's subscription: none on both sides.
        a.presence("unsubscribed", "sb@localhost")
        wait_push(a, "sb@localhost", subscription="none")
        wait_push(b, "sa@localhost", subscription="none")
        b.wait("presence", type="unsubscribed", frm="sa@localhost")
        # A request to someone who already lets us see them is answered for them.
        b.presence("subscribe", "sa@localhost")
        a.wait("presence", type="subscribe", frm="sb@localhost")
        a.presence("subscribed", "sb@localhost")
        b.wait("presence", type="subscribed", frm="sa@localhost")
        b.drain()
        a.drain()
        b.presence("subscribe", "sa@localhost")
        # Answered for a (RFC 6121 3.1.3): b's c2s probes a instead of passing the request
        # on, and a's presence comes back. A message b sends after that reaches a after
        # any request would have (same c2s, router and c2s on the way).
        b.wait("presence", type="available", frm=a.jid)
        b.send(f"<message to='{a.jid}' type='chat' id='after-sub'><body>marker</body></message>")
        assert a.none_before({"kind": "message", "id": "after-sub"}, "presence", type="subscribe")
    finally:
        a.close()
        b.close()


def test_pending_request_is_delivered_at_login(cl):
    c = online(cl, "pc", "r")
    try:
        c.presence("subscribe", "pd@localhost")
        wait_push(c, "pd@localhost", ask="subscribe")
        d = login(cl, "pd", "pw", "r")
        roster_get(d)
        d.presence()
        d.wait("presence", type="subscribe", frm="pc@localhost")
        d.presence("subscribed", "pc@localhost")
        wait_push(c, "pd@localhost", subscription="to")
        c.wait("presence", type="available", frm=d.jid)
        d.close()
        c.wait("presence", type="unavailable", frm=d.jid)
    finally:
        c.close()


def test_preapproval(cl):
    e = online(cl, "pe", "r")
    f = online(cl, "pf", "r")
    try:
        e.presence("subscribed", "pf@localhost")
        it = wait_push(e, "pf@localhost", subscription="none")
        assert it.get("approved") == "true"
        f.presence("subscribe", "pe@localhost")
        wait_push(f, "pe@localhost", subscription="to")
        f.wait("presence", type="subscribed", frm="pe@localhost")
        wait_push(e, "pf@localhost", subscription="from")
        # Answered for e: a message f sends after the answer reaches e after any request would have.
        f.send(f"<message to='{e.jid}' type='chat' id='after-pre'><body>marker</body></message>")
        assert e.none_before({"kind": "message", "id": "after-pre"}, "presence", type="subscribe")
        f.wait("presence", type="available", frm=e.jid)
    finally:
        e.close()
        f.close()


def befriend(x, y):
    x.presence("subscribe", y.bare)
    y.wait("presence", type="subscribe", frm=x.bare)
    y.presence("subscribed", x.bare)
    x.wait("presence", type="subscribed", frm=y.bare)
    y.presence("subscribe", x.bare)
    x.wait("presence", type="subscribe", frm=y.bare)
    x.presence("subscribed", y.bare)
    y.wait("presence", type="subscribed", frm=x.bare)
    x.drain()
    y.drain()


def test_presence_broadcast_probe_and_logout(cl):
    x = online(cl, "xa", "r", c2s="c2s.0")
    y = online(cl, "xb", "r", c2s="c2s.1")
    befriend(x, y)
    y.close()
    x.wait("presence", type="unavailable", frm=y.jid)
    x.send("<presence id='p1'><show>chat</show><status>here</status></presence>")
    # Login: y learns x's presence by probe, x gets y's initial presence.
    y = login(cl, "xb", "pw", "again", c2s="c2s.0")
    roster_get(y)
    y.presence(children="<show>away</show><status>brb</status>")
    got = x.wait("presence", type="available", frm=y.jid)
    assert q(got, "c:status").text == "brb"
    # The answer to the probe is x's last presence as x sent it, stamped, without its id.
    got = y.wait("presence", type="available", frm=x.jid)
    assert q(got, "c:show").text == "chat" and q(got, "c:status").text == "here"
    assert got.get("id") is None
    # An update is broadcast again; unavailable with status too.
    x.presence(children="<show>dnd</show>")
    assert q(y.wait("presence", type="available", frm=x.jid), "c:show").text == "dnd"
    x.presence("unavailable", children="<status>gone</status>")
    assert q(y.wait("presence", type="unavailable", frm=x.jid), "c:status").text == "gone"
    x.close()
    y.close()


def test_directed_presence(cl):
    d = online(cl, "da", "r")
    e = online(cl, "db", "r")
    try:
        # Not contacts: nothing is broadcast to each other.
        d.presence(children="<status>hi</status>")
        # The directed presence d sends next would come after a broadcast to e.
        d.presence(to=e.jid, children="<status>directed</status>")
        directed = {"kind": "presence", "type": "available", "frm": d.jid,
                    "pred": lambda el: q(el, "c:status") is not None and q(el, "c:status").text == "directed"}
        assert e.none_before(directed, "presence", frm=d.jid)
        # e answers with directed presence: d may see it since it sent to e.
        e.presence(to=d.jid)
        d.wait("presence", type="available", frm=e.jid)
        d.presence("unavailable")
        e.wait("presence", type="unavailable", frm=d.jid)
    finally:
        d.close()
        e.close()


def test_negative_priority_gets_no_bare_messages(cl):
    n1 = online(cl, "na", "neg", prio=-1)
    n2 = online(cl, "na", "pos", prio=0)
    s = online(cl, "nb", "r")
    try:
        s.send("<message to='na@localhost' type='chat' id='np1'><body>to the bare JID</body></message>")
        n2.wait("message", id="np1")
        # np2 to n1's full JID takes the path np1 would have taken to n1, after it.
        s.send(f"<message to='{n1.jid}' type='chat' id='np2'><body>to the full JID</body></message>")
        assert n1.none_before({"kind": "message", "id": "np2"}, "message", id="np1")
    finally:
        n1.close()
        n2.close()
        s.close()


def test_unavailable_reaches_contact_on_disconnect_and_own_resources(cl):
    u1 = online(cl, "ua", "one", c2s="c2s.0")
    v = online(cl, "ub", "r", c2s="c2s.1")
    befriend(u1, v)
    u2 = online(cl, "ua", "two", c2s="c2s.1")
    u1.wait("presence", type="available", frm=u2.jid)   # own resources see each other
    u2.wait("presence", type="available", frm=u1.jid)
    v.wait("presence", type="available", frm=u2.jid)
    u2.close()
    u1.wait("presence", type="unavailable", frm=u2.jid)
    v.wait("presence", type="unavailable", frm=u2.jid)
    u1.close()
    v.close()
