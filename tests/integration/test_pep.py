"""tests/integration/test_pep.py - PEP (XEP-0163): publish with auto-create and publish-options, items, retract, node delete, access models, notifications filtered by XEP-0115 +notify interest, the last items at login, disco; OMEMO and avatars as clients do them; limits and hostile input; on sqlite and PostgreSQL."""
import asyncio
import xml.etree.ElementTree as ET

import pytest

from harness import cluster_on, metric, wait_until
from rawxmpp import authed_on
from xmpp import C, error_condition, login, loop, run

PS = "http://jabber.org/protocol/pubsub"
PSO = PS + "#owner"
EV = PS + "#event"
ERR = PS + "#errors"
DI = "http://jabber.org/protocol/disco#info"
DIT = "http://jabber.org/protocol/disco#items"
PEP_PLUGINS = ("xep_0030", "xep_0115", "xep_0060", "xep_0163", "xep_0084")
USERS = ["pa", "pb", "pc", "pd", "pe", "pf", "pg", "ph", "pi", "pj", "pk", "pl", "qa", "qb", "qc", "qd", "qe", "qf", "qg", "qh", "qi", "qj", "qk", "ql", "qm", "qn", "qo", "qp", "qq"]
OMEMO_DL = "eu.siacs.conversations.axolotl.devicelist"


@pytest.fixture(scope="module", params=["sqlite", "pgsql"])
def cl(request, tmp_path_factory):
    """2 c2s, 2 router shards; a small item limit so that it is met under the stanza limit."""
    with cluster_on(request.param, tmp_path_factory.mktemp("pep"),
                    extra="modules:\n  pep: {max_item_bytes: 8192, max_nodes: 20, max_items: 10}") as c:
        for u in USERS:
            c.ctl("register", f"{u}@localhost", "pw")
        yield c


def online(cl, user, c2s=None, resource="r", notify=None, plugins=PEP_PLUGINS):
    """A logged-in resource with its roster requested and its initial presence sent. With
    notify (node names), its presence carries XEP-0115 caps (slixmpp's plugins) with
    node+notify for each, and a feature of its own so that its ver is new to the server:
    the server asks the client's disco#info, slixmpp answers, and a ping after that answer
    proves the server has handled it (one stream, in order)."""
    c = login(cl, user, "pw", resource, c2s=c2s, plugins=plugins)
    c.iq("<query xmlns='jabber:iq:roster'/>")
    if notify is None:
        c.presence()
        c.wait("presence", frm=c.jid)
        return c
    announce_caps(c, notify, f"{user}:{resource}")
    c.wait("presence", frm=c.jid)
    return c


def announce_caps(c, notify, tag):
    """c's presence with caps naming node+notify for each of notify (and a feature of its
    own, tag, so that the ver is new to the server); returns once the server has asked
    c's disco#info and handled slixmpp's answer (a ping after it, on the same stream)."""
    sent = set()

    def out(stanza):
        if stanza.xml.tag.endswith("}iq") and stanza.xml.get("type") == "result":
            sent.add(stanza.xml.get("id"))
        return stanza

    async def caps():
        c.xmpp.add_filter("out", out)
        for n in notify:
            c.xmpp["xep_0030"].add_feature(n + "+notify")
        c.xmpp["xep_0030"].add_feature(f"urn:test:client:{tag}")
        await c.xmpp["xep_0115"].update_caps(broadcast=False)
        c.xmpp.send_presence()
    run(caps())
    ask = c.wait("iq", type="get", frm="localhost", child=f"{{{DI}}}query")
    assert "#" in ask.find(f"{{{DI}}}query").get("node")
    assert wait_until(lambda: ask.get("id") in sent, 10)
    c.iq("<ping xmlns='urn:xmpp:ping'/>", to="localhost")
    c.xmpp.del_filter("out", out)


def event_of(c, owner, node, timeout=None):
    """The next PEP event message from owner about node."""
    return c.wait("message", type="headline", frm=owner, timeout=timeout,
                  pred=lambda m: any(x.get("node") == node for x in m.findall(f"{{{EV}}}event/*")))


def marker(frm, to, text):
    """A chat message: sent after an event would have been, on the same path."""
    frm.send(f"<message to='{to.bare}' type='chat'><body>{text}</body></message>")
    return {"kind": "message", "pred": lambda m: m.findtext(f"{C}body") == text}


def befriend(x, y):
    """Presence subscriptions both ways."""
    for s, t in ((x, y), (y, x)):
        s.presence("subscribe", t.bare)
        t.wait("presence", type="subscribe", frm=s.bare)
        t.presence("subscribed", s.bare)
        s.wait("presence", type="subscribed", frm=t.bare)
    for c in (x, y):
        c.drain()


def publish(c, node, payload, item_id=None, options=None, to=None):
    """Sends a publish; returns the answer."""
    idattr = f" id='{item_id}'" if item_id else ""
    po = ""
    if options:
        fields = "".join(f"<field var='pubsub#{k}'><value>{v}</value></field>" for k, v in options.items())
        po = (f"<publish-options><x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE' type='hidden'>"
              f"<value>{PS}#publish-options</value></field>{fields}</x></publish-options>")
    return c.iq(f"<pubsub xmlns='{PS}'><publish node='{node}'><item{idattr}>{payload}</item></publish>{po}</pubsub>",
                type="set", to=to)


def items(c, owner, node, extra="", attrs=""):
    """The answer to an items request."""
    return c.iq(f"<pubsub xmlns='{PS}'><items node='{node}'{attrs}>{extra}</items></pubsub>", to=owner)


def item_ids(r):
    assert r.get("type") == "result", ET.tostring(r)
    return [i.get("id") for i in r.iter(f"{{{PS}}}item")]


def app_error(r):
    err = r.find(f"{C}error")
    for e in err:
        if e.tag.startswith("{" + ERR + "}"):
            return e.tag.split("}")[1]
    return None


def test_publish_items_retract_delete(cl):
    a = online(cl, "pa", plugins=())
    try:
        r = publish(a, "urn:test:one", "<x xmlns='urn:test'>1</x>", item_id="i1")
        assert r.get("type") == "result", ET.tostring(r)
        assert r.find(f"{{{PS}}}pubsub/{{{PS}}}publish/{{{PS}}}item").get("id") == "i1"
        # No id: the service makes one and says which.
        r = publish(a, "urn:test:one", "<x xmlns='urn:test'>2</x>")
        gen = r.find(f"{{{PS}}}pubsub/{{{PS}}}publish/{{{PS}}}item").get("id")
        assert gen and gen != "i1"
        # max_items defaults to 1: only the newest is kept; the payload comes back whole.
        r = items(a, a.bare, "urn:test:one")
        assert item_ids(r) == [gen]
        assert r.find(f".//{{{PS}}}item/{{urn:test}}x").text == "2"
        # A node with room for 3: the newest 3 in publish order (oldest first).
        for i in range(5):
            r = publish(a, "urn:test:three", f"<y xmlns='urn:test'>{i}</y>", item_id=f"k{i}",
                        options={"max_items": "3"})
            assert r.get("type") == "result", ET.tostring(r)
        assert item_ids(items(a, a.bare, "urn:test:three")) == ["k2", "k3", "k4"]
        assert item_ids(items(a, a.bare, "urn:test:three", attrs=" max_items='2'")) == ["k3", "k4"]
        assert item_ids(items(a, a.bare, "urn:test:three", extra=f"<item id='k3'/><item id='nope'/>")) == ["k3"]
        # Re-publishing an id replaces that item and makes it the newest.
        publish(a, "urn:test:three", "<y xmlns='urn:test'>again</y>", item_id="k2")
        r = items(a, a.bare, "urn:test:three")
        assert item_ids(r) == ["k3", "k4", "k2"]
        # publish-options are preconditions on an existing node.
        r = publish(a, "urn:test:three", "<y xmlns='urn:test'/>", options={"max_items": "4"})
        assert error_condition(r) == "conflict" and app_error(r) == "precondition-not-met"
        r = publish(a, "urn:test:three", "<y xmlns='urn:test'/>", options={"access_model": "open"})
        assert error_condition(r) == "conflict" and app_error(r) == "precondition-not-met"
        r = publish(a, "urn:test:three", "<y xmlns='urn:test'/>", item_id="k5",
                    options={"access_model": "presence", "max_items": "3", "persist_items": "true"})
        assert r.get("type") == "result"
        r = publish(a, "urn:test:new", "<y xmlns='urn:test'/>", options={"access_model": "authorize"})
        assert error_condition(r) == "conflict" and app_error(r) == "precondition-not-met"
        # Over the service's max_items (10 here), and "max".
        r = publish(a, "urn:test:big", "<y xmlns='urn:test'/>", options={"max_items": "11"})
        assert error_condition(r) == "not-acceptable"
        r = publish(a, "urn:test:max", "<y xmlns='urn:test'/>", item_id="m1", options={"max_items": "max"})
        assert r.get("type") == "result"
        r = publish(a, "urn:test:max", "<y xmlns='urn:test'/>", item_id="m2", options={"max_items": "10"})
        assert r.get("type") == "result"
        # Not persistent: answered and notified, nothing kept.
        r = publish(a, "urn:test:transient", "<y xmlns='urn:test'/>", item_id="t1", options={"persist_items": "0"})
        assert r.get("type") == "result"
        assert item_ids(items(a, a.bare, "urn:test:transient")) == []
        # Retract, with the item gone after; an unknown one.
        r = a.iq(f"<pubsub xmlns='{PS}'><retract node='urn:test:three'><item id='k4'/></retract></pubsub>", type="set")
        assert r.get("type") == "result"
        assert item_ids(items(a, a.bare, "urn:test:three")) == ["k2", "k5"]
        r = a.iq(f"<pubsub xmlns='{PS}'><retract node='urn:test:three'><item id='k4'/></retract></pubsub>", type="set")
        assert error_condition(r) == "item-not-found"
        # Delete the node: its items go, an items request then finds no node.
        r = a.iq(f"<pubsub xmlns='{PSO}'><delete node='urn:test:three'/></pubsub>", type="set")
        assert r.get("type") == "result"
        assert error_condition(items(a, a.bare, "urn:test:three")) == "item-not-found"
        r = a.iq(f"<pubsub xmlns='{PSO}'><delete node='urn:test:three'/></pubsub>", type="set")
        assert error_condition(r) == "item-not-found"
        # Recreated from scratch with the defaults.
        publish(a, "urn:test:three", "<y xmlns='urn:test'/>", item_id="z")
        assert item_ids(items(a, a.bare, "urn:test:three")) == ["z"]
    finally:
        a.close()


def test_limits_and_garbage(cl):
    a = online(cl, "pb", plugins=())
    try:
        # Over the configured item size (8 KiB here): refused with a text, nothing stored.
        big = "x" * 9000
        r = publish(a, "urn:test:size", f"<y xmlns='urn:test'>{big}</y>")
        assert error_condition(r) == "not-acceptable" and app_error(r) == "payload-too-big"
        assert "8192" in r.find(f"{C}error/{{urn:ietf:params:xml:ns:xmpp-stanzas}}text").text
        assert error_condition(items(a, a.bare, "urn:test:size")) == "item-not-found"
        ok = publish(a, "urn:test:size", f"<y xmlns='urn:test'>{'x' * 7000}</y>")
        assert ok.get("type") == "result"
        # Garbage.
        cases = [
            (f"<pubsub xmlns='{PS}'><publish><item><y xmlns='u'/></item></publish></pubsub>", "set",
             "bad-request", "nodeid-required"),
            (f"<pubsub xmlns='{PS}'><publish node='n'/></pubsub>", "set", "bad-request", "item-required"),
            (f"<pubsub xmlns='{PS}'><publish node='n'><item/></publish></pubsub>", "set",
             "bad-request", "payload-required"),
            (f"<pubsub xmlns='{PS}'><publish node='n'><item><a xmlns='u'/><b xmlns='u'/></item></publish></pubsub>",
             "set", "bad-request", "invalid-payload"),
            (f"<pubsub xmlns='{PS}'><publish node='n'><item id='1'><a xmlns='u'/></item><item id='2'>"
             "<a xmlns='u'/></item></publish></pubsub>", "set", "bad-request", "invalid-payload"),
            (f"<pubsub xmlns='{PS}'><publish node='{'n' * 1100}'><item><a xmlns='u'/></item></publish></pubsub>",
             "set", "not-acceptable", None),
            (f"<pubsub xmlns='{PS}'><items/></pubsub>", "get", "bad-request", "nodeid-required"),
            (f"<pubsub xmlns='{PS}'><items node='n' max_items='abc'/></pubsub>", "get", "bad-request", None),
            (f"<pubsub xmlns='{PS}'><subscribe node='n' jid='{a.bare}'/></pubsub>", "set",
             "feature-not-implemented", None),
            (f"<pubsub xmlns='{PS}'/>", "set", "feature-not-implemented", None),
            (f"<pubsub xmlns='{PS}'><retract node='n'/></pubsub>", "set", "bad-request", "item-required"),
            (f"<pubsub xmlns='{PSO}'><purge node='n'/></pubsub>", "set", "feature-not-implemented", None),
            (f"<pubsub xmlns='{PSO}'><configure node='nope'/></pubsub>", "get", "item-not-found", None),
            (f"<pubsub xmlns='{PSO}'><configure node='n'/></pubsub>", "set", "bad-request", None),
            (f"<pubsub xmlns='{PSO}'><delete/></pubsub>", "set", "bad-request", "nodeid-required"),
        ]
        for payload, typ, cond, app in cases:
            r = a.iq(payload, type=typ)
            assert error_condition(r) == cond, (payload, ET.tostring(r))
            if app:
                assert app_error(r) == app, (payload, ET.tostring(r))
        r = publish(a, "urn:test:bool", "<y xmlns='u'/>", options={"persist_items": "maybe"})
        assert error_condition(r) == "conflict" and app_error(r) == "precondition-not-met"
        r = publish(a, "urn:test:num", "<y xmlns='u'/>", options={"max_items": "-3"})
        assert error_condition(r) == "conflict" and app_error(r) == "precondition-not-met"
        # Nodes per account: 20 here (one made above).
        for i in range(19):
            assert publish(a, f"urn:test:n{i}", "<y xmlns='u'/>").get("type") == "result"
        r = publish(a, "urn:test:one-too-many", "<y xmlns='u'/>")
        assert error_condition(r) == "policy-violation"
        assert "20" in r.find(f"{C}error/{{urn:ietf:params:xml:ns:xmpp-stanzas}}text").text
        # An existing node still takes items.
        assert publish(a, "urn:test:n3", "<y xmlns='u'/>").get("type") == "result"
    finally:
        a.close()


def test_publish_storm(cl):
    """300 publishes in one write: every one answered, in order, the node keeps its newest."""
    a = online(cl, "pc", plugins=())
    try:
        n = 300
        parts = []
        for i in range(n):
            parts.append(f"<iq type='set' id='storm{i}'><pubsub xmlns='{PS}'><publish node='urn:test:storm'>"
                         f"<item id='s{i}'><y xmlns='u'>{i}</y></item></publish>"
                         "<publish-options><x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE' "
                         f"type='hidden'><value>{PS}#publish-options</value></field><field var='pubsub#max_items'>"
                         "<value>10</value></field></x></publish-options></pubsub></iq>")
        a.send("".join(parts))
        answers = [a.wait("iq", id=f"storm{i}", timeout=60) for i in range(n)]
        kinds = {r.get("type") for r in answers}
        # At most 64 wait behind a running one: the rest are refused with wait, never dropped.
        ok = [i for i, r in enumerate(answers) if r.get("type") == "result"]
        refused = [r for r in answers if r.get("type") == "error"]
        assert kinds <= {"result", "error"}
        assert all(error_condition(r) == "resource-constraint" for r in refused)
        assert len(ok) >= 65
        last = ok[-10:]
        assert item_ids(items(a, a.bare, "urn:test:storm")) == [f"s{i}" for i in last]
    finally:
        a.close()


def test_oversized_stanza(cl):
    """A 1 MiB item meets the stream's stanza limit first: the stream ends, the server stays."""
    from rawxmpp import Raw
    r = Raw(cl.c2s_port)
    r.login("pd", "pw")
    data = (f"<iq type='set' id='huge'><pubsub xmlns='{PS}'><publish node='urn:test:huge'><item>"
            f"<y xmlns='u'>{'z' * (1 << 20)}</y></item></publish></pubsub></iq>").encode()
    try:
        for i in range(0, len(data), 16384):
            r.send(data[i:i + 16384])
    except OSError:
        pass        # the server closed the stream while we were still writing
    assert r.closed(10)
    assert "policy-violation" in r.buf, r.buf[-300:]
    r.close()
    a = online(cl, "pd", plugins=())
    try:
        assert error_condition(items(a, a.bare, "urn:test:huge")) == "item-not-found"
    finally:
        a.close()


def test_access_models_and_disco(cl):
    a = online(cl, "pe", c2s="c2s.0", plugins=())
    b = online(cl, "pf", c2s="c2s.1", plugins=())
    s = online(cl, "pg", c2s="c2s.1", plugins=())
    try:
        befriend(a, b)
        assert publish(a, "urn:test:pres", "<y xmlns='u'>p</y>", item_id="p1").get("type") == "result"
        assert publish(a, "urn:test:open", "<y xmlns='u'>o</y>", item_id="o1",
                       options={"access_model": "open"}).get("type") == "result"
        assert publish(a, "urn:test:white", "<y xmlns='u'>w</y>", item_id="w1",
                       options={"access_model": "whitelist"}).get("type") == "result"
        # A contact with a presence subscription reads presence and open nodes, not whitelist.
        assert item_ids(items(b, a.bare, "urn:test:pres")) == ["p1"]
        assert item_ids(items(b, a.bare, "urn:test:open")) == ["o1"]
        r = items(b, a.bare, "urn:test:white")
        assert error_condition(r) == "not-allowed" and app_error(r) == "closed-node"
        # A stranger reads only the open node.
        r = items(s, a.bare, "urn:test:pres")
        assert error_condition(r) == "not-authorized" and app_error(r) == "presence-subscription-required"
        assert item_ids(items(s, a.bare, "urn:test:open")) == ["o1"]
        assert error_condition(items(s, a.bare, "urn:test:none")) == "item-not-found"
        # Only the owner publishes, retracts, deletes.
        assert error_condition(publish(b, "urn:test:open", "<y xmlns='u'/>", to=a.bare)) == "forbidden"
        r = b.iq(f"<pubsub xmlns='{PS}'><retract node='urn:test:open'><item id='o1'/></retract></pubsub>",
                 type="set", to=a.bare)
        assert error_condition(r) == "forbidden"
        r = b.iq(f"<pubsub xmlns='{PSO}'><delete node='urn:test:open'/></pubsub>", type="set", to=a.bare)
        assert error_condition(r) == "forbidden"
        # An account that does not exist.
        assert error_condition(items(s, "nobody@localhost", "urn:test:open")) == "service-unavailable"
        # disco#info of the account: the PEP identity and the features.
        for who in (a, s):
            r = who.iq(f"<query xmlns='{DI}'/>", to=a.bare)
            ids = {(i.get("category"), i.get("type")) for i in r.iter(f"{{{DI}}}identity")}
            feats = {f.get("var") for f in r.iter(f"{{{DI}}}feature")}
            assert ("pubsub", "pep") in ids and ("account", "registered") in ids
            assert {PS + "#publish", PS + "#publish-options", PS + "#auto-create", PS + "#retrieve-items",
                    PS + "#access-open"} <= feats
        # disco#items: the nodes each may see.
        def nodes(who):
            r = who.iq(f"<query xmlns='{DIT}'/>", to=a.bare)
            assert all(i.get("jid") == a.bare for i in r.iter(f"{{{DIT}}}item"))
            return sorted(i.get("node") for i in r.iter(f"{{{DIT}}}item"))
        assert nodes(a) == ["urn:test:open", "urn:test:pres", "urn:test:white"]
        assert nodes(b) == ["urn:test:open", "urn:test:pres"]
        assert nodes(s) == ["urn:test:open"]
    finally:
        for c in (a, b, s):
            c.close()


def test_notifications_filtered_by_caps(cl):
    """Three clients with rosters: the publisher's contacts whose caps say node+notify get
    the event (and so do the publisher's own such resources); one without that interest,
    one without caps and a stranger with the interest get nothing."""
    a = online(cl, "ph", c2s="c2s.0", notify=("urn:test:mood",))
    b = online(cl, "pi", c2s="c2s.1", notify=("urn:test:mood",))
    c = online(cl, "pj", c2s="c2s.1", notify=("urn:test:other",))
    b2 = online(cl, "pi", c2s="c2s.0", resource="nocaps", plugins=())
    s = online(cl, "pk", c2s="c2s.0", notify=("urn:test:mood",))
    try:
        befriend(a, b)
        befriend(a, c)
        for x in (b, b2):
            x.drain()
        r = publish(a, "urn:test:mood", "<mood xmlns='urn:test'>happy</mood>", item_id="m1")
        assert r.get("type") == "result"
        for x in (a, b):
            m = event_of(x, a.bare, "urn:test:mood")
            it = m.find(f"{{{EV}}}event/{{{EV}}}items/{{{EV}}}item")
            assert it.get("id") == "m1" and it.findtext("{urn:test}mood") == "happy"
            assert m.get("to") == x.jid or m.get("to") == x.bare
        for x in (c, b2, s):
            assert x.none_before(marker(a, x, "after-publish"), "message", child=f"{{{EV}}}event")
        # Retract with notify, then delete: both announced to the interested.
        r = a.iq(f"<pubsub xmlns='{PS}'><retract node='urn:test:mood' notify='true'><item id='m1'/></retract>"
                 "</pubsub>", type="set")
        assert r.get("type") == "result"
        m = event_of(b, a.bare, "urn:test:mood")
        assert m.find(f"{{{EV}}}event/{{{EV}}}items/{{{EV}}}retract").get("id") == "m1"
        r = a.iq(f"<pubsub xmlns='{PSO}'><delete node='urn:test:mood'/></pubsub>", type="set")
        assert r.get("type") == "result"
        m = event_of(b, a.bare, "urn:test:mood")
        assert m.find(f"{{{EV}}}event/{{{EV}}}delete") is not None
        # A whitelist node's events stay with the owner.
        publish(a, "urn:test:mood", "<mood xmlns='urn:test'>mine</mood>", options={"access_model": "whitelist"})
        event_of(a, a.bare, "urn:test:mood")
        assert b.none_before(marker(a, b, "after-whitelist"), "message", child=f"{{{EV}}}event")
    finally:
        for x in (a, b, c, b2, s):
            x.close()


def test_last_items_at_login(cl):
    """A resource coming online gets the newest item of each node it wants, of its own
    account and of each contact it is subscribed to - once its caps are known."""
    a = online(cl, "pl", c2s="c2s.0", plugins=())
    b = online(cl, "pa", c2s="c2s.1", plugins=())
    try:
        befriend(a, b)
        publish(a, "urn:test:tune", "<tune xmlns='urn:test'>one</tune>", item_id="t1")
        publish(a, "urn:test:tune", "<tune xmlns='urn:test'>two</tune>", item_id="t2")
        publish(a, "urn:test:wl", "<w xmlns='urn:test'/>", item_id="w1", options={"access_model": "whitelist"})
        publish(b, "urn:test:tune", "<tune xmlns='urn:test'>bee</tune>", item_id="b1")
        for c2s in ("c2s.0", "c2s.1"):
            b3 = online(cl, "pa", c2s=c2s, resource="late" + c2s[-1], notify=("urn:test:tune", "urn:test:wl"))
            try:
                got = {}
                for _ in range(2):
                    m = b3.wait("message", type="headline",
                                pred=lambda m: m.find(f"{{{EV}}}event") is not None)
                    it = m.find(f"{{{EV}}}event/{{{EV}}}items/{{{EV}}}item")
                    got[m.get("from")] = (m.find(f"{{{EV}}}event/{{{EV}}}items").get("node"), it.get("id"))
                assert got == {a.bare: ("urn:test:tune", "t2"), b.bare: ("urn:test:tune", "b1")}
                # Nothing of a's whitelist node.
                assert b3.none_before(marker(a, b3, "after-last" + c2s), "message", child=f"{{{EV}}}event")
            finally:
                b3.close()
        # The owner's own resource gets its whitelist node too.
        a2 = online(cl, "pl", c2s="c2s.1", resource="late", notify=("urn:test:wl",))
        try:
            m = event_of(a2, a.bare, "urn:test:wl")
            assert m.find(f"{{{EV}}}event/{{{EV}}}items/{{{EV}}}item").get("id") == "w1"
        finally:
            a2.close()
    finally:
        a.close()
        b.close()


def test_omemo_as_conversations(cl):
    """OMEMO (XEP-0384, Conversations' namespace): the device list and a bundle published
    with publish-options access_model open, fetched by a stranger, the device list's update
    notified to an interested contact and sent to it at its login."""
    AX = "eu.siacs.conversations.axolotl"
    a = online(cl, "qa", c2s="c2s.0", plugins=())
    b = online(cl, "qb", c2s="c2s.1", notify=(OMEMO_DL,))
    s = online(cl, "qc", c2s="c2s.1", plugins=())
    try:
        befriend(a, b)
        opts = {"access_model": "open"}
        dl = f"<list xmlns='{AX}'><device id='1234'/></list>"
        assert publish(a, OMEMO_DL, dl, item_id="current", options=opts).get("type") == "result"
        m = event_of(b, a.bare, OMEMO_DL)
        assert m.find(f".//{{{EV}}}item/{{{AX}}}list/{{{AX}}}device").get("id") == "1234"
        prekeys = "".join(f"<preKeyPublic preKeyId='{i}'>BQ{'A' * 42}{i:03d}=</preKeyPublic>" for i in range(1, 61))
        bundle = (f"<bundle xmlns='{AX}'><signedPreKeyPublic signedPreKeyId='1'>BSig{'B' * 40}=</signedPreKeyPublic>"
                  f"<signedPreKeySignature>{'C' * 86}==</signedPreKeySignature><identityKey>BId{'D' * 40}=</identityKey>"
                  f"<prekeys>{prekeys}</prekeys></bundle>")
        r = publish(a, f"{AX}.bundles:1234", bundle, item_id="current", options=opts)
        assert r.get("type") == "result", ET.tostring(r)
        # The same options again: the node exists with them, fine.
        dl2 = f"<list xmlns='{AX}'><device id='1234'/><device id='5678'/></list>"
        assert publish(a, OMEMO_DL, dl2, item_id="current", options=opts).get("type") == "result"
        m = event_of(b, a.bare, OMEMO_DL)
        assert [d.get("id") for d in m.iter(f"{{{AX}}}device")] == ["1234", "5678"]
        # A stranger (no subscription) reads both, as a client starting a session does.
        r = items(s, a.bare, OMEMO_DL)
        assert item_ids(r) == ["current"]
        assert [d.get("id") for d in r.iter(f"{{{AX}}}device")] == ["1234", "5678"]
        r = items(s, a.bare, f"{AX}.bundles:1234", attrs=" max_items='1'")
        got = r.find(f".//{{{PS}}}item/{{{AX}}}bundle")
        assert len(got.findall(f"{{{AX}}}prekeys/{{{AX}}}preKeyPublic")) == 60
        assert got.find(f"{{{AX}}}identityKey").text == f"BId{'D' * 40}="
        # A contact coming online gets the device list at once.
        b.close()
        b = online(cl, "qb", c2s="c2s.0", resource="again", notify=(OMEMO_DL,))
        m = event_of(b, a.bare, OMEMO_DL)
        assert [d.get("id") for d in m.iter(f"{{{AX}}}device")] == ["1234", "5678"]
    finally:
        for x in (a, b, s):
            x.close()


def test_avatar_with_slixmpp(cl):
    """XEP-0084 with slixmpp's plugin: data then metadata published by one client; the
    contact interested in metadata is notified and fetches the data by id."""
    import base64
    import hashlib
    a = online(cl, "qd", c2s="c2s.1", notify=())
    b = online(cl, "qe", c2s="c2s.0", notify=("urn:xmpp:avatar:metadata",))
    try:
        befriend(a, b)
        data = bytes(range(256)) * 16
        aid = hashlib.sha1(data).hexdigest()

        async def pub():
            await a.xmpp["xep_0084"].publish_avatar(data)
            await a.xmpp["xep_0084"].publish_avatar_metadata(items=[{"id": aid, "type": "image/png",
                                                                     "bytes": len(data)}])
        run(pub())
        m = event_of(b, a.bare, "urn:xmpp:avatar:metadata")
        info = m.find(f".//{{{EV}}}item/{{urn:xmpp:avatar:metadata}}metadata/{{urn:xmpp:avatar:metadata}}info")
        assert info.get("id") == aid and info.get("bytes") == str(len(data))
        # No data event: b did not ask for that node.
        assert b.none_before(marker(a, b, "after-avatar"), "message",
                             pred=lambda x: x.find(f".//{{{EV}}}items[@node='urn:xmpp:avatar:data']") is not None)

        async def fetch():
            return await b.xmpp["xep_0084"].retrieve_avatar(a.bare, aid)
        res = run(fetch())
        d = res.xml.find(f".//{{{PS}}}item/{{urn:xmpp:avatar:data}}data")
        assert base64.b64decode(d.text) == data
    finally:
        a.close()
        b.close()


def config_form(**fields):
    f = "".join(f"<field var='pubsub#{k}'><value>{v}</value></field>" for k, v in fields.items())
    return (f"<x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE' type='hidden'>"
            f"<value>{PS}#node_config</value></field>{f}</x>")


def test_configure_as_conversations_recovers(cl):
    """A node made earlier with the default (presence) access: Conversations' publish with
    access_model open fails its precondition, it reconfigures the node (pubsub#owner
    configure), publishes again, and a stranger can then read the device list."""
    AX = "eu.siacs.conversations.axolotl"
    a = online(cl, "qf", plugins=())
    s = online(cl, "qg", plugins=())
    try:
        dl = f"<list xmlns='{AX}'><device id='42'/></list>"
        assert publish(a, OMEMO_DL, dl, item_id="current").get("type") == "result"
        assert error_condition(items(s, a.bare, OMEMO_DL)) == "not-authorized"
        r = publish(a, OMEMO_DL, dl, item_id="current", options={"access_model": "open"})
        assert error_condition(r) == "conflict" and app_error(r) == "precondition-not-met"
        # The form as it is.
        r = a.iq(f"<pubsub xmlns='{PSO}'><configure node='{OMEMO_DL}'/></pubsub>")
        x = r.find(f"{{{PSO}}}pubsub/{{{PSO}}}configure/{{jabber:x:data}}x")
        vals = {f.get("var"): f.findtext("{jabber:x:data}value") for f in x.findall("{jabber:x:data}field")}
        assert vals == {"FORM_TYPE": PS + "#node_config", "pubsub#access_model": "presence",
                        "pubsub#persist_items": "1", "pubsub#max_items": "1"}
        # Bad values are refused whole.
        r = a.iq(f"<pubsub xmlns='{PSO}'><configure node='{OMEMO_DL}'>{config_form(access_model='roster')}"
                 "</configure></pubsub>", type="set")
        assert error_condition(r) == "not-acceptable"
        r = a.iq(f"<pubsub xmlns='{PSO}'><configure node='{OMEMO_DL}'>{config_form(access_model='open')}"
                 "</configure></pubsub>", type="set")
        assert r.get("type") == "result", ET.tostring(r)
        r = publish(a, OMEMO_DL, dl, item_id="current", options={"access_model": "open"})
        assert r.get("type") == "result"
        assert item_ids(items(s, a.bare, OMEMO_DL)) == ["current"]
        # Lowering max_items trims what is kept.
        for i in range(4):
            publish(a, "urn:test:many", f"<y xmlns='u'>{i}</y>", item_id=f"v{i}", options={"max_items": "4"})
        r = a.iq(f"<pubsub xmlns='{PSO}'><configure node='urn:test:many'>{config_form(max_items='2')}"
                 "</configure></pubsub>", type="set")
        assert r.get("type") == "result"
        assert item_ids(items(a, a.bare, "urn:test:many")) == ["v2", "v3"]
        # Only the owner configures.
        r = s.iq(f"<pubsub xmlns='{PSO}'><configure node='{OMEMO_DL}'/></pubsub>", to=a.bare)
        assert error_condition(r) == "forbidden"
    finally:
        a.close()
        s.close()


def test_bookmarks_and_nickname(cl):
    """XEP-0402 bookmarks (one item per room, whitelist, max_items max) and a XEP-0172
    nickname: the owner's other resource is notified of a new bookmark; a contact never sees
    one; the nickname reaches the contact."""
    BM = "urn:xmpp:bookmarks:1"
    NICK = "http://jabber.org/protocol/nick"
    a = online(cl, "qh", c2s="c2s.0", notify=(BM, NICK))
    a2 = online(cl, "qh", c2s="c2s.1", resource="phone", notify=(BM,))
    b = online(cl, "qi", c2s="c2s.1", notify=(BM, NICK))
    try:
        befriend(a, b)
        a2.drain()
        opts = {"persist_items": "true", "max_items": "max", "send_last_published_item": "never",
                "access_model": "whitelist"}
        for room in ("room1@conference.localhost", "room2@conference.localhost"):
            r = publish(a, BM, f"<conference xmlns='{BM}' name='{room[:5]}' autojoin='true'><nick>A</nick>"
                        "</conference>", item_id=room, options=opts)
            assert r.get("type") == "result", ET.tostring(r)
            m = event_of(a2, a.bare, BM)
            assert m.find(f".//{{{EV}}}item").get("id") == room
        assert item_ids(items(a2, a.bare, BM)) == ["room1@conference.localhost", "room2@conference.localhost"]
        assert error_condition(items(b, a.bare, BM)) == "not-allowed"
        r = a.iq(f"<pubsub xmlns='{PS}'><retract node='{BM}' notify='1'><item id='room1@conference.localhost'/>"
                 "</retract></pubsub>", type="set")
        assert r.get("type") == "result"
        m = event_of(a2, a.bare, BM)
        assert m.find(f".//{{{EV}}}retract").get("id") == "room1@conference.localhost"
        assert publish(a, NICK, f"<nick xmlns='{NICK}'>Alice</nick>").get("type") == "result"
        m = event_of(b, a.bare, NICK)
        assert m.findtext(f".//{{{EV}}}item/{{{NICK}}}nick") == "Alice"
        assert b.none_before(marker(a, b, "after-nick"), "message",
                             pred=lambda x: x.find(f".//{{{EV}}}items[@node='{BM}']") is not None)
    finally:
        for x in (a, a2, b):
            x.close()


def caps_ver(identities, features):
    """XEP-0115 5.1 for identities (category, type, lang, name) and features, no forms."""
    import base64
    import hashlib
    s = "".join(f"{c}/{t}/{l}/{n}<" for c, t, l, n in sorted(identities)) + "".join(f + "<" for f in sorted(features))
    return base64.b64encode(hashlib.sha1(s.encode()).digest()).decode()


def test_caps_hostile(cl):
    """A wrong caps hash is ignored (no interest learned from it); a right one works; one
    session cannot make the server ask about more than 8 new vers."""
    a = online(cl, "qj", c2s="c2s.0", plugins=())
    b = online(cl, "qk", c2s="c2s.0", plugins=())
    try:
        # b answers the server's disco#info itself (raw): slixmpp must not answer it first.
        from slixmpp.xmlstream.handler import Callback
        from slixmpp.xmlstream.matcher import MatchXPath
        b.xmpp.register_handler(Callback("raw disco", MatchXPath(f"{{jabber:client}}iq/{{{DI}}}query"),
                                         lambda iq: None))
        befriend(a, b)
        ident = [("client", "pc", "", "raw")]
        feats = ["http://jabber.org/protocol/caps", "urn:test:hostile+notify"]

        def announce(ver, answer_feats):
            b.send(f"<presence><c xmlns='http://jabber.org/protocol/caps' hash='sha-1' node='urn:raw' ver='{ver}'/>"
                   "</presence>")
            ask = b.wait("iq", type="get", frm="localhost", child=f"{{{DI}}}query")
            assert ask.find(f"{{{DI}}}query").get("node") == f"urn:raw#{ver}"
            fx = "".join(f"<feature var='{f}'/>" for f in answer_feats)
            b.send(f"<iq type='result' id='{ask.get('id')}' to='localhost'><query xmlns='{DI}' node='urn:raw#{ver}'>"
                   f"<identity category='client' type='pc' name='raw'/>{fx}</query></iq>")
            b.iq("<ping xmlns='urn:xmpp:ping'/>", to="localhost")

        # The answer does not hash to the ver claimed: ignored.
        announce(caps_ver(ident, feats + ["urn:test:extra"]), feats)
        publish(a, "urn:test:hostile", "<y xmlns='u'>1</y>")
        assert b.none_before(marker(a, b, "after-wrong-hash"), "message", child=f"{{{EV}}}event")
        # The right one: the interest is known now, so the last item comes at once (b has
        # been available since before), then the next publish.
        announce(caps_ver(ident, feats), feats)
        assert event_of(b, a.bare, "urn:test:hostile").findtext(f".//{{{EV}}}item/{{u}}y") == "1"
        publish(a, "urn:test:hostile", "<y xmlns='u'>2</y>")
        assert event_of(b, a.bare, "urn:test:hostile").findtext(f".//{{{EV}}}item/{{u}}y") == "2"
        # Cycling vers: 6 more asked (8 in all for this session), then none.
        b.drain()
        for i in range(10):
            ver = caps_ver(ident, feats + [f"urn:test:cycle{i}"])
            b.send(f"<presence><c xmlns='http://jabber.org/protocol/caps' hash='sha-1' node='urn:raw' ver='{ver}'/>"
                   "</presence>")
        b.iq("<ping xmlns='urn:xmpp:ping'/>", to="localhost")
        with b.cond:
            asks = [e for e in b.inbox if e.tag == f"{C}iq" and e.get("type") == "get"
                    and e.find(f"{{{DI}}}query") is not None]
        assert len(asks) == 6
        # What the c2s counted (b's process; the caps cache and the filter are per process).
        assert metric(cl, "c2s.0", "meerkat_c2s_pep_caps_total", result="refused") >= 1
        assert metric(cl, "c2s.0", "meerkat_c2s_pep_caps_total", result="verified") >= 1
        assert metric(cl, "c2s.0", "meerkat_c2s_pep_caps_total", result="asked") >= 8
        assert metric(cl, "c2s.0", "meerkat_c2s_pep_events_total", result="filtered") >= 1
        assert metric(cl, "c2s.0", "meerkat_c2s_pep_events_total", result="delivered") >= 1
        assert metric(cl, "c2s.0", "meerkat_c2s_pep_events_total", result="last") >= 1
        assert metric(cl, "c2s.0", "meerkat_c2s_pep_requests_total", op="publish") >= 2
    finally:
        a.close()
        b.close()


def test_caps_change_brings_new_nodes(cl):
    """A client that adds interests while available (a new caps ver) gets the last items
    of the nodes it now wants, and only those."""
    a = online(cl, "ql", c2s="c2s.1", plugins=())
    b = online(cl, "qm", c2s="c2s.0", notify=())
    try:
        befriend(a, b)
        publish(a, "urn:test:n1", "<y xmlns='u'>x1</y>", item_id="x1")
        publish(a, "urn:test:n2", "<y xmlns='u'>y1</y>", item_id="y1")
        announce_caps(b, ("urn:test:n1",), "qm:1")
        assert event_of(b, a.bare, "urn:test:n1").find(f".//{{{EV}}}item").get("id") == "x1"
        announce_caps(b, ("urn:test:n1", "urn:test:n2"), "qm:2")
        assert event_of(b, a.bare, "urn:test:n2").find(f".//{{{EV}}}item").get("id") == "y1"
        assert b.none_before(marker(a, b, "after-caps-change"), "message", child=f"{{{EV}}}event")
    finally:
        a.close()
        b.close()


def test_new_subscription_brings_last_items(cl):
    """When a contact approves a subscription, the new subscriber's interested resource
    gets the contact's last items at once (not only at its next login)."""
    a = online(cl, "qn", c2s="c2s.0", plugins=())
    b = online(cl, "qo", c2s="c2s.1", notify=("urn:test:sub", "urn:test:subwl"))
    try:
        publish(a, "urn:test:sub", "<y xmlns='u'>before</y>", item_id="s1")
        publish(a, "urn:test:subwl", "<y xmlns='u'/>", item_id="w", options={"access_model": "whitelist"})
        b.presence("subscribe", a.bare)
        a.wait("presence", type="subscribe", frm=b.bare)
        a.presence("subscribed", b.bare)
        m = event_of(b, a.bare, "urn:test:sub")
        assert m.find(f".//{{{EV}}}item").get("id") == "s1"
        assert b.none_before(marker(a, b, "after-subscribed"), "message", child=f"{{{EV}}}event")
    finally:
        a.close()
        b.close()


def test_interest_survives_resumption_on_another_c2s(cl):
    """XEP-0198: a session resumed on the other c2s keeps its verified +notify interest (the
    client does not send its presence again), so events still reach it there."""
    import re
    import socket
    import struct
    SM = "urn:xmpp:sm:3"
    a = online(cl, "qp", c2s="c2s.1", plugins=())
    b = authed_on(cl, "qq", "c2s.0")
    b.send("<iq type='set' id='bind1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>phone</resource>"
           "</bind></iq>")
    b.recv_until(r"<iq[^>]*id=.bind1.*?</iq>")
    b.send(f"<enable xmlns='{SM}' resume='true'/>")
    previd = re.search(r"id='([^']+)'", b.recv_until(r"<enabled[^>]*/>|</failed>")).group(1)
    b.send("<iq type='get' id='r1'><query xmlns='jabber:iq:roster'/></iq>")
    b.recv_until(r"<iq[^>]*id=.r1.*?(/>|</iq>)")
    ident = [("client", "pc", "", "raw")]
    feats = ["http://jabber.org/protocol/caps", "urn:test:resume+notify"]
    ver = caps_ver(ident, feats)
    b.send(f"<presence><c xmlns='http://jabber.org/protocol/caps' hash='sha-1' node='urn:raw' ver='{ver}'/></presence>")
    ask = b.recv_until(r"<iq[^>]*type=.get.[^>]*>.*?</iq>")
    qid = re.search(r"id=['\"]([^'\"]+)['\"]", ask).group(1)
    fx = "".join(f"<feature var='{f}'/>" for f in feats)
    b.send(f"<iq type='result' id='{qid}' to='localhost'><query xmlns='{DI}' node='urn:raw#{ver}'>"
           f"<identity category='client' type='pc' name='raw'/>{fx}</query></iq>")
    # b subscribes to a; a approves: a's contact b has a 'from' subscription.
    b.send(f"<presence type='subscribe' to='{a.bare}'/>")
    a.wait("presence", type="subscribe", frm="qq@localhost")
    a.presence("subscribed", "qq@localhost")
    b.recv_until(r"<presence[^>]*type=.subscribed.")
    publish(a, "urn:test:resume", "<y xmlns='u'>one</y>", item_id="e1")
    b.recv_until(r"<item id=.e1.")
    # The phone loses its network; it resumes on the other c2s.
    try:
        b.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    b.close()
    b2 = authed_on(cl, "qq", "c2s.1")
    try:
        b2.send(f"<resume xmlns='{SM}' previd='{previd}' h='0'/>")
        out = b2.recv_until(r"<resumed[^>]*/>|</failed>|</stream:stream>")
        assert out.startswith(f"<resumed xmlns='{SM}'"), out
        publish(a, "urn:test:resume", "<y xmlns='u'>two</y>", item_id="e2")
        got = b2.recv_until(r"<item id=.e2.[^>]*>.*?</item>")
        assert ">two<" in got
    finally:
        b2.close()
        a.close()
