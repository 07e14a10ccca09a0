"""tests/integration/test_scale.py - scaling a tier of a running cluster (issue 14): the configuration file
read again on SIGHUP to `meerkat start` adds processes (the supervisor starts them, every running process
connects to them); anything else changed in the file is refused with a logged reason and changes nothing."""
import os
import re
import signal
import subprocess
import time

import pytest

from harness import BUILD, Cluster, free_port, metric, shard_of, wait_until
from rawxmpp import authed_on


@pytest.fixture(scope="module")
def cl(tmp_path_factory):
    c = Cluster(tmp_path_factory.mktemp("scale"), c2s=1, router=1, mam=1, pusher=0, gd=0).start()
    for u in ("salice", "sbob"):
        c.ctl("register", f"{u}@localhost", "pw")
    yield c
    c.stop()


def proc_line(p):
    return f"  - {{id: {p['id']}, bus: \"tcp://127.0.0.1:{p['bus']}\", metrics: \"127.0.0.1:{p['metrics']}\"}}\n"


def read_config(cl):
    with open(cl.config) as f:
        return f.read()


def write_config(cl, text):
    with open(cl.config, "w") as f:
        f.write(text)


def log_count(cl, pattern):
    return len(re.findall(pattern, cl.read_log()))


def reload(cl):
    """SIGHUP to `meerkat start`; returns once the supervisor has logged its answer (reloaded or
    reload_refused): it answers before it forwards the signal, so its decision is taken by then."""
    before = log_count(cl, r"id=meerkat event=(reloaded|reload_refused)")
    cl.proc.send_signal(signal.SIGHUP)
    assert wait_until(lambda: log_count(cl, r"id=meerkat event=(reloaded|reload_refused)") > before, 30), \
        cl.read_log()[-3000:]


def ctl_reload(cl):
    """meerkat ctl reload, allowed longer than its own 30 s wait (the harness's ctl allows 30 s in all)."""
    return subprocess.run([os.path.join(BUILD, "meerkat"), "ctl", "-c", cl.config, "reload"], capture_output=True,
                          text=True, cwd=cl.cwd, timeout=90)


def test_reload_refuses_other_changes_and_changes_nothing(cl):
    original = read_config(cl)
    p = {"id": "c2s.7", "bus": free_port(), "metrics": free_port()}
    try:
        # A new process plus a changed grace_sec: refused as a whole, by the supervisor and by each process.
        write_config(cl, original.replace("grace_sec: 3", "grace_sec: 4") + proc_line(p))
        before = log_count(cl, r"event=reload_refused reason=\"changed: grace_sec;")
        reload(cl)
        # One refusal from the supervisor and one from each of the 3 running processes.
        assert wait_until(lambda: log_count(cl, r"event=reload_refused reason=\"changed: grace_sec;") >= before + 4,
                          30), cl.read_log()[-3000:]
        assert cl.child_pid("c2s.7") is None
        # meerkat ctl reload says so (and fails) once a process counts the refusal.
        r = ctl_reload(cl)
        assert r.returncode == 1 and r.stdout.startswith("reload refused by "), r.stdout + r.stderr
        # A process removed from the file: refused too, naming it.
        write_config(cl, original.replace(proc_line(next(q for q in cl.procs if q["id"] == "mam.0")), ""))
        reload(cl)
        assert re.search(r"id=meerkat event=reload_refused reason=\"process mam.0 is no longer in the file",
                         cl.read_log())
        # A new mam shard: not taken at a reload (its share of the archive owners would not be handed over).
        write_config(cl, original + proc_line({"id": "mam.1", "bus": free_port(), "metrics": free_port()}))
        reload(cl)
        assert re.search(r"id=meerkat event=reload_refused reason=\"process mam.1 is new: a reload adds c2s "
                         r"and router processes only; a new mam needs a restart", cl.read_log())
        assert cl.child_pid("mam.1") is None
        # A syntax error: refused with the file's line.
        write_config(cl, original + "  - {id: c2s.8, bus: [\n")
        reload(cl)
        assert re.search(r"id=meerkat event=reload_refused reason=\".*meerkat.yaml:\d+: YAML syntax error",
                         cl.read_log())
    finally:
        write_config(cl, original)
    # Still the same cluster: the unchanged file reloads with nothing added.
    reload(cl)
    assert re.findall(r"id=meerkat event=(reloaded|reload_refused)[^\n]*", cl.read_log())[-1] == "reloaded"
    assert cl.child_pid("c2s.7") is None and all(cl.healthy(q["id"]) for q in cl.procs)


def bind(r, resource):
    """Binds resource on r (a stream authed_on gave: authenticated and restarted); returns the full JID."""
    r.send(f"<iq type='set' id='bind1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>{resource}</resource>"
           "</bind></iq>")
    return re.search(r"<jid>([^<]*)</jid>", r.recv_until(r"<iq[^>]*id=.bind1.*?</iq>")).group(1)


def chat(a, a_jid, b, b_jid, n, tag):
    """n messages a -> b and n b -> a, interleaved; each side must get the other's bodies exactly, in order."""
    for i in range(n):
        a.send(f"<message to='{b_jid}' type='chat'><body>{tag}-ab-{i}</body></message>")
        b.send(f"<message to='{a_jid}' type='chat'><body>{tag}-ba-{i}</body></message>")

    def bodies(r, d):
        return re.findall(rf"<body>({tag}-{d}-\d+)</body>", r.poll())

    assert wait_until(lambda: len(bodies(b, "ab")) >= n and len(bodies(a, "ba")) >= n, 60), \
        (sorted(set(f"{tag}-ab-{i}" for i in range(n)) - set(bodies(b, "ab"))),
         sorted(set(f"{tag}-ba-{i}" for i in range(n)) - set(bodies(a, "ba"))))
    assert bodies(b, "ab") == [f"{tag}-ab-{i}" for i in range(n)]
    assert bodies(a, "ba") == [f"{tag}-ba-{i}" for i in range(n)]


def test_reload_adds_a_c2s_that_serves_clients(cl):
    before_pids = {q["id"]: cl.child_pid(q["id"]) for q in cl.procs}
    p = {"id": "c2s.1", "bus": free_port(), "metrics": free_port()}
    write_config(cl, read_config(cl) + proc_line(p))
    cl.procs.append(p)
    # meerkat ctl reload: SIGHUP to meerkat start, then waits for every process to run with the 4.
    r = ctl_reload(cl)
    assert r.returncode == 0 and r.stdout == "reloaded: all 4 processes run with the file's process list\n", r.stdout
    assert cl.healthy("c2s.1")
    # Every process that was running took the new list: router.0 and mam.0 talk to c2s.1.
    for q in ("c2s.0", "router.0", "mam.0"):
        assert wait_until(lambda: re.search(rf"id={re.escape(q)} event=reloaded added=1 processes=4", cl.read_log()),
                          20), q
    # None of them was restarted for it.
    assert {q: cl.child_pid(q) for q in before_pids} == before_pids
    alice = authed_on(cl, "salice", "c2s.0")
    bob = authed_on(cl, "sbob", "c2s.1")
    try:
        a_jid = bind(alice, "a")
        b_jid = bind(bob, "b")
        chat(alice, a_jid, bob, b_jid, 30, "full")
        # To bare JIDs too (the router's shard of the bare JID holds both sessions).
        alice.send("<presence/>")
        bob.send("<presence/>")
        # Each stream gets its own initial presence back once the session is available.
        alice.recv_until(r"<presence[^>]*from=.salice@localhost/a")
        bob.recv_until(r"<presence[^>]*from=.sbob@localhost/b")
        chat(alice, "salice@localhost", bob, "sbob@localhost", 30, "bare")
    finally:
        alice.close()
        bob.close()


class SteadyChat:
    """Pairs of raw clients (streams: user -> (Raw, full JID)) chatting both ways at a steady
    pace: round k sends one message each way per pair. It remembers what each sender sent to
    each recipient, in order, and check() waits until every message has arrived, then asserts
    each arrived exactly once and in order per (sender, recipient)."""

    def __init__(self, streams, pairs):
        self.streams, self.pairs = streams, pairs
        self.expected = {}      # (sender, recipient) -> bodies, in order

    def one_round(self, k):
        for a, b in self.pairs:
            for s, d in ((a, b), (b, a)):
                body = f"{s}-to-{d}-{k}"
                self.streams[s][0].send(f"<message to='{self.streams[d][1]}' type='chat'><body>{body}</body></message>")
                self.expected.setdefault((s, d), []).append(body)
        for r, _ in self.streams.values():
            r.poll(0.001)

    def paced(self, ks):
        """Rounds ks, one every 50 ms."""
        for k in ks:
            t = time.monotonic()
            self.one_round(k)
            time.sleep(max(0.0, 0.05 - (time.monotonic() - t)))

    def got(self, u):
        return re.findall(r"<body>([^<]*)</body>", self.streams[u][0].poll(0.001))

    def missing(self):
        out = []
        for (s, d), bodies in self.expected.items():
            g = set(b for b in self.got(d) if b.startswith(f"{s}-to-"))
            out += [b for b in bodies if b not in g]
        return out

    def check(self, why=lambda: (), pair_why=lambda s, d: ()):
        """why() and pair_why(s, d): more to show when it fails."""
        total = sum(len(v) for v in self.expected.values())
        received = lambda: sum(len(self.got(u)) for u in self.streams)   # noqa: E731
        assert wait_until(lambda: received() >= total, 60), (received(), total, self.missing()[:20], *why())
        for (s, d), bodies in self.expected.items():
            assert [b for b in self.got(d) if b.startswith(f"{s}-to-")] == bodies, (s, d, *pair_why(s, d))
        assert received() == total


def test_reload_under_steady_chat_load_loses_nothing(cl):
    """20 pairs chat (full JIDs, a message each way every 50 ms per pair) while c2s.2 is added; then 5 more
    pairs, one side of each on c2s.2, join in. Every message arrives exactly once, in order per pair."""
    from rawxmpp import Raw
    users = [f"load{i}" for i in range(40)] + [f"late{i}" for i in range(10)]
    for u in users:
        cl.ctl("register", f"{u}@localhost", "pw")
    streams = {}
    for u in users[:40]:
        r = Raw(cl.c2s_port, timeout=15)
        streams[u] = (r, r.login(u, "pw", "l"))
    pairs = [(users[2 * i], users[2 * i + 1]) for i in range(20)]
    chat = SteadyChat(streams, pairs)
    paced = chat.paced
    paced(range(0, 10))
    p = {"id": "c2s.2", "bus": free_port(), "metrics": free_port()}
    write_config(cl, read_config(cl) + proc_line(p))
    cl.procs.append(p)
    cl.proc.send_signal(signal.SIGHUP)          # no waiting: the chat goes on through the reload
    paced(range(10, 20))
    assert wait_until(lambda: cl.healthy("c2s.2"), 30), cl.read_log()[-3000:]
    for q in ("c2s.0", "c2s.1", "router.0", "mam.0"):
        assert wait_until(lambda: re.search(rf"id={re.escape(q)} event=reloaded added=1 processes=5",
                                            cl.read_log()), 20), q
    late = users[40:]
    for i in range(0, 10, 2):
        r = authed_on(cl, late[i], "c2s.2")
        streams[late[i]] = (r, bind(r, "l"))
        r = Raw(cl.c2s_port, timeout=15)
        streams[late[i + 1]] = (r, r.login(late[i + 1], "pw", "l"))
        pairs.append((late[i], late[i + 1]))
    paced(range(20, 30))
    chat.check()
    for r, _ in streams.values():
        r.close()


def test_bind_result_waits_for_the_router(cl):
    """The bind result is sent once the router of the JID has the session: a client told it is bound
    can be sent stanzas from any c2s at once (a Route on another c2s's connection to the router could
    otherwise overtake the SessionOpen and find no session: offline storage, not this client). With the
    router stopped the result waits, a ping sent behind the bind waits with it, and after
    C2S_BIND_CONFIRM_S the result goes out anyway, logged."""
    from rawxmpp import Raw
    r = Raw(cl.c2s_port, timeout=20)
    r.open_stream()
    r.starttls()
    r.open_stream()
    assert "<success" in r.auth_scram("salice", "pw")
    r.open_stream()
    router = cl.child_pid("router.0")
    os.kill(router, signal.SIGSTOP)
    try:
        r.send("<iq type='set' id='bw1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>w</resource>"
               "</bind></iq><iq type='get' id='bw2'><ping xmlns='urn:xmpp:ping'/></iq>")
        out = r.recv_until(r"<iq[^>]*id=.bw2", timeout=20)
        log = cl.read_log()
    finally:
        os.kill(router, signal.SIGCONT)
    assert re.search(r"event=bind_unconfirmed conn=\d+ jid=salice@localhost/w wait_s=5", log), log[-2000:]
    assert out.index("bw1") < out.index("bw2") and "<jid>salice@localhost/w</jid>" in out, out
    r.close()


def test_ctl_reload_finds_meerkat_start_by_its_pid_file(cl, tmp_path):
    with open(os.path.join(cl.dir, "var", "meerkat.pid")) as f:
        assert int(f.read()) == cl.proc.pid
    # A cluster not running: nothing to signal, said so.
    idle = Cluster(tmp_path, c2s=1, router=1, mam=0, pusher=0, gd=0)
    r = idle.ctl("reload", check=False)
    assert r.returncode == 1
    assert r.stderr.startswith(f"meerkat ctl reload: no meerkat start runs for data_dir {tmp_path}/var ("), r.stderr


def test_login_on_the_added_c2s_before_the_router_reloads(cl):
    """A client binds on an added c2s before router.0 has taken the reload (stopped meanwhile): its
    SessionOpen reaches a router that does not know that c2s yet and is ignored. The bind result waits
    until router.0 has reloaded, said hello to the new c2s and been sent the session again, which the
    router confirms (no bind_unconfirmed: the result did not go out on the timeout); then a chat begun at
    once from c2s.0 loses nothing. (The scenario passes without the confirmation too when the router's
    reload and the c2s's re-registration beat the first chat message, as here they usually do.)"""
    for u in ("serin", "sfrank"):
        cl.ctl("register", f"{u}@localhost", "pw")
    p = {"id": "c2s.3", "bus": free_port(), "metrics": free_port()}
    router = cl.child_pid("router.0")
    os.kill(router, signal.SIGSTOP)
    try:
        write_config(cl, read_config(cl) + proc_line(p))
        cl.procs.append(p)
        reload(cl)
        assert wait_until(lambda: cl.healthy("c2s.3"), 30), cl.read_log()[-3000:]
        erin = authed_on(cl, "serin", "c2s.3")
        erin.send("<iq type='set' id='eb1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>e</resource>"
                  "</bind></iq>")
    finally:
        os.kill(router, signal.SIGCONT)
    e_jid = re.search(r"<jid>([^<]*)</jid>", erin.recv_until(r"<iq[^>]*id=.eb1.*?</iq>", timeout=30)).group(1)
    assert not re.search(r"event=bind_unconfirmed conn=\d+ jid=serin@", cl.read_log())
    assert wait_until(lambda: re.search(r"id=router\.0 event=reloaded added=1 processes=6", cl.read_log()), 20)
    frank = authed_on(cl, "sfrank", "c2s.0")
    try:
        f_jid = bind(frank, "f")
        chat(frank, f_jid, erin, e_jid, 30, "early")
    finally:
        frank.close()
        erin.close()


def befriend_raw(x, x_jid, y, y_jid):
    """Presence subscriptions both ways between two raw streams that sent their initial presence."""
    xb, yb = x_jid.split("/")[0], y_jid.split("/")[0]
    for s, sb, t, tb in ((x, xb, y, yb), (y, yb, x, xb)):
        s.send(f"<presence to='{tb}' type='subscribe'/>")
        t.recv_until(rf"<presence[^>]*from=.{re.escape(sb)}[^>]*type=.subscribe.|<presence[^>]*type=.subscribe.[^>]*"
                     rf"from=.{re.escape(sb)}")
        t.send(f"<presence to='{sb}' type='subscribed'/>")
        s.recv_until(rf"<presence[^>]*from=.{re.escape(tb)}[^>]*type=.subscribed.|<presence[^>]*type=.subscribed."
                     rf"[^>]*from=.{re.escape(tb)}")


def available(r, jid):
    """Roster, initial presence, and its own presence back (the router has the session as available)."""
    r.send("<iq type='get' id='ros1'><query xmlns='jabber:iq:roster'/></iq>")
    r.recv_until(r"<iq[^>]*id=.ros1")
    r.send("<presence/>")
    r.recv_until(rf"<presence[^>]*from=.{re.escape(jid)}")


@pytest.fixture
def rcl(tmp_path):
    c = Cluster(tmp_path, c2s=2, router=1, mam=1, pusher=0, gd=0).start()
    yield c
    c.stop()


@pytest.mark.parametrize("stall", [False, True], ids=["plain", "old_shard_stalled"])
def test_reload_adds_a_router_shard_under_steady_chat_load(rcl, stall):
    """router.1 is added to a running cluster (1 router -> 2) while 20 pairs chat (full JIDs, a message each
    way every 50 ms per pair), some of whose users rendezvous hashing moves to router.1 and some not. Every
    message arrives exactly once, in order per pair; the moved users' sessions are on router.1 and no longer
    on router.0; a moved user's contacts still see it available, and a message to its bare JID reaches it.
    old_shard_stalled: router.0 is stopped (SIGSTOP) for a second across the reload, with the Routes sent to it
    in the quarter second before the reload still in its queue: each c2s holds its Routes to router.1 until router.0 has applied
    those (delivered them, or forwarded them to router.1 ahead: its fence comes back from router.1), or the
    moved users' messages sent after the reload would overtake them."""
    from rawxmpp import Raw
    cl = rcl
    routers = ["router.0", "router.1"]
    users = [f"rs{i}" for i in range(40)]
    moved = {u for u in users if shard_of(f"{u}@localhost", routers) == "router.1"}
    # Pairs of each kind: both moved, one moved, none moved.
    assert 8 <= len(moved) <= 32, len(moved)
    extra = ["pm", "pc"]
    while shard_of(f"{extra[0]}@localhost", routers) != "router.1":
        extra[0] += "x"
    while shard_of(f"{extra[1]}@localhost", routers) != "router.0":
        extra[1] += "x"
    pm, pc = extra
    for u in users + extra:
        cl.ctl("register", f"{u}@localhost", "pw")
    streams = {}
    for u in users + extra:
        r = Raw(cl.c2s_port, timeout=15)
        streams[u] = (r, r.login(u, "pw", "l"))
    available(streams[pm][0], streams[pm][1])
    available(streams[pc][0], streams[pc][1])
    befriend_raw(streams[pm][0], streams[pm][1], streams[pc][0], streams[pc][1])
    pairs = [(users[2 * i], users[2 * i + 1]) for i in range(20)]
    kinds = {sum(u in moved for u in p) for p in pairs}
    assert kinds == {0, 1, 2}, (kinds, pairs, moved)
    chat = SteadyChat(streams, pairs)
    paced = chat.paced
    paced(range(0, 10))
    assert metric(cl, "router.0", "meerkat_router_sessions") == len(users) + len(extra)
    p = {"id": "router.1", "bus": free_port(), "metrics": free_port()}
    write_config(cl, read_config(cl) + proc_line(p))
    cl.procs.append(p)
    old = cl.child_pid("router.0")
    if stall:
        os.kill(old, signal.SIGSTOP)
    try:
        if stall:
            paced(range(10, 15))                    # in router.0's queue when the c2s read the file
        cl.proc.send_signal(signal.SIGHUP)          # no waiting: the chat goes on through the reload
        paced(range(15 if stall else 10, 30))
    finally:
        if stall:
            os.kill(old, signal.SIGCONT)
    assert wait_until(lambda: cl.healthy("router.1"), 30), cl.read_log()[-3000:]
    for q in ("c2s.0", "c2s.1", "router.0", "mam.0"):
        assert wait_until(lambda: re.search(rf"id={re.escape(q)} event=reloaded added=1 processes=5",
                                            cl.read_log()), 20), q
    # Each c2s re-registered its moved sessions and let router.1's Routes go once its fence, sent to
    # router.0 behind its Routes, came back from router.1 behind what router.0 forwarded there.
    for q in ("c2s.0", "c2s.1"):
        assert wait_until(lambda: re.search(rf"id={re.escape(q)} event=router_handover_done why=fenced",
                                            cl.read_log()), 20), cl.read_log()[-3000:]
    paced(range(30, 40))
    chat.check(why=lambda: (cl.read_log()[-3000:],), pair_why=lambda s, d: (s in moved, d in moved))
    # The moved sessions are router.1's, and router.0 has none of them.
    n_moved = len(moved) + 1
    assert wait_until(lambda: metric(cl, "router.1", "meerkat_router_sessions") == n_moved, 10), \
        (metric(cl, "router.1", "meerkat_router_sessions"), n_moved)
    assert metric(cl, "router.0", "meerkat_router_sessions") == len(users) + len(extra) - n_moved
    assert metric(cl, "router.0", "meerkat_router_handover_total", what="sessions_dropped") == n_moved
    # pm (moved) is still available to its contact: pc's new session probes it (router.1 has pm available
    # and sends the probe on), and gets its presence.
    pmr, pm_jid = streams[pm]
    pcr, pc_jid = streams[pc]
    pc2 = Raw(cl.c2s_port, timeout=15)
    pc2.login(pc, "pw", "second")
    try:
        pc2.send("<presence/>")
        pc2.recv_until(rf"<presence[^>]*from=.{re.escape(pm_jid)}")
        # A message to pm's bare JID reaches it (router.1 has its session available, priority 0).
        pc2.send(f"<message to='{pm}@localhost' type='chat'><body>to-bare-after</body></message>")
        pmr.recv_until(r"<body>to-bare-after</body>")
        # pm's new presence reaches both of pc's sessions; pc's reaches pm (through router.1).
        pmr.send("<presence><status>moved-on</status></presence>")
        pcr.recv_until(r"<status>moved-on</status>")
        pc2.recv_until(r"<status>moved-on</status>")
        pcr.send("<presence><status>still-here</status></presence>")
        pmr.recv_until(r"<status>still-here</status>")
    finally:
        pc2.close()
    for r, _ in streams.values():
        r.close()
