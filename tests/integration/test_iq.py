"""tests/integration/test_iq.py - IQs the server answers: disco, version, ping, time, vCard, private storage, blocking, last activity."""
import re
import time

import pytest

from harness import Cluster, cluster_on, wait_until
from xmpp import error_condition, login, q

USERS = ["ia", "ib", "ic", "ba", "bb", "la", "lb", "lc"]


@pytest.fixture(scope="module", params=["sqlite", "pgsql"])
def cl(request, tmp_path_factory):
    """2 c2s, 2 router shards and a mam, on sqlite and on a real PostgreSQL."""
    with cluster_on(request.param, tmp_path_factory.mktemp("iq")) as c:
        for u in USERS:
            c.ctl("register", f"{u}@localhost", "pw")
        yield c


@pytest.fixture
def ia(cl):
    c = login(cl, "ia", "pw", "r")
    yield c
    c.close()


def test_disco(ia):
    r = ia.iq("<query xmlns='http://jabber.org/protocol/disco#info'/>", to="localhost")
    ident = q(r, "d:query/d:identity")
    assert (ident.get("category"), ident.get("type")) == ("server", "im")
    feats = {f.get("var") for f in r.iter("{http://jabber.org/protocol/disco#info}feature")}
    for ns in ("urn:xmpp:ping", "jabber:iq:version", "urn:xmpp:time", "vcard-temp", "jabber:iq:private",
               "urn:xmpp:blocking", "jabber:iq:last", "jabber:iq:register", "jabber:iq:roster", "msgoffline",
               "http://jabber.org/protocol/disco#info", "http://jabber.org/protocol/disco#items"):
        assert ns in feats, ns
    r = ia.iq("<query xmlns='http://jabber.org/protocol/disco#items'/>", to="localhost")
    assert r.get("type") == "result" and q(r, "di:query") is not None
    r = ia.iq("<query xmlns='http://jabber.org/protocol/disco#info'/>", to="ib@localhost")
    ident = q(r, "d:query/d:identity")
    assert (ident.get("category"), ident.get("type")) == ("account", "registered")
    r = ia.iq("<query xmlns='http://jabber.org/protocol/disco#info'/>", to="nosuchuser@localhost")
    assert error_condition(r) == "service-unavailable"
    r = ia.iq("<query xmlns='http://jabber.org/protocol/disco#info' node='x'/>", to="localhost")
    assert error_condition(r) == "item-not-found"


def test_version_ping_time_and_unknown(ia):
    r = ia.iq("<query xmlns='jabber:iq:version'/>", to="localhost")
    assert q(r, "ver:query/ver:name").text == "Meerkat" and q(r, "ver:query/ver:version").text == "0.1.0"
    assert error_condition(ia.iq("<query xmlns='jabber:iq:version'/>", type="set", to="localhost")) == \
        "feature-not-implemented"
    assert ia.iq("<ping xmlns='urn:xmpp:ping'/>", to="localhost").get("type") == "result"
    assert ia.iq("<ping xmlns='urn:xmpp:ping'/>", to="ib@localhost").get("type") == "result"
    assert ia.iq("<ping xmlns='urn:xmpp:ping'/>").get("type") == "result"
    r = ia.iq("<time xmlns='urn:xmpp:time'/>", to="localhost")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", q(r, "t:time/t:utc").text)
    assert q(r, "t:time/t:tzo").text == "+00:00"
    assert error_condition(ia.iq("<query xmlns='urn:example:nothing'/>", to="localhost")) == "service-unavailable"
    assert error_condition(ia.iq("<query xmlns='urn:example:nothing'/>", to="ib@localhost")) == "service-unavailable"


def test_vcard(cl, ia):
    empty = ia.iq("<vCard xmlns='vcard-temp'/>", to="ib@localhost")
    assert empty.get("type") == "result" and len(list(q(empty, "v:vCard"))) == 0
    r = ia.iq("<vCard xmlns='vcard-temp'><FN>Ia \U0001F98A Example</FN><NICKNAME>ia</NICKNAME></vCard>", type="set")
    assert r.get("type") == "result"
    mine = ia.iq("<vCard xmlns='vcard-temp'/>")
    assert q(mine, "v:vCard/v:FN").text == "Ia \U0001F98A Example"
    b = login(cl, "ib", "pw", "r")
    try:
        theirs = b.iq("<vCard xmlns='vcard-temp'/>", to="ia@localhost")
        assert q(theirs, "v:vCard/v:NICKNAME").text == "ia"
        r = b.iq("<vCard xmlns='vcard-temp'><FN>hijack</FN></vCard>", type="set", to="ia@localhost")
        assert error_condition(r) == "forbidden"
    finally:
        b.close()


def test_private_storage(ia):
    r = ia.iq("<query xmlns='jabber:iq:private'><storage xmlns='storage:bookmarks'/></query>")
    assert r.get("type") == "result" and len(list(q(r, "p:query/{storage:bookmarks}storage"))) == 0
    r = ia.iq("<query xmlns='jabber:iq:private'><storage xmlns='storage:bookmarks'>"
              "<conference jid='room@muc.example' name='R'/></storage></query>", type="set")
    assert r.get("type") == "result"
    r = ia.iq("<query xmlns='jabber:iq:private'><storage xmlns='storage:bookmarks'/></query>")
    conf = q(r, "p:query/{storage:bookmarks}storage/{storage:bookmarks}conference")
    assert conf.get("jid") == "room@muc.example"
    r = ia.iq("<query xmlns='jabber:iq:private'><x xmlns='jabber:iq:roster'/></query>", type="set")
    assert error_condition(r) == "not-acceptable"
    r = ia.iq("<query xmlns='jabber:iq:private'><storage xmlns='storage:bookmarks'/></query>", to="ib@localhost")
    assert error_condition(r) == "forbidden"


def test_blocking(cl):
    a1 = login(cl, "ba", "pw", "one", c2s="c2s.0")
    a2 = login(cl, "ba", "pw", "two", c2s="c2s.1")
    b = login(cl, "bb", "pw", "r", c2s="c2s.0")
    w = login(cl, "ic", "pw", "witness", c2s="c2s.0")   # on b's c2s, to send a marker after b's message
    try:
        for c in (a1, a2, b):
            c.presence()
        r = a2.iq("<blocklist xmlns='urn:xmpp:blocking'/>")
        assert r.get("type") == "result" and len(list(q(r, "b:blocklist"))) == 0
        r = a1.iq("<block xmlns='urn:xmpp:blocking'><item jid='bb@localhost'/></block>", type="set")
        assert r.get("type") == "result"
        push = a2.wait("iq", type="set", child="{urn:xmpp:blocking}block")
        assert q(push, "b:block/b:item").get("jid") == "bb@localhost"
        r = a2.iq("<blocklist xmlns='urn:xmpp:blocking'/>")
        assert [i.get("jid") for i in r.iter("{urn:xmpp:blocking}item")] == ["bb@localhost"]
        # Outbound message to a blocked JID: not-acceptable with <blocked/>.
        a1.send("<message to='bb@localhost' id='bm1' type='chat'><body>x</body></message>")
        err = a1.wait("message", id="bm1", type="error")
        assert error_condition(err) == "not-acceptable"
        assert err.find("{jabber:client}error/{urn:xmpp:blocking:errors}blocked") is not None
        # Inbound from a blocked JID is dropped.
        b.send(f"<message to='{a1.jid}' id='bm2' type='chat'><body>hello?</body></message>")
        b.iq("<ping xmlns='urn:xmpp:ping'/>")     # b's c2s has routed bm2
        # From the same c2s to the same router and on to a1's c2s, after bm2.
        w.send(f"<message to='{a1.jid}' id='bm2-after' type='chat'><body>marker</body></message>")
        assert a1.none_before({"kind": "message", "id": "bm2-after"}, "message", id="bm2")
        # Unblock everything: messages flow again.
        r = a1.iq("<unblock xmlns='urn:xmpp:blocking'/>", type="set")
        assert r.get("type") == "result"
        a2.wait("iq", type="set", child="{urn:xmpp:blocking}unblock")
        b.send(f"<message to='{a1.jid}' id='bm3' type='chat'><body>back</body></message>")
        a1.wait("message", id="bm3")
        r = a1.iq("<block xmlns='urn:xmpp:blocking'><item jid='x@y@z'/></block>", type="set")
        assert error_condition(r) == "jid-malformed"
        r = a1.iq("<block xmlns='urn:xmpp:blocking'/>", type="set")
        assert error_condition(r) == "bad-request"
        a1.iq("<block xmlns='urn:xmpp:blocking'><item jid='bb@localhost'/><item jid='ib@localhost'/></block>",
              type="set")
        a1.iq("<unblock xmlns='urn:xmpp:blocking'><item jid='bb@localhost'/></unblock>", type="set")
        r = a1.iq("<blocklist xmlns='urn:xmpp:blocking'/>")
        assert [i.get("jid") for i in r.iter("{urn:xmpp:blocking}item")] == ["ib@localhost"]
    finally:
        for c in (a1, a2, b, w):
            c.close()


def befriend(x, y):
    for s, t in ((x, y), (y, x)):
        s.presence("subscribe", t.bare)
        t.wait("presence", type="subscribe", frm=s.bare)
        t.presence("subscribed", s.bare)
        s.wait("presence", type="subscribed", frm=t.bare)


def test_last_activity(cl):
    a = login(cl, "la", "pw", "r")
    b = login(cl, "lb", "pw", "r")
    try:
        for c in (a, b):
            c.iq("<query xmlns='jabber:iq:roster'/>")
            c.presence()
            # Its own presence coming back means the router has it as available: a request
            # sent from the other c2s after this point cannot overtake that.
            c.wait("presence", frm=c.jid)
        befriend(a, b)
        r = a.iq("<query xmlns='jabber:iq:last'/>", to="localhost")
        assert int(q(r, "l:query").get("seconds")) >= 0
        r = a.iq("<query xmlns='jabber:iq:last'/>", to="lb@localhost")
        assert q(r, "l:query").get("seconds") == "0"       # online
        b.presence("unavailable", children="<status>off to lunch</status>")
        b.close()
        # Recorded (the store write is asynchronous), and a second has gone by since.
        def last():
            r = a.iq("<query xmlns='jabber:iq:last'/>", to="lb@localhost")
            if r.get("type") != "result":
                return None, error_condition(r)
            return int(q(r, "l:query").get("seconds")), q(r, "l:query").text

        def lunch():
            secs, text = last()
            return secs is not None and secs >= 1 and text == "off to lunch"
        assert wait_until(lunch, 10, 0.2), last()
        # A session that never sends presence is no activity (MongooseIM's mod_last):
        # its end leaves the last unavailable presence's status in place.
        quiet = login(cl, "lb", "pw", "quiet")
        assert wait_until(lambda: "lb@localhost/quiet" in cl.ctl("sessions").stdout, 10)
        quiet.close()
        # The c2s issues a session's last-activity write (when there is one) before it
        # tells the router the session is gone: once the router has dropped it, such a
        # write would be queued ahead of the query below.
        assert wait_until(lambda: "lb@localhost/quiet" not in cl.ctl("sessions").stdout, 10)
        r = a.iq("<query xmlns='jabber:iq:last'/>", to="lb@localhost")
        assert int(q(r, "l:query").get("seconds")) >= 1
        assert q(r, "l:query").text == "off to lunch"
        r = a.iq("<query xmlns='jabber:iq:last'/>", to="lc@localhost")
        assert error_condition(r) == "forbidden"
    finally:
        a.close()
