"""tests/integration/test_conflict.py - a second login with the same full JID replaces the first (RFC 6120 7.7.2.2)."""
import pytest

from harness import Cluster
from xmpp import Client, login


@pytest.fixture(scope="module", params=[1, 2], ids=["one_c2s", "two_c2s"])
def cl(request, tmp_path_factory):
    c = Cluster(tmp_path_factory.mktemp("conflict"), c2s=request.param, router=1, mam=1, pusher=0, gd=0).start()
    for u in ("bob", "alice"):
        c.ctl("register", f"{u}@localhost", f"{u}-pw")
    yield c
    c.stop()


def test_new_session_stays(cl):
    two = sum(p["id"].startswith("c2s.") for p in cl.procs) == 2
    # The old session is available (slixmpp clients send presence at start): its end
    # sends unavailable presence, which must not take the resource back.
    old = login(cl, "bob", "bob-pw", "x", c2s="c2s.0" if two else None)
    old.presence()
    old.wait("presence", frm="bob@localhost/x")
    new = login(cl, "bob", "bob-pw", "x", c2s="c2s.1" if two else None)
    assert old.disconnected.wait(10), "the old session was not closed"
    new.presence()
    new.wait("presence", frm="bob@localhost/x")
    a = Client(cl.c2s_port, "alice@localhost/a", "alice-pw")
    try:
        a.send("<message to='bob@localhost/x' type='chat' id='c1'><body>to the new one</body></message>")
        m = new.wait("message", id="c1")
        assert m.get("from") == "alice@localhost/a"
        assert not new.disconnected.is_set(), "the new session was closed too"
        # Still there after a round trip through the router that evicted the old one.
        assert new.iq("<ping xmlns='urn:xmpp:ping'/>", to="localhost").get("type") == "result"
        assert not new.disconnected.is_set()
    finally:
        a.close()
        new.close()
