"""tests/integration/test_carbons.py - XEP-0280 message carbons with slixmpp's xep_0280 plugin: three resources of one user on two c2s processes (two router shards), received and sent copies, <private/> and no-copy, eligibility, forged carbons, disable."""
import os
import re
import signal
import threading

import pytest

from harness import cluster_on, http_get, shard_of, wait_until
from xmpp import C, error_condition, login, run

NS = "urn:xmpp:carbons:2"
FW = "urn:xmpp:forward:0"
USERS = ["ca", "cb", "da", "db", "ea", "eb", "fa", "fb", "ga", "gb", "ha", "hd", "ia", "if"]


@pytest.fixture(scope="module")
def cl(tmp_path_factory):
    """2 c2s, 2 router shards, sqlite."""
    with cluster_on("sqlite", tmp_path_factory.mktemp("carbons")) as c:
        for u in USERS:
            c.ctl("register", f"{u}@localhost", "pw")
        yield c


class Carbons:
    """A client with slixmpp's xep_0280 plugin: the carbons its events report, in order."""

    def __init__(self, client):
        self.c = client
        self.events = []
        self.lock = threading.Lock()

        async def reg():
            x = client.xmpp
            x.register_plugin("xep_0030")
            x.register_plugin("xep_0297")
            x.register_plugin("xep_0280")
            x.add_event_handler("carbon_received", lambda m: self._add("received", m))
            x.add_event_handler("carbon_sent", lambda m: self._add("sent", m))
        run(reg())

    def _add(self, kind, msg):
        fwd = msg["carbon_received" if kind == "received" else "carbon_sent"]   # the forwarded message
        with self.lock:
            self.events.append((kind, str(fwd["from"]), str(fwd["to"]), fwd["body"]))

    def enable(self, on=True):
        async def go():
            p = self.c.xmpp["xep_0280"]
            return await (p.enable() if on else p.disable())
        res = run(go())
        assert res["type"] == "result"

    def wait_event(self, ev):
        assert wait_until(lambda: ev in self.events, 10), (ev, self.events)
        return self.events.index(ev)


def online(cl, user, resource, c2s, prio=0):
    c = login(cl, user, "pw", resource, c2s=c2s)
    c.presence(children=f"<priority>{prio}</priority>")
    c.wait("presence", frm=c.jid)
    return c


def chat(frm, to, body, extra="", type="chat", mid=None):
    frm.send(f"<message to='{to}' type='{type}'" + (f" id='{mid}'" if mid else "") +
             f"><body>{body}</body>{extra}</message>")


def carbon_of(el, kind):
    """The forwarded message of a carbon copy (kind 'received' or 'sent'), or None."""
    return el.find(f"{{{NS}}}{kind}/{{{FW}}}forwarded/{C}message")


def is_carbon(el):
    return el.find(f"{{{NS}}}received") is not None or el.find(f"{{{NS}}}sent") is not None


def carbon_body(el):
    """The body of the message a carbon copy forwards (None when el is not a carbon)."""
    inner = carbon_of(el, "received")
    if inner is None:
        inner = carbon_of(el, "sent")
    return inner.findtext(f"{C}body") if inner is not None else None


def body_is(text):
    return lambda el: el.findtext(f"{C}body") == text


def test_disco_and_enable_errors(cl):
    a = online(cl, "ga", "r", "c2s.0")
    r = a.iq("<query xmlns='http://jabber.org/protocol/disco#info'/>", to="localhost")
    assert NS in {f.get("var") for f in r.iter("{http://jabber.org/protocol/disco#info}feature")}
    assert error_condition(a.iq(f"<enable xmlns='{NS}'/>", type="get")) == "bad-request"
    assert error_condition(a.iq(f"<enable xmlns='{NS}'/>", type="set", to="gb@localhost")) == "not-allowed"
    r = a.iq(f"<enable xmlns='{NS}'/>", type="set")
    assert r.get("type") == "result" and r.get("from") == "ga@localhost" and r.get("to") == a.jid
    # Enabling twice is not an error (XEP-0280 10.1).
    assert a.iq(f"<enable xmlns='{NS}'/>", type="set").get("type") == "result"
    a.close()


def test_received_and_sent_copies_across_c2s(cl):
    a1 = online(cl, "ca", "one", "c2s.0")
    a2 = online(cl, "ca", "two", "c2s.1")
    a3 = online(cl, "ca", "three", "c2s.0")
    b = online(cl, "cb", "r", "c2s.1")
    k1, k2, k3 = Carbons(a1), Carbons(a2), Carbons(a3)
    k1.enable()
    k2.enable()
    a1.drain(), a2.drain(), a3.drain()

    # Received: to a1's full JID; a2 (carbons on, other c2s) gets a copy, a1 and a3 none.
    chat(b, a1.jid, "hello one", mid="m1")
    got = a1.wait("message", pred=body_is("hello one"))
    assert not is_carbon(got) and got.get("from") == b.jid
    k2.wait_event(("received", b.jid, a1.jid, "hello one"))
    cp = a2.wait("message", pred=lambda el: carbon_of(el, "received") is not None)
    assert cp.get("from") == "ca@localhost" and cp.get("to") == a2.jid and cp.get("type") == "chat"
    inner = carbon_of(cp, "received")
    assert inner.get("id") == "m1" and inner.findtext(f"{C}body") == "hello one"
    # Markers: a message to a3 and to a1 each; no copy of "hello one" came before it.
    chat(b, a3.jid, "marker three")
    assert a3.none_before({"kind": "message", "pred": body_is("marker three")}, "message", pred=is_carbon)
    chat(b, a1.jid, "marker one")
    assert a1.none_before({"kind": "message", "pred": body_is("marker one")}, "message",
                          pred=lambda el: carbon_body(el) == "hello one")
    # The message to a3 was copied to a1 and a2 (carbons on), not to a3.
    k1.wait_event(("received", b.jid, a3.jid, "marker three"))
    k2.wait_event(("received", b.jid, a3.jid, "marker three"))
    k2.wait_event(("received", b.jid, a1.jid, "marker one"))
    a1.drain(), a2.drain()

    # Sent: a3 (carbons off) sends; a1 and a2 get sent copies; a3 none.
    chat(a3, b.jid, "from three", mid="s3")
    b.wait("message", pred=body_is("from three"))
    k1.wait_event(("sent", a3.jid, b.jid, "from three"))
    k2.wait_event(("sent", a3.jid, b.jid, "from three"))
    cp = a1.wait("message", pred=lambda el: carbon_of(el, "sent") is not None)
    assert cp.get("from") == "ca@localhost" and cp.get("to") == a1.jid
    assert carbon_of(cp, "sent").get("id") == "s3"
    # a1 sends: a2 gets it, a1 itself does not.
    chat(a1, b.jid, "from one")
    k2.wait_event(("sent", a1.jid, b.jid, "from one"))
    b.wait("message", pred=body_is("from one"))
    chat(b, a1.jid, "marker two")
    assert a1.none_before({"kind": "message", "pred": body_is("marker two")}, "message",
                          pred=lambda el: carbon_of(el, "sent") is not None)
    # a3, carbons off, got no copy of anything (its own message included).
    chat(b, a3.jid, "end three")
    assert a3.none_before({"kind": "message", "pred": body_is("end three")}, "message", pred=is_carbon)
    assert k3.events == []
    assert not any(kind == "sent" and body == "from one" for kind, _, _, body in k1.events)

    # Disable: a2 gets nothing more (marker: a direct message to a2 after one to a1).
    k2.enable(False)
    a2.drain()
    chat(b, a1.jid, "after disable")
    a1.wait("message", pred=body_is("after disable"))
    chat(b, a2.jid, "direct two")
    assert a2.none_before({"kind": "message", "pred": body_is("direct two")}, "message", pred=is_carbon)
    for c in (a1, a2, a3, b):
        c.close()


def test_bare_jid_message_copies(cl):
    """To the bare JID: RFC 6121 picks the highest priority; the other carbons-enabled
    resources get copies, the one that got it does not."""
    a1 = online(cl, "da", "hi", "c2s.0", prio=5)
    a2 = online(cl, "da", "lo", "c2s.1", prio=1)
    a3 = online(cl, "da", "lo2", "c2s.1", prio=1)
    b = online(cl, "db", "r", "c2s.0")
    k1, k2, k3 = Carbons(a1), Carbons(a2), Carbons(a3)
    k1.enable()
    k2.enable()
    chat(b, "da@localhost", "to bare")
    got = a1.wait("message", pred=body_is("to bare"))
    assert not is_carbon(got)
    k2.wait_event(("received", b.jid, "da@localhost", "to bare"))
    chat(b, a1.jid, "marker")
    assert a1.none_before({"kind": "message", "pred": body_is("marker")}, "message", pred=is_carbon)
    chat(b, a3.jid, "marker3")
    assert a3.none_before({"kind": "message", "pred": body_is("marker3")}, "message")
    for c in (a1, a2, a3, b):
        c.close()


def test_private_no_copy_and_eligibility(cl):
    a1 = online(cl, "ea", "one", "c2s.0")
    a2 = online(cl, "ea", "two", "c2s.1")
    b = online(cl, "eb", "r", "c2s.1")
    k2 = Carbons(a2)
    Carbons(a1)
    k2.enable()
    # <private/> from a1: no sent copy, and b gets the message without it.
    chat(a1, b.jid, "secret", extra=f"<private xmlns='{NS}'/>")
    got = b.wait("message", pred=body_is("secret"))
    assert got.find(f"{{{NS}}}private") is None
    # <no-copy/> hint from b to a1: no received copy.
    chat(b, a1.jid, "nocopy", extra="<no-copy xmlns='urn:xmpp:hints'/>")
    a1.wait("message", pred=body_is("nocopy"))
    # <private/> from b to a1: no received copy either.
    chat(b, a1.jid, "private in", extra=f"<private xmlns='{NS}'/>")
    got = a1.wait("message", pred=body_is("private in"))
    assert got.find(f"{{{NS}}}private") is None
    # Not eligible: headline; normal without a body. Eligible: normal with a body.
    chat(b, a1.jid, "headline", type="headline")
    a1.wait("message", pred=body_is("headline"))
    b.send(f"<message to='{a1.jid}'><received xmlns='urn:xmpp:receipts' id='x'/></message>")
    a1.wait("message", pred=lambda el: el.find("{urn:xmpp:receipts}received") is not None)
    chat(b, a1.jid, "normal body", type="normal")
    k2.wait_event(("received", b.jid, a1.jid, "normal body"))
    # Only that one reached a2, as a copy: nothing before it.
    assert [e[3] for e in k2.events] == ["normal body"], k2.events
    assert a2.none_before({"kind": "message", "pred": lambda el: (carbon_of(el, "received") is not None and
                           carbon_of(el, "received").findtext(f"{C}body") == "normal body")}, "message")
    for c in (a1, a2, b):
        c.close()


def test_forged_carbon_refused(cl):
    a1 = online(cl, "fa", "one", "c2s.0")
    b = online(cl, "fb", "r", "c2s.1")
    forged = (f"<message to='{a1.jid}' type='chat' id='f1'><sent xmlns='{NS}'><forwarded xmlns='{FW}'>"
              f"<message xmlns='jabber:client' from='fa@localhost/other' to='x@localhost' type='chat'>"
              f"<body>fake</body></message></forwarded></sent></message>")
    b.send(forged)
    err = b.wait("message", id="f1", type="error")
    assert error_condition(err) == "not-acceptable"
    chat(b, a1.jid, "real")
    assert a1.none_before({"kind": "message", "pred": body_is("real")}, "message", id="f1")
    for c in (a1, b):
        c.close()


def routed_messages(cl):
    """Messages routed by both router shards (a Route handled, first or second hop)."""
    total = 0.0
    for r in ("router.0", "router.1"):
        _, text = http_get(cl.metrics_port(r), "/metrics")
        m = re.search(r'^meerkat_router_routed_total\{[^}]*kind="message"[^}]*\} (\S+)$', text, re.M)
        total += float(m.group(1)) if m else 0.0
    return total


def solo(cl, a_user, d_user, tag):
    """a (on c2s.0, alone) chats with d (the other shard): each message takes one router
    hop (the sender's shard is not asked for sent copies: its router told the c2s,
    CarbonsHint). Returns the clients."""
    assert shard_of(f"{a_user}@localhost", ["router.0", "router.1"]) != \
        shard_of(f"{d_user}@localhost", ["router.0", "router.1"])
    a = online(cl, a_user, "one", "c2s.0")
    d = online(cl, d_user, "r", "c2s.1")
    # The hint followed the SessionOpen on the same router socket, before a's presence echo.
    before = routed_messages(cl)
    for i in range(10):
        chat(a, d.jid, f"{tag} solo {i}")
    d.wait("message", pred=body_is(f"{tag} solo 9"))
    assert routed_messages(cl) - before == 10
    return a, d


def second_resource_gets_sent_copies(cl, a, d, a_user, tag):
    """A second resource on the other c2s enables carbons: a is told (a hint from the
    router, racing the enable's answer to a2), then each message of a is copied to a2."""
    a2 = online(cl, a_user, "two", "c2s.1")
    k2 = Carbons(a2)
    k2.enable()
    n = 0
    while not any(kind == "sent" for kind, _, _, _ in k2.events):
        assert n < 50, k2.events
        chat(a, d.jid, f"{tag} probe {n}")
        d.wait("message", pred=body_is(f"{tag} probe {n}"))
        n += 1
    for i in range(5):
        chat(a, d.jid, f"{tag} copied {i}")
    for i in range(5):
        k2.wait_event(("sent", a.jid, d.jid, f"{tag} copied {i}"))
    return a2


def test_sent_copies_asked_for_only_when_other_sessions_want_them(cl):
    """A user with no other carbons-enabled session: its messages to a user of the other
    shard take one router hop. Once another resource enables carbons, the sent copies come."""
    a, d = solo(cl, "ha", "hd", "h")
    a2 = second_resource_gets_sent_copies(cl, a, d, "ha", "h")
    for c in (a, a2, d):
        c.close()


def test_a_restarted_router_tells_the_c2s_again(cl):
    """The c2s was told "no other sessions want copies"; the user's router shard is killed
    and comes back: a resource that enables carbons afterwards still gets the sent copies
    (the restarted shard tells the c2s again once it has the sessions back)."""
    a, d = solo(cl, "ia", "if", "i")
    role = shard_of("ia@localhost", ["router.0", "router.1"])
    old = cl.child_pid(role)
    os.kill(old, signal.SIGKILL)
    assert wait_until(lambda: (cl.child_pid(role) or old) != old and cl.healthy(role), 30)
    # The route waits on the reliable channel until the shard has its sessions back.
    chat(a, d.jid, "i back")
    d.wait("message", pred=body_is("i back"), timeout=30)
    a2 = second_resource_gets_sent_copies(cl, a, d, "ia", "i")
    for c in (a, a2, d):
        c.close()
