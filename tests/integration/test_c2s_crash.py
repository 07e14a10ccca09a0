"""tests/integration/test_c2s_crash.py - a c2s killed (kill -9) or stopped (SIGTERM) with sessions on it: its
clients are disconnected, the supervisor starts it again, the router forgets every session it held, and a
message to such a user is stored offline and delivered at the next login (issue 11 item 10); and nothing the
server had acknowledged to a sender is lost with it: what the killed c2s held unacknowledged by a stream-management
client, or had not yet read off the bus, is routed again by the router's custody table (issue 15)."""
import os
import re
import signal

import pytest

from harness import Cluster, kill9_and_wait, metric, resume, wait_until
from rawxmpp import authed_on
from xmpp import error_condition, login, mam_bodies

SM = "urn:xmpp:sm:3"


@pytest.fixture(scope="module")
def cl(tmp_path_factory):
    c = Cluster(tmp_path_factory.mktemp("c2scrash"), c2s=2, router=1, mam=1, pusher=0, gd=0).start()
    for u in ("calice", "cbob-kill9", "cbob-sigterm", "cbob-smq", "cbob-inflight"):
        c.ctl("register", f"{u}@localhost", "pw")
    yield c
    c.stop()


def sessions(cl):
    return cl.ctl("sessions").stdout


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["kill9", "sigterm"])
def test_c2s_death_forgets_its_sessions(cl, sig):
    name = "kill9" if sig == signal.SIGKILL else "sigterm"
    bob_user = f"cbob-{name}"
    bob = login(cl, bob_user, "pw", "phone", c2s="c2s.1")
    alice = login(cl, "calice", "pw", name, c2s="c2s.0")
    try:
        assert wait_until(lambda: f"{bob_user}@localhost/phone" in sessions(cl), 10)
        old = cl.child_pid("c2s.1")
        os.kill(old, sig)
        assert bob.disconnected.wait(15), "bob's stream stayed open"
        assert wait_until(lambda: (cl.child_pid("c2s.1") or old) != old and cl.healthy("c2s.1"), 30), \
            "c2s.1 did not come back"
        # The router dropped the sessions of the c2s incarnation that is gone.
        assert wait_until(lambda: f"{bob_user}@localhost/phone" not in sessions(cl), 15), sessions(cl)
        # A message to bob now is stored offline, not handed to a dead session: no error
        # comes back to alice, and bob gets it when he logs in again (on either c2s).
        alice.send(f"<message to='{bob_user}@localhost' type='chat' id='after-{name}'>"
                   f"<body>while you were gone ({name})</body></message>")
        again = login(cl, bob_user, "pw", "laptop")
        try:
            again.presence()
            m = again.wait("message", pred=lambda el: el.get("id") == f"after-{name}", timeout=15)
            assert m.findtext("{jabber:client}body") == f"while you were gone ({name})"
        finally:
            again.close()
        r = alice.iq("<ping xmlns='urn:xmpp:ping'/>", to="localhost")
        assert r.get("type") == "result"
        errs = [el for el in alice.inbox if el.get("type") == "error"]
        assert not errs, [error_condition(e) for e in errs]
    finally:
        alice.close()
        bob.close(wait=False)


def collect_all(client, ids, timeout=30):
    """Waits until every id in ids came to client as a message; returns {id: times received}."""
    def counts():
        with client.cond:
            got = [el.get("id") for el in client.inbox if el.tag == "{jabber:client}message"]
        return {i: got.count(i) for i in ids}
    ok = wait_until(lambda: all(counts().values()), timeout)
    c = counts()
    assert ok, f"missing {sorted(i for i, n in c.items() if n == 0)}"
    return c


def test_custody_copies_go_once_acknowledged(cl):
    """A stream-management client's <a h/> is what lets the router forget its copies: kept until then."""
    bob = authed_on(cl, "cbob-smq", "c2s.0")
    bob.send("<iq type='set' id='b0'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>ack</resource>"
             "</bind></iq>")
    bob.recv_until(r"<iq[^>]*id=.b0.*?</iq>")
    bob.send(f"<enable xmlns='{SM}'/>")
    assert "<enabled" in bob.recv_until(r"<enabled[^>]*/>|</failed>")
    bob.send("<presence/>")
    alice = login(cl, "calice", "pw", "ack", c2s="c2s.1")
    try:
        assert wait_until(lambda: metric(cl, "router.0", "meerkat_router_custody_kept") == 0, 10)
        for i in range(5):
            alice.send(f"<message to='cbob-smq@localhost' type='chat' id='ack-{i}'><body>{i}</body></message>")
        text = bob.recv_until(r"id=.ack-4.", timeout=20)
        h = len(re.findall(r"<(?:message|presence|iq)[ >]", text))
        assert metric(cl, "router.0", "meerkat_router_custody_kept") == 5
        bob.send(f"<a xmlns='{SM}' h='{h}'/>")
        assert wait_until(lambda: metric(cl, "router.0", "meerkat_router_custody_kept") == 0, 10)
    finally:
        alice.close()
        bob.close()


def test_kill9_loses_nothing_a_stream_management_client_did_not_acknowledge(cl):
    """bob (XEP-0198 on c2s.1) receives N messages and never acknowledges them; c2s.1 is killed with -9; bob
    logs in again (a fresh login, no resumption): every one of the N arrives (duplicates allowed, reported)."""
    n = 40
    bob = authed_on(cl, "cbob-smq", "c2s.1")
    bob.send("<iq type='set' id='b1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>phone</resource>"
             "</bind></iq>")
    bob.recv_until(r"<iq[^>]*id=.b1.*?</iq>")
    bob.send(f"<enable xmlns='{SM}'/>")
    assert "<enabled" in bob.recv_until(r"<enabled[^>]*/>|</failed>")
    bob.send("<presence/>")
    alice = login(cl, "calice", "pw", "smq", c2s="c2s.0")
    ids = [f"smq-{i}" for i in range(n)]
    try:
        for i in ids:
            alice.send(f"<message to='cbob-smq@localhost' type='chat' id='{i}'><body>{i}</body></message>")
        # Written to bob, who does not acknowledge them (he reads, never sends <a/>).
        text = bob.recv_until(rf"id=.{ids[-1]}.", timeout=20)
        assert all(f"'{i}'" in text or f'"{i}"' in text for i in ids)
        assert "<r xmlns" in text
        # The router holds a copy of each until c2s.1 reports it acknowledged.
        assert metric(cl, "router.0", "meerkat_router_custody_kept") >= n
        kill9_and_wait(cl, "c2s.1")
        again = login(cl, "cbob-smq", "pw", "laptop", c2s="c2s.0")
        try:
            again.presence()
            c = collect_all(again, ids)
            dups = sum(v - 1 for v in c.values())
            print(f"custody sm: {n} messages, {dups} duplicates")
            # Written to a client without stream management: c2s.0 reports them, the copies go.
            assert wait_until(lambda: metric(cl, "router.0", "meerkat_router_custody_kept") == 0, 10)
            assert metric(cl, "router.0", "meerkat_router_custody_rerouted_total") >= n
            # Routed again under the same archive id: bob's archive has each message once.
            archived = [b for b in mam_bodies(again, "calice@localhost") if b and b.startswith("smq-")]
            assert sorted(archived) == sorted(ids), archived
        finally:
            again.close()
    finally:
        alice.close()
        bob.close()


def test_kill9_loses_no_deliver_in_flight(cl):
    """bob (no stream management) on c2s.1; c2s.1 is frozen (SIGSTOP) while the router hands it N messages that
    alice's c2s had acknowledged, then killed with -9 before reading them: bob, logged in again, gets all N."""
    n = 40
    bob = login(cl, "cbob-inflight", "pw", "phone", c2s="c2s.1")
    alice = login(cl, "calice", "pw", "inflight", c2s="c2s.0")
    ids = [f"fly-{i}" for i in range(n)]
    pid = cl.child_pid("c2s.1")
    try:
        bob.presence()
        assert wait_until(lambda: "cbob-inflight@localhost/phone" in sessions(cl), 10)
        before = metric(cl, "router.0", "meerkat_router_delivered_total", kind="message")
        os.kill(pid, signal.SIGSTOP)
        for i in ids:
            alice.send(f"<message to='cbob-inflight@localhost' type='chat' id='{i}'><body>{i}</body></message>")
        # The router handed each to c2s.1 (and so acknowledged it to alice's c2s).
        assert wait_until(lambda: metric(cl, "router.0", "meerkat_router_delivered_total", kind="message")
                          >= before + n, 15)
        kill9_and_wait(cl, "c2s.1")
        assert bob.disconnected.wait(15)
        again = login(cl, "cbob-inflight", "pw", "laptop", c2s="c2s.0")
        try:
            again.presence()
            c = collect_all(again, ids)
            dups = sum(v - 1 for v in c.values())
            print(f"custody in flight: {n} messages, {dups} duplicates")
            assert wait_until(lambda: metric(cl, "router.0", "meerkat_router_custody_kept") == 0, 10)
        finally:
            again.close()
    finally:
        resume(pid)
        alice.close()
        bob.close(wait=False)


def test_custody_reports_ride_in_frames_that_leave_anyway(tmp_path):
    """A done copy's report waits (up to limits.custody_report_ms, here 10 minutes) for the next bus frame from
    its c2s to its router and goes in it: no frame of its own, no wake-up of the router for it alone."""
    c = Cluster(tmp_path, c2s=1, router=1, mam=0, pusher=0, gd=0,
                extra="limits: {custody_report_ms: 600000}").start()
    try:
        for u in ("ralice", "rbob"):
            c.ctl("register", f"{u}@localhost", "pw")
        bob = login(c, "rbob", "pw", "phone")
        alice = login(c, "ralice", "pw", "desk")
        try:
            # To bob's full JID: his session takes it whether or not his presence has reached the router yet
            # (to the bare JID it could go offline, bounced here without a mam).
            bob.presence()
            reports = lambda: metric(c, "router.0", "meerkat_bus_envelopes_received_total", payload="custody_done")
            kept = lambda: metric(c, "router.0", "meerkat_router_custody_kept")
            before = reports()
            alice.send("<message to='rbob@localhost/phone' type='chat' id='ride-1'><body>1</body></message>")
            bob.wait("message", pred=lambda el: el.get("id") == "ride-1", timeout=15)
            # Written to bob (no stream management): done, its report held for a frame to router.0.
            assert kept() == 1
            assert reports() == before
            alice.send("<message to='rbob@localhost/phone' type='chat' id='ride-2'><body>2</body></message>")
            # ride-2's Route is such a frame: ride-1's report goes with it.
            assert wait_until(lambda: reports() == before + 1, 10), "the report did not ride with the next Route"
            bob.wait("message", pred=lambda el: el.get("id") == "ride-2", timeout=15)
            assert wait_until(lambda: kept() == 1, 10)   # ride-1's copy gone, ride-2's kept
        finally:
            alice.close()
            bob.close()
    finally:
        c.stop()
