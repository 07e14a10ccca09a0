"""tests/integration/test_mam.py - XEP-0313 end to end: archive both sides, paging, filters, prefs, hints, namespaces, crash safety."""
import asyncio
import os
import re
import signal
import threading
import time
import uuid
import xml.etree.ElementTree as ET

import pytest

from harness import Cluster, cluster_on, http_get, wait_until
from rawxmpp import Raw

NS = {
    "tmp": "urn:xmpp:mam:tmp",
    "0": "urn:xmpp:mam:0",
    "1": "urn:xmpp:mam:1",
    "2": "urn:xmpp:mam:2",
}
RSM = "http://jabber.org/protocol/rsm"
FWD = "urn:xmpp:forward:0"
CLIENT = "jabber:client"
USERS = ("alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan", "judy")


@pytest.fixture(scope="module", params=["sqlite", "pgsql"])
def cl(request, tmp_path_factory):
    """2 c2s + 2 routers + 1 mam, on sqlite and on a real PostgreSQL."""
    with cluster_on(request.param, tmp_path_factory.mktemp("mam")) as c:
        for u in USERS:
            c.ctl("register", f"{u}@localhost", f"{u}-pw")
        yield c


def login(cl, user, resource=None):
    r = Raw(cl.c2s_port, timeout=20.0)
    jid = r.login(user, f"{user}-pw", resource or "r" + uuid.uuid4().hex[:6])
    r.send("<presence/>")
    # Its own presence coming back means the router has the session as available: a
    # message sent from another c2s after this point cannot overtake it (and be stored
    # offline instead of delivered).
    r.recv_until(rf"<presence[^>]*from=['\"]{re.escape(jid)}['\"][^>]*>")
    return r, jid


def recv_message(r, mid, timeout=None):
    """The text of the next <message/> with id mid (and only it: earlier stanzas are dropped)."""
    rx = rf"<message[^>]*id=['\"]{re.escape(mid)}['\"].*?</message>"
    out = r.recv_until(rx, timeout)
    return out[re.search(rx, out, re.S).start():]


def esc(s):
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("'", "&apos;")


def form(ns, fields):
    if not fields:
        return ""
    out = [f"<x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE' type='hidden'><value>{ns}</value></field>"]
    for var, val in fields.items():
        vals = val if isinstance(val, list) else [val]
        out.append(f"<field var='{var}'>" + "".join(f"<value>{esc(v)}</value>" for v in vals) + "</field>")
    out.append("</x>")
    return "".join(out)


def rsm(opts):
    if not opts:
        return ""
    parts = []
    for k in ("max", "after", "before", "index"):
        if k in opts:
            v = opts[k]
            parts.append(f"<{k}/>" if v == "" else f"<{k}>{v}</{k}>")
    return f"<set xmlns='{RSM}'>" + "".join(parts) + "</set>"


def parse_all(text):
    """Top-level stanzas of a text chunk (jabber:client default namespace)."""
    root = ET.fromstring(f"<w xmlns='{CLIENT}'>{text}</w>")
    return list(root)


class Page:
    def __init__(self):
        self.items = []      # (id, body, inner message element)
        self.complete = None
        self.first = self.last = self.count = self.index = None
        self.error = None
        self.fin = None


def query(r, ver="2", fields=None, rsm_opts=None, extra="", qid=None, timeout=20.0):
    """Runs one MAM query over the raw connection; returns a Page."""
    ns = NS[ver]
    qid = qid or uuid.uuid4().hex[:8]
    iq_id = "q" + qid
    if ver in ("tmp",) and fields:
        body = "".join(f"<{k}>{esc(v)}</{k}>" for k, v in fields.items())
    else:
        body = form(ns, fields)
    r.send(f"<iq type='set' id='{iq_id}'><query xmlns='{ns}' queryid='{qid}'>{body}{extra}{rsm(rsm_opts)}</query></iq>")
    text = r.recv_until(rf"<iq[^>]*id=.{iq_id}.[^>]*(/>|>.*?</iq>)", timeout)
    page = Page()
    for st in parse_all(text):
        tag = st.tag.split("}")[1]
        if tag == "message":
            res = st.find(f"{{{ns}}}result")
            if res is not None and res.get("queryid") == qid:
                inner = res.find(f"{{{FWD}}}forwarded/{{{CLIENT}}}message")
                b = inner.find(f"{{{CLIENT}}}body")
                page.items.append((res.get("id"), b.text if b is not None else None, inner))
            fin = st.find(f"{{{ns}}}fin")
            if fin is not None:
                page.fin = fin
        elif tag == "iq" and st.get("id") == iq_id:
            if st.get("type") == "error":
                err = st.find(f"{{{CLIENT}}}error")
                page.error = [c.tag.split("}")[1] for c in err if "xmpp-stanzas" in c.tag and not c.tag.endswith("text")][0]
                return page
            fin = st.find(f"{{{ns}}}fin")
            if fin is not None:
                page.fin = fin
            q = st.find(f"{{{ns}}}query")
            setp = (page.fin if page.fin is not None else q)
            s = setp.find(f"{{{RSM}}}set") if setp is not None else None
            if page.fin is not None:
                page.complete = page.fin.get("complete") == "true"
            if s is not None:
                f = s.find(f"{{{RSM}}}first")
                l = s.find(f"{{{RSM}}}last")
                c = s.find(f"{{{RSM}}}count")
                page.first = f.text if f is not None else None
                page.index = int(f.get("index")) if f is not None and f.get("index") else None
                page.last = l.text if l is not None else None
                page.count = int(c.text) if c is not None else None
    return page


def send_chat(r, to, body, extra="", mid=None):
    mid = mid or uuid.uuid4().hex[:8]
    r.send(f"<message to='{to}' type='chat' id='{mid}'><body>{esc(body)}</body>{extra}</message>")
    return mid


def sync(r):
    """A round trip to the server: everything sent before has been taken by the c2s."""
    pid = "p" + uuid.uuid4().hex[:6]
    r.send(f"<iq type='get' id='{pid}'><ping xmlns='urn:xmpp:ping'/></iq>")
    r.recv_until(rf"id=.{pid}.")


def wait_count(r, n, ver="2", fields=None, timeout=20.0):
    """Polls until the archive holds n messages (writes are batched and asynchronous)."""
    last = [None]

    def ok():
        p = query(r, ver, fields, {"max": "0"})
        last[0] = p.count
        return p.count == n
    assert wait_until(ok, timeout, 0.2), f"archive count {last[0]} != {n}"


def all_items(r, fields=None, page=100, backward=False):
    out, after, before = [], None, ""
    for _ in range(10000):
        opts = {"max": str(page)}
        if backward:
            opts["before"] = before
        elif after:
            opts["after"] = after
        p = query(r, "2", fields, opts)
        assert p.error is None, p.error
        if backward:
            out = [i for i in p.items] + out
            before = p.first
        else:
            out += p.items
            after = p.last
        if p.complete or not p.items:
            break
    return out


def test_disco_advertises_mam(cl):
    r, jid = login(cl, "alice")
    bare = jid.split("/")[0]
    r.send(f"<iq type='get' id='d1' to='{bare}'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>")
    out = r.recv_until(r"id=.d1.*?</iq>")
    for ns in ("urn:xmpp:mam:0", "urn:xmpp:mam:1", "urn:xmpp:mam:2", "urn:xmpp:mam:2#extended", "urn:xmpp:sid:0"):
        assert f'var="{ns}"' in out or f"var='{ns}'" in out


def test_both_archives_and_stanza_id(cl):
    a, ja = login(cl, "alice")
    b, jb = login(cl, "bob")
    body = "hello \U0001F600 & <bob>"
    send_chat(a, "bob@localhost", body, extra="<origin-id xmlns='urn:xmpp:sid:0' id='orig-1'/>", mid="bs1")
    got = recv_message(b, "bs1")
    m = re.search(r"<stanza-id[^>]*>", got)
    assert m and "bob@localhost" in m.group(0)
    sid = re.search(r"id=['\"]([0-9a-v]{13})['\"]", m.group(0)).group(1)
    assert "orig-1" in got
    wait_count(b, 1, fields={"with": "alice@localhost"})
    pb = query(b, "2", {"with": "alice@localhost"})
    assert [i[1] for i in pb.items] == [body]
    assert pb.items[0][0] == sid
    pa = query(a, "2", {"with": "bob@localhost"})
    assert [i[1] for i in pa.items] == [body]


def test_forged_stanza_id_is_stripped(cl):
    a, _ = login(cl, "alice")
    b, _ = login(cl, "bob")
    send_chat(a, "bob@localhost", "forge", mid="fg1",
              extra="<stanza-id xmlns='urn:xmpp:sid:0' by='bob@localhost' id='forged'/>")
    got = recv_message(b, "fg1")
    assert "forged" not in got
    assert len(re.findall(r"<stanza-id", got)) == 1
    # Not archived (no body; a no-store hint): no stanza-id of ours, and no forged one either.
    forged = "<stanza-id xmlns='urn:xmpp:sid:0' by='bob@localhost' id='forged'/>"
    a.send(f"<message to='bob@localhost' type='chat' id='fg2'>"
           f"<active xmlns='http://jabber.org/protocol/chatstates'/>{forged}</message>")
    got = recv_message(b, "fg2")
    assert "forged" not in got and "<stanza-id" not in got and "chatstates" in got
    send_chat(a, "bob@localhost", "forge3", mid="fg3", extra=forged + "<no-store xmlns='urn:xmpp:hints'/>")
    got = recv_message(b, "fg3")
    assert "forged" not in got and "<stanza-id" not in got and "forge3" in got


def test_paging_1000_forward_and_backward(cl):
    a, _ = login(cl, "carol")
    for i in range(1000):
        send_chat(a, "dave@localhost", f"m{i:04d}")
    sync(a)
    wait_count(a, 1000, fields={"with": "dave@localhost"}, timeout=60)
    fwd = all_items(a, {"with": "dave@localhost"}, page=73)
    assert [i[1] for i in fwd] == [f"m{i:04d}" for i in range(1000)]
    assert len({i[0] for i in fwd}) == 1000
    back = all_items(a, {"with": "dave@localhost"}, page=64, backward=True)
    assert [i[1] for i in back] == [f"m{i:04d}" for i in range(1000)]
    # RSM first/last/count/index on a middle page.
    p = query(a, "2", {"with": "dave@localhost"}, {"max": "10", "after": fwd[99][0]})
    assert p.first == fwd[100][0] and p.last == fwd[109][0]
    assert p.count == 1000 and p.index == 100 and p.complete is False
    # Last page. Paged backwards, a page is complete only when it holds the first item of
    # the result set (XEP-0313 'complete'); the first page paged forwards is complete only
    # when it holds the last.
    p = query(a, "2", {"with": "dave@localhost"}, {"max": "10", "before": ""})
    assert [i[1] for i in p.items] == [f"m{i:04d}" for i in range(990, 1000)] and p.complete is False
    p = query(a, "2", {"with": "dave@localhost"}, {"max": "10", "before": fwd[10][0]})
    assert [i[1] for i in p.items] == [f"m{i:04d}" for i in range(10)] and p.complete is True
    p = query(a, "2", {"with": "dave@localhost"}, {"max": "10"})
    assert [i[1] for i in p.items] == [f"m{i:04d}" for i in range(10)] and p.complete is False
    p = query(a, "2", {"with": "dave@localhost"}, {"max": "10", "after": fwd[989][0]})
    assert [i[1] for i in p.items] == [f"m{i:04d}" for i in range(990, 1000)] and p.complete is True
    # Index paging.
    p = query(a, "2", {"with": "dave@localhost"}, {"max": "5", "index": "500"})
    assert [i[1] for i in p.items] == [f"m{i:04d}" for i in range(500, 505)]
    # The server cap applies to max.
    p = query(a, "2", {"with": "dave@localhost"}, {"max": "100000"})
    assert 0 < len(p.items) <= 100


def test_filters_alone_and_combined(cl):
    a, ja = login(cl, "erin")
    t0 = time.time()
    send_chat(a, "frank@localhost", "apple banana")
    send_chat(a, "frank@localhost/phone", "cherry")
    time.sleep(1.2)
    t1 = time.time()
    send_chat(a, "grace@localhost", "apple durian")
    sync(a)
    wait_count(a, 3)

    def iso(t):
        return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + ".%06dZ" % int((t % 1) * 1e6)
    bodies = lambda p: sorted(i[1] for i in p.items)
    assert bodies(query(a, "2", {"with": "frank@localhost"})) == ["apple banana", "cherry"]
    assert bodies(query(a, "2", {"with": "frank@localhost/phone"})) == ["cherry"]
    assert bodies(query(a, "2", {"start": iso(t1)})) == ["apple durian"]
    assert bodies(query(a, "2", {"end": iso(t1)})) == ["apple banana", "cherry"]
    assert bodies(query(a, "2", {"start": iso(t0 - 1), "end": iso(t1)})) == ["apple banana", "cherry"]
    assert bodies(query(a, "2", {"full-text-search": "apple"})) == ["apple banana", "apple durian"]
    assert bodies(query(a, "2", {"full-text-search": "apple", "with": "grace@localhost"})) == ["apple durian"]
    assert bodies(query(a, "2", {"full-text-search": "apple", "with": "frank@localhost", "end": iso(t1)})) == \
        ["apple banana"]
    allp = query(a, "2")
    ids = [i[0] for i in allp.items]
    assert bodies(query(a, "2", {"after-id": ids[0]})) == ["apple durian", "cherry"]
    assert bodies(query(a, "2", {"before-id": ids[2]})) == ["apple banana", "cherry"]
    p = query(a, "2", {"ids": [ids[2], ids[0]]})
    assert [i[0] for i in p.items] == [ids[2], ids[0]]
    p = query(a, "2", extra="<flip-page/>")
    assert [i[0] for i in p.items] == list(reversed(ids))


def test_errors(cl):
    a, _ = login(cl, "erin")
    assert query(a, "2", rsm_opts={"after": "0000000000001"}).error == "item-not-found"
    assert query(a, "2", rsm_opts={"before": "garbage"}).error == "item-not-found"
    assert query(a, "2", {"colour": "red"}).error == "feature-not-implemented"
    assert query(a, "2", {"start": "last tuesday"}).error == "bad-request"
    assert query(a, "1", {"after-id": "0000000000001"}).error == "feature-not-implemented"


def test_namespace_shapes(cl):
    a, ja = login(cl, "heidi")
    send_chat(a, "alice@localhost", "shape")
    sync(a)
    wait_count(a, 1)
    for ver in ("1", "2"):
        p = query(a, ver)
        assert [i[1] for i in p.items] == ["shape"] and p.fin is not None and p.complete
    # :0 - fin arrives in a <message/>, then an empty IQ result.
    p = query(a, "0")
    assert [i[1] for i in p.items] == ["shape"] and p.fin is not None and p.fin.tag == f"{{{NS['0']}}}fin"
    # :tmp (MongooseIM's legacy v0.2) - RSM comes back inside <query/> in the IQ result.
    p = query(a, "tmp", {"with": "alice@localhost"})
    assert [i[1] for i in p.items] == ["shape"] and p.count == 1
    # Form discovery.
    a.send(f"<iq type='get' id='ff'><query xmlns='{NS['2']}'/></iq>")
    out = a.recv_until(r"id=.ff.*?</iq>")
    for var in ("with", "start", "end", "full-text-search", "before-id", "after-id", "ids"):
        assert f'var="{var}"' in out


def test_no_store_hints(cl):
    a, _ = login(cl, "grace")
    b, _ = login(cl, "heidi")
    send_chat(a, "heidi@localhost", "secret1", extra="<no-store xmlns='urn:xmpp:hints'/>", mid="ns1")
    send_chat(a, "heidi@localhost", "secret2", extra="<no-permanent-store xmlns='urn:xmpp:hints'/>", mid="ns2")
    send_chat(a, "heidi@localhost", "kept", mid="ns3")
    recv_message(b, "ns3")
    # No waiting: a query sees every message its session sent or received before it
    # (the writes of ns1 and ns2, had there been any, came before ns3's on each side).
    assert [i[1] for i in query(a, "2", {"with": "heidi@localhost"}).items] == ["kept"]
    assert [i[1] for i in query(b, "2", {"with": "grace@localhost"}).items] == ["kept"]


def test_offline_recipient_archive(cl):
    a, _ = login(cl, "frank")
    send_chat(a, "bob@localhost", "while you were out")   # bob may be offline (no session here)
    sync(a)
    b, _ = login(cl, "bob", "back")
    # This session has seen no archive id yet (offline delivery carries none): poll.
    assert wait_until(lambda: any(i[1] == "while you were out"
                                  for i in query(b, "2", {"with": "frank@localhost"}).items), 20)


def test_prefs(cl):
    a, _ = login(cl, "dave")
    for ver in ("1", "2"):
        a.send(f"<iq type='set' id='ps{ver}'><prefs xmlns='{NS[ver]}' default='never'><always><jid>alice@localhost</jid>"
               f"</always><never/></prefs></iq>")
        out = a.recv_until(rf"id=.ps{ver}.*?</iq>")
        assert "type=\"result\"" in out or "type='result'" in out
        a.send(f"<iq type='get' id='pg{ver}'><prefs xmlns='{NS[ver]}'/></iq>")
        out = a.recv_until(rf"id=.pg{ver}.*?</iq>")
        assert "never" in out and "alice@localhost" in out
    send_chat(a, "carol@localhost", "not archived")
    send_chat(a, "alice@localhost", "archived")
    # No waiting: the query sees both writes (its session sent them), so "archived" being
    # there says the write of "not archived", which came before it, was decided too.
    assert [i[1] for i in query(a, "2", {"with": "alice@localhost"}).items] == ["archived"]
    assert [i[1] for i in query(a, "2", {"with": "carol@localhost"}).items if i[1] == "not archived"] == []
    a.send(f"<iq type='set' id='pb'><prefs xmlns='{NS['2']}' default='sometimes'/></iq>")
    assert "bad-request" in a.recv_until(r"id=.pb.*?</iq>")
    a.send(f"<iq type='set' id='pr'><prefs xmlns='{NS['2']}' default='always'/></iq>")
    a.recv_until(r"id=.pr.*?</iq>")


def test_slixmpp_plugin(cl):
    import slixmpp  # Debian's python3-slixmpp, from deploy/install-deps.sh
    r, _ = login(cl, "alice")
    for i in range(25):
        send_chat(r, "grace@localhost", f"sx{i}")
    sync(r)
    wait_count(r, 25, fields={"with": "grace@localhost"})
    got = []

    class Client(slixmpp.ClientXMPP):
        def __init__(self):
            # slixmpp's SCRAM offers only tls-unique channel binding and otherwise sends the
            # 'y' flag, which a server offering -PLUS must refuse; PLAIN over TLS it is.
            super().__init__("alice@localhost/slix", "alice-pw",
                             plugin_config={"feature_mechanisms": {"use_mech": "PLAIN"}})
            self.register_plugin("xep_0313")
            self.register_plugin("xep_0059")
            self.add_event_handler("session_start", self.start)

        async def start(self, _):
            async for msg in self.plugin["xep_0313"].iterate(with_jid=slixmpp.JID("grace@localhost"),
                                                            rsm={"max": 10}):
                got.append(msg["mam_result"]["forwarded"]["stanza"]["body"])
            self.disconnect()

    def run():
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        c = Client()
        c.ssl_context.check_hostname = False
        import ssl
        c.ssl_context.verify_mode = ssl.CERT_NONE
        c.connect(("127.0.0.1", cl.c2s_port))
        try:
            loop.run_until_complete(asyncio.wait_for(c.disconnected, 30))
        finally:
            # slixmpp leaves its filter task waiting: end it before the loop goes.
            pending = asyncio.all_tasks(loop)
            for task in pending:
                task.cancel()
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.close()
    t = threading.Thread(target=run)
    t.start()
    t.join(40)
    assert got == [f"sx{i}" for i in range(25)]


def test_kill_mam_during_burst(cl):
    """kill -9 of the mam shard several times during a 5,000-message burst: both archives hold each message once."""
    # Users no other test writes to: the counts below are of this burst alone.
    a, _ = login(cl, "ivan")
    b, _ = login(cl, "judy", "burst")
    n = 5000
    # Kills at fixed points of the burst (a timer thread can miss a burst that is over in
    # a second): each time the restarted shard is up and taking writes again first.
    kill_at = {700, 1900, 3100, 4300}
    kills = []
    for i in range(n):
        if i in kill_at:
            assert wait_until(lambda: cl.child_pid("mam.0") is not None and cl.healthy("mam.0"), 30)
            pid = cl.child_pid("mam.0")
            os.kill(pid, signal.SIGKILL)
            kills.append(pid)
        send_chat(a, "judy@localhost", f"burst{i:05d}")
        if i % 500 == 0:
            sync(a)
    sync(a)
    assert len(set(kills)) == len(kill_at), kills
    assert wait_until(lambda: cl.child_pid("mam.0") is not None, 30)
    wait_count(a, n, fields={"with": "judy@localhost"}, timeout=60)
    wait_count(b, n, fields={"with": "ivan@localhost"}, timeout=60)
    for r, peer in ((a, "judy@localhost"), (b, "ivan@localhost")):
        items = all_items(r, {"with": peer}, page=100)
        assert [i[1] for i in items] == [f"burst{i:05d}" for i in range(n)]
        assert len({i[0] for i in items}) == n


@pytest.fixture(scope="module", params=["sqlite", "pgsql"])
def slow_commits(request, tmp_path_factory):
    """A cluster whose mam shard commits a batch only every 400 ms: a query that does not
    wait for the writes that came before it reads an archive without them."""
    with cluster_on(request.param, tmp_path_factory.mktemp("mamslow"), extra="modules:\n  mam: {batch_ms: 400}") as c:
        for u in ("kim", "lee"):
            c.ctl("register", f"{u}@localhost", f"{u}-pw")
        yield c


def test_query_reads_its_own_writes_slixmpp(slow_commits):
    """slixmpp's own MAM integration test (test_mam_retrieve), in a loop: one message each
    way, each waited for, then at once the last two of the archive (retrieve, reverse,
    RSM max 2). Both messages must be there, in order, every time: a query sees every
    message its session sent or received before it asked."""
    from slixmpp import JID
    from xmpp import Client, loop, run
    a = Client(slow_commits.c2s_port, "kim@localhost/ryw", "kim-pw")
    b = Client(slow_commits.c2s_port, "lee@localhost/ryw", "lee-pw")
    for c in (a, b):
        loop().call_soon_threadsafe(c.xmpp.register_plugin, "xep_0313")

    def body_is(text):
        return lambda el: el.findtext(f"{{{CLIENT}}}body") == text

    def send(frm, to, text):
        loop().call_soon_threadsafe(lambda: frm.xmpp.make_message(mto=to.xmpp.boundjid, mbody=text).send())

    async def last_two(x, peer):
        out = []
        async for page in x["xep_0313"].retrieve(with_jid=JID(peer), iterator=True, reverse=True, rsm={"max": 2}):
            out += [m["mam_result"]["forwarded"]["stanza"]["body"] for m in page["mam"]["results"]]
            if len(out) >= 2:
                break
        return out

    try:
        for n in range(10):
            tok = f"{n}-{uuid.uuid4().hex[:6]}"
            send(a, b, f"coucou {tok}")
            b.wait("message", pred=body_is(f"coucou {tok}"))
            send(b, a, f"coucou coucou {tok}")
            a.wait("message", pred=body_is(f"coucou coucou {tok}"))
            assert run(last_two(a.xmpp, b.bare), 20) == [f"coucou {tok}", f"coucou coucou {tok}"], f"round {n}"
        # The queries waited for the commits, not for the bound on the wait.
        _, text = http_get(slow_commits.metrics_port("mam.0"), "/metrics")
        waits = {m.group(1): float(m.group(2)) for m in
                 re.finditer(r'^meerkat_mam_query_waits_total\{[^}]*result="(\w+)"[^}]*\} (\S+)$', text, re.M)}
        assert waits.get("committed", 0) >= 1 and waits.get("timeout", 0) == 0, waits
    finally:
        a.close()
        b.close()
