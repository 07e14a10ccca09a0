"""tests/integration/test_gd_bed.py - the two-data-center test bed itself, with GD off: each data
center works alone on the shared PostgreSQL, Redis replicates from DC-A to DC-B, and the two
namespaces meet only on the inter-DC veth."""
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))
from gd_bed import Bed, in_netns  # noqa: E402
from harness import wait_until  # noqa: E402
from xmpp import q  # noqa: E402

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root")


@pytest.fixture(scope="module")
def bed(tmp_path_factory):
    with Bed(tmp_path_factory.mktemp("gdbed"), gd=False) as b:
        b.register("alice", "bob", "carol", "dave")
        yield b


def test_each_dc_works_alone(bed):
    """Two users of one data center chat in it, in both data centers; accounts are global
    (registered once, through DC-A's ctl, and used in DC-B)."""
    for dc, (u1, u2) in (("a", ("alice", "bob")), ("b", ("carol", "dave"))):
        x = bed.client(dc, u1)
        y = bed.client(dc, u2)
        x.send(f"<message to='{u2}@localhost/r' type='chat' id='in-{dc}'><body>hi from dc-{dc}</body></message>")
        m = y.wait("message", id=f"in-{dc}")
        assert q(m, "c:body").text == f"hi from dc-{dc}"
        assert m.get("from") == x.jid
        x.close()
        y.close()


def test_offline_storage_is_shared(bed):
    """With GD off a message for a user with no session in this data center is stored
    offline - in the shared PostgreSQL, so the user gets it at the next login in the other
    data center."""
    before = int(bed.pg.query("SELECT count(*) FROM offline WHERE username = 'dave'"))
    alice = bed.client("a", "alice")
    alice.send("<message to='dave@localhost' type='chat' id='cross-off'><body>stored in A</body></message>")
    assert wait_until(lambda: int(bed.pg.query("SELECT count(*) FROM offline WHERE username = 'dave'")) == before + 1)
    dave = bed.client("b", "dave")
    dave.presence()
    m = dave.wait("message", id="cross-off")
    assert q(m, "c:body").text == "stored in A"
    assert m.get("from") == alice.jid
    assert q(m, "delay:delay") is not None
    dave.close()
    alice.close()


def test_redis_replica_follows_primary(bed):
    bed.redis_cli("a", "SET", "bed:probe", "from-a")
    assert wait_until(lambda: bed.redis_cli("b", "GET", "bed:probe").stdout.strip() == "from-a")
    # the replica refuses writes: DC-B's gd must write to the primary
    r = bed.redis_cli("b", "SET", "bed:probe", "from-b", check=False)
    assert "READONLY" in r.stdout + r.stderr


def test_namespaces_meet_only_on_the_veth(bed):
    ip = bed.ip
    rb = bed.redis["b"]["port"]
    ra = bed.redis["a"]["port"]
    # Over the inter-DC veth: yes, both ways.
    assert bed.can_connect("a", ip["b"], rb) is None
    assert bed.can_connect("b", ip["a"], ra) is None
    # DC-B's address on its root veth is not reachable from DC-A (no route), nor the reverse.
    assert bed.can_connect("a", ip["b_root"], rb) == "ENETUNREACH"
    assert bed.can_connect("b", ip["a_root"], ra) == "ENETUNREACH"
    # Each namespace has its own loopback: DC-B's Redis port is not on DC-A's 127.0.0.1.
    assert bed.can_connect("a", "127.0.0.1", rb) == "ECONNREFUSED"
    assert bed.can_connect("b", "127.0.0.1", rb) is None
    # Both reach PostgreSQL in the root namespace over their own veth.
    assert bed.can_connect("a", ip["root_a"], bed.pg.port) is None
    assert bed.can_connect("b", ip["root_b"], bed.pg.port) is None
    # The veth down: DC-B cannot reach DC-A any more (its replica loses the primary),
    # and PostgreSQL is still there; up again, the replica syncs again.
    bed.link_down()
    try:
        assert bed.can_connect("b", ip["a"], ra, timeout=1.0) in ("timeout", "ENETUNREACH", "EHOSTUNREACH")
        assert bed.can_connect("b", ip["root_b"], bed.pg.port) is None
        bed.redis_cli("a", "SET", "bed:cut", "during")
    finally:
        bed.link_up()
    assert wait_until(lambda: bed.redis_cli("b", "GET", "bed:cut").stdout.strip() == "during", 30)


def test_link_proxy_forwards_delays_and_cuts(bed):
    """The test's own TCP proxy (the gd link's delay and cuts): forwards bytes inside a
    namespace across the veth, adds its delay one way, and a cut resets the connection."""
    import socket
    import time
    from gd_bed import LinkProxy
    b = bed
    if True:
        # an echo server in DC-A on the inter-DC address
        def mk():
            s = socket.socket()
            s.bind((b.ip["a"], 0))
            s.listen(4)
            return s
        srv = in_netns(b.ns["a"], mk)
        import threading

        def echo():
            while True:
                try:
                    c, _ = srv.accept()
                except OSError:
                    return
                threading.Thread(target=serve, args=(c,), daemon=True).start()

        def serve(c):
            try:
                for d in iter(lambda: c.recv(4096), b""):
                    c.sendall(d)
            except OSError:
                pass
            finally:
                c.close()
        threading.Thread(target=echo, daemon=True).start()
        p = LinkProxy(b.ns["b"], "127.0.0.1", (b.ip["a"], srv.getsockname()[1]), delay=0.05)
        try:
            c = in_netns(b.ns["b"], lambda: socket.create_connection(("127.0.0.1", p.port), timeout=5))
            t0 = time.monotonic()
            c.sendall(b"ping")
            assert c.recv(10) == b"ping"
            rtt = time.monotonic() - t0
            assert 0.1 <= rtt < 1.0, rtt     # 50 ms each way
            p.cut()
            with pytest.raises((ConnectionResetError, OSError)):
                c.sendall(b"x")
                if c.recv(10) == b"":
                    raise ConnectionResetError("closed")
            c.close()
            p.heal()
            p.delay = 0.0
            c = in_netns(b.ns["b"], lambda: socket.create_connection(("127.0.0.1", p.port), timeout=5))
            c.sendall(b"again")
            assert c.recv(10) == b"again"
            assert p.accepted == 2 and wait_until(lambda: p.active == 1)
            c.close()
            assert wait_until(lambda: p.active == 0)
        finally:
            p.close()
            srv.close()
