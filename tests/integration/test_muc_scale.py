"""tests/integration/test_muc_scale.py - group chat rooms (router/muc.c) driven over the bus by tests/tools/bus_inject as a fake c2s, on one router shard: 10,000 rooms asked for by one user (only max_rooms_per_user made, the rest refused: not-allowed, or wait while the user has too many rooms being looked up in the store), one message to a room of 200 occupants (one copy to each occupant, addressed to it, all in one Deliver envelope to their c2s; the 201st occupant refused); an occupant gone without a word is removed (333) when a message to it bounces."""
import os
import re

import pytest

from test_router import INJECT, Shard

MUC = "conference.localhost"
JOIN = "<presence><x xmlns='http://jabber.org/protocol/muc'><history maxstanzas='0'/></x></presence>"


@pytest.fixture
def shard(tmp_path):
    assert os.path.exists(INJECT), "make all builds tests/tools/bus_inject"
    s = Shard(tmp_path, extra="modules: {muc: {enabled: true, max_rooms_per_user: 10, max_occupants: 200}}")
    s.start("router.0")
    s.start("mam.0")
    yield s
    for pid in list(s.procs):
        s.stop(pid)
    with open(os.path.join(s.dir, "router.0.log"), errors="replace") as f:
        log = f.read()
    for marker in ("ERROR: AddressSanitizer", "runtime error:"):
        assert marker not in log, log[log.index(marker) - 200:][:3000]


def test_ten_thousand_rooms_by_one_user(shard):
    lines = ["open router.0 mallory@localhost/r 1 0 1", "wait 100"]
    lines += [f"route router.0 presence mallory@localhost/r room{i}@{MUC}/m - 0 {JOIN}" for i in range(10000)]
    out = shard.inject("\n".join(lines), wait_ms=3000)
    made = [l for l in out if "status code='201'" in l]
    # each room not in memory is first asked of the store (a persistent room?): past the
    # loads one user may have running at once, a join is told to wait
    limited = [l for l in out if "type=error" in l and "not-allowed" in l]
    waits = [l for l in out if "type=error" in l and "resource-constraint" in l]
    assert len(made) == 10, len(made)
    assert len(limited) >= 1 and len(limited) + len(waits) == 9990, (len(limited), len(waits), out[-3:])
    assert shard.metric("router.0", "meerkat_router_muc_rooms") == 10
    # the first ten asked are the ten made
    assert {re.search(r"from=(room\d+)@", l).group(1) for l in made} == {f"room{i}" for i in range(10)}


def test_one_message_to_two_hundred_occupants(shard):
    n = 200
    room = f"big@{MUC}"
    lines = [f"open router.0 u{i}@localhost/r {i + 1} 0 1" for i in range(n + 1)] + ["wait 200"]
    lines += [f"route router.0 presence u{i}@localhost/r {room}/n{i} - 0 {JOIN}" for i in range(n + 1)]
    lines += ["wait 500",
              f"route router.0 message u0@localhost/r {room} groupchat 1 "
              "<message type='groupchat' id='fan'><body>to everyone</body></message>"]
    out = shard.inject("\n".join(lines), wait_ms=3000)
    # the 201st is refused (max_occupants 200)
    assert any(f"to=u{n}@localhost/r" in l and "type=error" in l and "service-unavailable" in l for l in out)
    copies = [l for l in out if "to everyone" in l and "kind=0" in l]
    assert len(copies) == n, len(copies)
    targets = sorted(int(re.search(r"ids=(\d+) ", l).group(1)) for l in copies)
    assert targets == list(range(1, n + 1))   # each occupant's session once
    assert all(f"from={room}/n0" in l and "<body>to everyone</body>" in l for l in copies)
    for l in copies:   # each copy addressed to its own occupant
        sid = int(re.search(r"ids=(\d+) ", l).group(1))
        assert f"to=u{sid - 1}@localhost/r" in l and f"to='u{sid - 1}@localhost/r'" in l
    assert shard.metric("router.0", "meerkat_router_muc_occupants") == n
    # all 200 in one Deliver envelope to the one c2s (router/fanout.c), not one each
    envelopes = {re.search(r" fanout=(\d+/\d+) ", l).group(1) for l in copies}
    assert len(envelopes) == 1 and envelopes.pop().endswith(f"/{n}"), envelopes


def test_long_jids_split_over_envelopes(shard):
    """An envelope lists at most 32 KiB of JIDs (router/fanout.c): 150 occupants with
    JIDs of about 420 bytes take 2 Deliver envelopes, and each gets its own copy once."""
    n = 150
    room = f"long@{MUC}"
    res = ["r" * 400 + str(i) for i in range(n)]
    lines = [f"open router.0 u{i}@localhost/{res[i]} {i + 1} 0 1" for i in range(n)] + ["wait 200"]
    lines += [f"route router.0 presence u{i}@localhost/{res[i]} {room}/n{i} - 0 {JOIN}" for i in range(n)]
    lines += ["wait 500",
              f"route router.0 message u0@localhost/{res[0]} {room} groupchat 1 "
              "<message type='groupchat' id='fan'><body>long</body></message>"]
    out = shard.inject("\n".join(lines), wait_ms=3000)
    copies = [l for l in out if "<body>long</body>" in l and "kind=0" in l]
    assert len(copies) == n, len(copies)
    for l in copies:
        sid = int(re.search(r"ids=(\d+) ", l).group(1))
        assert f"to='u{sid - 1}@localhost/{res[sid - 1]}'" in l
    assert sorted(int(re.search(r"ids=(\d+) ", l).group(1)) for l in copies) == list(range(1, n + 1))
    envelopes = {re.search(r" fanout=(\d+)/", l).group(1) for l in copies}
    assert len(envelopes) == 2, envelopes


def test_gone_occupant_is_removed_when_a_message_bounces(shard):
    """An occupant whose session ended without an unavailable presence (its c2s crashed):
    the first message to it bounces, and the room removes it with status 333."""
    room = f"ghost@{MUC}"
    out = shard.inject(f"""
        open router.0 u1@localhost/r 1 0 1
        open router.0 u2@localhost/r 2 0 1
        wait 100
        route router.0 presence u1@localhost/r {room}/one - 0 {JOIN}
        route router.0 presence u2@localhost/r {room}/two - 0 {JOIN}
        wait 200
        close router.0 u2@localhost/r 2
        wait 100
        route router.0 message u1@localhost/r {room} groupchat 1 <message type='groupchat'><body>hi</body></message>
    """, wait_ms=1000)
    gone = [l for l in out if "ids=1 " in l and f"from={room}/two" in l and "type=unavailable" in l]
    assert len(gone) == 1 and "<status code='333'/>" in gone[0], out[-5:]
    assert shard.metric("router.0", "meerkat_router_muc_occupants") == 1
