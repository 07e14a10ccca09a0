"""tests/integration/test_muc_mam.py - a room's archive (XEP-0313 on the room JID, router/muc.c + mam/): one write per groupchat message from the room's router shard, <stanza-id by=room/> equal to the archive id, queries with slixmpp's xep_0313 (order, RSM paging, a with filter), who may read it (occupants, members; not outcasts, not strangers to a members-only room), real JIDs only where the asker may see them, archiving turned off and on, read-your-writes, kill -9 of the mam shard during the messages, and history from the archive after a kill -9 of the room's router shard; on 2 c2s and 2 router shards, sqlite and PostgreSQL."""
import os
import signal
import uuid
import xml.etree.ElementTree as ET

import pytest

from harness import cluster_on, wait_until
from mucutil import NS_MUC, XU, codes, room_on
from xmpp import C, error_condition, login, run

NS_SID = "urn:xmpp:sid:0"
NS_MAM = "urn:xmpp:mam:2"
USERS = ["alice", "bob", "carol", "dave"]


@pytest.fixture(scope="module", params=["sqlite", "pgsql"])
def cl(request, tmp_path_factory):
    # Commits every 300 ms: a query that did not wait for the room's writes would miss them.
    extra = "modules: {muc: {enabled: true}, mam: {batch_ms: 300}}"
    with cluster_on(request.param, tmp_path_factory.mktemp("mucmam"), extra=extra) as c:
        for u in USERS:
            c.ctl("register", f"{u}@localhost", "pw")
        yield c


async def _plugins(x):
    x.register_plugin("xep_0030")
    x.register_plugin("xep_0045")
    x.register_plugin("xep_0313")


def user(cl, name):
    c = login(cl, name, "pw", "r" + uuid.uuid4().hex[:4])
    run(_plugins(c.xmpp))
    c.presence()
    c.wait("presence", frm=c.jid)
    return c


@pytest.fixture
def trio(cl):
    cs = [user(cl, n) for n in ("alice", "bob", "carol")]
    yield cs
    for c in cs:
        c.close()


def create(c, room, nick, fields=None):
    """c creates room (owner) and makes it persistent: a persistent room has an archive,
    from when its row is stored (disco says so)."""
    join(c, room, nick)
    configure(c, room, {"muc#roomconfig_persistentroom": 1, **(fields or {})})
    assert wait_until(lambda: NS_MAM in features_of(c, room), 10)


def join(c, room, nick):
    c.send(f"<presence to='{room}/{nick}'><x xmlns='{NS_MUC}'><history maxstanzas='0'/></x></presence>")
    c.wait("presence", frm=f"{room}/{nick}", pred=lambda e: 110 in codes(e))
    c.wait("message", frm=room, type="groupchat", child=f"{C}subject")


def say(c, room, body, extra=""):
    c.send(f"<message to='{room}' type='groupchat'><body>{body}</body>{extra}</message>")


def got(c, room, nick, body):
    """The room's stanza-id of the copy of body from nick that c received (exactly one)."""
    el = c.wait("message", frm=f"{room}/{nick}", type="groupchat", pred=lambda e: e.findtext(f"{C}body") == body)
    sids = el.findall(f"{{{NS_SID}}}stanza-id")
    assert [s.get("by") for s in sids] == [room], [s.attrib for s in sids]
    return sids[0].get("id")


def configure(c, room, fields):
    x = "".join(f"<field var='{k}'><value>{v}</value></field>" for k, v in fields.items())
    r = c.iq(f"<query xmlns='http://jabber.org/protocol/muc#owner'><x xmlns='jabber:x:data' type='submit'>{x}</x>"
             "</query>", type="set", to=room)
    assert r.get("type") == "result", r
    c.wait("message", frm=room, pred=lambda e: 104 in codes(e))


def features_of(c, room):
    info = c.iq("<query xmlns='http://jabber.org/protocol/disco#info'/>", to=room)
    return {f.get("var") for f in info.iter("{http://jabber.org/protocol/disco#info}feature")}


def archive(c, room, page=None, with_jid=None):
    """The room's archive as c reads it with slixmpp's xep_0313 (RSM pages of `page`):
    a list of pages, each a list of (archive id, from, body, real jid or None)."""
    from slixmpp import JID

    async def go():
        pages = []
        rsm = {"max": page} if page else None
        wj = JID(with_jid) if with_jid else None
        async for p in c.xmpp["xep_0313"].retrieve(jid=JID(room), with_jid=wj, iterator=True, rsm=rsm):
            out = []
            for m in p["mam"]["results"]:
                st = m["mam_result"]["forwarded"]["stanza"]
                it = st.xml.find(f"{XU}x/{XU}item")
                out.append((m["mam_result"]["id"], str(st["from"]), st["body"],
                            it.get("jid") if it is not None else None))
            pages.append(out)
        return pages
    return run(go(), 30)


def mam_iq(c, room):
    return c.iq(f"<query xmlns='{NS_MAM}'/>", type="set", to=room, timeout=20)


def test_archive_order_stanza_ids_and_paging(cl, trio):
    """Two occupants (users and room spread over both router shards) write alternately:
    the archive holds each message once, in order, from the sender's occupant JID, with
    the stanza-id every occupant got; RSM pages of 2 read it in order too; disco says
    urn:xmpp:mam:2."""
    alice, bob, _ = trio
    room = room_on("router.0", "order", unique=True)
    join(alice, room, "Al")
    configure(alice, room, {"muc#roomconfig_persistentroom": 1})
    assert wait_until(lambda: NS_MAM in features_of(alice, room), 10)
    join(bob, room, "Bo")
    assert NS_MAM in features_of(bob, room)
    sent = []
    for i in range(5):
        c, nick = (alice, "Al") if i % 2 == 0 else (bob, "Bo")
        body = f"msg {i} \u00e9\U0001F600 <&>"
        say(c, room, body.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;"))
        sid_a = got(alice, room, nick, body)
        sid_b = got(bob, room, nick, body)
        assert sid_a == sid_b
        sent.append((sid_a, f"{room}/{nick}", body, c.bare))
    pages = archive(bob, room)
    assert [r for p in pages for r in p] == sent   # non-anonymous: real (bare) JIDs kept
    pages = archive(alice, room, page=2)
    assert [len(p) for p in pages] == [2, 2, 1]
    assert [r for p in pages for r in p] == sent
    # The forms of a user's archive: the form itself, "with" an occupant JID.
    form = bob.iq(f"<query xmlns='{NS_MAM}'/>", to=room)
    assert {"with", "start", "end", "full-text-search"} <= {f.get("var") for f in form.iter("{jabber:x:data}field")}
    assert [r for p in archive(bob, room, with_jid=f"{room}/Bo") for r in p] == [sent[1], sent[3]]


def test_forged_stanza_id_is_stripped(cl, trio):
    """A stanza-id by the room sent by a client is a forgery: the copies and the archive
    carry the room's own only."""
    alice, bob, _ = trio
    room = room_on("router.1", "forge", unique=True)
    create(alice, room, "Al")
    join(bob, room, "Bo")
    say(alice, room, "forged", f"<stanza-id xmlns='{NS_SID}' by='{room}' id='FORGED'/>")
    sid = got(bob, room, "Al", "forged")
    assert sid != "FORGED"
    assert [r[0] for p in archive(bob, room) for r in p] == [sid]


def test_who_may_read(cl, trio):
    """An outcast is refused; a members-only room refuses a stranger and answers a member
    who is not in the room; prefs are not a room's."""
    alice, bob, carol = trio
    room = room_on("router.0", "who", unique=True)
    create(alice, room, "Al")
    say(alice, room, "first")
    sid = got(alice, room, "Al", "first")
    # open room: anyone not banned may read; carol banned: forbidden
    assert [r[0] for p in archive(carol, room) for r in p] == [sid]
    run(alice.xmpp["xep_0045"].set_affiliation(room, "outcast", jid=carol.bare))
    assert error_condition(mam_iq(carol, room)) == "forbidden"
    # members-only: bob (no affiliation, not in the room) refused; made a member, answered
    configure(alice, room, {"muc#roomconfig_membersonly": 1})
    assert error_condition(mam_iq(bob, room)) == "forbidden"
    run(alice.xmpp["xep_0045"].set_affiliation(room, "member", jid=bob.bare))
    assert [r[0] for p in archive(bob, room) for r in p] == [sid]
    r = bob.iq(f"<prefs xmlns='{NS_MAM}' default='always'/>", type="set", to=room)
    assert error_condition(r) == "feature-not-implemented"


def test_semi_anonymous_room_hides_real_jids(cl, trio):
    """whois=moderators: a participant's results leave the real JIDs out; the owner's
    (a moderator) have them."""
    alice, bob, _ = trio
    room = room_on("router.1", "anon", unique=True)
    create(alice, room, "Al", {"muc#roomconfig_whois": "moderators"})
    join(bob, room, "Bo")
    say(bob, room, "who am i")
    sid = got(alice, room, "Bo", "who am i")
    assert archive(bob, room) == [[(sid, f"{room}/Bo", "who am i", None)]]
    assert archive(alice, room) == [[(sid, f"{room}/Bo", "who am i", bob.bare)]]


def test_archiving_turned_off_and_on(cl, trio):
    """muc#roomconfig_enablearchiving off: not advertised, queries refused, messages not
    written; on again: only what came after is there."""
    alice, bob, _ = trio
    room = room_on("router.0", "off", unique=True)
    create(alice, room, "Al")
    join(bob, room, "Bo")
    form = run(alice.xmpp["xep_0045"].get_room_config(room))
    assert form.get_values()["muc#roomconfig_enablearchiving"] in (True, "1")
    configure(alice, room, {"muc#roomconfig_enablearchiving": 0})
    assert NS_MAM not in features_of(bob, room)
    assert error_condition(mam_iq(bob, room)) == "service-unavailable"
    say(alice, room, "unarchived")
    got(bob, room, "Al", "unarchived")
    configure(alice, room, {"muc#roomconfig_enablearchiving": 1})
    say(alice, room, "archived")
    sid = got(bob, room, "Al", "archived")
    assert [r[0] for p in archive(bob, room) for r in p] == [sid]


def archive_rows(cl, room):
    """The rows the store holds in the room's archive (straight from the database)."""
    local, service = room.split("@")
    if cl.pg is not None:
        return int(cl.pg.query(f"SELECT count(*) FROM mam_message WHERE username = '{local}' AND domain = '{service}'"))
    import glob
    import sqlite3
    path = glob.glob(os.path.join(cl.dir, "var", "*.db"))[0]
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    try:
        return con.execute("SELECT count(*) FROM mam_message WHERE username = ? AND domain = ?",
                           (local, service)).fetchone()[0]
    finally:
        con.close()


def test_temporary_room_archive(cl, trio):
    """A temporary room archives too (muc#roomconfig_enablearchiving, on by default, as
    with MongooseIM's mod_mam_muc) once its row is stored: its occupants query it while it
    lives. Archiving off: the archive goes at once; on again: only what came after. The
    archive goes with the room when its last occupant leaves: the same name made again
    has an empty one."""
    alice, bob, _ = trio
    room = room_on("router.1", "temp", unique=True)
    join(alice, room, "Al")
    assert wait_until(lambda: NS_MAM in features_of(alice, room), 10)
    assert "muc_temporary" in features_of(alice, room)
    form = run(alice.xmpp["xep_0045"].get_room_config(room))
    assert form.get_values()["muc#roomconfig_enablearchiving"] in (True, "1")
    join(bob, room, "Bo")
    say(alice, room, "t1")
    s1 = got(bob, room, "Al", "t1")
    say(bob, room, "t2")
    s2 = got(alice, room, "Bo", "t2")
    assert [(r[0], r[2]) for p in archive(bob, room) for r in p] == [(s1, "t1"), (s2, "t2")]
    # off: not advertised, refused, and the archive is gone from the store
    configure(alice, room, {"muc#roomconfig_enablearchiving": 0})
    assert NS_MAM not in features_of(bob, room)
    assert error_condition(mam_iq(bob, room)) == "service-unavailable"
    assert wait_until(lambda: archive_rows(cl, room) == 0, 10)
    say(alice, room, "unarchived")
    got(bob, room, "Al", "unarchived")
    # on again: archived from when the row is back
    configure(alice, room, {"muc#roomconfig_enablearchiving": 1})
    assert wait_until(lambda: NS_MAM in features_of(bob, room), 10)
    say(alice, room, "t3")
    s3 = got(bob, room, "Al", "t3")
    assert [(r[0], r[2]) for p in archive(bob, room) for r in p] == [(s3, "t3")]
    assert archive_rows(cl, room) == 1
    # the last occupant leaves: the room and its archive go
    for c, nick in ((bob, "Bo"), (alice, "Al")):
        c.send(f"<presence to='{room}/{nick}' type='unavailable'/>")
        c.wait("presence", frm=f"{room}/{nick}", type="unavailable", pred=lambda e: 110 in codes(e))
    assert wait_until(lambda: archive_rows(cl, room) == 0, 10)
    join(bob, room, "Bo")
    assert wait_until(lambda: NS_MAM in features_of(bob, room), 10)
    assert [r for p in archive(bob, room) for r in p] == []


RX = "{urn:xmpp:message-retract:1}"
MX = "{urn:xmpp:message-moderate:1}"


def fts(c, room, words):
    """The archive ids a full-text search of the room's archive finds (raw MAM query)."""
    qid = uuid.uuid4().hex[:8]
    r = c.iq(f"<query xmlns='{NS_MAM}' queryid='{qid}'><x xmlns='jabber:x:data' type='submit'>"
             f"<field var='FORM_TYPE' type='hidden'><value>{NS_MAM}</value></field>"
             f"<field var='full-text-search'><value>{words}</value></field></x></query>", type="set", to=room,
             timeout=20)
    assert r.get("type") == "result", r
    ids = []
    while True:
        try:
            m = c.wait("message", frm=room, timeout=0.01,
                       pred=lambda e: e.find(f"{{{NS_MAM}}}result[@queryid='{qid}']") is not None)
        except TimeoutError:
            return ids   # the results come before the answer: all taken
        ids.append(m.find(f"{{{NS_MAM}}}result").get("id"))


def test_moderation_retraction_in_archive(cl, trio):
    """XEP-0425 and the room's archive: the retraction is archived (its archive id is the
    stanza-id every occupant got with it), and the moderated message's row becomes a
    tombstone - same id and sender, <retracted/> with <moderated by/> and the reason, no
    body - so a query (and a full-text search) no longer gives its content; the other
    messages are untouched. Destroying the room deletes its archive."""
    alice, bob, carol = trio
    room = room_on("router.0", "moder", unique=True)
    create(alice, room, "Al")
    join(bob, room, "Bo")
    say(bob, room, "buy cheapspam now")
    s_spam = got(alice, room, "Bo", "buy cheapspam now")
    say(bob, room, "fine words")
    s_fine = got(alice, room, "Bo", "fine words")
    assert fts(carol, room, "cheapspam") == [s_spam]
    r = alice.iq(f"<moderate xmlns='urn:xmpp:message-moderate:1' id='{s_spam}'>"
                 "<retract xmlns='urn:xmpp:message-retract:1'/><reason>spam</reason></moderate>", type="set", to=room)
    assert r.get("type") == "result", r
    copies = [c.wait("message", frm=room, pred=lambda e: e.find(f"{RX}retract") is not None) for c in (alice, bob)]
    s_retract = {c.find(f"{{{NS_SID}}}stanza-id").get("id") for c in copies}
    assert len(s_retract) == 1
    s_retract = s_retract.pop()

    def results():
        """(id, from, stanza) of the whole archive, read by carol (an outsider of an open room)."""
        from slixmpp import JID

        async def go():
            out = []
            async for p in carol.xmpp["xep_0313"].retrieve(jid=JID(room), iterator=True):
                for m in p["mam"]["results"]:
                    st = m["mam_result"]["forwarded"]["stanza"]
                    out.append((m["mam_result"]["id"], str(st["from"]), st.xml))
            return out
        return run(go(), 30)

    assert wait_until(lambda: results()[0][2].find(f"{C}body") is None, 10), results()
    got_rows = results()
    assert [(i, f) for i, f, _ in got_rows] == [(s_spam, f"{room}/Bo"), (s_fine, f"{room}/Bo"), (s_retract, room)]
    stone, fine, retraction = (x for _, _, x in got_rows)
    rt = stone.find(f"{RX}retracted")
    assert rt is not None and rt.get("stamp")
    assert rt.find(f"{MX}moderated").get("by") == f"{room}/Al"
    assert rt.find(f"{RX}reason").text == "spam"
    assert [e.get("id") for e in stone.findall(f"{{{NS_SID}}}stanza-id")] == [s_spam]
    assert stone.find(f"{XU}x/{XU}item").get("jid") == bob.bare
    assert "cheapspam" not in ET.tostring(stone, encoding="unicode")
    assert fine.find(f"{C}body").text == "fine words"
    assert retraction.find(f"{RX}retract").get("id") == s_spam
    assert retraction.find(f"{RX}retract/{MX}moderated").get("by") == f"{room}/Al"
    assert retraction.find(f"{C}body") is None
    assert fts(carol, room, "cheapspam") == []
    assert fts(carol, room, "fine") == [s_fine]
    # destroyed: its archive goes with its row
    r = alice.iq("<query xmlns='http://jabber.org/protocol/muc#owner'><destroy/></query>", type="set", to=room)
    assert r.get("type") == "result", r
    assert wait_until(lambda: archive_rows(cl, room) == 0, 10)


def test_reads_its_own_writes(cl, trio):
    """An occupant who got a message and asks the room's archive at once finds it there
    (the shard commits every 300 ms: the query waits for the room's writes)."""
    alice, bob, _ = trio
    room = room_on("router.1", "ryw", unique=True)
    create(alice, room, "Al")
    join(bob, room, "Bo")
    sids = []
    for i in range(4):
        say(alice, room, f"ryw {i}")
        sids.append(got(bob, room, "Al", f"ryw {i}"))
        assert [r[0] for p in archive(bob, room) for r in p] == sids, f"round {i}"


def test_kill_mam_during_messages_loses_nothing(cl, trio):
    """kill -9 of the mam shard while the room's messages flow: each one is in the
    archive once, in order, after it is back (the room's writes are on the router's
    reliable channel)."""
    alice, bob, _ = trio
    room = room_on("router.0", "kill", unique=True)
    create(alice, room, "Al")
    join(bob, room, "Bo")
    sids = []
    kills = []
    for i in range(30):
        if i in (8, 20):
            assert wait_until(lambda: cl.child_pid("mam.0") is not None and cl.healthy("mam.0"), 30)
            pid = cl.child_pid("mam.0")
            os.kill(pid, signal.SIGKILL)
            kills.append(pid)
        c, nick = (alice, "Al") if i % 3 else (bob, "Bo")
        say(c, room, f"k{i:02d}")
        sids.append(got(alice, room, nick, f"k{i:02d}"))
    assert len(set(kills)) == 2
    assert wait_until(lambda: cl.child_pid("mam.0") is not None and cl.healthy("mam.0"), 30)
    assert [(r[0], r[2]) for p in archive(bob, room, page=100) for r in p] == \
        [(s, f"k{i:02d}") for i, s in enumerate(sids)]


def test_join_after_restart_gets_history_from_archive(cl):
    """After a kill -9 of its router shard (history lives in memory), a persistent room's
    last messages come back from its archive: a joiner asking for 3 gets the last 3, in
    order, with the occupant JIDs, delay stamps and the stanza-ids the occupants got; a
    moderated message (a tombstone in the archive) and the retraction are not history."""
    room = room_on("router.1", "hist", unique=True)
    alice, bob = user(cl, "alice"), user(cl, "bob")
    try:
        create(alice, room, "Al")
        join(bob, room, "Bo")
        sent = []
        for i in range(5):
            c, nick = (alice, "Al") if i % 2 == 0 else (bob, "Bo")
            say(c, room, f"h{i}")
            sent.append((f"{room}/{nick}", f"h{i}", got(alice, room, nick, f"h{i}")))
        # committed (a query sees what came before it): the kill cannot lose them
        assert [r[0] for p in archive(bob, room) for r in p] == [s[2] for s in sent]
        r = alice.iq(f"<moderate xmlns='urn:xmpp:message-moderate:1' id='{sent[3][2]}'>"
                     "<retract xmlns='urn:xmpp:message-retract:1'/></moderate>", type="set", to=room)
        assert r.get("type") == "result", r
        assert wait_until(lambda: not [r[2] for p in archive(bob, room) for r in p][3], 10)
        del sent[3]
    finally:
        alice.close()
        bob.close()
    old = cl.child_pid("router.1")
    os.kill(old, signal.SIGKILL)
    assert wait_until(lambda: (cl.child_pid("router.1") or old) != old and cl.healthy("router.1"), 30)
    carol = user(cl, "carol")
    try:
        carol.send(f"<presence to='{room}/Ca'><x xmlns='{NS_MUC}'><history maxstanzas='3'/></x></presence>")
        carol.wait("presence", frm=f"{room}/Ca", pred=lambda e: 110 in codes(e), timeout=20)
        # the history, then the subject (same path: what came before the subject is all of it)
        carol.wait("message", frm=room, child=f"{C}subject", timeout=20)
        with carol.cond:
            before = [e for e in carol.inbox if e.get("type") == "groupchat" and e.find(f"{C}subject") is None]
        assert all(e.findtext(f"{C}body") is not None for e in before), [ET.tostring(e) for e in before]
        assert all(e.find("{urn:xmpp:delay}delay") is not None for e in before)
        hist = [(e.get("from"), e.findtext(f"{C}body"),
                 [s.get("id") for s in e.findall(f"{{{NS_SID}}}stanza-id") if s.get("by") == room]) for e in before]
        assert hist == [(f, b, [s]) for f, b, s in sent[1:]]
    finally:
        carol.close()
