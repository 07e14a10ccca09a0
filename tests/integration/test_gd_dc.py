"""tests/integration/test_gd_dc.py - global distribution end to end: two data centers (gd_bed.Bed:
network namespaces, a Meerkat cluster each, Redis primary in DC-A and its replica in DC-B, one
PostgreSQL), slixmpp clients in each; the checklist of issue 13 (MongooseIM's GD suite plus ours)."""
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

sys.path.insert(0, os.path.dirname(__file__))
from gd_bed import Bed, curve_keypair, in_netns, metric_sum, write_key_file  # noqa: E402
from harness import BUILD, wait_until  # noqa: E402
from xmpp import loop, q  # noqa: E402

PREFIX = "meerkat:"
USERS = [f"u{i}" for i in range(70)]


@pytest.fixture(scope="module")
def bed(tmp_path_factory):
    if os.geteuid() != 0:
        pytest.skip("the two data centers are network namespaces: root only")
    with Bed(tmp_path_factory.mktemp("gddc"), gd=True, learn_endpoints=True,
             gd_extra={"ttl_sec": "10", "refresh_sec": "3", "bounce_deadline_ms": "4000",
                       "link_queue_sec": "40"}) as b:
        b.register(*USERS)
        yield b


_next_user = iter(USERS)


def users(n):
    """n users no earlier test has used (no cache anywhere knows them)."""
    return [next(_next_user) for _ in range(n)]


def online(bed, dc, user, resource="r", presence=True, priority=None):
    """user/resource logged in in data center dc; with presence, available and known as such
    by its router (its own presence came back)."""
    c = bed.client(dc, user, resource)
    if presence:
        c.presence(children=f"<priority>{priority}</priority>" if priority is not None else "")
        c.wait("presence", frm=c.jid)
    return c


def gdm(bed, dc, name, **labels):
    return metric_sum(bed.dc[dc].metrics("gd.0"), name, **labels)


def mapping(bed, full, dc="a"):
    """The routing table's entry for a full JID ("<version> <dc>"), read in dc's Redis."""
    return bed.redis_cli(dc, "GET", f"{PREFIX}j:{full}").stdout.strip()


def msg(to, mid, body, type="chat"):
    return f"<message to='{to}' type='{type}' id='{mid}'><body>{body}</body></message>"


def warm_pair(bed, tag):
    """A sender online in DC-A and a recipient in DC-B whose first message (id "<tag>-warm")
    has crossed: (sender, recipient, the recipient's user name, its full JID)."""
    a_user, b_user = users(2)
    a = online(bed, "a", a_user)
    b = online(bed, "b", b_user)
    full = f"{b_user}@localhost/r"
    a.send(msg(full, f"{tag}-warm", "warm"))
    b.wait("message", id=f"{tag}-warm")
    return a, b, b_user, full


def offline_count(bed, user):
    return int(bed.pg.query(f"SELECT count(*) FROM offline WHERE username = '{user}'"))


# --- configuration -------------------------------------------------------------------------
GD_PROC = "  - {id: gd.0, bus: \"tcp://127.0.0.1:17003\", metrics: \"127.0.0.1:17103\"}\n"
PROCS = ("processes:\n"
         "  - {id: c2s.0, bus: \"tcp://127.0.0.1:17001\", metrics: \"127.0.0.1:17101\"}\n"
         "  - {id: router.0, bus: \"tcp://127.0.0.1:17002\", metrics: \"127.0.0.1:17102\"}\n" + GD_PROC)


@pytest.mark.parametrize("gd,expect", [
    ("gd:\n  enabled: true\n  dc: dc-a\n  link: {bind: \"tcp://127.0.0.1:7900\"}\n"
     "  peers: [{dc: dc-a, public_key: \"rq:rM>}U?@Lns47E1%kR.o@n%FcmmsL/@{H8]yf7\"}]\n",
     "is this data center"),
    ("gd:\n  enabled: true\n  link: {bind: \"tcp://127.0.0.1:7900\"}\n", "dc (this data center's name) is required"),
    ("gd:\n  enabled: true\n  dc: dc-a\n  link: {bind: \"tcp://127.0.0.1:7900\"}\n  ttl_sec: 10\n  refresh_sec: 10\n",
     "refresh_sec (10) must be less than ttl_sec (10)"),
    ("gd:\n  enabled: true\n  dc: dc-a\n  link: {bind: \"tcp://0.0.0.0:7900\"}\n", "wildcard"),
    ("gd:\n  enabled: true\n  dc: dc-a\n  link: {bind: \"tcp://127.0.0.1:7900\"}\n"
     "  peers: [{dc: dc-b, public_key: \"not a key\"}]\n", "gd.peers[0]"),
    ("gd:\n  enabled: true\n  dc: dc-a\n  link: {bind: \"tcp://127.0.0.1:7900\"}\n", "no gd process"),
], ids=["peer-is-self", "no-dc", "refresh-not-below-ttl", "wildcard-bind", "bad-peer-key", "no-gd-process"])
def test_wrong_config_refuses_to_start(tmp_path, gd, expect):
    """A bad gd section stops `meerkat start` at once, with the file, the line and the reason."""
    cfg = tmp_path / "meerkat.yaml"
    procs = PROCS if expect != "no gd process" else PROCS.replace(GD_PROC, "")
    cfg.write_text("domains: [localhost]\n"
                   f"data_dir: {tmp_path}/var\n"
                   + procs + gd)
    r = subprocess.run([os.path.join(BUILD, "meerkat"), "start", "-c", str(cfg)], capture_output=True, text=True,
                       timeout=20, cwd=tmp_path)
    assert r.returncode != 0
    out = r.stdout + r.stderr
    assert "meerkat.yaml:" in out and expect in out, out


def bodies(client, ids):
    return [q(client.wait("message", id=i), "c:body").text for i in ids]


class RedisMonitor:
    """MONITOR of one data center's Redis: every command it runs, as text lines."""

    def __init__(self, bed, dc):
        self.p = subprocess.Popen(["redis-cli", "-h", bed.ip[dc + "_root"], "-p", str(bed.redis[dc]["port"]),
                                   "monitor"], stdout=subprocess.PIPE, text=True)
        self.lines = []
        self.cond = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()
        assert self.wait(lambda line: line.strip() == "OK")

    def _read(self):
        for line in self.p.stdout:
            with self.cond:
                self.lines.append(line)
                self.cond.notify_all()

    def wait(self, pred, timeout=15.0):
        end = time.monotonic() + timeout
        with self.cond:
            i = 0
            while True:
                while i < len(self.lines):
                    if pred(self.lines[i]):
                        return self.lines[i]
                    i += 1
                left = end - time.monotonic()
                if left <= 0:
                    return None
                self.cond.wait(left)

    def close(self):
        self.p.terminate()
        self.p.wait()


def abort(client):
    """Drops the client's TCP connection without a closing stream (RST): an ungraceful end."""
    def go():
        t = client.xmpp.transport
        sock = t.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
        t.abort()
    loop().call_soon_threadsafe(go)
    client.disconnected.wait(5)


# --- chat across data centers ---------------------------------------------------------------
def test_chat_across_dcs(bed):
    a_user, b_user = users(2)
    a = online(bed, "a", a_user)
    b = online(bed, "b", b_user)
    a.send(msg(f"{b_user}@localhost/r", "x1", "A to B, full JID"))
    m = b.wait("message", id="x1")
    assert q(m, "c:body").text == "A to B, full JID" and m.get("from") == a.jid
    b.send(msg(a.jid, "x2", "B to A"))
    m = a.wait("message", id="x2")
    assert q(m, "c:body").text == "B to A" and m.get("from") == b.jid
    a.send(msg(f"{b_user}@localhost", "x3", "A to B, bare JID"))
    assert q(b.wait("message", id="x3"), "c:body").text == "A to B, bare JID"
    # an IQ to a full JID in the other data center, and its answer back
    b.send(f"<iq type='get' id='v1' to='{a.jid}'><query xmlns='jabber:iq:version'/></iq>")
    iq = a.wait("iq", id="v1")
    assert iq.get("from") == b.jid
    # slixmpp answers it (an error: no handler); the answer crosses back
    ans = b.wait("iq", id="v1")
    assert ans.get("from") == a.jid and ans.get("type") in ("result", "error")
    assert gdm(bed, "a", "meerkat_gd_link_sent_total", peer="dc-b") >= 1
    assert gdm(bed, "b", "meerkat_gd_link_received_total", peer="dc-a") >= 1
    a.close()
    b.close()


def test_chat_before_initial_presence(bed):
    a_user, b_user = users(2)
    a = online(bed, "a", a_user, presence=False)
    b = online(bed, "b", b_user, presence=False)
    a.send(msg(f"{b_user}@localhost/r", "p1", "no presence yet"))
    assert q(b.wait("message", id="p1"), "c:body").text == "no presence yet"
    b.send(msg(f"{a_user}@localhost/r", "p2", "nor here"))
    assert q(a.wait("message", id="p2"), "c:body").text == "nor here"
    a.close()
    b.close()


def test_hundred_messages_in_order(bed):
    a_user, b_user = users(2)
    a = online(bed, "a", a_user)
    b = online(bed, "b", b_user)
    for i in range(100):
        a.send(msg(f"{b_user}@localhost/r", f"o{i}", f"n{i}"))
    got = [b.wait("message", pred=lambda el: (el.get("id") or "").startswith("o")) for _ in range(100)]
    assert [m.get("id") for m in got] == [f"o{i}" for i in range(100)]
    a.close()
    b.close()


def test_logout_then_offline(bed):
    """A user who logged out of DC-B has no mapping left; a message from DC-A is stored
    offline (shared database) and comes at the next login, in either data center."""
    a_user, b_user = users(2)
    a = online(bed, "a", a_user)
    b = online(bed, "b", b_user)
    assert wait_until(lambda: mapping(bed, f"{b_user}@localhost/r").endswith(" dc-b"))
    b.close()
    # deleted at the logout: the entry was refreshed at most refresh_sec (3 s) ago with a
    # 10 s TTL, so gone within 5 s is the delete, not the expiry
    assert wait_until(lambda: mapping(bed, f"{b_user}@localhost/r") == "", 5)
    stored = offline_count(bed, b_user)
    a.send(msg(f"{b_user}@localhost", "off1", "while away"))
    assert wait_until(lambda: offline_count(bed, b_user) == stored + 1, 15)
    b = online(bed, "a", b_user, presence=False)
    b.presence()
    m = b.wait("message", id="off1")
    assert q(m, "c:body").text == "while away" and q(m, "delay:delay") is not None
    a.close()
    b.close()


def test_graceful_move_to_other_dc(bed):
    """A user chatting inside DC-A moves to DC-B (logs out, logs in there): the next
    messages from DC-A follow her, with nothing lost."""
    s_user, m_user = users(2)
    s = online(bed, "a", s_user)
    m = online(bed, "a", m_user)
    s.send(msg(f"{m_user}@localhost/r", "g1", "here"))
    m.wait("message", id="g1")
    m.close()
    m = online(bed, "b", m_user)
    for i in range(2, 6):
        s.send(msg(f"{m_user}@localhost/r", f"g{i}", f"there {i}"))
    assert bodies(m, [f"g{i}" for i in range(2, 6)]) == [f"there {i}" for i in range(2, 6)]
    m.close()
    m = online(bed, "a", m_user)   # and back
    s.send(msg(f"{m_user}@localhost/r", "g9", "back"))
    assert q(m.wait("message", id="g9"), "c:body").text == "back"
    s.close()
    m.close()


def test_ungraceful_move_to_other_dc(bed):
    """The connection to DC-B is cut (no closing stream) and the user logs in to DC-A with
    the same resource: DC-B's late close does not delete DC-A's newer entry, and a sender in
    DC-B reaches her in DC-A."""
    s_user, m_user = users(2)
    s = online(bed, "b", s_user)
    m = online(bed, "b", m_user)
    full = f"{m_user}@localhost/r"
    assert wait_until(lambda: mapping(bed, full).endswith(" dc-b"))
    abort(m)
    m = online(bed, "a", m_user)
    assert wait_until(lambda: mapping(bed, full).endswith(" dc-a"))
    # DC-B has dropped the old session
    assert wait_until(lambda: metric_sum(bed.dc["b"].metrics("router.0"), "meerkat_router_sessions") == 1)
    for i in range(5):
        s.send(msg(full, f"u{i}", f"after the move {i}"))
    assert bodies(m, [f"u{i}" for i in range(5)]) == [f"after the move {i}" for i in range(5)]
    assert mapping(bed, full).endswith(" dc-a")
    s.close()
    m.close()


def test_sender_mapping_restored_from_origin(bed):
    """The sender's mapping is gone from Redis; the message's origin tells DC-B where the
    sender is, so the reply goes straight back (no bounce in DC-B)."""
    a_user, b_user = users(2)
    a = online(bed, "a", a_user)
    b = online(bed, "b", b_user)
    full = f"{a_user}@localhost/r"
    assert wait_until(lambda: mapping(bed, full, "b").endswith(" dc-a"))
    # DC-A's refresh (every 3 s) writes a missing entry again: deleted until DC-B's replica
    # shows it gone (a refresh between the DEL and the read would otherwise keep it).
    def gone():
        bed.redis_cli("a", "DEL", f"{PREFIX}j:{full}", f"{PREFIX}b:{a_user}@localhost")
        return wait_until(lambda: mapping(bed, full, "b") == "", 1.0)
    assert wait_until(gone, 15)
    bounces = gdm(bed, "b", "meerkat_gd_bounces_total")
    a.send(msg(f"{b_user}@localhost/r", "s1", "ping"))
    b.wait("message", id="s1")
    b.send(msg(full, "s2", "pong"))
    assert q(a.wait("message", id="s2"), "c:body").text == "pong"
    assert gdm(bed, "b", "meerkat_gd_bounces_total") == bounces
    a.close()
    b.close()


def test_bounced_messages_in_order(bed):
    """The recipient's mapping vanishes from Redis: messages to her bounce (re-resolved with
    backoff) until DC-B's refresh writes it again, then all arrive, in order."""
    a_user, b_user = users(2)
    a = online(bed, "a", a_user)
    b = online(bed, "b", b_user)
    full = f"{b_user}@localhost/r"
    assert wait_until(lambda: mapping(bed, full).endswith(" dc-b"))
    bounces = gdm(bed, "a", "meerkat_gd_bounces_total")
    bed.redis_cli("a", "DEL", f"{PREFIX}j:{full}", f"{PREFIX}b:{b_user}@localhost")
    for i in range(20):
        a.send(msg(full, f"b{i}", f"bounced {i}"))
    got = [b.wait("message", pred=lambda el: (el.get("id") or "").startswith("b")) for _ in range(20)]
    assert [el.get("id") for el in got] == [f"b{i}" for i in range(20)]
    assert gdm(bed, "a", "meerkat_gd_bounces_total") > bounces
    a.close()
    b.close()


def test_move_while_old_dc_refreshes_never_misroutes(bed):
    """MongooseIM #2392: a user logs in to DC-A while her old session in DC-B is still
    there and DC-B refreshes it. DC-B's refresh and its later delete must leave DC-A's newer
    entry alone, so messages keep going to DC-A."""
    s_user, m_user = users(2)
    full = f"{m_user}@localhost/r"
    old = online(bed, "b", m_user)
    assert wait_until(lambda: mapping(bed, full).endswith(" dc-b"))
    mon = RedisMonitor(bed, "a")
    try:
        new = online(bed, "a", m_user)
        assert wait_until(lambda: mapping(bed, full).endswith(" dc-a"))
        version = mapping(bed, full).split()[0]
        # DC-B's gd runs a script on the key after the new login (its refresh): wait for it.
        ip_b = bed.ip["b"]
        t0 = len(mon.lines)
        assert mon.wait(lambda line: ip_b in line and full in line and mon.lines.index(line) >= t0, 15)
        assert mapping(bed, full) == f"{version} dc-a"
        if not old.disconnected.is_set():
            old.close()
        s = online(bed, "b", s_user)
        for i in range(5):
            s.send(msg(full, f"r{i}", f"to the new one {i}"))
        assert bodies(new, [f"r{i}" for i in range(5)]) == [f"to the new one {i}" for i in range(5)]
        assert mapping(bed, full) == f"{version} dc-a"
        s.close()
        new.close()
    finally:
        mon.close()


def test_presence_subscription_across_dcs(bed):
    a_user, b_user = users(2)
    a = online(bed, "a", a_user)
    b = online(bed, "b", b_user)
    for c in (a, b):     # interested resources (RFC 6121 2.1.6): they get subscription requests
        assert c.iq("<query xmlns='jabber:iq:roster'/>").get("type") == "result"
    a.send(f"<presence to='{b_user}@localhost' type='subscribe'/>")
    b.wait("presence", type="subscribe", frm=f"{a_user}@localhost")
    b.send(f"<presence to='{a_user}@localhost' type='subscribed'/>")
    a.wait("presence", type="subscribed", frm=f"{b_user}@localhost")
    a.wait("presence", frm=b.jid, type="available")
    b.presence(children="<show>away</show><status>across</status>")
    p = a.wait("presence", frm=b.jid, pred=lambda el: q(el, "c:status") is not None)
    assert q(p, "c:status").text == "across"
    b.close()
    a.wait("presence", frm=b.jid, type="unavailable")
    a.close()


def test_mam_across_dcs(bed):
    """A message from DC-A to DC-B is in both users' archives (each written in the user's
    own data center), with the recipient's stanza-id on the delivered copy."""
    a_user, b_user = users(2)
    a = online(bed, "a", a_user)
    b = online(bed, "b", b_user)
    a.send(msg(f"{b_user}@localhost/r", "mam1", "archived twice"))
    m = b.wait("message", id="mam1")
    sid = m.find("{urn:xmpp:sid:0}stanza-id")
    assert sid is not None and sid.get("by") == f"{b_user}@localhost"

    def archived(c, with_jid, qid):
        form = ("<x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE' type='hidden'>"
                f"<value>urn:xmpp:mam:2</value></field><field var='with'><value>{with_jid}</value></field></x>")
        res = c.iq(f"<query xmlns='urn:xmpp:mam:2' queryid='{qid}'>{form}</query>", type="set", timeout=15)
        assert res.get("type") == "result"
        out = []
        for el in list(c.inbox):
            r = el.find("{urn:xmpp:mam:2}result")
            if r is not None and r.get("queryid") == qid:
                fwd = r.find("{urn:xmpp:forward:0}forwarded/{jabber:client}message")
                out.append((r.get("id"), q(fwd, "c:body").text))
        return out
    assert wait_until(lambda: [b for _, b in archived(b, f"{a_user}@localhost", "qb")] == ["archived twice"], 10)
    got = archived(b, f"{a_user}@localhost", "qb2")
    assert got[0][0] == sid.get("id")
    assert wait_until(lambda: [b for _, b in archived(a, f"{b_user}@localhost", "qa")] == ["archived twice"], 10)
    a.close()
    b.close()


def test_one_account_in_both_dcs(bed):
    """The same account online in both data centers: a message to the bare JID goes to
    both resources (equal priority, RFC 6121), from either data center."""
    s_user, d_user = users(2)
    r1 = online(bed, "a", d_user, "r1", priority=1)
    r2 = online(bed, "b", d_user, "r2", priority=1)
    sa = online(bed, "a", s_user, "sa")
    sb = online(bed, "b", s_user, "sb")
    for sender, mid in ((sa, "both-a"), (sb, "both-b")):
        sender.send(msg(f"{d_user}@localhost", mid, mid))
        assert q(r1.wait("message", id=mid), "c:body").text == mid
        assert q(r2.wait("message", id=mid), "c:body").text == mid
    # the full JID of one resource reaches only it, across
    sa.send(msg(f"{d_user}@localhost/r2", "only-r2", "x"))
    r2.wait("message", id="only-r2")
    for c in (r1, r2, sa, sb):
        c.close()


def test_stale_dc_pruned(bed):
    """A data center whose heartbeat has expired is dropped from the live list."""
    bed.redis_cli("a", "ZADD", f"{PREFIX}dcs", "1", "dc-zombie")
    bed.redis_cli("a", "HSET", f"{PREFIX}dc:dc-zombie", "endpoints", "tcp://10.255.255.1:1", "pubkey", "x")
    assert wait_until(lambda: bed.redis_cli("a", "ZSCORE", f"{PREFIX}dcs", "dc-zombie").stdout.strip() == "", 15)
    live = bed.redis_cli("a", "ZRANGE", f"{PREFIX}dcs", "0", "-1").stdout.split()
    assert "dc-a" in live and "dc-b" in live


def test_garbage_on_the_link_port(bed):
    """Bytes that are not ZMTP, a ZMTP greeting without CURVE and a truncated handshake on
    DC-A's link inbox: refused and counted; gd keeps running and chat still works."""
    pid = bed.dc["a"].child_pid("gd.0")
    before = gdm(bed, "a", "meerkat_gd_link_refused_total")
    target = (bed.ip["a"], bed.link_port["a"])
    payloads = [
        bytes(random.getrandbits(8) for _ in range(4096)),
        b"\xff" + b"\0" * 8 + b"\x7f" + b"\x03\x00" + b"NULL" + b"\0" * 16 + b"\0" * 31,
        b"\xff" + b"\0" * 8 + b"\x7f" + b"\x03\x00" + b"CURVE" + b"\0" * 15 + b"\0" * 31 + b"\x04\xff" + b"\x41" * 300,
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
    ]
    for data in payloads:
        def send(data=data):
            s = socket.create_connection(target, timeout=5)
            try:
                s.sendall(data)
                s.settimeout(2)
                try:
                    s.recv(4096)
                except OSError:
                    pass
            finally:
                s.close()
        in_netns(bed.ns["b"], send)
    assert wait_until(lambda: gdm(bed, "a", "meerkat_gd_link_refused_total") > before, 10)
    assert bed.dc["a"].child_pid("gd.0") == pid
    a_user, b_user = users(2)
    a = online(bed, "a", a_user)
    b = online(bed, "b", b_user)
    b.send(msg(a.jid, "after-garbage", "still here"))
    assert q(a.wait("message", id="after-garbage"), "c:body").text == "still here"
    a.close()
    b.close()


def test_link_cut_10s_keeps_every_message_in_order(bed):
    """The link between the data centers is cut for 10 s while messages flow: every one
    arrives, in order, once the link is back (queued, not stored offline)."""
    a_user, b_user = users(2)
    a = online(bed, "a", a_user)
    b = online(bed, "b", b_user)
    full = f"{b_user}@localhost/r"
    n = 0
    ids = []

    def send_one():
        nonlocal n
        a.send(msg(full, f"c{n}", f"cut {n}"))
        ids.append(f"c{n}")
        n += 1
    for _ in range(10):
        send_one()
    assert bodies(b, ids) == [f"cut {i}" for i in range(10)]
    stored = offline_count(bed, b_user)
    for p in bed.proxies.values():
        p.cut()
    t_end = time.monotonic() + 10
    try:
        while time.monotonic() < t_end:      # the cut lasts 10 s; messages keep coming meanwhile
            send_one()
            time.sleep(0.25)
        assert wait_until(lambda: gdm(bed, "a", "meerkat_gd_link_up", peer="dc-b") == 0, 5)
    finally:
        for p in bed.proxies.values():
            p.heal()
    for _ in range(10):
        send_one()
    rest = ids[10:]
    got = [b.wait("message", pred=lambda el: (el.get("id") or "").startswith("c"), timeout=30) for _ in rest]
    assert [el.get("id") for el in got] == rest
    assert offline_count(bed, b_user) == stored
    a.close()
    b.close()


def test_wrong_curve_key_cannot_connect(bed):
    """DC-B's gd restarted with a key pair DC-A does not trust: DC-A refuses its link
    (counted) and queues what it has for DC-B; with the right key back, it is delivered."""
    a_user, b_user = users(2)
    a = online(bed, "a", a_user)
    b = online(bed, "b", b_user)
    a.send(msg(f"{b_user}@localhost/r", "k0", "before"))
    b.wait("message", id="k0")
    refused = gdm(bed, "a", "meerkat_gd_link_refused_total", reason="unknown_key")
    keyfile = bed.key_file["b"]
    try:
        write_key_file(keyfile, curve_keypair()[1])
        pid = bed.dc["b"].child_pid("gd.0")
        os.kill(pid, signal.SIGKILL)
        assert wait_until(lambda: gdm(bed, "a", "meerkat_gd_link_refused_total", reason="unknown_key") > refused, 20)
        a.send(msg(f"{b_user}@localhost/r", "k1", "while refused"))
        assert wait_until(lambda: gdm(bed, "a", "meerkat_gd_link_queued", peer="dc-b") >= 1, 10)
    finally:
        write_key_file(keyfile, bed.keys["b"][1])
        pid = bed.dc["b"].child_pid("gd.0")
        if pid:
            os.kill(pid, signal.SIGKILL)
    assert q(b.wait("message", id="k1", timeout=30), "c:body").text == "while refused"
    a.close()
    b.close()


def test_endpoint_added_and_removed(bed):
    """DC-B's gd comes back advertising a new link endpoint: DC-A learns it from Redis,
    dials it (the new proxy sees the connection) and drops the old one; messages flow."""
    from gd_bed import LinkProxy
    assert bed.learn_endpoints
    old = bed.proxies["a"]                  # in DC-A, dialling DC-B's inbox
    new = LinkProxy(bed.ns["a"], "127.0.0.1", (bed.ip["b"], bed.link_port["b"]))
    bed.proxies["a"] = new                  # what gd_yaml("b") advertises now
    try:
        bed.dc["b"].write_config(bed.gd_yaml("b"))
        os.kill(bed.dc["b"].child_pid("gd.0"), signal.SIGKILL)
        key = f"{PREFIX}dc:dc-b"
        assert wait_until(lambda: new.endpoint in bed.redis_cli("a", "HGET", key, "endpoints").stdout, 20)
        assert wait_until(lambda: new.active >= 1, 15)
        assert wait_until(lambda: old.active == 0, 15)
        a_user, b_user = users(2)
        a = online(bed, "a", a_user)
        b = online(bed, "b", b_user)
        sent = new.bytes
        a.send(msg(f"{b_user}@localhost/r", "ep1", "through the new endpoint"))
        assert q(b.wait("message", id="ep1"), "c:body").text == "through the new endpoint"
        assert new.bytes > sent
        a.close()
        b.close()
    finally:
        old.close()


def kill9_together(bed, dc, *procs):
    """kill -9 of dc's processes procs (ids), all before any comes back; returns once the
    supervisor has started the next of each."""
    pids = {p: bed.dc[dc].child_pid(p) for p in procs}
    for pid in pids.values():
        os.kill(pid, signal.SIGKILL)
    for p, pid in pids.items():
        assert wait_until(lambda: bed.dc[dc].child_pid(p) not in (None, pid), 20), p


def restart_gd(bed, dc):
    """kill -9 of dc's gd; returns once the supervisor has started the next one."""
    kill9_together(bed, dc, "gd.0")


def starting(prefix):
    return lambda el: (el.get("id") or "").startswith(prefix)


def carbon_id(el):
    """The id of the message a sent carbon copy (XEP-0280) forwards, or None."""
    fwd = el.find("{urn:xmpp:carbons:2}sent/{urn:xmpp:forward:0}forwarded/{jabber:client}message")
    return fwd.get("id") if fwd is not None else None


def sent_carbon(prefix):
    return lambda el: (carbon_id(el) or "").startswith(prefix)


def exactly_once_in_order(a, b, full, prefix, ids):
    """Every message of ids reaches b once, in that order: each is taken in arrival order,
    then a marker sent after them (the same path) proves no copy is still coming."""
    got = [b.wait("message", pred=starting(prefix), timeout=40).get("id") for _ in ids]
    assert got == ids
    a.send(msg(full, "end-" + prefix, "marker"))
    assert b.none_before({"kind": "message", "id": "end-" + prefix, "timeout": 30}, "message",
                         pred=starting(prefix))


def test_sending_gd_killed_loses_nothing(bed):
    """kill -9 of DC-A's gd while it holds messages for DC-B (its socket to DC-B cut, they
    wait in its link queue) and while more arrive: the router keeps what it handed to gd
    until gd is done with it (the peer acknowledged it) and gives it to the next gd, so
    every message arrives exactly once, in order, none stored offline."""
    a, b, b_user, full = warm_pair(bed, "ks")
    stored = offline_count(bed, b_user)
    ids = [f"ks{i}" for i in range(60)]
    proxy = bed.proxies["a"]                # gd-a -> DC-B's inbox
    # Nothing waits for DC-B's ack any more (the warm message's ack trails its delivery).
    assert wait_until(lambda: gdm(bed, "a", "meerkat_gd_link_queued", peer="dc-b") == 0, 10)
    queued = 0
    proxy.cut()
    try:
        for i in ids[:30]:
            a.send(msg(full, i, f"body {i}"))
        assert wait_until(lambda: gdm(bed, "a", "meerkat_gd_link_queued", peer="dc-b") >= queued + 30, 10)
        restart_gd(bed, "a")
        # the next gd said hello: the router re-sent what it kept, the 30 among them
        assert wait_until(lambda: metric_sum(bed.dc["a"].metrics("router.0"), "meerkat_router_gd_kept") >= 30, 15)
        for i in ids[30:]:
            a.send(msg(full, i, f"body {i}"))
    finally:
        proxy.heal()
    exactly_once_in_order(a, b, full, "ks", ids)
    assert offline_count(bed, b_user) == stored
    # gd told the router it is done with each (DONE): no copy stays kept
    assert wait_until(lambda: metric_sum(bed.dc["a"].metrics("router.0"), "meerkat_router_gd_kept") == 0, 10)
    a.close()
    b.close()


def test_receiving_gd_killed_delivers_once(bed):
    """kill -9 of DC-B's gd after it handed messages to its router but before DC-A heard
    its acknowledgements (DC-B's socket to DC-A cut), and while more arrive: DC-A sends
    them again to the next gd, and DC-B's router drops the copies it delivered already -
    every message exactly once, in order."""
    a, b, b_user, full = warm_pair(bed, "kr")
    ids = [f"kr{i}" for i in range(60)]
    proxy = bed.proxies["b"]                # gd-b -> DC-A's inbox: its acks and hellos
    proxy.cut()
    try:
        for i in ids[:30]:
            a.send(msg(full, i, f"body {i}"))
        got = [b.wait("message", pred=starting("kr"), timeout=20).get("id") for _ in ids[:30]]
        assert got == ids[:30]
        restart_gd(bed, "b")
        for i in ids[30:]:
            a.send(msg(full, i, f"body {i}"))
    finally:
        proxy.heal()
    exactly_once_in_order(a, b, full, "kr", ids[30:])
    a.close()
    b.close()


def cut_queue_and_kill(bed, ids, send, delivered_in_b, before_kill=None):
    """The double kill's setting, with the link's two directions cut by their proxies: ids[:20]
    sent and delivered in DC-B (delivered_in_b() returns their ids in arrival order) with
    their acknowledgements never reaching DC-A, ids[20:40] left queued on DC-A's link,
    before_kill() if given, then DC-A's router and gd killed with -9 together and ids[40:]
    sent during their restart; the link healed."""
    acks, sends = bed.proxies["b"], bed.proxies["a"]
    acks.cut()
    try:
        for i in ids[:20]:
            send(i)
        assert delivered_in_b() == ids[:20]
        sends.cut()
        for i in ids[20:40]:
            send(i)
        assert wait_until(lambda: gdm(bed, "a", "meerkat_gd_link_queued", peer="dc-b") >= 40, 10)
        if before_kill is not None:
            before_kill()
        kill9_together(bed, "a", "router.0", "gd.0")
        for i in ids[40:]:
            send(i)
    finally:
        acks.heal()
        sends.heal()


def test_router_and_gd_killed_together_lose_nothing(bed):
    """kill -9 of DC-A's router and gd together while messages to DC-B are in flight: 20
    delivered in DC-B whose acknowledgements never reached DC-A (DC-B's socket to DC-A
    cut), 20 more waiting in gd's link queue (DC-A's socket to DC-B cut too), and 20 sent
    while both restart. The router holds each cross-DC Route on its c2s channel until the
    other data center acknowledged it, so the c2s re-sends all 40 to the next router, with
    the msg ids of the first copies: DC-B drops the 20 it has, and every message arrives
    exactly once, in order, none stored offline. The sender's other session (carbons on)
    gets each sent copy once too: the next router hands a re-sent Route to gd only (the
    incarnation that held it made its carbon copies)."""
    a, b, b_user, full = warm_pair(bed, "kx")
    a2 = online(bed, "a", a.jid.split("@")[0], "r2")
    assert a2.iq("<enable xmlns='urn:xmpp:carbons:2'/>", type="set").get("type") == "result"
    a.send(msg(full, "kx-warm2", "warm"))
    b.wait("message", id="kx-warm2")
    a2.wait("message", pred=sent_carbon("kx-warm2"))
    stored = offline_count(bed, b_user)
    ids = [f"kx{i}" for i in range(60)]
    assert wait_until(lambda: gdm(bed, "a", "meerkat_gd_link_queued", peer="dc-b") == 0, 10)
    cut_queue_and_kill(bed, ids, lambda i: a.send(msg(full, i, f"body {i}")),
                       lambda: [b.wait("message", pred=starting("kx"), timeout=20).get("id") for _ in ids[:20]])
    exactly_once_in_order(a, b, full, "kx", ids[20:])
    assert [carbon_id(a2.wait("message", pred=sent_carbon("kx"), timeout=20)) for _ in ids] == ids
    assert a2.none_before({"kind": "message", "pred": sent_carbon("end-kx"), "timeout": 20}, "message",
                          pred=sent_carbon("kx"))
    assert offline_count(bed, b_user) == stored
    # every hand-off finished: nothing kept for gd, nothing held on the c2s channel
    assert wait_until(lambda: metric_sum(bed.dc["a"].metrics("router.0"), "meerkat_router_gd_kept") == 0, 10)
    a.close()
    a2.close()
    b.close()


def test_bare_jid_in_both_dcs_router_and_gd_killed_together(bed):
    """The same double kill for messages to a bare JID online in both data centers (one
    resource each, equal priority): DC-A's router delivers each to its resource and hands
    gd a copy for DC-B's (OTHERS). 20 copies delivered in DC-B whose acknowledgements never
    reached DC-A, 20 more in gd's link queue, then router and gd of DC-A killed with -9 and
    20 sent during the restart. The router holds each such Route on its c2s channel until
    gd is done with its copy, and the next router hands the re-sent ones to gd only (its
    previous incarnation delivered them here), with the msg ids of the first copies: each
    resource gets each message exactly once, in order."""
    s_user, d_user = users(2)
    ra = online(bed, "a", d_user, "ra", priority=1)
    rb = online(bed, "b", d_user, "rb", priority=1)
    sa = online(bed, "a", s_user, "sa")
    bare = f"{d_user}@localhost"
    sa.send(msg(bare, "bk-warm", "warm"))
    ra.wait("message", id="bk-warm")
    rb.wait("message", id="bk-warm")
    ids = [f"bk{i}" for i in range(60)]
    router_a = lambda name: metric_sum(bed.dc["a"].metrics("router.0"), name)  # noqa: E731
    assert wait_until(lambda: gdm(bed, "a", "meerkat_gd_link_queued", peer="dc-b") == 0, 10)
    c2s_a = lambda name: metric_sum(bed.dc["a"].metrics("c2s.0"), name)  # noqa: E731

    def before_kill():
        assert [ra.wait("message", pred=starting("bk"), timeout=20).get("id") for _ in ids[:40]] == ids[:40]
        # Every Route acknowledged to the c2s as done or held for gd: one whose ack had not
        # left the router is re-sent as not applied and applied again whole, as any in-DC
        # Route (the sessions here may get it twice: at least once).
        assert wait_until(lambda: c2s_a("meerkat_c2s_routes_pending") == c2s_a("meerkat_c2s_routes_held"), 10)
    cut_queue_and_kill(bed, ids, lambda i: sa.send(msg(bare, i, f"body {i}")),
                       lambda: [rb.wait("message", pred=starting("bk"), timeout=20).get("id") for _ in ids[:20]],
                       before_kill)
    assert [rb.wait("message", pred=starting("bk"), timeout=40).get("id") for _ in ids[20:]] == ids[20:]
    assert [ra.wait("message", pred=starting("bk"), timeout=40).get("id") for _ in ids[40:]] == ids[40:]
    # a marker after them, on the same paths: no copy of any is still coming to either
    sa.send(msg(bare, "end-bk", "marker"))
    for c in (ra, rb):
        assert c.none_before({"kind": "message", "id": "end-bk", "timeout": 30}, "message", pred=starting("bk"))
    assert wait_until(lambda: router_a("meerkat_router_gd_kept") == 0, 10)
    for c in (ra, rb, sa):
        c.close()


def test_gd_killed_while_bouncing_loses_nothing(bed):
    """kill -9 of DC-A's gd while a message to a user offline everywhere waits in its
    bounces (deadline 4 s here): the router gives it to the next gd, which re-resolves it
    until the deadline from its first entry and gives it back - stored offline once, and
    the message sent after it too."""
    a_user, y_user = users(2)
    a = online(bed, "a", a_user)
    stored = offline_count(bed, y_user)
    bounces = gdm(bed, "a", "meerkat_gd_bounces_total")
    a.send(msg(f"{y_user}@localhost", "kb-1", "bounce one"))
    assert wait_until(lambda: gdm(bed, "a", "meerkat_gd_bounces_total") > bounces, 5)
    restart_gd(bed, "a")
    a.send(msg(f"{y_user}@localhost", "kb-2", "bounce two"))
    assert wait_until(lambda: offline_count(bed, y_user) >= stored + 2, 20)
    for mid in ("kb-1", "kb-2"):
        n = bed.pg.query(f"SELECT count(*) FROM offline WHERE username = '{y_user}' AND xml LIKE '%{mid}%'")
        assert int(n) == 1, mid
    assert wait_until(lambda: metric_sum(bed.dc["a"].metrics("router.0"), "meerkat_router_gd_kept") == 0, 10)
    a.close()


def test_link_down_with_ip_link_keeps_every_message_in_order(bed):
    """The veth between the data centers goes down (`ip link set down`: the proxies' TCP
    connections across it stay half-open, nothing resets them) while messages flow, then
    up: the link comes back and every message sent meanwhile arrives once, in order, none
    stored offline."""
    a, b, b_user, full = warm_pair(bed, "ld")
    stored = offline_count(bed, b_user)
    ids = [f"ld{i}" for i in range(40)]
    bed.link_down()
    try:
        for i in ids[:20]:
            a.send(msg(full, i, f"body {i}"))
            time.sleep(0.2)                  # spread over the outage
        assert wait_until(lambda: gdm(bed, "a", "meerkat_gd_link_up", peer="dc-b") == 0, 10)
    finally:
        bed.link_up()
    for i in ids[20:]:
        a.send(msg(full, i, f"body {i}"))
    exactly_once_in_order(a, b, full, "ld", ids)
    assert offline_count(bed, b_user) == stored
    a.close()
    b.close()


@pytest.mark.parametrize("here,there", [("a", "b"), ("b", "a")], ids=["login-in-a", "login-in-b"])
def test_presence_probe_answered_across_dcs(bed, here, there):
    """A user logging in in one data center probes its contacts, online only in the other:
    each contact's current presence reaches the new session, as inside one data center."""
    x_user, y_user, z_user = users(3)
    x = online(bed, here, x_user)
    ys = [online(bed, there, u) for u in (y_user, z_user)]
    for c in [x] + ys:
        assert c.iq("<query xmlns='jabber:iq:roster'/>").get("type") == "result"
    for y, u in zip(ys, (y_user, z_user)):
        x.send(f"<presence to='{u}@localhost' type='subscribe'/>")
        y.wait("presence", type="subscribe", frm=f"{x_user}@localhost")
        y.send(f"<presence to='{x_user}@localhost' type='subscribed'/>")
        x.wait("presence", type="subscribed", frm=f"{u}@localhost")
        y.presence(children=f"<status>{u} in {there}</status>")
        y.wait("presence", frm=y.jid, pred=lambda el: q(el, "c:status") is not None)
        x.wait("presence", frm=y.jid, pred=lambda el: q(el, "c:status") is not None)
    x.close()
    x2 = bed.client(here, x_user, "again")
    x2.presence()                            # initial presence: the server probes the contacts
    for y, u in zip(ys, (y_user, z_user)):
        p = x2.wait("presence", frm=y.jid, timeout=15)
        assert p.get("type") in (None, "available") and q(p, "c:status").text == f"{u} in {there}"
    x2.close()
    for y in ys:
        y.close()


def test_whole_dc_stopped(bed):
    """DC-B stops (SIGTERM, its clients are told): its users' entries go, messages to them
    from DC-A are stored offline, and DC-B drops out of the live data centers when its
    heartbeat expires. (Runs last: DC-B stays down.)"""
    a_user, b_user = users(2)
    a = online(bed, "a", a_user)
    b = online(bed, "b", b_user)
    full = f"{b_user}@localhost/r"
    assert wait_until(lambda: mapping(bed, full).endswith(" dc-b"))
    bed.dc["b"].stop()
    assert b.disconnected.wait(10)
    assert wait_until(lambda: mapping(bed, full) == "", 15)
    stored = offline_count(bed, b_user)
    a.send(msg(f"{b_user}@localhost", "dead1", "DC-B is gone"))
    assert wait_until(lambda: offline_count(bed, b_user) == stored + 1, 15)
    assert wait_until(lambda: "dc-b" not in bed.redis_cli("a", "ZRANGE", f"{PREFIX}dcs", "0", "-1").stdout.split(), 25)
    a.close()
