"""tests/integration/test_muc_fanout.py - a room's fan-out (router/fanout.c): one groupchat message to occupants on one c2s arrives there as one Deliver envelope (not one per occupant) and each occupant gets exactly its own stanza (to= its full JID); occupants whose bare JIDs another router shard owns cost one Fanout envelope to that shard and one Deliver from it; a join's presences, history and subject to the newcomer are one Deliver and the newcomer's presence to the others one more. A moderation retraction and the configuration change notice (104) are one Deliver each too. On 2 c2s and 2 router shards, every client on c2s.0."""
import xml.etree.ElementTree as ET

import pytest

from harness import cluster_on, metric, shard_of
from mucutil import ROUTERS, codes, join_raw, room_on, self_presence
from xmpp import login

NS_SID = "urn:xmpp:sid:0"


@pytest.fixture(scope="module")
def cl(tmp_path_factory):
    extra = "modules: {muc: {enabled: true, max_occupants: 20, history_size: 4}}"
    with cluster_on("sqlite", tmp_path_factory.mktemp("mucfan"), extra=extra) as c:
        c.registered = set()
        yield c


def users_on(cl, shard, n, prefix):
    """n user names whose bare JIDs shard owns (registered here)."""
    out = []
    for i in range(1000):
        name = f"{prefix}{i}"
        if shard_of(f"{name}@localhost", ROUTERS) == shard:
            if name not in cl.registered:
                cl.ctl("register", f"{name}@localhost", "pw")
                cl.registered.add(name)
            out.append(name)
            if len(out) == n:
                return out
    raise AssertionError("no such users")


def online(cl, name):
    c = login(cl, name, "pw", "r", c2s="c2s.0")
    c.presence()
    c.wait("presence", frm=c.jid)
    return c


def delivers(cl):
    """Deliver envelopes c2s.0 has received."""
    return metric(cl, "c2s.0", "meerkat_bus_envelopes_received_total", payload="deliver")


def canon(el):
    """An element as (tag, attributes, text, children), comparable whatever the namespace
    prefixes of its serialization."""
    return (el.tag, dict(el.attrib), (el.text or "").strip(), [canon(c) for c in el])


def join_all(cs, room):
    for k, c in enumerate(cs):
        join_raw(c, room, f"n{k}", "<history maxstanzas='0'/>")
        self_presence(c, room, f"n{k}")
    for k, c in enumerate(cs):   # everyone has everyone's presence: the joins are over
        for j in range(len(cs)):
            if j != k:
                c.wait("presence", frm=f"{room}/n{j}")


def test_one_deliver_per_c2s_and_each_occupant_its_own_stanza(cl):
    room = room_on("router.0", "fan")
    cs = [online(cl, u) for u in users_on(cl, "router.0", 3, "same")]
    try:
        join_all(cs, room)
        before = delivers(cl)
        cs[0].send(f"<message to='{room}' type='groupchat' id='g1'><body>to all &amp; each</body></message>")
        got = [c.wait("message", frm=f"{room}/n0", id="g1") for c in cs]
        # 3 occupants on c2s.0, all on the room's shard: one envelope carried the three
        # copies (three before)
        assert delivers(cl) - before == 1
        sid = got[0].find(f"{{{NS_SID}}}stanza-id").get("id")
        for c, el in zip(cs, got):
            want = ET.fromstring(
                f"<message xmlns='jabber:client' from='{room}/n0' type='groupchat' id='g1' to='{c.jid}'>"
                f"<body>to all &amp; each</body><stanza-id xmlns='{NS_SID}' by='{room}' id='{sid}'/></message>")
            assert canon(el) == canon(want)
    finally:
        for c in cs:
            c.close()


def test_occupants_on_the_other_shard_cost_one_fanout(cl):
    room = room_on("router.0", "far")
    names = users_on(cl, "router.0", 2, "near") + users_on(cl, "router.1", 3, "away")
    cs = [online(cl, u) for u in names]
    try:
        join_all(cs, room)
        before, fan0 = delivers(cl), metric(cl, "router.0", "meerkat_router_fanout_envelopes_total", kind="fanout")
        cs[3].send(f"<message to='{room}' type='groupchat' id='g2'><body>across</body></message>")
        got = [c.wait("message", frm=f"{room}/n3", id="g2") for c in cs]
        assert [el.get("to") for el in got] == [c.jid for c in cs]
        assert all(el.find("{jabber:client}body").text == "across" for el in got)
        # router.0 delivers its 2 and hands router.1 its 3 in one Fanout, which delivers
        # them in one Deliver: 2 envelopes to c2s.0 (5 before)
        assert delivers(cl) - before == 2
        assert metric(cl, "router.0", "meerkat_router_fanout_envelopes_total", kind="fanout") - fan0 == 1
    finally:
        for c in cs:
            c.close()


def test_join_is_one_deliver_to_the_newcomer_and_one_to_the_others(cl):
    room = room_on("router.0", "join")
    names = users_on(cl, "router.0", 4, "joiner")
    cs = [online(cl, u) for u in names[:3]]
    late = online(cl, names[3])
    try:
        join_all(cs, room)
        for i in range(2):
            cs[0].send(f"<message to='{room}' type='groupchat' id='h{i}'><body>history {i}</body></message>")
            for c in cs:
                c.wait("message", frm=f"{room}/n0", id=f"h{i}")
        before = delivers(cl)
        join_raw(late, room, "late")   # default history: both messages
        subject = late.wait("message", frm=room, child="{jabber:client}subject")
        others = [c.wait("presence", frm=f"{room}/late") for c in cs]
        assert all(p.get("to") == c.jid for p, c in zip(others, cs))
        # the newcomer's whole welcome in one envelope, its presence to the three in one
        # more (3 + 1 + 3 + 2 + 1 = 10 before)
        assert delivers(cl) - before == 2
        # in XEP-0045's order: the occupants' presences, its own (110), history, subject
        seq = []
        with late.cond:
            seq = [el for el in late.inbox if el.get("from", "").startswith(room)]
            late.inbox.clear()
        seq.append(subject)
        assert [(el.tag.rsplit("}", 1)[-1], el.get("from")) for el in seq] == [
            ("presence", f"{room}/n0"), ("presence", f"{room}/n1"), ("presence", f"{room}/n2"),
            ("presence", f"{room}/late"), ("message", f"{room}/n0"), ("message", f"{room}/n0"),
            ("message", room)]
        assert all(el.get("to") == late.jid for el in seq)
        assert codes(seq[3]) == [100, 110]
        assert [el.find("{jabber:client}body").text for el in seq[4:6]] == ["history 0", "history 1"]
        assert all(el.find("{urn:xmpp:delay}delay") is not None for el in seq[4:6])
    finally:
        for c in cs + [late]:
            c.close()


def test_retraction_and_configuration_notice_are_one_deliver_each(cl):
    """The room's own broadcasts go the same way: a moderator's retraction (XEP-0425) and
    the configuration change notice (104) to 3 occupants on c2s.0 are 1 Deliver each (3
    each before), each occupant's copy addressed to it."""
    room = room_on("router.0", "notice")
    cs = [online(cl, u) for u in users_on(cl, "router.0", 3, "same")]
    try:
        join_all(cs, room)   # n0 made the room: its owner, a moderator
        cs[1].send(f"<message to='{room}' type='groupchat' id='s1'><body>spam</body></message>")
        sid = [c.wait("message", frm=f"{room}/n1", id="s1") for c in cs][0].find(f"{{{NS_SID}}}stanza-id").get("id")
        before = delivers(cl)
        r = cs[0].iq(f"<moderate xmlns='urn:xmpp:message-moderate:1' id='{sid}'>"
                     "<retract xmlns='urn:xmpp:message-retract:1'/></moderate>", type="set", to=room)
        assert r.get("type") == "result"
        RX = "{urn:xmpp:message-retract:1}"
        got = [c.wait("message", frm=room, pred=lambda e: e.find(f"{RX}retract") is not None) for c in cs]
        assert [el.get("to") for el in got] == [c.jid for c in cs]
        assert all(el.find(f"{RX}retract").get("id") == sid for el in got)
        assert delivers(cl) - before == 2   # the IQ result, and one for the three retractions
        before = delivers(cl)
        form = ("<query xmlns='http://jabber.org/protocol/muc#owner'><x xmlns='jabber:x:data' type='submit'>"
                "<field var='FORM_TYPE'><value>http://jabber.org/protocol/muc#roomconfig</value></field>"
                "<field var='muc#roomconfig_roomname'><value>renamed</value></field></x></query>")
        r = cs[0].iq(form, type="set", to=room)
        assert r.get("type") == "result"
        got = [c.wait("message", frm=room, pred=lambda e: 104 in codes(e)) for c in cs]
        assert [el.get("to") for el in got] == [c.jid for c in cs]
        assert delivers(cl) - before == 2   # the IQ result, and one for the three notices
    finally:
        for c in cs:
            c.close()
