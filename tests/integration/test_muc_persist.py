"""tests/integration/test_muc_persist.py - persistent group chat rooms (XEP-0045 10.1.3, router/muc.c with router/muc_state.c): a room configured persistent keeps its configuration, subject and affiliations in the store, survives its last occupant leaving and a kill -9 of its router shard, is loaded when next addressed and listed while empty; a temporary room does not survive; destroying a persistent room deletes its row; on sqlite and PostgreSQL."""
import glob
import os
import sqlite3

import pytest

from harness import cluster_on, kill9_and_wait, wait_until
from mucutil import MUC, NS_MUC, codes, item, room_on
from mucutil import join_raw as join, self_presence as joined
from xmpp import C, error_condition, login

NS_OWNER = NS_MUC + "#owner"
NS_ADMIN = NS_MUC + "#admin"
DI = "http://jabber.org/protocol/disco#info"
DIT = "http://jabber.org/protocol/disco#items"
XD = "{jabber:x:data}"
USERS = ["owner", "member", "outsider", "banned"]


@pytest.fixture(scope="module", params=["sqlite", "pgsql"])
def cl(request, tmp_path_factory):
    extra = "modules: {muc: {enabled: true, max_occupants: 20, history_size: 4}}"
    with cluster_on(request.param, tmp_path_factory.mktemp("mucp"), extra=extra) as c:
        for u in USERS:
            c.ctl("register", f"{u}@localhost", "pw")
        yield c


def stored_state(cl, room):
    """The room's stored document, or None when the store has no row for it."""
    if cl.pg is not None:
        out = cl.pg.query(f"SELECT state FROM muc_room WHERE room = '{room}'")
        return out or None
    path = glob.glob(os.path.join(cl.dir, "var", "*.db"))[0]
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    try:
        row = con.execute("SELECT state FROM muc_room WHERE room = ?", (room,)).fetchone()
        return row[0] if row else None
    finally:
        con.close()


def user(cl, name):
    c = login(cl, name, "pw", "r")
    c.presence()
    c.wait("presence", frm=c.jid)
    return c


def submit(c, room, fields):
    xs = "".join(f"<field var='{k}'><value>{v}</value></field>" for k, v in fields.items())
    return c.iq(f"<query xmlns='{NS_OWNER}'><x xmlns='jabber:x:data' type='submit'>{xs}</x></query>", type="set",
                to=room)


def persistent_room(owner, room):
    """owner makes room (nick Boss) and configures it persistent."""
    join(owner, room, "Boss")
    joined(owner, room, "Boss")
    assert submit(owner, room, {"muc#roomconfig_persistentroom": "1"}).get("type") == "result"


def admin_set(c, room, jid, aff):
    return c.iq(f"<query xmlns='{NS_ADMIN}'><item jid='{jid}' affiliation='{aff}'/></query>", type="set", to=room)


def features(c, room):
    info = c.iq(f"<query xmlns='{DI}'/>", to=room)
    return info, {f.get("var") for f in info.iter(f"{{{DI}}}feature")}


def listed(c):
    res = c.iq(f"<query xmlns='{DIT}'/>", to=MUC)
    assert res.get("type") == "result"
    return {i.get("jid"): i.get("name") for i in res.iter(f"{{{DIT}}}item")}


CONFIG = {
    "muc#roomconfig_persistentroom": "1",
    "muc#roomconfig_roomname": "Kept &amp; sound",
    "muc#roomconfig_roomdesc": "survives restarts",
    "muc#roomconfig_membersonly": "1",
    "muc#roomconfig_moderatedroom": "1",
    "muc#roomconfig_passwordprotectedroom": "1",
    "muc#roomconfig_roomsecret": "s3cret",
    "muc#roomconfig_whois": "moderators",
    "muc#roomconfig_maxusers": "7",
    "muc#roomconfig_changesubject": "0",
    "muc#roomconfig_allowinvites": "0",
}


def test_persistent_room_survives_kill9_of_its_shard(cl):
    room = room_on("router.1", "keep")
    temp = room_on("router.1", "temp")
    owner, member, outsider, banned = (user(cl, u) for u in USERS)
    try:
        join(owner, room, "Boss")
        assert codes(joined(owner, room, "Boss")) == [100, 110, 201]
        r = submit(owner, room, CONFIG)
        assert r.get("type") == "result", r
        assert admin_set(owner, room, "member@localhost", "member").get("type") == "result"
        assert admin_set(owner, room, "banned@localhost", "outcast").get("type") == "result"
        owner.send(f"<message to='{room}' type='groupchat'><subject>Kept subject \u2603</subject></message>")
        owner.wait("message", frm=f"{room}/Boss", pred=lambda e: e.find(f"{C}subject") is not None)
        # the row is written (async): wait until it holds the last change
        assert wait_until(lambda: "Kept subject" in (stored_state(cl, room) or ""), 10), stored_state(cl, room)
        state = stored_state(cl, room)
        assert "banned@localhost" in state and "member@localhost" in state and "s3cret" in state
        # a temporary room with an occupant, on the same shard
        join(owner, temp, "Boss")
        joined(owner, temp, "Boss")
        # the last occupant leaves the persistent room: it stays, empty, persistent
        owner.send(f"<presence to='{room}/Boss' type='unavailable'/>")
        owner.wait("presence", frm=f"{room}/Boss", type="unavailable")
        info, feats = features(outsider, room)
        assert info.get("type") == "result" and {"muc_persistent", "muc_membersonly", "muc_moderated",
                                                 "muc_passwordprotected", "muc_semianonymous"} <= feats, feats
        # the temporary room archives (the default): its row says temporary
        assert wait_until(lambda: "temporary='1'" in (stored_state(cl, temp) or ""), 10), stored_state(cl, temp)
    finally:
        for c in (owner, member, outsider, banned):
            c.close()

    kill9_and_wait(cl, "router.1")

    owner, member, outsider, banned = (user(cl, u) for u in USERS)
    try:
        # listed by the service while nobody is in it and before anything loaded it
        rooms = listed(outsider)
        assert rooms.get(room) == "Kept & sound", rooms
        assert temp not in rooms
        # the temporary room is gone, and its row with it once addressed
        info = outsider.iq(f"<query xmlns='{DI}'/>", to=temp)
        assert error_condition(info) == "item-not-found"
        assert wait_until(lambda: stored_state(cl, temp) is None, 10), stored_state(cl, temp)
        # members-only after the restart: a non-member is refused, the outcast too
        join(outsider, room, "Out", "<password>s3cret</password>")
        assert error_condition(outsider.wait("presence", frm=f"{room}/Out", type="error")) == "registration-required"
        join(banned, room, "Ban", "<password>s3cret</password>")
        assert error_condition(banned.wait("presence", frm=f"{room}/Ban", type="error")) == "forbidden"
        # the password still holds
        join(member, room, "Mem")
        assert error_condition(member.wait("presence", frm=f"{room}/Mem", type="error")) == "not-authorized"
        join(member, room, "Mem", "<password>s3cret</password>")
        p = joined(member, room, "Mem")
        assert (item(p).get("affiliation"), item(p).get("role")) == ("member", "participant")
        subj = member.wait("message", frm=f"{room}/Boss", type="groupchat")
        assert subj.find(f"{C}subject").text == "Kept subject \u2603"
        # the owner can still configure it, without being in it
        form = owner.iq(f"<query xmlns='{NS_OWNER}'/>", to=room)
        assert form.get("type") == "result", form
        vals = {f.get("var"): (f.find(f"{XD}value").text if f.find(f"{XD}value") is not None else None)
                for f in form.iter(f"{XD}field")}
        assert vals["muc#roomconfig_persistentroom"] == "1"
        assert vals["muc#roomconfig_roomname"] == "Kept & sound"
        assert vals["muc#roomconfig_roomdesc"] == "survives restarts"
        assert vals["muc#roomconfig_membersonly"] == "1" and vals["muc#roomconfig_moderatedroom"] == "1"
        assert vals["muc#roomconfig_roomsecret"] == "s3cret" and vals["muc#roomconfig_whois"] == "moderators"
        assert vals["muc#roomconfig_maxusers"] == "7" and vals["muc#roomconfig_changesubject"] == "0"
        assert vals["muc#roomconfig_allowinvites"] == "0"
        outcasts = owner.iq(f"<query xmlns='{NS_ADMIN}'><item affiliation='outcast'/></query>", to=room)
        assert [i.get("jid") for i in outcasts.iter(f"{{{NS_ADMIN}}}item")] == ["banned@localhost"]
        assert submit(owner, room, {"muc#roomconfig_roomname": "Renamed"}).get("type") == "result"
        member.wait("message", frm=room, pred=lambda e: 104 in codes(e))
        assert wait_until(lambda: "Renamed" in (stored_state(cl, room) or ""), 10)
        # destroyed: its row goes, and it is not loaded again
        r = owner.iq(f"<query xmlns='{NS_OWNER}'><destroy><reason>done</reason></destroy></query>", type="set", to=room)
        assert r.get("type") == "result"
        member.wait("presence", frm=f"{room}/Mem", type="unavailable")
        assert wait_until(lambda: stored_state(cl, room) is None, 10), stored_state(cl, room)
        info = outsider.iq(f"<query xmlns='{DI}'/>", to=room)
        assert error_condition(info) == "item-not-found"
    finally:
        for c in (owner, member, outsider, banned):
            c.close()


def test_persistence_turned_off_and_room_recreated(cl):
    """A persistent room made temporary keeps a temporary room's row (it archives), or none
    once archiving is off too; an emptied one goes; the same name made again starts fresh
    (nothing of the old room is loaded)."""
    room = room_on("router.0", "flip")
    owner, member, outsider, banned = (user(cl, u) for u in USERS)
    try:
        join(owner, room, "Boss")
        joined(owner, room, "Boss")
        assert submit(owner, room, {"muc#roomconfig_persistentroom": "1",
                                    "muc#roomconfig_roomname": "Flip"}).get("type") == "result"
        assert wait_until(lambda: stored_state(cl, room) is not None, 10)
        assert "muc_persistent" in features(outsider, room)[1]
        assert submit(owner, room, {"muc#roomconfig_persistentroom": "0"}).get("type") == "result"
        assert wait_until(lambda: "temporary='1'" in (stored_state(cl, room) or ""), 10)
        assert "muc_temporary" in features(outsider, room)[1]
        assert submit(owner, room, {"muc#roomconfig_enablearchiving": "0"}).get("type") == "result"
        assert wait_until(lambda: stored_state(cl, room) is None, 10)
        owner.send(f"<presence to='{room}/Boss' type='unavailable'/>")
        owner.wait("presence", frm=f"{room}/Boss", type="unavailable")
        assert error_condition(outsider.iq(f"<query xmlns='{DI}'/>", to=room)) == "item-not-found"
        # made again by someone else: a new room, its creator the owner
        join(outsider, room, "New")
        p = joined(outsider, room, "New")
        assert 201 in codes(p) and item(p).get("affiliation") == "owner"
        info, feats = features(outsider, room)
        assert "muc_temporary" in feats and "muc_open" in feats
    finally:
        for c in (owner, member, outsider, banned):
            c.close()


def test_stanzas_to_a_room_wait_for_its_load(cl):
    """After a restart, several stanzas to a persistent room arrive before it is loaded:
    each is answered, in order, as by the loaded room."""
    room = room_on("router.0", "burst")
    owner, member, outsider, banned = (user(cl, u) for u in USERS)
    try:
        persistent_room(owner, room)
        assert admin_set(owner, room, "member@localhost", "member").get("type") == "result"
        assert wait_until(lambda: "member@localhost" in (stored_state(cl, room) or ""), 10)
    finally:
        for c in (owner, member, outsider, banned):
            c.close()
    kill9_and_wait(cl, "router.0")
    owner, member = user(cl, "owner"), user(cl, "member")
    try:
        # sent back to back: the first triggers the load, the rest wait with it
        for i in range(5):
            member.send(f"<iq type='get' id='b{i}' to='{room}'><query xmlns='{DI}'/></iq>")
        join(member, room, "Mem")
        join(owner, room, "Boss")
        for i in range(5):
            r = member.wait("iq", id=f"b{i}")
            assert r.get("type") == "result" and r.find(f"{{{DI}}}query/{{{DI}}}feature[@var='muc_persistent']") is not None
        assert item(joined(member, room, "Mem")).get("affiliation") == "member"
        assert item(joined(owner, room, "Boss")).get("affiliation") == "owner"
    finally:
        owner.close()
        member.close()


def test_reserved_nick_survives_kill9(cl):
    """A nick reserved by registering with a persistent room (XEP-0045 7.10) is stored with
    the affiliations: after a kill -9 of the room's shard it is still the member's (7.12
    says so) and nobody else's (conflict)."""
    room = room_on("router.0", "reserve")
    owner, member, outsider, banned = (user(cl, u) for u in USERS)
    try:
        persistent_room(owner, room)
        r = member.iq("<query xmlns='jabber:iq:register'><x xmlns='jabber:x:data' type='submit'>"
                      "<field var='muc#register_roomnick'><value>Kept\u2603</value></field></x></query>",
                      type="set", to=room)
        assert r.get("type") == "result", r
        assert wait_until(lambda: "nick='Kept\u2603'" in (stored_state(cl, room) or ""), 10), stored_state(cl, room)
    finally:
        for c in (owner, member, outsider, banned):
            c.close()
    kill9_and_wait(cl, "router.0")
    member, outsider = user(cl, "member"), user(cl, "outsider")
    try:
        r = member.iq(f"<query xmlns='{DI}' node='x-roomuser-item'/>", to=room)
        assert [i.get("name") for i in r.iter(f"{{{DI}}}identity")] == ["Kept\u2603"], r
        join(outsider, room, "Kept\u2603")
        assert error_condition(outsider.wait("presence", frm=f"{room}/Kept\u2603", type="error")) == "conflict"
        join(member, room, "Kept\u2603")
        assert item(joined(member, room, "Kept\u2603")).get("affiliation") == "member"
    finally:
        member.close()
        outsider.close()


def write_row(cl, room, state):
    """Puts a row for room straight into the store, as another writer (or a corruption) would."""
    if cl.pg is not None:
        cl.pg.query(f"INSERT INTO muc_room (room, service, public, name, state, updated_us) VALUES "
                    f"('{room}', '{MUC}', 1, NULL, '{state}', 0)")
        return
    path = glob.glob(os.path.join(cl.dir, "var", "*.db"))[0]
    con = sqlite3.connect(path, timeout=5)
    try:
        con.execute("INSERT INTO muc_room (room, service, public, name, state, updated_us) VALUES (?, ?, 1, NULL, ?, 0)",
                    (room, MUC, state))
        con.commit()
    finally:
        con.close()


def test_unreadable_row_is_refused_not_replaced(cl):
    """A stored room whose row cannot be read is not made up anew (that would overwrite it):
    stanzas to it are answered wait/internal-server-error and the row stays as it was. A
    readable row written by someone else is loaded as it is."""
    broken = room_on("router.0", "broken")
    good = room_on("router.1", "given")
    write_row(cl, broken, "<room xmlns=''urn:meerkat:muc-room:1'' creator=''owner@localhost''><config/></room>"
              if cl.pg is not None else
              "<room xmlns='urn:meerkat:muc-room:1' creator='owner@localhost'><config/></room>")
    doc = ("<room xmlns='urn:meerkat:muc-room:1' creator='owner@localhost'><config public='1' members_only='0' "
           "moderated='0' change_subject='1' allow_invites='1' whois='anyone' max_users='3'/><name>Given</name>"
           "<subject>from the store</subject><aff jid='member@localhost' affiliation='owner'/></room>")
    write_row(cl, good, doc.replace("'", "''") if cl.pg is not None else doc)
    member = user(cl, "member")
    try:
        join(member, broken, "M")
        assert error_condition(member.wait("presence", frm=f"{broken}/M", type="error")) == "internal-server-error"
        assert stored_state(cl, broken).endswith("<config/></room>")
        join(member, good, "M")
        p = joined(member, good, "M")
        assert 201 not in codes(p) and item(p).get("affiliation") == "owner"
        assert member.wait("message", frm=good, type="groupchat").find(f"{C}subject").text == "from the store"
        info, feats = features(member, good)
        assert "muc_persistent" in feats
        assert info.find(f"{{{DI}}}query/{{{DI}}}identity").get("name") == "Given"
    finally:
        member.close()


def test_whole_cluster_restart_keeps_what_was_acknowledged(cl):
    """Every process stopped (SIGTERM) right after the owner's changes were acknowledged,
    then started again: the router let its queued writes finish before exiting, and the
    room is back with them. Last in this module: it restarts the cluster."""
    room = room_on("router.0", "whole")
    owner = user(cl, "owner")
    try:
        join(owner, room, "Boss")
        joined(owner, room, "Boss")
        assert submit(owner, room, {"muc#roomconfig_persistentroom": "1",
                                    "muc#roomconfig_membersonly": "1"}).get("type") == "result"
        assert admin_set(owner, room, "banned@localhost", "outcast").get("type") == "result"
    finally:
        owner.close()
    cl.stop()
    cl.start()
    assert "banned@localhost" in (stored_state(cl, room) or "")
    outsider, banned = user(cl, "outsider"), user(cl, "banned")
    try:
        join(outsider, room, "O")
        assert error_condition(outsider.wait("presence", frm=f"{room}/O", type="error")) == "registration-required"
        join(banned, room, "B")
        assert error_condition(banned.wait("presence", frm=f"{room}/B", type="error")) == "forbidden"
    finally:
        outsider.close()
        banned.close()
