"""tests/integration/test_muc.py - XEP-0045 group chat (router/muc.c) with slixmpp's xep_0045 plugin and raw XML: join (create, occupants, 110/201/100), nick conflicts and limits, leave and session end, groupchat order, subject and history (XEP-0203), private messages, disco, self-ping (XEP-0410), kick, ban, destroy, multi-session nicks (two resources of one user under one nick); on 2 c2s and 2 router shards, rooms and users on different shards."""
import xml.etree.ElementTree as ET

import pytest

from harness import cluster_on, shard_of
from mucutil import MUC, NS_MUC, NS_USER, ROUTERS, XU, codes, enter, item, join_raw, room_on, self_presence
from rawxmpp import Raw
from xmpp import C, error_condition, login, run

USERS = ["alice", "bob", "carol", "dave", "erin"]


def shard(bare):
    """The router shard that owns a bare JID."""
    return shard_of(bare, ROUTERS)


@pytest.fixture(scope="module")
def cl(tmp_path_factory):
    extra = ("modules: {muc: {enabled: true, max_rooms_per_user: 3, max_occupants: 3, max_nick_bytes: 64, "
             "history_size: 4}}")
    with cluster_on("sqlite", tmp_path_factory.mktemp("muc"), extra=extra) as c:
        for u in USERS:
            c.ctl("register", f"{u}@localhost", "pw")
        yield c


def user(cl, name, resource="r"):
    c = login(cl, name, "pw", resource)
    run(_plugins(c.xmpp))
    c.presence()
    c.wait("presence", frm=c.jid)
    return c


async def _plugins(x):
    x.register_plugin("xep_0030")
    x.register_plugin("xep_0045")
    x.register_plugin("xep_0199")


def groupchat(c, room, body, mid=None):
    c.send(f"<message to='{room}' type='groupchat'" + (f" id='{mid}'" if mid else "") + f"><body>{body}</body></message>")


@pytest.fixture
def trio(cl):
    """alice, bob, carol, one resource each, closed afterwards."""
    cs = [user(cl, n) for n in ("alice", "bob", "carol")]
    yield cs
    for c in cs:
        c.close()


def test_users_and_rooms_are_on_different_shards():
    """The test's rooms and users are spread so that both paths (same shard, other shard) run."""
    users = {shard(f"{u}@localhost") for u in ("alice", "bob", "carol")}
    assert users == set(ROUTERS), users   # the three users are not all on one shard


def test_join_with_plugin_create_and_occupants(trio):
    alice, bob, carol = trio
    room = room_on("router.0", "join")

    async def join(c, nick):
        return await c.xmpp["xep_0045"].join_muc_wait(room, nick, maxstanzas=0, timeout=10)

    pres, subject, occupants, history = run(join(alice, "Alice"))
    assert str(pres["from"]) == f"{room}/Alice"
    assert codes(pres.xml) == [100, 110, 201]
    it = item(pres.xml)
    assert (it.get("affiliation"), it.get("role"), it.get("jid")) == ("owner", "moderator", alice.jid)
    assert [str(p["from"]) for p in occupants] == [f"{room}/Alice"] and history == []   # the plugin counts itself
    assert subject["subject"] == ""
    pres, subject, occupants, history = run(join(bob, "Bob"))
    assert codes(pres.xml) == [100, 110]   # not created this time
    assert (item(pres.xml).get("affiliation"), item(pres.xml).get("role")) == ("none", "participant")
    assert [str(p["from"]) for p in occupants] == [f"{room}/Alice", f"{room}/Bob"]   # alice's presence first
    assert item(occupants[0].xml).get("jid") == alice.jid   # non-anonymous: real JIDs shown
    # alice sees bob arrive, without 110
    p = alice.wait("presence", frm=f"{room}/Bob")
    assert codes(p) == [] and item(p).get("jid") == bob.jid
    # carol, raw: alice's then bob's presence, then her own, in that order, then the empty subject
    join_raw(carol, room, "Carol")
    seq = [carol.wait("presence", frm=f"{room}/{n}") for n in ("Alice", "Bob", "Carol")]
    assert codes(seq[2]) == [100, 110]
    subj = carol.wait("message", frm=room, type="groupchat")
    assert subj.find(f"{C}subject") is not None and (subj.find(f"{C}subject").text or "") == ""


def test_nick_conflict_long_nick_and_no_nick(cl, trio):
    alice, bob, carol = trio
    room = room_on("router.1", "nick")
    enter(alice, room, "same")
    alice.wait("message", frm=room, type="groupchat")
    join_raw(bob, room, "same")
    err = bob.wait("presence", frm=f"{room}/same", type="error")
    assert error_condition(err) == "conflict"
    # over max_nick_bytes (64): the room refuses; 10 KiB: not even a JID (RFC 7622: 1023 bytes)
    join_raw(bob, room, "n" * 65)
    assert error_condition(bob.wait("presence", type="error", frm=f"{room}/{'n' * 65}")) == "not-acceptable"
    bob.send(f"<presence to='{room}'><x xmlns='{NS_MUC}'/></presence>")   # no nickname
    assert error_condition(bob.wait("presence", type="error", frm=room)) == "jid-malformed"
    # a 10 KiB nick is not even a JID (RFC 7622: 1023 bytes a part): the c2s refuses it (raw
    # client: slixmpp cannot parse the JID such an error comes from)
    raw = Raw(cl.c2s_port)
    try:
        raw.login("erin", "pw", "raw")
        raw.send(f"<presence to='{room}/{'x' * 10240}' id='big'><x xmlns='{NS_MUC}'/></presence>")
        out = raw.recv_until(r"<presence[^>]*type=.error.*?</presence>")
        assert "jid-malformed" in out and "id='big'" in out.replace('"', "'"), out[-300:]
    finally:
        raw.close()
    # a 64-byte nick is fine; alice saw none of the refused ones
    join_raw(bob, room, "n" * 64)
    self_presence(bob, room, "n" * 64)
    assert alice.none_before({"kind": "presence", "frm": f"{room}/{'n' * 64}"}, "presence",
                             pred=lambda e: e.get("from") in (f"{room}/same", f"{room}/{'n' * 65}"))


def test_groupchat_order_subject_history_and_outsider(cl, trio):
    alice, bob, carol = trio
    room = room_on("router.1", "talk")
    enter(alice, room, "A")
    enter(bob, room, "B")
    for i in range(6):
        groupchat(alice, room, f"m{i}", mid=f"id{i}")
    alice.send(f"<message to='{room}' type='groupchat' id='sid'><body>forged</body>"
               f"<stanza-id xmlns='urn:xmpp:sid:0' by='{room}' id='fake'/></message>")
    got = [bob.wait("message", frm=f"{room}/A", type="groupchat", pred=lambda e: e.find(f"{C}body") is not None)
           for _ in range(6)]
    assert [m.find(f"{C}body").text for m in got] == [f"m{i}" for i in range(6)]
    assert [m.get("id") for m in got] == [f"id{i}" for i in range(6)]
    echo = [alice.wait("message", frm=f"{room}/A", type="groupchat", pred=lambda e: e.find(f"{C}body") is not None)
            for _ in range(6)]
    assert [m.get("id") for m in echo] == [f"id{i}" for i in range(6)]   # the sender's own copy keeps its id
    forged = bob.wait("message", id="sid")
    sids = forged.findall("{urn:xmpp:sid:0}stanza-id")   # the room's own, not the client's
    assert forged.find(f"{C}body").text == "forged" and len(sids) == 1
    assert sids[0].get("by") == room and sids[0].get("id") != "fake"
    # subject by bob, with the slixmpp plugin
    async def subject():
        bob.xmpp["xep_0045"].set_subject(room, "Topic of the day")
    run(subject())
    s = alice.wait("message", frm=f"{room}/B", pred=lambda e: e.find(f"{C}subject") is not None)
    assert s.find(f"{C}subject").text == "Topic of the day"
    # a newcomer: 2 of the 4 kept messages (history_size 4) asked, stamped by the room, then the subject
    join_raw(carol, room, "C", "<history maxstanzas='2'/>")
    self_presence(carol, room, "C")
    hist = [carol.wait("message", frm=f"{room}/A", type="groupchat") for _ in range(2)]
    assert [m.find(f"{C}body").text for m in hist] == ["m5", "forged"]
    for m in hist:
        d = m.find("{urn:xmpp:delay}delay")
        assert d is not None and d.get("from") == room and d.get("stamp", "").endswith("Z")
    subj = carol.wait("message", frm=f"{room}/B", pred=lambda e: e.find(f"{C}subject") is not None)
    assert subj.find(f"{C}subject").text == "Topic of the day"
    # all of history by default (4 kept)
    carol.send(f"<presence to='{room}/C' type='unavailable'/>")
    self_presence(carol, room, "C")
    enter(carol, room, "C")
    hist = [carol.wait("message", frm=f"{room}/A", type="groupchat") for _ in range(4)]
    assert [m.find(f"{C}body").text for m in hist] == ["m3", "m4", "m5", "forged"]
    carol.wait("message", frm=f"{room}/B", pred=lambda e: e.find(f"{C}subject") is not None)
    # an outsider (dave) cannot post; nor can anyone send groupchat to an occupant
    dave = user(cl, "dave")
    try:
        groupchat(dave, room, "intruder", mid="x1")
        assert error_condition(dave.wait("message", id="x1", type="error")) == "not-acceptable"
        alice.send(f"<message to='{room}/B' type='groupchat' id='x2'><body>no</body></message>")
        assert error_condition(alice.wait("message", id="x2", type="error")) == "bad-request"
        groupchat(alice, room, "marker", mid="mk")
        assert bob.none_before({"kind": "message", "id": "mk"}, "message",
                               pred=lambda e: e.find(f"{C}body") is not None and e.find(f"{C}body").text in
                               ("intruder", "no"))
    finally:
        dave.close()


def test_private_messages(trio):
    alice, bob, carol = trio
    room = room_on("router.0", "pm")
    enter(alice, room, "A")
    enter(bob, room, "B")
    alice.send(f"<message to='{room}/B' type='chat' id='p1'><body>psst</body><x xmlns='{NS_USER}'/></message>")
    m = bob.wait("message", frm=f"{room}/A", type="chat")
    assert m.find(f"{C}body").text == "psst" and m.get("to") == bob.jid and m.get("id") == "p1"
    alice.send(f"<message to='{room}/Nobody' type='chat' id='p2'><body>?</body></message>")
    assert error_condition(alice.wait("message", id="p2", type="error")) == "item-not-found"
    carol.send(f"<message to='{room}/B' type='chat' id='p3'><body>outsider</body></message>")
    assert error_condition(carol.wait("message", id="p3", type="error")) == "not-acceptable"


def test_leave_and_session_end(cl, trio):
    alice, bob, carol = trio
    room = room_on("router.0", "leave")
    for c, n in ((alice, "A"), (bob, "B"), (carol, "C")):
        join_raw(c, room, n)
        self_presence(c, room, n)
    bob.send(f"<presence to='{room}/B' type='unavailable'><status>bye</status></presence>")
    p = bob.wait("presence", frm=f"{room}/B", type="unavailable")
    assert codes(p) == [110] and item(p).get("role") == "none"
    p = alice.wait("presence", frm=f"{room}/B", type="unavailable")
    assert codes(p) == []
    # carol's stream ends: her c2s sends the room her unavailable presence
    carol.close()
    p = alice.wait("presence", frm=f"{room}/C", type="unavailable")
    assert item(p).get("role") == "none"
    # bob may come back under the nick carol left
    enter(bob, room, "C")
    # the room is empty once alice leaves too: destroyed, a join creates it again (201)
    alice.send(f"<presence to='{room}/A' type='unavailable'/>")
    bob.wait("presence", frm=f"{room}/A", type="unavailable")
    bob.send(f"<presence to='{room}/C' type='unavailable'/>")
    bob.wait("presence", frm=f"{room}/C", type="unavailable")
    join_raw(bob, room, "again")
    assert 201 in codes(self_presence(bob, room, "again"))


def test_limits_rooms_per_user_and_occupants(cl, trio):
    alice, bob, carol = trio
    # max_occupants 3: a fourth is refused (XEP-0045 7.2.9)
    room = room_on("router.1", "full")
    for c, n in ((alice, "A"), (bob, "B"), (carol, "C")):
        join_raw(c, room, n)
        self_presence(c, room, n)
    dave = user(cl, "dave")
    try:
        join_raw(dave, room, "D")
        err = dave.wait("presence", frm=f"{room}/D", type="error")
        assert error_condition(err) == "service-unavailable"
        # max_rooms_per_user 3 (counted per router shard): dave's fourth room there is refused
        made = []
        for i in range(3):
            r = room_on("router.0", f"dave{i}x")
            made.append(r)
        for r in made:
            join_raw(dave, r, "d")
            assert 201 in codes(self_presence(dave, r, "d"))
        extra = room_on("router.0", "davemore")
        join_raw(dave, extra, "d")
        assert error_condition(dave.wait("presence", frm=f"{extra}/d", type="error")) == "not-allowed"
        # one room left and gone: a new one may be made
        dave.send(f"<presence to='{made[0]}/d' type='unavailable'/>")
        self_presence(dave, made[0], "d")
        join_raw(dave, extra, "d")
        assert 201 in codes(self_presence(dave, extra, "d"))
    finally:
        dave.close()


def test_disco_and_self_ping(trio):
    alice, bob, _ = trio
    info = alice.iq("<query xmlns='http://jabber.org/protocol/disco#info'/>", to=MUC)
    assert info.get("type") == "result"
    q = info.find("{http://jabber.org/protocol/disco#info}query")
    ident = q.find("{http://jabber.org/protocol/disco#info}identity")
    assert (ident.get("category"), ident.get("type")) == ("conference", "text")
    feats = {f.get("var") for f in q.findall("{http://jabber.org/protocol/disco#info}feature")}
    assert NS_MUC in feats
    # the server lists its service (how clients find it)
    items = alice.iq("<query xmlns='http://jabber.org/protocol/disco#items'/>", to="localhost")
    assert [i.get("jid") for i in items.iter("{http://jabber.org/protocol/disco#items}item")] == [MUC]
    room = room_on("router.1", "disco")
    enter(alice, room, "A")
    info = alice.iq("<query xmlns='http://jabber.org/protocol/disco#info'/>", to=room)
    feats = {f.get("var") for f in info.findall("{http://jabber.org/protocol/disco#info}query/"
                                                 "{http://jabber.org/protocol/disco#info}feature")}
    assert {NS_MUC, "muc_open", "muc_public", "muc_temporary", "muc_nonanonymous"} <= feats
    # XEP-0410: joined -> result; not joined -> not-acceptable
    r = alice.iq("<ping xmlns='urn:xmpp:ping'/>", to=f"{room}/A")
    assert r.get("type") == "result" and r.get("from") == f"{room}/A"
    r = bob.iq("<ping xmlns='urn:xmpp:ping'/>", to=f"{room}/A")
    assert r.get("type") == "error" and error_condition(r) == "not-acceptable"
    # a room that does not exist
    r = bob.iq("<query xmlns='http://jabber.org/protocol/disco#info'/>", to=f"nosuchroom@{MUC}")
    assert error_condition(r) == "item-not-found"


def test_kick_ban_destroy_with_plugin(trio):
    alice, bob, carol = trio
    room = room_on("router.0", "mod")
    for c, n in ((alice, "A"), (bob, "B"), (carol, "C")):
        join_raw(c, room, n)
        self_presence(c, room, n)
    # bob (participant) may not kick
    r = bob.iq(f"<query xmlns='http://jabber.org/protocol/muc#admin'><item nick='C' role='none'/></query>",
               type="set", to=room)
    assert error_condition(r) == "forbidden"
    # alice (owner, moderator) kicks carol with the plugin
    run(alice.xmpp["xep_0045"].set_role(room, "C", "none", reason="behave"))
    p = carol.wait("presence", frm=f"{room}/C", type="unavailable")
    assert codes(p) == [110, 307]
    assert item(p).find(f"{XU}reason").text == "behave" and item(p).find(f"{XU}actor").get("nick") == "A"
    assert codes(bob.wait("presence", frm=f"{room}/C", type="unavailable")) == [307]
    # carol may come back; then she is banned by JID and cannot
    enter(carol, room, "C")
    run(alice.xmpp["xep_0045"].set_affiliation(room, "outcast", jid=carol.bare))
    p = carol.wait("presence", frm=f"{room}/C", type="unavailable")
    assert codes(p) == [110, 301] and item(p).get("affiliation") == "outcast"
    join_raw(carol, room, "C2")
    assert error_condition(carol.wait("presence", frm=f"{room}/C2", type="error")) == "forbidden"
    # the owner cannot be kicked; bob cannot destroy
    r = alice.iq(f"<query xmlns='http://jabber.org/protocol/muc#admin'><item nick='A' role='none'/></query>",
                 type="set", to=room)
    assert error_condition(r) == "not-allowed"
    r = bob.iq("<query xmlns='http://jabber.org/protocol/muc#owner'><destroy/></query>", type="set", to=room)
    assert error_condition(r) == "forbidden"
    # destroy: everyone gets unavailable with <destroy/>, and the room is gone
    run(alice.xmpp["xep_0045"].destroy(room, reason="closing"))
    for c, n in ((alice, "A"), (bob, "B")):
        p = c.wait("presence", frm=f"{room}/{n}", type="unavailable")
        d = p.find(f"{XU}x/{XU}destroy")
        assert d is not None and d.find(f"{XU}reason").text == "closing"
    r = bob.iq("<query xmlns='http://jabber.org/protocol/disco#info'/>", to=room)
    assert error_condition(r) == "item-not-found"


def test_garbage_muc_presence(trio):
    alice, bob, _ = trio
    room = room_on("router.1", "junk")
    join_raw(alice, room, "A", "<history maxstanzas='-1' seconds='zz' maxchars='9999999999999999999999'/>"
             "<password/><unknown xmlns='x:y'><deep><deeper/></deep></unknown>")
    self_presence(alice, room, "A")
    for t in ("subscribe", "probe", "unsubscribed", "bogus"):
        bob.send(f"<presence to='{room}/A' type='{t}'/>")
    bob.send(f"<presence to='{room}/B'><x xmlns='{NS_USER}'><item affiliation='owner' role='moderator'/></x></presence>")
    p = self_presence(bob, room, "B")
    # a forged muc#user in the join is not believed
    assert (item(p).get("affiliation"), item(p).get("role")) == ("none", "participant")
    bob.send(f"<message to='{room}' type='normal' id='n1'><body>?</body></message>")
    assert error_condition(bob.wait("message", id="n1", type="error")) == "feature-not-implemented"
    r = alice.iq("<ping xmlns='urn:xmpp:ping'/>", to=f"{room}/A")
    assert r.get("type") == "result"


def test_session_without_initial_presence_leaves_when_it_ends(cl, trio):
    """A session that joined a room before (or without) its initial presence: its end still
    sends the room its unavailable presence (c2s/presence.c), so no ghost stays behind."""
    alice, _, _ = trio
    room = room_on("router.1", "ghost")
    enter(alice, room, "A")
    raw = Raw(cl.c2s_port)
    try:
        raw.login("erin", "pw", "ghost")
        raw.send(f"<presence to='{room}/E'><x xmlns='{NS_MUC}'/></presence>")
        raw.recv_until(r"<subject/>")
    finally:
        raw.close()
    alice.wait("presence", frm=f"{room}/E", type=None)
    p = alice.wait("presence", frm=f"{room}/E", type="unavailable")
    assert codes(p) == []
    r = alice.iq("<ping xmlns='urn:xmpp:ping'/>", to=f"{room}/E")
    assert error_condition(r) == "item-not-found"

def test_nick_change(trio):
    alice, bob, _ = trio
    room = room_on("router.0", "rename")
    enter(alice, room, "A")
    enter(bob, room, "B")
    alice.wait("presence", frm=f"{room}/B")
    bob.send(f"<presence to='{room}/A'/>")   # taken
    assert error_condition(bob.wait("presence", frm=f"{room}/A", type="error")) == "conflict"
    bob.send(f"<presence to='{room}/Bee'/>")
    # XEP-0045 7.6: unavailable from the old nick with 303 and the new nick, then the new one
    p = alice.wait("presence", frm=f"{room}/B", type="unavailable")
    assert codes(p) == [303] and item(p).get("nick") == "Bee"
    p = alice.wait("presence", frm=f"{room}/Bee", type=None)
    assert codes(p) == [] and item(p).get("jid") == bob.jid
    p = bob.wait("presence", frm=f"{room}/B", type="unavailable")
    assert codes(p) == [110, 303]
    self_presence(bob, room, "Bee")
    alice.send(f"<message to='{room}/Bee' type='chat' id='pm'><body>hi Bee</body></message>")
    assert bob.wait("message", id="pm").get("from") == f"{room}/A"


def test_mediated_invitation_and_decline(trio):
    alice, bob, carol = trio
    room = room_on("router.1", "invite")
    enter(alice, room, "A")
    # with the slixmpp plugin (a mediated invitation, XEP-0045 7.8.2)
    async def invite():
        alice.xmpp["xep_0045"].invite(room, bob.bare, reason="come")
    run(invite())
    m = bob.wait("message", frm=room)
    inv = m.find(f"{XU}x/{XU}invite")
    assert inv is not None and inv.get("from") == alice.jid and inv.find(f"{XU}reason").text == "come"
    # an outsider cannot invite
    carol.send(f"<message to='{room}' id='i2'><x xmlns='{NS_USER}'><invite to='{bob.bare}'/></x></message>")
    assert error_condition(carol.wait("message", id="i2", type="error")) == "not-acceptable"
    # bob declines
    bob.send(f"<message to='{room}'><x xmlns='{NS_USER}'><decline to='{alice.bare}'><reason>busy</reason>"
             "</decline></x></message>")
    m = alice.wait("message", frm=room, pred=lambda e: e.find(f"{XU}x/{XU}decline") is not None)
    d = m.find(f"{XU}x/{XU}decline")
    assert d.get("from") == bob.bare and d.find(f"{XU}reason").text == "busy"


def features_of(c, room):
    info = c.iq("<query xmlns='http://jabber.org/protocol/disco#info'/>", to=room)
    return {f.get("var") for f in info.iter("{http://jabber.org/protocol/disco#info}feature")}


def test_room_configuration_password_moderation_members_only(trio):
    alice, bob, carol = trio
    room = room_on("router.1", "conf")
    enter(alice, room, "A")
    # the owner's form, with the slixmpp plugin; a participant may not read it
    form = run(alice.xmpp["xep_0045"].get_room_config(room))
    values = form.get_values()
    assert values["muc#roomconfig_membersonly"] in (False, "0") and values["muc#roomconfig_whois"] == "anyone"
    r = bob.iq(f"<query xmlns='http://jabber.org/protocol/muc#owner'/>", to=room)
    assert error_condition(r) == "forbidden"
    # password and moderation, submitted with the plugin
    form.set_values({"muc#roomconfig_passwordprotectedroom": True, "muc#roomconfig_roomsecret": "s3cret",
                     "muc#roomconfig_moderatedroom": True, "muc#roomconfig_roomdesc": "a test room"})
    run(alice.xmpp["xep_0045"].set_room_config(room, form))
    m = alice.wait("message", frm=room, pred=lambda e: 104 in codes(e))
    assert {"muc_passwordprotected", "muc_moderated", "muc_open"} <= features_of(bob, room)
    # a field the service does not offer: the whole form refused, nothing changed
    r = alice.iq("<query xmlns='http://jabber.org/protocol/muc#owner'><x xmlns='jabber:x:data' type='submit'>"
                 "<field var='muc#roomconfig_enablelogging'><value>1</value></field>"
                 "<field var='muc#roomconfig_moderatedroom'><value>0</value></field></x></query>", type="set", to=room)
    assert error_condition(r) == "not-acceptable"
    assert "muc_moderated" in features_of(bob, room)
    # a join without the password, with a wrong one, then the right one: a visitor (moderated)
    join_raw(bob, room, "B")
    assert error_condition(bob.wait("presence", frm=f"{room}/B", type="error")) == "not-authorized"
    join_raw(bob, room, "B", "<password>wrong</password>")
    assert error_condition(bob.wait("presence", frm=f"{room}/B", type="error")) == "not-authorized"
    join_raw(bob, room, "B", "<password>s3cret</password>")
    assert item(self_presence(bob, room, "B")).get("role") == "visitor"
    r = bob.iq(f"<query xmlns='http://jabber.org/protocol/muc#owner'/>", to=room)
    assert error_condition(r) == "forbidden"
    groupchat(bob, room, "may I?", mid="v1")
    assert error_condition(bob.wait("message", id="v1", type="error")) == "forbidden"
    # voice, with the plugin
    run(alice.xmpp["xep_0045"].set_role(room, "B", "participant"))
    p = bob.wait("presence", frm=f"{room}/B", pred=lambda e: item(e) is not None and item(e).get("role") == "participant")
    assert 110 in codes(p)
    groupchat(bob, room, "thanks", mid="v2")
    assert alice.wait("message", id="v2").find(f"{C}body").text == "thanks"
    # members-only: bob (no affiliation) must go (322); carol cannot come in uninvited
    r = alice.iq("<query xmlns='http://jabber.org/protocol/muc#owner'><x xmlns='jabber:x:data' type='submit'>"
                 "<field var='muc#roomconfig_membersonly'><value>1</value></field></x></query>", type="set", to=room)
    assert r.get("type") == "result"
    p = bob.wait("presence", frm=f"{room}/B", type="unavailable")
    assert codes(p) == [110, 322]
    join_raw(carol, room, "C", "<password>s3cret</password>")
    assert error_condition(carol.wait("presence", frm=f"{room}/C", type="error")) == "registration-required"
    # an invitation to a members-only room makes the invitee a member
    alice.send(f"<message to='{room}'><x xmlns='{NS_USER}'><invite to='{carol.bare}'/></x></message>")
    carol.wait("message", frm=room, pred=lambda e: e.find(f"{XU}x/{XU}invite") is not None)
    join_raw(carol, room, "C", "<password>s3cret</password>")
    p = self_presence(carol, room, "C")
    assert (item(p).get("affiliation"), item(p).get("role")) == ("member", "participant")
    assert {"muc_membersonly", "muc_passwordprotected"} <= features_of(carol, room)


def test_service_lists_public_rooms_of_every_shard(trio):
    """disco#items of the service: each router shard answers for its rooms; a hidden room
    is not listed, a destroyed one no longer."""
    alice, bob, _ = trio
    rooms = [room_on("router.0", "list"), room_on("router.1", "list"), room_on("router.0", "hidden")]
    for i, r in enumerate(rooms):
        enter(alice, r, "A")
    r = alice.iq("<query xmlns='http://jabber.org/protocol/muc#owner'><x xmlns='jabber:x:data' type='submit'>"
                 "<field var='muc#roomconfig_publicroom'><value>0</value></field></x></query>", type="set", to=rooms[2])
    assert r.get("type") == "result"

    def listed():
        res = bob.iq("<query xmlns='http://jabber.org/protocol/disco#items'/>", to=MUC)
        assert res.get("type") == "result" and res.get("from") == MUC
        return {i.get("jid") for i in res.iter("{http://jabber.org/protocol/disco#items}item")}

    got = listed()
    assert rooms[0] in got and rooms[1] in got and rooms[2] not in got
    alice.send(f"<presence to='{rooms[1]}/A' type='unavailable'/>")   # last occupant: the room goes
    self_presence(alice, rooms[1], "A")
    got = listed()
    assert rooms[0] in got and rooms[1] not in got


def test_affiliation_and_role_lists(trio):
    alice, bob, carol = trio
    room = room_on("router.1", "lists")
    for c, n in ((alice, "A"), (bob, "B")):
        join_raw(c, room, n)
        self_presence(c, room, n)
    run(alice.xmpp["xep_0045"].set_affiliation(room, "member", jid=bob.bare))
    run(alice.xmpp["xep_0045"].set_affiliation(room, "outcast", jid=carol.bare))
    assert run(alice.xmpp["xep_0045"].get_affiliation_list(room, "owner")) == [alice.bare]
    assert run(alice.xmpp["xep_0045"].get_affiliation_list(room, "member")) == [bob.bare]
    assert run(alice.xmpp["xep_0045"].get_affiliation_list(room, "outcast")) == [carol.bare]
    assert run(alice.xmpp["xep_0045"].get_roles_list(room, "participant")) == ["B"]
    assert run(alice.xmpp["xep_0045"].get_roles_list(room, "moderator")) == ["A"]
    # a member is neither admin nor moderator: both refused
    r = bob.iq("<query xmlns='http://jabber.org/protocol/muc#admin'><item affiliation='member'/></query>", to=room)
    assert error_condition(r) == "forbidden"
    r = bob.iq("<query xmlns='http://jabber.org/protocol/muc#admin'><item role='moderator'/></query>", to=room)
    assert error_condition(r) == "forbidden"


def test_moderated_retraction(trio):
    """XEP-0425 0.3.0: a moderator retracts a message by the room's stanza-id."""
    alice, bob, carol = trio
    room = room_on("router.0", "moderate")
    for c, n in ((alice, "A"), (bob, "B")):
        join_raw(c, room, n)
        self_presence(c, room, n)
    assert {"urn:xmpp:message-moderate:1", "urn:xmpp:sid:0"} <= features_of(alice, room)
    groupchat(bob, room, "spam!", mid="s1")
    groupchat(bob, room, "fine", mid="s2")
    got = alice.wait("message", id="s1")
    sid = got.find("{urn:xmpp:sid:0}stanza-id")
    assert sid is not None and sid.get("by") == room
    echo = bob.wait("message", id="s1")
    assert echo.find("{urn:xmpp:sid:0}stanza-id").get("id") == sid.get("id")   # one id for every copy
    req = (f"<moderate xmlns='urn:xmpp:message-moderate:1' id='{sid.get('id')}'>"
           "<retract xmlns='urn:xmpp:message-retract:1'/><reason>no spam</reason></moderate>")
    r = bob.iq(req, type="set", to=room)   # a participant may not
    assert error_condition(r) == "forbidden"
    r = alice.iq(req, type="set", to=room)
    assert r.get("type") == "result"
    RX = "{urn:xmpp:message-retract:1}"
    for c in (alice, bob):
        m = c.wait("message", frm=room, pred=lambda e: e.find(f"{RX}retract") is not None)
        rt = m.find(f"{RX}retract")
        assert rt.get("id") == sid.get("id") and rt.find(f"{RX}reason").text == "no spam"
        assert rt.find("{urn:xmpp:message-moderate:1}moderated").get("by") == f"{room}/A"
    # a newcomer's history no longer holds it
    enter(carol, room, "C")
    hist = carol.wait("message", frm=f"{room}/B", type="groupchat")
    assert hist.find(f"{C}body").text == "fine"
    assert carol.none_before({"kind": "message", "frm": room, "pred": lambda e: e.find(f"{C}subject") is not None},
                             "message", pred=lambda e: e.find(f"{C}body") is not None and e.find(f"{C}body").text == "spam!")


def test_voice_request(trio):
    """XEP-0045 7.13 / 8.6: a visitor of a moderated room asks for voice; a moderator approves."""
    alice, bob, _ = trio
    room = room_on("router.1", "voice")
    enter(alice, room, "A")
    r = alice.iq("<query xmlns='http://jabber.org/protocol/muc#owner'><x xmlns='jabber:x:data' type='submit'>"
                 "<field var='muc#roomconfig_moderatedroom'><value>1</value></field></x></query>", type="set", to=room)
    assert r.get("type") == "result"
    join_raw(bob, room, "B")
    assert item(self_presence(bob, room, "B")).get("role") == "visitor"

    async def ask():
        bob.xmpp["xep_0045"].request_voice(room, "participant")
    run(ask())
    X = "{jabber:x:data}"
    m = alice.wait("message", frm=room, pred=lambda e: e.find(f"{X}x") is not None)
    fields = {f.get("var"): (f.findtext(f"{X}value") or "") for f in m.iter(f"{X}field")}
    assert fields["FORM_TYPE"] == "http://jabber.org/protocol/muc#request"
    assert (fields["muc#roomnick"], fields["muc#jid"], fields["muc#role"]) == ("B", bob.jid, "participant")
    # bob cannot approve himself
    answer = ("<x xmlns='jabber:x:data' type='submit'>"
              "<field var='FORM_TYPE'><value>http://jabber.org/protocol/muc#request</value></field>"
              "<field var='muc#role'><value>participant</value></field>"
              "<field var='muc#roomnick'><value>B</value></field>"
              "<field var='muc#request_allow'><value>true</value></field></x>")
    bob.send(f"<message to='{room}' id='self'>{answer}</message>")
    assert error_condition(bob.wait("message", id="self", type="error")) == "forbidden"
    alice.send(f"<message to='{room}'>{answer}</message>")
    p = bob.wait("presence", frm=f"{room}/B", pred=lambda e: item(e) is not None and item(e).get("role") == "participant")
    assert 110 in codes(p)
    groupchat(bob, room, "now I can", mid="vv")
    assert alice.wait("message", id="vv").find(f"{C}body").text == "now I can"


def test_semi_anonymous_room(trio):
    """whois moderators: real JIDs go to moderators only; no status 100; 173 on the change."""
    alice, bob, carol = trio
    room = room_on("router.0", "semi")
    enter(alice, room, "A")
    enter(carol, room, "C")
    r = alice.iq("<query xmlns='http://jabber.org/protocol/muc#owner'><x xmlns='jabber:x:data' type='submit'>"
                 "<field var='muc#roomconfig_whois'><value>moderators</value></field></x></query>", type="set", to=room)
    assert r.get("type") == "result"
    m = carol.wait("message", frm=room, pred=lambda e: 104 in codes(e))
    assert codes(m) == [104, 173]
    assert "muc_semianonymous" in features_of(bob, room) and "muc_nonanonymous" not in features_of(bob, room)
    join_raw(bob, room, "B")
    seen = {n: bob.wait("presence", frm=f"{room}/{n}") for n in ("A", "C")}
    assert all(item(p).get("jid") is None for p in seen.values())   # bob is no moderator
    own = self_presence(bob, room, "B")
    assert codes(own) == [110] and item(own).get("jid") == bob.jid
    assert item(alice.wait("presence", frm=f"{room}/B")).get("jid") == bob.jid   # the moderator sees it
    assert item(carol.wait("presence", frm=f"{room}/B")).get("jid") is None
    form = run(alice.xmpp["xep_0045"].get_room_config(room))
    assert form.get_values()["muc#roomconfig_whois"] == "moderators"


def test_memory_bounds_presence_and_history(trio):
    """A room keeps at most 16 KiB of an occupant's presence (more is refused) and 128 KiB
    of history (the oldest messages go first, whatever history_size says)."""
    alice, bob, carol = trio
    room = room_on("router.1", "bounds")
    big = "s" * (20 * 1024)
    alice.send(f"<presence to='{room}/A'><x xmlns='{NS_MUC}'/><status>{big}</status></presence>")
    assert error_condition(alice.wait("presence", frm=f"{room}/A", type="error")) == "not-acceptable"
    join_raw(alice, room, "A")
    assert 201 in codes(self_presence(alice, room, "A"))   # the refused join made no room
    alice.send(f"<presence to='{room}/A'><status>{big}</status></presence>")   # nor may an update
    assert error_condition(alice.wait("presence", frm=f"{room}/A", type="error")) == "not-acceptable"
    for i in range(3):
        groupchat(alice, room, f"{i}" + "x" * (50 * 1024), mid=f"h{i}")
        alice.wait("message", id=f"h{i}")
    enter(bob, room, "B")
    hist = [bob.wait("message", frm=f"{room}/A", type="groupchat") for _ in range(2)]
    assert [m.find(f"{C}body").text[0] for m in hist] == ["1", "2"]   # 3 x 50 KiB > 128 KiB: the first went
    assert bob.none_before({"kind": "message", "frm": room, "pred": lambda e: e.find(f"{C}subject") is not None},
                           "message", pred=lambda e: (e.findtext(f"{C}body") or "").startswith("0x"))


def test_multi_session_nick(cl, trio):
    """XEP-0045 multi-session nicks: a second resource of the same user joining under the
    same nick shares the occupant - the room sees one presence, groupchat and private
    messages to the nick reach both sessions, and one resource leaving keeps the occupant."""
    alice, bob, carol = trio
    alice2 = user(cl, "alice", "r2")
    try:
        room = room_on("router.0", "multi")
        enter(alice, room, "A")
        alice.wait("message", frm=room, type="groupchat")   # the subject
        enter(bob, room, "B")
        bob.wait("presence", frm=f"{room}/A")
        bob.wait("message", frm=room, type="groupchat")
        alice.wait("presence", frm=f"{room}/B")
        # carol may not take a nick another user holds
        join_raw(carol, room, "A")
        assert error_condition(carol.wait("presence", frm=f"{room}/A", type="error")) == "conflict"
        # alice's second resource: the occupants' presences, then its own (110), then the subject
        join_raw(alice2, room, "A")
        p = alice2.wait("presence", frm=f"{room}/B")
        assert codes(p) == []
        own = self_presence(alice2, room, "A")
        assert codes(own) == [100, 110] and item(own).get("affiliation") == "owner"
        alice2.wait("message", frm=room, type="groupchat")
        # the room saw no new presence of A, and carol's refused join left no trace either
        groupchat(bob, room, "one", "g1")
        assert bob.none_before({"kind": "message", "frm": f"{room}/B", "id": "g1"}, "presence",
                               pred=lambda e: e.get("from") == f"{room}/A")
        # a groupchat message reaches both of alice's sessions, exactly once each
        for c in (alice, alice2):
            m = c.wait("message", frm=f"{room}/B", id="g1")
            assert m.get("to") == c.jid and m.find(f"{C}body").text == "one"
        # either session speaks as A
        groupchat(alice2, room, "two", "g2")
        for c in (alice, alice2, bob):
            assert c.wait("message", frm=f"{room}/A", id="g2").find(f"{C}body").text == "two"
        # a private message to the nick reaches both sessions
        bob.send(f"<message to='{room}/A' type='chat' id='pm1'><body>psst</body>"
                 f"<x xmlns='{NS_USER}'/></message>")
        for c in (alice, alice2):
            m = c.wait("message", frm=f"{room}/B", id="pm1")
            assert m.get("to") == c.jid and m.find(f"{C}body").text == "psst"
        # a configuration change (status 104) is told to both sessions
        r = alice.iq("<query xmlns='http://jabber.org/protocol/muc#owner'><x xmlns='jabber:x:data' type='submit'>"
                     "<field var='muc#roomconfig_roomdesc'><value>two sessions</value></field></x></query>",
                     type="set", to=room)
        assert r.get("type") == "result", ET.tostring(r)
        for c in (alice, alice2, bob):
            m = c.wait("message", frm=room, type="groupchat", pred=lambda e: 104 in codes(e))
            assert m.get("to") == c.jid
        # XEP-0410 self-ping from the second session: it is joined
        r = alice2.iq("<ping xmlns='urn:xmpp:ping'/>", type="get", to=f"{room}/A")
        assert r.get("type") == "result", ET.tostring(r)
        # one resource leaves: it alone hears its unavailable (110); the occupant stays
        alice.send(f"<presence to='{room}/A' type='unavailable'/>")
        gone = alice.wait("presence", frm=f"{room}/A", type="unavailable")
        assert 110 in codes(gone)
        groupchat(bob, room, "three", "g3")
        assert bob.none_before({"kind": "message", "frm": f"{room}/B", "id": "g3"}, "presence",
                               pred=lambda e: e.get("from") == f"{room}/A")
        assert alice2.none_before({"kind": "message", "frm": f"{room}/B", "id": "g3"}, "presence",
                                  pred=lambda e: e.get("from") == f"{room}/A")
        # the one that left gets no more of the room's messages; the other still speaks as A
        groupchat(alice2, room, "four", "g4")
        assert bob.wait("message", frm=f"{room}/A", id="g4").find(f"{C}body").text == "four"
        alice.send(f"<message to='{alice.jid}' id='mark'><body>mark</body></message>")
        assert alice.none_before({"kind": "message", "id": "mark"}, "message",
                                 pred=lambda e: (e.get("from") or "").startswith(room))
        # the last session leaves: now the room sees A go
        alice2.send(f"<presence to='{room}/A' type='unavailable'/>")
        assert 110 in codes(alice2.wait("presence", frm=f"{room}/A", type="unavailable"))
        assert codes(bob.wait("presence", frm=f"{room}/A", type="unavailable")) == []
    finally:
        alice2.close()


REG = "jabber:iq:register"
DI = "http://jabber.org/protocol/disco#info"


def reg_submit(c, room, nick):
    return c.iq(f"<query xmlns='{REG}'><x xmlns='jabber:x:data' type='submit'>"
                "<field var='FORM_TYPE'><value>http://jabber.org/protocol/muc#register</value></field>"
                f"<field var='muc#register_roomnick'><value>{nick}</value></field></x></query>", type="set", to=room)


def reserved_nick(c, room):
    """The identity names of node x-roomuser-item (XEP-0045 7.12): [] or [the nick]."""
    r = c.iq(f"<query xmlns='{DI}' node='x-roomuser-item'/>", to=room)
    assert r.get("type") == "result", r
    q = r.find(f"{{{DI}}}query")
    assert q.get("node") == "x-roomuser-item"
    return [i.get("name") for i in q.findall(f"{{{DI}}}identity")]


def members(c, room):
    r = c.iq(f"<query xmlns='{NS_MUC}#admin'><item affiliation='member'/></query>", to=room)
    assert r.get("type") == "result", r
    return [(i.get("jid"), i.get("nick")) for i in r.iter(f"{{{NS_MUC}#admin}}item")]


def test_member_registration_reserved_nick(trio):
    """XEP-0045 7.10 / 7.12: the registration form, a nick reserved by registering (the
    registrant a member of the open room, told by presence), conflicts for everyone else
    (register, join, nick change), the reserved nick discovered, members-only rooms
    (nobody new registers; a member enters under the reserved nick only), and <remove/>
    (the membership it gave goes: out of the members-only room with 321)."""
    alice, bob, carol = trio
    room = room_on("router.1", "reg")
    enter(alice, room, "A")
    enter(bob, room, "B")
    assert REG in features_of(bob, room)
    form = bob.iq(f"<query xmlns='{REG}'/>", to=room)
    assert form.get("type") == "result", form
    x = form.find(f"{{{REG}}}query/{{jabber:x:data}}x")
    assert x.get("type") == "form"
    fields = {f.get("var"): f for f in x.findall("{jabber:x:data}field")}
    assert set(fields) == {"FORM_TYPE", "muc#register_roomnick"}
    assert fields["FORM_TYPE"].findtext("{jabber:x:data}value") == "http://jabber.org/protocol/muc#register"
    assert fields["muc#register_roomnick"].find("{jabber:x:data}required") is not None
    assert reserved_nick(bob, room) == []
    # the form cancelled: answered, nothing reserved
    r = bob.iq(f"<query xmlns='{REG}'><x xmlns='jabber:x:data' type='cancel'/></query>", type="set", to=room)
    assert r.get("type") == "result" and reserved_nick(bob, room) == []
    # a form without the nick: bad-request; then bob reserves "Bobby" and becomes a member
    r = bob.iq(f"<query xmlns='{REG}'><x xmlns='jabber:x:data' type='submit'/></query>", type="set", to=room)
    assert error_condition(r) == "bad-request"
    assert reg_submit(bob, room, "Bobby").get("type") == "result"
    p = alice.wait("presence", frm=f"{room}/B", pred=lambda e: item(e) is not None and
                   item(e).get("affiliation") == "member")
    assert item(p).get("role") == "participant"
    p = bob.wait("presence", frm=f"{room}/B", pred=lambda e: item(e) is not None and
                 item(e).get("affiliation") == "member")
    assert 110 in codes(p)
    r = bob.iq(f"<query xmlns='{REG}'/>", to=room)
    q = r.find(f"{{{REG}}}query")
    assert q.find(f"{{{REG}}}registered") is not None and q.findtext(f"{{{REG}}}username") == "Bobby"
    assert reserved_nick(bob, room) == ["Bobby"]
    assert reserved_nick(carol, room) == []
    assert members(alice, room) == [(bob.bare, "Bobby")]
    # the nick is bob's: carol can neither register it, nor enter with it, nor change to it
    assert error_condition(reg_submit(carol, room, "Bobby")) == "conflict"
    join_raw(carol, room, "Bobby")
    assert error_condition(carol.wait("presence", frm=f"{room}/Bobby", type="error")) == "conflict"
    enter(carol, room, "C")
    carol.send(f"<presence to='{room}/Bobby'/>")
    assert error_condition(carol.wait("presence", frm=f"{room}/Bobby", type="error")) == "conflict"
    # a nick in use by another occupant cannot be registered either
    assert error_condition(reg_submit(carol, room, "A")) == "conflict"
    # bob may use his reserved nick, of course
    bob.send(f"<presence to='{room}/Bobby'/>")
    bob.wait("presence", frm=f"{room}/Bobby", pred=lambda e: 110 in codes(e))
    # members-only: carol (no affiliation) goes (322) and may not register; bob, a
    # member with a reserved nick, enters under it only
    r = alice.iq("<query xmlns='http://jabber.org/protocol/muc#owner'><x xmlns='jabber:x:data' type='submit'>"
                 "<field var='muc#roomconfig_membersonly'><value>1</value></field></x></query>", type="set", to=room)
    assert r.get("type") == "result"
    assert codes(carol.wait("presence", frm=f"{room}/C", type="unavailable")) == [110, 322]
    assert error_condition(carol.iq(f"<query xmlns='{REG}'/>", to=room)) == "not-allowed"
    assert error_condition(reg_submit(carol, room, "Carla")) == "not-allowed"
    bob.send(f"<presence to='{room}/Bobby' type='unavailable'/>")
    bob.wait("presence", frm=f"{room}/Bobby", type="unavailable")
    join_raw(bob, room, "Robert")
    assert error_condition(bob.wait("presence", frm=f"{room}/Robert", type="error")) == "not-acceptable"
    join_raw(bob, room, "Bobby")
    p = self_presence(bob, room, "Bobby")
    assert item(p).get("affiliation") == "member"
    # remove: the reservation and the membership go; out of the members-only room (321)
    assert bob.iq(f"<query xmlns='{REG}'><remove/></query>", type="set", to=room).get("type") == "result"
    assert codes(bob.wait("presence", frm=f"{room}/Bobby", type="unavailable")) == [110, 321]
    assert members(alice, room) == []
    assert reserved_nick(bob, room) == []
    assert error_condition(bob.iq(f"<query xmlns='{REG}'><remove/></query>", type="set", to=room)) == "item-not-found"
