"""tests/integration/test_router_stop.py - a router stopped (SIGTERM) while its rooms' store still
has a write out: after its loop ends it drains that store by running the loop, and what the bus
brings meanwhile is ignored (not acknowledged), not handed to parts already freed; the c2s sends
it again to the next incarnation, so nothing is lost. A CI run once caught the router reading its
freed intake there (UBSan, router/intake.c)."""
import os
import re
import signal

import pytest

from harness import TableLock, cluster_on, metric, shard_of, wait_until
from mucutil import NS_MUC, self_presence
from mucutil import join_raw as join
from mucutil import room_on
from xmpp import login

ROUTERS = ["router.0", "router.1"]


@pytest.fixture(scope="module")
def cl(tmp_path_factory):
    with cluster_on("pgsql", tmp_path_factory.mktemp("rstop"), c2s=1, router=2, mam=1, pusher=0, gd=0) as c:
        yield c


def user_on(shard, prefix):
    """A user name whose bare JID lives on shard."""
    return next(f"{prefix}{i}" for i in range(1000) if shard_of(f"{prefix}{i}@localhost", ROUTERS) == shard)


def rows_waiting_on_lock(pg):
    return int(pg.query("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'meerkat' "
                        "AND wait_event_type = 'Lock' AND query LIKE '%muc_room%'"))


def test_envelopes_during_the_rooms_drain_wait_for_the_next_incarnation(cl):
    owner_name, bob_name = user_on("router.0", "owner"), user_on("router.0", "bob")
    for u in (owner_name, bob_name, "alice"):
        cl.ctl("register", f"{u}@localhost", "pw")
    room = room_on("router.0", "drain")
    owner, bob, alice = (login(cl, u, "pw", "r") for u in (owner_name, bob_name, "alice"))
    lock = None
    try:
        for c in (owner, bob, alice):
            c.presence()
            c.wait("presence", frm=c.jid)
        join(owner, room, "Boss")
        self_presence(owner, room, "Boss")
        lock = TableLock(cl.pg, "rstop-lock", table="muc_room")
        assert wait_until(lock.granted, 10)
        # Made persistent: the room's row is written, and that write waits on the lock.
        owner.send(f"<iq type='set' id='cfg' to='{room}'><query xmlns='{NS_MUC}#owner'>"
                   "<x xmlns='jabber:x:data' type='submit'><field var='muc#roomconfig_persistentroom'>"
                   "<value>1</value></field></x></query></iq>")
        assert wait_until(lambda: rows_waiting_on_lock(cl.pg) >= 1, 15)
        old = cl.child_pid("router.0")
        port = cl.metrics_port("router.0")
        os.kill(old, signal.SIGTERM)
        # Its loop has ended; it is draining the rooms' store (still serving /metrics).
        assert wait_until(lambda: re.search(r"id=router\.0 event=loop_ended", cl.read_log()), 15), cl.read_log()[-3000:]
        assert cl.metrics_port("router.0") == port
        # A message to bob (his shard is router.0) reaches the router now: ignored, counted.
        alice.send(f"<message to='{bob_name}@localhost' id='m1' type='chat'><body>during the drain</body></message>")
        assert wait_until(lambda: metric(cl, "router.0", "meerkat_router_envelopes_ignored_total",
                                         payload="after_loop") >= 1, 15)
        lock.release()
        # The write finishes, the router exits cleanly, its next incarnation gets the message again.
        assert wait_until(lambda: re.search(r"child_exit proc=router\.0 status=0", cl.read_log()), 15), \
            cl.read_log()[-3000:]
        assert wait_until(lambda: (cl.child_pid("router.0") or old) != old and cl.healthy("router.0"), 30)
        m = bob.wait("message", id="m1", timeout=30)
        assert m.findtext("{jabber:client}body") == "during the drain"
        # the row the drain waited for was written
        assert cl.pg.query(f"SELECT count(*) FROM muc_room WHERE room = '{room}'") == "1"
    finally:
        if lock is not None:
            lock.release()
        for c in (owner, bob, alice):
            c.close()
