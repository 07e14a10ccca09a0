"""tests/integration/test_c2s_crash.py - a c2s killed (kill -9) or stopped (SIGTERM) with sessions on it: its
clients are disconnected, the supervisor starts it again, the router forgets every session it held, and a
message to such a user is stored offline and delivered at the next login (issue 11 item 10)."""
import os
import signal

import pytest

from harness import Cluster, wait_until
from xmpp import error_condition, login


@pytest.fixture(scope="module")
def cl(tmp_path_factory):
    c = Cluster(tmp_path_factory.mktemp("c2scrash"), c2s=2, router=1, mam=1, pusher=0, gd=0).start()
    for u in ("calice", "cbob-kill9", "cbob-sigterm"):
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
