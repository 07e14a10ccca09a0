"""tests/integration/test_custody.py - the router's custody table (issue 15) where a message changes hands: a
stream-management session resumed on another c2s brings its unacknowledged queue under that c2s's custody; a
detached session's queue that goes offline is let go only once the offline write is stored; a c2s that never
says anything again has its copies routed again after limits.custody_timeout. Deliveries and offline rows are
counted exactly against what was sent."""
import glob
import os
import re
import signal
import sqlite3

import pytest

from harness import Cluster, kill9_and_wait, metric, wait_until
from rawxmpp import authed_on
from xmpp import login

SM = "urn:xmpp:sm:3"
TIMEOUT = 3   # limits.custody_timeout here: every c2s says it is alive every second


@pytest.fixture(scope="module")
def cl(tmp_path_factory):
    c = Cluster(tmp_path_factory.mktemp("custody"), c2s=2, router=1, mam=1, pusher=0, gd=0,
                extra=f"limits: {{custody_timeout: {TIMEOUT}}}").start()
    for u in ("kalice", "kbob-move", "kbob-lost", "kbob-kept", "kcarol", "kbob-silent"):
        c.ctl("register", f"{u}@localhost", "pw")
    yield c
    c.stop()


def kept(cl):
    return metric(cl, "router.0", "meerkat_router_custody_kept")


def offline_rows(cl, user, prefix):
    """bob's offline rows whose message id starts with prefix."""
    path = glob.glob(os.path.join(cl.dir, "var", "*.db"))[0]
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    try:
        rows = con.execute("SELECT xml FROM offline WHERE username = ?", (user,)).fetchall()
    finally:
        con.close()
    return sorted(m.group(1) for (x,) in rows for m in [re.search(r"\bid=['\"]([^'\"]+)", x)]
                  if m and m.group(1).startswith(prefix))


def sm_session(cl, user, c2s, resource, resume=False):
    """A raw stream of user on c2s, bound, stream management on, available: (stream, full JID, previd)."""
    r = authed_on(cl, user, c2s)
    r.send(f"<iq type='set' id='b'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>{resource}</resource>"
           "</bind></iq>")
    jid = re.search(r"<jid>([^<]*)</jid>", r.recv_until(r"<iq[^>]*id=.b.*?</iq>")).group(1)
    r.send(f"<enable xmlns='{SM}'" + (" resume='true' max='1'" if resume else "") + "/>")
    out = r.recv_until(r"<enabled[^>]*/>|</failed>")
    assert "<enabled" in out, out
    m = re.search(r"id='([^']+)'", out)
    r.send("<presence/>")
    return r, jid, m.group(1) if m else None


def abort(r):
    """Drops the TCP connection without a closing stream, as a phone losing its network."""
    import socket
    import struct
    try:
        r.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    r.close()


def received(client, prefix):
    with client.cond:
        return [el.get("id") for el in client.inbox
                if el.tag == "{jabber:client}message" and (el.get("id") or "").startswith(prefix)]


def exactly_once(client, ids, marker):
    """Waits for the marker message, sent after every id: each id came exactly once before it."""
    client.wait("message", pred=lambda el: el.get("id") == marker, timeout=30)
    want = set(ids)
    got = [i for i in received(client, ids[0].rsplit("-", 1)[0] + "-") if i in want]
    assert sorted(got) == sorted(ids), (len(got), sorted(set(ids) - set(got)), len(got) - len(set(got)))


def test_queue_resumed_on_another_c2s_survives_its_kill9(cl):
    """bob (XEP-0198, c2s.0) gets N messages and acknowledges none; his connection drops; he resumes on c2s.1,
    which takes the queue over and resends it; c2s.1 is killed with -9 before bob acknowledges: the router
    routes every one of them again (the copies moved to c2s.1 with the queue), each exactly once."""
    n = 30
    bob, bjid, previd = sm_session(cl, "kbob-move", "c2s.0", "phone", resume=True)
    bob.recv_until(r"<presence[^>]*>")
    alice = login(cl, "kalice", "pw", "move", c2s="c2s.0")
    ids = [f"mv-{i}" for i in range(n)]
    try:
        for i in ids:
            alice.send(f"<message to='{bjid}' type='chat' id='{i}'><body>{i}</body></message>")
        bob.recv_until(rf"id=.{ids[-1]}.", timeout=20)
        assert wait_until(lambda: kept(cl) >= n, 10), kept(cl)
        abort(bob)
        bob2 = authed_on(cl, "kbob-move", "c2s.1")
        bob2.send(f"<resume xmlns='{SM}' previd='{previd}' h='0'/>")
        out = bob2.recv_until(rf"<resumed[^>]*/>.*id=.{ids[-1]}.", timeout=20)
        assert all(f"'{i}'" in out or f'"{i}"' in out for i in ids), out
        assert metric(cl, "c2s.0", "meerkat_c2s_sm_events_total", event="handed_over") == 1
        # Still kept: by c2s.1 now (c2s.0 handed them over without reporting them done).
        assert kept(cl) >= n
        rerouted = metric(cl, "router.0", "meerkat_router_custody_rerouted_total")
        kill9_and_wait(cl, "c2s.1")
        assert wait_until(lambda: metric(cl, "router.0", "meerkat_router_custody_rerouted_total")
                          >= rerouted + n, 15), "c2s.1's restart routed nothing again"
        again = login(cl, "kbob-move", "pw", "laptop", c2s="c2s.0")
        try:
            again.presence()
            alice.send(f"<message to='kbob-move@localhost' type='chat' id='mv-end'><body>end</body></message>")
            exactly_once(again, ids, "mv-end")
            assert wait_until(lambda: kept(cl) == 0, 10), kept(cl)
        finally:
            again.close()
        bob2.close()
    finally:
        alice.close()


@pytest.mark.parametrize("mam_fate", ["lost", "continued"])
def test_detached_queue_to_offline_is_let_go_only_once_stored(cl, mam_fate):
    """bob (XEP-0198, resumable for 1 s, c2s.1) gets N messages, acknowledges none and drops; the mam is frozen
    (SIGSTOP) when his session times out, so the offline writes of his queue wait; c2s.1 is killed with -9 inside
    that window. lost: the mam is killed too (what c2s.1 wrote is gone) - the router's copies are stored instead.
    continued: the mam goes on and gets both c2s.1's writes and the router's - each stored once (same row id).
    Either way bob has exactly N offline rows, and gets each message exactly once."""
    n = 20
    user = "kbob-lost" if mam_fate == "lost" else "kbob-kept"
    prefix = f"ow{mam_fate[0]}-"
    ids = [f"{prefix}{i}" for i in range(n)]
    bob, bjid, _ = sm_session(cl, user, "c2s.1", "phone", resume=True)
    bob.recv_until(r"<presence[^>]*>")
    carol = login(cl, "kcarol", "pw", f"w{mam_fate}", c2s="c2s.1")
    alice = login(cl, "kalice", "pw", f"w{mam_fate}", c2s="c2s.0")
    mam = cl.child_pid("mam.0")
    try:
        for i in ids:
            alice.send(f"<message to='{bjid}' type='chat' id='{i}'><body>{i}</body></message>")
        bob.recv_until(rf"id=.{ids[-1]}.", timeout=20)
        offline0 = metric(cl, "c2s.1", "meerkat_c2s_sm_unacked_total", result="offline")
        stored0 = metric(cl, "mam.0", "meerkat_mam_offline_total", result="stored")
        os.kill(mam, signal.SIGSTOP)
        abort(bob)
        # The session timed out: its queue went to the (frozen) mam.
        assert wait_until(lambda: metric(cl, "c2s.1", "meerkat_c2s_sm_unacked_total", result="offline")
                          >= offline0 + n, 15)
        # A message c2s.1 reports done after those: once its copy is gone, c2s.1 has reported whatever it
        # was going to report about bob's queue. The router still holds bob's N: not stored yet.
        alice.send(f"<message to='kcarol@localhost/w{mam_fate}' type='chat' id='c-{mam_fate}'><body>c</body>"
                   "</message>")
        carol.wait("message", pred=lambda el: el.get("id") == f"c-{mam_fate}", timeout=15)
        assert wait_until(lambda: kept(cl) <= n, 10)
        assert kept(cl) == n, "c2s.1 let the router's copies go before the offline writes were stored"
        kill9_and_wait(cl, "c2s.1")
        if mam_fate == "lost":
            os.kill(mam, signal.SIGKILL)
            assert wait_until(lambda: (cl.child_pid("mam.0") or mam) != mam and cl.healthy("mam.0"), 30)
            # The new mam stores the router's N (c2s.1's writes died with both).
            assert wait_until(lambda: metric(cl, "mam.0", "meerkat_mam_offline_total", result="stored") >= n, 20)
        else:
            os.kill(mam, signal.SIGCONT)
            # c2s.1's N writes and the router's N: 2N stored, N rows (same ids).
            assert wait_until(lambda: metric(cl, "mam.0", "meerkat_mam_offline_total", result="stored")
                              >= stored0 + 2 * n, 20), \
                metric(cl, "mam.0", "meerkat_mam_offline_total", result="stored") - stored0
        assert wait_until(lambda: kept(cl) == 0, 15), kept(cl)
        alice.send(f"<message to='{user}@localhost' type='chat' id='{prefix}end'><body>end</body></message>")
        assert wait_until(lambda: f"{prefix}end" in offline_rows(cl, user, prefix), 15)
        rows = [i for i in offline_rows(cl, user, prefix) if i != f"{prefix}end"]
        assert sorted(rows) == sorted(ids), (len(rows), sorted(set(ids) - set(rows)))
        again = login(cl, user, "pw", "laptop", c2s="c2s.0")
        try:
            again.presence()
            exactly_once(again, ids, f"{prefix}end")
        finally:
            again.close()
    finally:
        try:
            os.kill(mam, signal.SIGCONT)
        except ProcessLookupError:
            pass
        alice.close()
        carol.close(wait=False)


def test_c2s_that_never_returns_is_given_up(cl):
    """bob (XEP-0198, c2s.1) gets N messages and acknowledges none; c2s.1 freezes (SIGSTOP: no hello, no word)
    for good. After limits.custody_timeout the router gives it up: bob's session there is dropped and the N
    copies go to offline storage, exactly once. When c2s.1 speaks again it is told to register its sessions."""
    n = 25
    ids = [f"sl-{i}" for i in range(n)]
    bob, bjid, _ = sm_session(cl, "kbob-silent", "c2s.1", "phone")
    bob.recv_until(r"<presence[^>]*>")
    alice = login(cl, "kalice", "pw", "silent", c2s="c2s.0")
    pid = cl.child_pid("c2s.1")
    try:
        for i in ids:
            alice.send(f"<message to='{bjid}' type='chat' id='{i}'><body>{i}</body></message>")
        bob.recv_until(rf"id=.{ids[-1]}.", timeout=20)
        assert wait_until(lambda: kept(cl) >= n, 10)
        rerouted = metric(cl, "router.0", "meerkat_router_custody_rerouted_total")
        os.kill(pid, signal.SIGSTOP)
        assert wait_until(lambda: metric(cl, "router.0", "meerkat_router_custody_rerouted_total")
                          >= rerouted + n, 5 * TIMEOUT), "the silent c2s's copies stayed"
        assert re.search(r"event=c2s_given_up peer=c2s\.1 sessions_dropped=\d+ custody_rerouted=%d" % n,
                         cl.read_log())
        alice.send("<message to='kbob-silent@localhost' type='chat' id='sl-end'><body>end</body></message>")
        assert wait_until(lambda: "sl-end" in offline_rows(cl, "kbob-silent", "sl-"), 15)
        rows = [i for i in offline_rows(cl, "kbob-silent", "sl-") if i != "sl-end"]
        assert sorted(rows) == sorted(ids), (len(rows), sorted(set(ids) - set(rows)))
        assert kept(cl) == 0
        # c2s.1 wakes up: its first keep-alive brings the router's hello, and it registers bob's session
        # again (a message to his full JID reaches the stream that was frozen with it).
        os.kill(pid, signal.SIGCONT)
        assert wait_until(lambda: "event=c2s_back peer=c2s.1" in cl.read_log(), 10)
        assert wait_until(lambda: bjid in cl.ctl("sessions").stdout, 10)
        alice.send(f"<message to='{bjid}' type='chat' id='sl-back'><body>back</body></message>")
        assert "sl-back" in bob.recv_until(r"id=.sl-back.", timeout=15)
        again = login(cl, "kbob-silent", "pw", "laptop", c2s="c2s.0")
        try:
            again.presence()
            alice.send("<message to='kbob-silent@localhost/laptop' type='chat' id='sl-fin'><body>f</body></message>")
            exactly_once(again, ids, "sl-fin")
        finally:
            again.close()
        bob.close()
    finally:
        try:
            os.kill(pid, signal.SIGCONT)
        except ProcessLookupError:
            pass
        alice.close()
