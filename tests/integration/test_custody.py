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

from harness import Cluster, kill9_and_wait, metric, resume, wait_until
from rawxmpp import abort, authed_on
from xmpp import login

SM = "urn:xmpp:sm:3"
TIMEOUT = 3   # limits.custody_timeout here: every c2s says it is alive every second


@pytest.fixture(scope="module")
def cl(tmp_path_factory):
    c = Cluster(tmp_path_factory.mktemp("custody"), c2s=2, router=1, mam=1, pusher=0, gd=0,
                extra=f"limits: {{custody_timeout: {TIMEOUT}}}").start()
    for u in ("kalice", "kbob-move2", "kbob-move3", "kbob-lost", "kbob-kept", "kcarol", "kbob-silent"):
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


def received(client, prefix):
    with client.cond:
        return [el.get("id") for el in client.inbox
                if el.tag == "{jabber:client}message" and (el.get("id") or "").startswith(prefix)]


def exactly_once(client, ids, send_marker, marker):
    """Waits until every id came to client, then sends the marker message (send_marker()) and waits for it:
    each id came exactly once before it."""
    want = set(ids)

    def got():
        return [i for i in received(client, ids[0].rsplit("-", 1)[0] + "-") if i in want]
    wait_until(lambda: set(got()) == want, 30)
    send_marker()
    client.wait("message", pred=lambda el: el.get("id") == marker, timeout=30)
    g = got()
    assert sorted(g) == sorted(ids), (len(g), sorted(want - set(g)), len(g) - len(set(g)))


@pytest.mark.parametrize("path", [("c2s.0", "c2s.1"), ("c2s.1", "c2s.0", "c2s.1")], ids=["once", "twice"])
def test_queue_resumed_on_another_c2s_survives_its_kill9(cl, path):
    """bob (XEP-0198, on path[0]) gets N messages and acknowledges none; his connection drops; he resumes on
    path[1] (and again on path[2]), which takes the queue over and resends it; that last c2s is killed with -9
    before bob acknowledges: the router routes every one of them again (the copies moved with the queue), each
    exactly once."""
    n = 30
    user = f"kbob-move{len(path)}"
    last, other = path[-1], ("c2s.0" if path[-1] == "c2s.1" else "c2s.1")
    bob, bjid, previd = sm_session(cl, user, path[0], "phone", resume=True)
    bob.recv_until(r"<presence[^>]*>")
    alice = login(cl, "kalice", "pw", f"move{len(path)}", c2s=other)
    carol = login(cl, "kcarol", "pw", f"m{len(path)}", c2s=path[0])
    ids = [f"mv{len(path)}-{i}" for i in range(n)]
    kept0 = kept(cl)
    try:
        for i in ids:
            alice.send(f"<message to='{bjid}' type='chat' id='{i}'><body>{i}</body></message>")
        bob.recv_until(rf"id=.{ids[-1]}.", timeout=20)
        assert wait_until(lambda: kept(cl) >= kept0 + n, 10), kept(cl)
        handed = {p: metric(cl, p, "meerkat_c2s_sm_events_total", event="handed_over") for p in ("c2s.0", "c2s.1")}
        for hop in path[1:]:
            abort(bob)
            bob = authed_on(cl, user, hop)
            bob.send(f"<resume xmlns='{SM}' previd='{previd}' h='0'/>")
            out = bob.recv_until(rf"<resumed[^>]*/>.*id=.{ids[-1]}.", timeout=20)
            assert all(f"'{i}'" in out or f'"{i}"' in out for i in ids), out
        for prev in path[:-1]:
            assert metric(cl, prev, "meerkat_c2s_sm_events_total", event="handed_over") >= handed[prev] + 1
        # A message the first holder reports done after the handover: once its copy is gone, that c2s has
        # reported whatever it was going to report about bob's queue. Still kept: by the last c2s now.
        alice.send(f"<message to='kcarol@localhost/m{len(path)}' type='chat' id='cm-{len(path)}'><body>c</body>"
                   "</message>")
        carol.wait("message", pred=lambda el: el.get("id") == f"cm-{len(path)}", timeout=15)
        assert wait_until(lambda: kept(cl) <= kept0 + n, 10)
        assert kept(cl) == kept0 + n, "the holders let the router's copies go when they handed the queue over"
        rerouted = metric(cl, "router.0", "meerkat_router_custody_rerouted_total")
        kill9_and_wait(cl, last)
        assert wait_until(lambda: metric(cl, "router.0", "meerkat_router_custody_rerouted_total")
                          >= rerouted + n, 15), f"{last}'s restart routed nothing again"
        again = login(cl, user, "pw", "laptop", c2s=other)
        try:
            again.presence()
            exactly_once(again, ids, lambda: alice.send(f"<message to='{user}@localhost/laptop' type='chat' "
                                                        f"id='mv{len(path)}-end'><body>end</body></message>"),
                         f"mv{len(path)}-end")
            assert wait_until(lambda: kept(cl) == kept0, 10), kept(cl)
        finally:
            again.close()
        bob.close()
    finally:
        alice.close()
        carol.close(wait=False)


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
    kept0 = kept(cl)
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
        assert wait_until(lambda: kept(cl) <= kept0 + n, 10)
        assert kept(cl) == kept0 + n, "c2s.1 let the router's copies go before the offline writes were stored"
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
        assert wait_until(lambda: kept(cl) == kept0, 15), kept(cl)
        alice.send(f"<message to='{user}@localhost' type='chat' id='{prefix}end'><body>end</body></message>")
        assert wait_until(lambda: f"{prefix}end" in offline_rows(cl, user, prefix), 15)
        rows = [i for i in offline_rows(cl, user, prefix) if i != f"{prefix}end"]
        assert sorted(rows) == sorted(ids), (len(rows), sorted(set(ids) - set(rows)))
        again = login(cl, user, "pw", "laptop", c2s="c2s.0")
        try:
            again.presence()
            exactly_once(again, ids, lambda: None, f"{prefix}end")   # the marker is the last offline row
        finally:
            again.close()
    finally:
        resume(mam)
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
    # bob's laptop, connected (not yet available) before c2s.1 freezes: a frozen c2s still takes connections
    # from the shared port (and never answers them).
    again = login(cl, "kbob-silent", "pw", "laptop", c2s="c2s.0")
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
        # bob's laptop becomes available while c2s.1 is still frozen: each message once, from offline storage.
        again.presence()
        exactly_once(again, ids, lambda: alice.send("<message to='kbob-silent@localhost/laptop' type='chat' "
                                                    "id='sl-fin'><body>f</body></message>"), "sl-fin")
        # c2s.1 wakes up: its first keep-alive brings the router's hello, and it registers bob's session
        # again (a message to his full JID reaches the stream that was frozen with it).
        os.kill(pid, signal.SIGCONT)
        assert wait_until(lambda: "event=c2s_back peer=c2s.1" in cl.read_log(), 10)
        assert wait_until(lambda: bjid in cl.ctl("sessions").stdout, 10)
        alice.send(f"<message to='{bjid}' type='chat' id='sl-back'><body>back</body></message>")
        assert "sl-back" in bob.recv_until(r"id=.sl-back.", timeout=15)
        bob.close()
    finally:
        resume(pid)
        alice.close()
        again.close()
