"""tests/integration/test_gd_basic.py - global distribution on loopback: two small clusters (two
data centers) sharing one sqlite store, a Redis primary and a replica (replicaof), meerkat-gd in
each joined by the CURVE link. The network-namespace test bed (gd_bed.py) runs the full checklist;
these are the quick ones."""
import os
import signal
import subprocess
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))
from gd_bed import curve_keypair, write_key_file  # noqa: E402
from harness import Cluster, free_port, http_get, pid_alive, wait_until  # noqa: E402
from xmpp import Client, mam_bodies, q  # noqa: E402


COMP = "comp.localhost"
COMP_SECRET = "gd-comp-secret"


def redis_server(d, port, replica_of=None):
    os.makedirs(d, exist_ok=True)
    argv = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
            "--dir", d, "--logfile", os.path.join(d, "redis.log"), "--repl-ping-replica-period", "1"]
    if replica_of:
        argv += ["--replicaof", "127.0.0.1", str(replica_of)]
    p = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ok = wait_until(lambda: redis_cli(port, "PING").strip() == "PONG", 10)
    assert ok, f"redis-server on {port} did not start"
    return p


def redis_cli(port, *args):
    r = subprocess.run(["redis-cli", "-p", str(port), *args], capture_output=True, text=True, timeout=10)
    return r.stdout


def metric(cluster, proc_id, name, **labels):
    body = http_get(cluster.metrics_port(proc_id), "/metrics")[1]
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    total = 0.0
    for line in body.splitlines():
        if line.startswith("#"):
            continue
        key, _, value = line.rpartition(" ")
        if key == name or (key.startswith(name + "{") and want in key):
            total += float(value)
    return total


class TwoDcs:
    def __init__(self, tmp):
        self.dir = str(tmp)
        self.redis_port = {"primary": free_port(), "replica": free_port()}
        self.redis = [redis_server(os.path.join(self.dir, "redis-p"), self.redis_port["primary"])]
        self.redis.append(redis_server(os.path.join(self.dir, "redis-r"), self.redis_port["replica"],
                                       replica_of=self.redis_port["primary"]))
        assert wait_until(lambda: "master_link_status:up" in redis_cli(self.redis_port["replica"], "INFO",
                                                                       "replication"), 15)
        self.keys = {dc: curve_keypair() for dc in ("a", "b")}
        self.link_port = {dc: free_port() for dc in ("a", "b")}
        storage = f"storage: {{driver: sqlite, sqlite: {{path: {self.dir}/shared.db}}}}"
        self.dc = {}
        for dc, other in (("a", "b"), ("b", "a")):
            d = os.path.join(self.dir, f"dc-{dc}")
            os.makedirs(d, exist_ok=True)
            key_file = os.path.join(d, "gd_curve.key")
            write_key_file(key_file, self.keys[dc][1])
            # DC-A reads the primary, DC-B its replica; both write to the primary.
            read = self.redis_port["primary"] if dc == "a" else self.redis_port["replica"]
            gd = "\n".join([
                "gd:",
                "  enabled: true",
                f"  dc: dc-{dc}",
                f"  link: {{bind: \"tcp://127.0.0.1:{self.link_port[dc]}\"}}",
                f"  keys: {{secret_file: {key_file}}}",
                f"  peers: [{{dc: dc-{other}, public_key: \"{self.keys[other][0]}\", "
                f"endpoint: \"tcp://127.0.0.1:{self.link_port[other]}\"}}]",
                f"  redis: {{primary: \"127.0.0.1:{self.redis_port['primary']}\", replica: \"127.0.0.1:{read}\", "
                f"prefix: \"t{os.getpid()}:\"}}",
                "  ttl_sec: 10",
                "  refresh_sec: 3",
                "  bounce_base_ms: 50",
                "  bounce_deadline_ms: 1500",
            ])
            self.dc[dc] = Cluster(d, c2s=1, router=1, mam=1, pusher=0, gd=1, storage=storage, extra=gd)
        # An external component (XEP-0114) configured and connected in DC-A only.
        self.comp_port = free_port()
        secret = os.path.join(self.dir, "comp.secret")
        with open(secret, "w") as f:
            f.write(COMP_SECRET + "\n")
        with open(self.dc["a"].config) as f:
            text = f.read()
        text = text.replace("  c2s_tls: {", f"  component: {{host: 127.0.0.1, port: {self.comp_port}}}\n  c2s_tls: {{", 1)
        text += f"components:\n  - {{domain: {COMP}, secret_file: {secret}}}\n"
        with open(self.dc["a"].config, "w") as f:
            f.write(text)
        for c in self.dc.values():
            c.start()

    def register(self, *users):
        for u in users:
            self.dc["a"].ctl("register", f"{u}@localhost", f"{u}-pw")

    def client(self, dc, user, resource="r"):
        return Client(self.dc[dc].c2s_port, f"{user}@localhost/{resource}", f"{user}-pw")

    def close(self):
        try:
            for c in self.dc.values():
                c.stop()
        finally:
            for p in self.redis:
                p.terminate()
                p.wait(10)


@pytest.fixture(scope="module")
def dcs(tmp_path_factory):
    t = TwoDcs(tmp_path_factory.mktemp("gd"))
    try:
        t.register("alice", "bob", "carol", "dave", "erin", "frank")
        yield t
    finally:
        t.close()


def chat(to, mid, body):
    return f"<message to='{to}' type='chat' id='{mid}'><body>{body}</body></message>"


def test_presence_subscription_across_dcs(dcs):
    """A subscription request, its approval and the presence that follows travel between
    the data centers (each DC's c2s keeps the roster of its own user in the shared store);
    a later presence change of bob in DC-B reaches alice in DC-A."""
    R = "{jabber:iq:roster}"
    alice = dcs.client("a", "alice", resource="ps")
    bob = dcs.client("b", "bob", resource="ps")
    try:
        for c in (alice, bob):   # a subscription request goes to sessions that asked for the roster
            c.iq("<query xmlns='jabber:iq:roster'/>")
            c.presence()
            c.wait("presence", frm=c.jid)
        alice.presence("subscribe", "bob@localhost")
        bob.wait("presence", type="subscribe", frm="alice@localhost")
        bob.presence("subscribed", "alice@localhost")
        alice.wait("presence", type="subscribed", frm="bob@localhost")
        alice.wait("presence", type="available", frm=bob.jid)
        bob.presence(children="<show>away</show>")
        m = alice.wait("presence", frm=bob.jid, child="{jabber:client}show")
        assert m.find("{jabber:client}show").text == "away"
        items = alice.iq("<query xmlns='jabber:iq:roster'/>")
        it = [i for i in items.iter(f"{R}item") if i.get("jid") == "bob@localhost"]
        assert it and it[0].get("subscription") == "to"
    finally:
        alice.close()
        bob.close()


def test_chat_across_dcs_before_presence(dcs):
    """alice in DC-A and bob in DC-B, neither has sent initial presence: full-JID chat both
    ways goes over the link (the router hands the miss to gd, gd finds bob's DC in Redis;
    bob's reply finds alice through the origin the message carried)."""
    alice = dcs.client("a", "alice")
    bob = dcs.client("b", "bob")
    try:
        alice.send(chat(bob.jid, "ab1", "hello B"))
        m = bob.wait("message", id="ab1")
        assert q(m, "c:body").text == "hello B"
        assert m.get("from") == alice.jid
        bob.send(chat(alice.jid, "ba1", "hello A"))
        m = alice.wait("message", id="ba1")
        assert q(m, "c:body").text == "hello A"
        assert m.get("from") == bob.jid
        assert metric(dcs.dc["a"], "gd.0", "meerkat_gd_forwards_total", result="forwarded") >= 1
        assert metric(dcs.dc["b"], "gd.0", "meerkat_gd_forwards_total", result="forwarded") >= 1
        assert metric(dcs.dc["b"], "router.0", "meerkat_router_gd_injected_total", kind="inject") >= 1
    finally:
        alice.close()
        bob.close()


def test_chat_to_bare_jid_after_presence(dcs):
    carol = dcs.client("a", "carol")
    dave = dcs.client("b", "dave")
    try:
        carol.presence()
        dave.presence()
        carol.wait("presence", frm=carol.jid)
        dave.wait("presence", frm=dave.jid)
        carol.send(chat("dave@localhost", "cd1", "to your bare JID"))
        m = dave.wait("message", id="cd1")
        assert q(m, "c:body").text == "to your bare JID"
        dave.send(chat("carol@localhost", "dc1", "and back"))
        m = carol.wait("message", id="dc1")
        assert q(m, "c:body").text == "and back"
    finally:
        carol.close()
        dave.close()


def test_logout_then_offline_storage(dcs):
    """bob logs out of DC-B: a message from DC-A finds no session anywhere; after the bounce
    deadline it is stored offline (the shared store), and bob gets it at his next login, in
    the other data center."""
    bob = dcs.client("b", "bob")
    alice = dcs.client("a", "alice")
    try:
        alice.send(chat(bob.jid, "pre", "while online"))
        bob.wait("message", id="pre")
        bob.close()
        alice.send(chat("bob@localhost", "off1", "while offline"))
        # stored once, by whichever DC saw the miss last (A after the bounces, or B if A's
        # cache still named it)
        db = os.path.join(dcs.dir, "shared.db")
        import sqlite3

        def stored():
            with sqlite3.connect(db, timeout=5) as c:
                return c.execute("SELECT count(*) FROM offline WHERE username = 'bob'").fetchone()[0]
        assert wait_until(lambda: stored() == 1, 15)
        bob = dcs.client("a", "bob", resource="back")
        bob.presence()
        m = bob.wait("message", id="off1")
        assert q(m, "c:body").text == "while offline"
        assert m.get("from") == alice.jid
    finally:
        alice.close()
        bob.close()


def test_hundred_messages_in_order(dcs):
    erin = dcs.client("a", "erin")
    frank = dcs.client("b", "frank")
    try:
        # the first one may bounce until frank's login reaches Redis: the rest wait behind it
        for i in range(100):
            erin.send(chat(frank.jid, f"o{i}", f"n{i}"))
        got = [frank.wait("message", type="chat") for _ in range(100)]
        assert [m.get("id") for m in got] == [f"o{i}" for i in range(100)]
    finally:
        erin.close()
        frank.close()


def test_bare_jid_with_resources_in_both_dcs(dcs):
    """carol is online in DC-A and in DC-B: a chat message to her bare JID from DC-A reaches
    both resources (each DC's router applies RFC 6121 to its own; equal priorities)."""
    carol_a = dcs.client("a", "carol", resource="ra")
    carol_b = dcs.client("b", "carol", resource="rb")
    dave = dcs.client("a", "dave")
    try:
        carol_a.presence()
        carol_b.presence()
        # each resource is available in its router once its own broadcast came back
        carol_a.wait("presence", frm=carol_a.jid)
        carol_b.wait("presence", frm=carol_b.jid)
        dave.send(chat("carol@localhost", "both1", "everywhere"))
        for c in (carol_a, carol_b):
            m = c.wait("message", id="both1")
            assert q(m, "c:body").text == "everywhere"
            assert m.get("from") == dave.jid
        assert metric(dcs.dc["a"], "gd.0", "meerkat_gd_forwards_total", result="forwarded_copy") >= 1
    finally:
        carol_a.close()
        carol_b.close()
        dave.close()


def test_gd_kill9_resync(dcs):
    """gd of DC-B killed with -9 and restarted by the supervisor: the router gives it back
    the sessions it owned (GdSync), and chat to DC-B still flows."""
    bob = dcs.client("b", "bob", resource="k")
    alice = dcs.client("a", "alice", resource="k")
    try:
        alice.send(chat(bob.jid, "k0", "before"))
        bob.wait("message", id="k0")
        b = dcs.dc["b"]
        assert wait_until(lambda: metric(b, "gd.0", "meerkat_gd_sessions") >= 1, 10)
        pid = b.child_pid("gd.0")
        os.kill(pid, signal.SIGKILL)
        assert wait_until(lambda: not pid_alive(pid), 5)
        assert wait_until(lambda: b.child_pid("gd.0") not in (None, pid) and b.healthy("gd.0"), 15)
        # the new incarnation owns bob's session again without any new login
        assert wait_until(lambda: metric(b, "gd.0", "meerkat_gd_sessions") >= 1, 10)
        alice.send(chat(bob.jid, "k1", "after"))
        m = bob.wait("message", id="k1", timeout=15)
        assert q(m, "c:body").text == "after"
        bob.send(chat(alice.jid, "k2", "reply"))
        alice.wait("message", id="k2", timeout=15)
    finally:
        alice.close()
        bob.close()


def test_message_to_unknown_resource_reaches_other_dc(dcs):
    """A chat message to a full JID no DC has (a resource gone) is, by RFC 6121 8.5.3.2.1,
    for the bare JID: gd looks the bare JID up and dave gets it live in DC-B, not from
    offline storage at his next login."""
    dave = dcs.client("b", "dave", resource="now")
    erin = dcs.client("a", "erin", resource="x")
    try:
        dave.presence()
        dave.wait("presence", frm=dave.jid)
        erin.send(chat(dave.jid, "warm", "reach you first"))
        dave.wait("message", id="warm")
        erin.send(chat("dave@localhost/gone", "fb1", "to an old resource"))
        m = dave.wait("message", id="fb1")
        assert q(m, "c:body").text == "to an old resource"
        assert q(m, "delay:delay") is None
    finally:
        dave.close()
        erin.close()


def test_router_restart_sweeps_sessions_gone_meanwhile(dcs):
    """DC-B's router is stopped, bob logs out (his close never reaches a router), the router
    is killed and restarted: the c2s re-registers carol only. gd-B drops bob's entry after
    the resync window (it owned and refreshed it until then) and keeps carol's."""
    b = dcs.dc["b"]
    prefix = f"t{os.getpid()}:"
    carol = dcs.client("b", "carol", resource="stay")
    bob = dcs.client("b", "bob", resource="gone")
    alice = dcs.client("a", "alice", resource="sw")
    rp = dcs.redis_port["primary"]
    try:
        assert wait_until(lambda: redis_cli(rp, "GET", f"{prefix}j:bob@localhost/gone").strip() != "", 10)
        assert wait_until(lambda: redis_cli(rp, "GET", f"{prefix}j:carol@localhost/stay").strip() != "", 10)
        swept_before = metric(b, "gd.0", "meerkat_gd_session_events_total", event="swept")
        pid = b.child_pid("router.0")
        os.kill(pid, signal.SIGSTOP)
        try:
            sessions_before = metric(b, "c2s.0", "meerkat_c2s_sessions")
            bob.close()
            assert wait_until(lambda: metric(b, "c2s.0", "meerkat_c2s_sessions") == sessions_before - 1, 10)
        finally:
            os.kill(pid, signal.SIGKILL)
        assert wait_until(lambda: not pid_alive(pid), 5)
        assert wait_until(lambda: b.child_pid("router.0") not in (None, pid) and b.healthy("router.0"), 15)
        assert wait_until(lambda: redis_cli(rp, "GET", f"{prefix}j:bob@localhost/gone").strip() == "", 20)
        assert metric(b, "gd.0", "meerkat_gd_session_events_total", event="swept") >= swept_before + 1
        assert redis_cli(rp, "GET", f"{prefix}j:carol@localhost/stay").strip() != ""
        alice.send(chat(carol.jid, "sw1", "still here"))
        m = carol.wait("message", id="sw1", timeout=15)
        assert q(m, "c:body").text == "still here"
    finally:
        alice.close()
        carol.close()


def test_gd_sigterm_gives_waiting_stanzas_back(dcs):
    """A message for a user online nowhere waits in gd-A (bouncing until the deadline); a
    SIGTERM of gd-A gives it back to the router, which stores it offline at once - it is
    not lost with the process."""
    import sqlite3
    a = dcs.dc["a"]
    db = os.path.join(dcs.dir, "shared.db")

    def stored():
        with sqlite3.connect(db, timeout=5) as c:
            return c.execute("SELECT count(*) FROM offline WHERE username = 'frank' AND xml LIKE '%term1%'"
                             ).fetchone()[0]
    erin = dcs.client("a", "erin", resource="t")
    try:
        erin.send(chat("frank@localhost/nowhere", "term1", "kept"))
        assert wait_until(lambda: metric(a, "gd.0", "meerkat_gd_waiting") >= 1, 5)
        pid = a.child_pid("gd.0")
        os.kill(pid, signal.SIGTERM)
        assert wait_until(lambda: stored() == 1, 10)
        assert wait_until(lambda: not pid_alive(pid), 10)
        assert wait_until(lambda: a.child_pid("gd.0") not in (None, pid) and a.healthy("gd.0"), 15)
    finally:
        erin.close()


def test_message_in_flight_follows_user_to_other_dc(dcs):
    """A message forwarded to DC-B arrives after bob has moved to DC-A (gd-B stopped while
    it travels): DC-B's router finds no session and hands it back to its gd with one hop
    less, which finds bob's newer login in DC-A - bob gets it live there, not from
    offline storage at some later login."""
    b = dcs.dc["b"]
    alice = dcs.client("a", "alice", resource="mv")
    bob = dcs.client("b", "bob", resource="mv")
    bob2 = None
    gd_pid = b.child_pid("gd.0")
    stopped = False
    try:
        alice.presence()
        bob.presence()
        bob.wait("presence", frm=bob.jid)
        alice.send(chat(bob.jid, "mv0", "warm"))
        bob.wait("message", id="mv0")
        os.kill(gd_pid, signal.SIGSTOP)
        stopped = True
        alice.send(chat("bob@localhost/mv", "mv1", "in flight"))
        sessions_before = metric(b, "c2s.0", "meerkat_c2s_sessions")
        bob.close()
        assert wait_until(lambda: metric(b, "c2s.0", "meerkat_c2s_sessions") == sessions_before - 1, 10)
        bob2 = dcs.client("a", "bob", resource="mv")
        bob2.presence()
        bob2.wait("presence", frm=bob2.jid)
        os.kill(gd_pid, signal.SIGCONT)
        stopped = False
        m = bob2.wait("message", id="mv1", timeout=20)
        assert q(m, "c:body").text == "in flight"
        assert q(m, "delay:delay") is None
        assert metric(b, "router.0", "meerkat_router_gd_sent_total", kind="miss_again") >= 1
    finally:
        if stopped:
            os.kill(gd_pid, signal.SIGCONT)
        alice.close()
        if bob2 is not None:
            bob2.close()


def test_mam_on_both_sides(dcs):
    """A conversation between DC-A and DC-B is in both users' archives, each read in its
    own data center (the sender's copy written by DC-A, the recipient's by DC-B)."""
    carol = dcs.client("a", "carol", resource="mam")
    frank = dcs.client("b", "frank", resource="mam")
    try:
        carol.send(chat(frank.jid, "mam1", "archived across"))
        frank.wait("message", id="mam1")
        frank.send(chat(carol.jid, "mam2", "and the answer"))
        carol.wait("message", id="mam2")
        want = ["archived across", "and the answer"]
        assert wait_until(lambda: mam_bodies(frank, "carol@localhost") == want, 15)
        assert wait_until(lambda: mam_bodies(carol, "frank@localhost") == want, 15)
    finally:
        carol.close()
        frank.close()


def test_component_in_other_dc(dcs):
    """A component connected to DC-A is reached from DC-B (gd claims its domain for DC-A;
    DC-B's router hands a stanza for a domain it has no connection for to gd), and its
    answer finds the user in DC-B."""
    from test_component import Component
    comp = Component(dcs.comp_port, COMP, COMP_SECRET)
    erin = dcs.client("b", "erin", resource="c")
    try:
        assert comp.started.wait(10)
        erin.send(f"<message to='{COMP}' type='chat' id='tc1'><body>to the component</body></message>")
        m = comp.wait("message", id="tc1", timeout=15)
        assert m.get("from") == erin.jid
        comp.send(f"<message from='{COMP}' to='{erin.jid}' type='chat' id='tc2'><body>from the component</body></message>")
        m = erin.wait("message", id="tc2", timeout=15)
        assert q(m, "c:body").text == "from the component"
        assert m.get("from") == COMP
    finally:
        erin.close()
        comp.close()
