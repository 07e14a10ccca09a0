"""tests/integration/test_component.py - external components (XEP-0114) on the component listener: handshake, routing both ways, refusals, bounces."""
import hashlib
import os
import re
import signal
import threading
import time
import xml.etree.ElementTree as ET

import pytest
import slixmpp
from slixmpp.xmlstream.handler import Callback
from slixmpp.xmlstream.matcher import MatchXPath

from harness import Cluster, http_get, pid_alive, wait_until
from rawxmpp import Raw
from xmpp import Client, error_condition, local, loop, run

COMP = "comp.localhost"
OTHER = "other.localhost"
SECRET = "s3cr3t-comp"
OTHER_SECRET = "other-secret"
NS_STREAMS = "urn:ietf:params:xml:ns:xmpp-streams"


class Component:
    """A slixmpp ComponentXMPP on the test's loop. Every stanza it receives is kept in an
    inbox; wait() takes the first one that matches. started/refused tell how the
    handshake ended; stream_error holds the condition of a stream error received."""

    def __init__(self, port, jid, secret, timeout=10.0):
        self.jid = jid
        self.timeout = timeout
        self.inbox = []
        self.cond = threading.Condition()
        self.started = threading.Event()
        self.disconnected = threading.Event()
        self.stream_error = None
        self.xmpp = run(self._start(port, secret), timeout + 5)

    async def _start(self, port, secret):
        x = slixmpp.ComponentXMPP(self.jid, secret, "127.0.0.1", port)
        x.reconnect_max_attempts = 0
        x.whitespace_keepalive = False

        def errored(err):
            cond = next((local(c.tag) for c in err.xml if c.tag.startswith("{" + NS_STREAMS + "}")
                         and local(c.tag) != "text"), None)
            self.stream_error = cond

        x.add_event_handler("session_start", lambda _: self.started.set())
        x.add_event_handler("stream_error", errored)
        x.add_event_handler("disconnected", lambda _: self.disconnected.set())
        x.add_filter("in", self._record)
        # The tests answer IQs themselves: none is left for slixmpp's automatic error.
        x.register_handler(Callback("all iq", MatchXPath("{jabber:component:accept}iq"), lambda iq: None))
        x.connect()
        return x

    def _record(self, stanza):
        xml = stanza.xml
        if local(xml.tag) in ("message", "presence", "iq"):
            with self.cond:
                self.inbox.append(ET.fromstring(ET.tostring(xml)))
                self.cond.notify_all()
        return stanza

    def send(self, xml):
        loop().call_soon_threadsafe(self.xmpp.send_raw, xml)

    def wait(self, kind, timeout=None, **kw):
        end = time.monotonic() + (timeout or self.timeout)
        with self.cond:
            while True:
                for i, el in enumerate(self.inbox):
                    if Client.matches(el, kind, **kw):
                        return self.inbox.pop(i)
                left = end - time.monotonic()
                if left <= 0:
                    seen = "\n".join(ET.tostring(e, encoding="unicode")[:300] for e in self.inbox)
                    raise TimeoutError(f"{self.jid}: no {kind} {kw}; inbox:\n{seen}")
                self.cond.wait(left)

    def close(self):
        loop().call_soon_threadsafe(self.xmpp.disconnect)
        self.disconnected.wait(5)


def connect_component(cl, jid=COMP, secret=SECRET):
    """A component connected and registered with every router shard (so that what a test
    sends next is routed to it, not to a connection it replaced)."""
    c = Component(cl.comp_port, jid, secret)
    assert c.started.wait(10), f"{jid}: handshake not accepted (stream error {c.stream_error})"
    assert wait_until(lambda: registered_everywhere(cl, jid), 10), f"{jid}: not registered with every router"
    return c


def registered_everywhere(cl, domain):
    """The latest connection of domain a c2s logged is the one every router logged."""
    log = cl.read_log()
    opened = re.findall(r"id=c2s\.\d+ event=component_open .*? domain=" + re.escape(domain) + r" session=(\d+)", log)
    if not opened:
        return False
    routers = [p["id"] for p in cl.procs if p["id"].startswith("router.")]
    return all(re.search(r"id=" + re.escape(r) + r" event=component_open domain=" + re.escape(domain)
                         + r" c2s=\S+ session=" + opened[-1] + r"\b", log) for r in routers)


class RawComponent(Raw):
    """A component written by hand, for byte-exact checks of the protocol."""

    def open(self, domain=COMP):
        self.send(f"<?xml version='1.0'?><stream:stream to='{domain}' xmlns='jabber:component:accept' "
                  "xmlns:stream='http://etherx.jabber.org/streams'>")
        return self.recv_until(r"<stream:stream[^>]*>")

    def handshake(self, domain=COMP, secret=SECRET, upper=False):
        hdr = self.open(domain)
        sid = re.search(r"\bid='([^']+)'", hdr).group(1)
        digest = hashlib.sha1((sid + secret).encode()).hexdigest()
        self.send(f"<handshake>{digest.upper() if upper else digest}</handshake>")
        return hdr, self.recv_until(r"<handshake/>|</stream:stream>")


def stream_error_of(text):
    m = re.search(r"<stream:error><([a-z-]+) xmlns='" + re.escape(NS_STREAMS) + "'", text)
    return m.group(1) if m else None


def metric_sum(cl, proc, name, label=""):
    body = http_get(cl.metrics_port(proc), "/metrics")[1]
    return sum(float(l.rsplit(" ", 1)[1]) for l in body.splitlines()
               if (l.startswith(name + " ") or l.startswith(name + "{")) and label in l)


def handshakes(cl, result):
    return sum(metric_sum(cl, p["id"], "meerkat_c2s_component_handshakes_total", f'result="{result}"')
               for p in cl.procs if p["id"].startswith("c2s."))


def routers_know(cl, n):
    """Every router shard counts n connected components."""
    return all(metric_sum(cl, p["id"], "meerkat_router_components") == n
               for p in cl.procs if p["id"].startswith("router."))


@pytest.fixture(scope="module")
def cl(tmp_path_factory):
    d = tmp_path_factory.mktemp("component")
    for name, secret in (("comp.secret", SECRET), ("other.secret", OTHER_SECRET)):
        with open(d / name, "w") as f:
            f.write(secret + "\n")
    extra = "\n".join([
        "components:",
        f"  - {{domain: {COMP}, secret_file: {d / 'comp.secret'}}}",
        f"  - {{domain: {OTHER}, secret_file: {d / 'other.secret'}}}",
    ])
    c = Cluster(d, c2s=2, router=2, mam=1, pusher=0, gd=0, extra=extra)
    c.comp_port = c.add_listener("component")
    c.start()
    for u in ("alice", "bob"):
        c.ctl("register", f"{u}@localhost", f"{u}-pw")
    yield c
    c.stop()


# --- handshake ------------------------------------------------------------------------------

def test_handshake_ok(cl):
    comp = connect_component(cl)
    try:
        assert comp.stream_error is None
        assert wait_until(lambda: routers_know(cl, 1), 10), "the routers did not learn of the component"
    finally:
        comp.close()
    assert wait_until(lambda: routers_know(cl, 0), 10), "the routers did not forget the component"
    # Byte level: the answer names the component, carries a stream id, and accepts the
    # digest in upper-case hex too.
    r = RawComponent(cl.comp_port)
    hdr, ans = r.handshake(upper=True)
    assert "xmlns='jabber:component:accept'" in hdr and f"from='{COMP}'" in hdr
    assert ans == "<handshake/>"
    r.send("</stream:stream>")
    assert r.closed(5)


def test_wrong_secret_refused(cl):
    failures = handshakes(cl, "failure")
    comp = Component(cl.comp_port, COMP, "not-the-secret")
    assert comp.disconnected.wait(10), "a wrong secret was not refused"
    assert not comp.started.is_set()
    assert comp.stream_error == "not-authorized"
    r = RawComponent(cl.comp_port)
    _, ans = r.handshake(secret="wrong")
    assert stream_error_of(ans) == "not-authorized"
    assert r.closed(5)
    # Another configured component's secret does not open this domain either.
    r = RawComponent(cl.comp_port)
    _, ans = r.handshake(secret=OTHER_SECRET)
    assert stream_error_of(ans) == "not-authorized"
    assert r.closed(5)
    assert handshakes(cl, "failure") == failures + 3


def test_unknown_domain_refused(cl):
    comp = Component(cl.comp_port, "nobody.localhost", SECRET)
    assert comp.disconnected.wait(10), "an unknown domain was not refused"
    assert not comp.started.is_set()
    assert comp.stream_error == "host-unknown"
    # A hosted domain is not a component either.
    r = RawComponent(cl.comp_port)
    r.send("<?xml version='1.0'?><stream:stream to='localhost' xmlns='jabber:component:accept' "
           "xmlns:stream='http://etherx.jabber.org/streams'>")
    assert stream_error_of(r.recv_until("</stream:stream>")) == "host-unknown"
    assert r.closed(5)
    # A client stream on the component port.
    r = RawComponent(cl.comp_port)
    r.send(f"<?xml version='1.0'?><stream:stream to='{COMP}' xmlns='jabber:client' "
           "xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>")
    assert stream_error_of(r.recv_until("</stream:stream>")) == "invalid-namespace"
    assert r.closed(5)
    # Stanzas before the handshake.
    r = RawComponent(cl.comp_port)
    r.open()
    r.send("<message from='x@comp.localhost' to='alice@localhost'><body>early</body></message>")
    assert stream_error_of(r.recv_until("</stream:stream>")) == "not-authorized"
    assert r.closed(5)


# --- routing ----------------------------------------------------------------------------------

def test_user_message_and_iq_to_component(cl):
    comp = connect_component(cl)
    alice = Client(cl.c2s_port, "alice@localhost/a", "alice-pw")
    try:
        alice.send(f"<message to='{COMP}' type='chat' id='m1'><body>hello component \U0001F600</body></message>")
        m = comp.wait("message", id="m1")
        assert m.get("from") == "alice@localhost/a"
        assert m.get("to") == COMP
        assert m.find("{jabber:component:accept}body").text == "hello component \U0001F600"
        # Any JID at the component's domain reaches it.
        alice.send(f"<message to='room@{COMP}/nick' id='m2'><body>to a JID at it</body></message>")
        assert comp.wait("message", id="m2").get("to") == f"room@{COMP}/nick"
        # An IQ to the component, and its result back to the user.
        alice.send(f"<iq type='get' id='q1' to='{COMP}'><query xmlns='urn:test:comp'/></iq>")
        q = comp.wait("iq", id="q1", type="get")
        assert q.get("from") == "alice@localhost/a"
        comp.send(f"<iq type='result' id='q1' from='{COMP}' to='alice@localhost/a'>"
                  "<query xmlns='urn:test:comp'><answer>42</answer></query></iq>")
        res = alice.wait("iq", id="q1")
        assert res.get("type") == "result" and res.get("from") == COMP
        assert res.find("{urn:test:comp}query/{urn:test:comp}answer").text == "42"
        # The component asks the user; the user's answer comes back to it.
        comp.send(f"<iq type='get' id='q2' from='{COMP}' to='alice@localhost/a'><query xmlns='urn:test:ask'/></iq>")
        got = alice.wait("iq", id="q2", type="get")
        assert got.get("from") == COMP
        alice.send(f"<iq type='result' id='q2' to='{COMP}'/>")
        back = comp.wait("iq", id="q2", type="result")
        assert back.get("from") == "alice@localhost/a"
    finally:
        alice.close()
        comp.close()


def test_component_message_to_user(cl):
    comp = connect_component(cl)
    other = connect_component(cl, OTHER, OTHER_SECRET)
    bob = Client(cl.c2s_port, "bob@localhost/b", "bob-pw")
    try:
        bob.presence()
        bob.wait("presence", frm="bob@localhost/b")
        comp.send(f"<message from='bot@{COMP}/x' to='bob@localhost' type='chat' id='c1'>"
                  "<body>from a component: &amp; &lt;ok&gt;</body></message>")
        m = bob.wait("message", id="c1")
        assert m.get("from") == f"bot@{COMP}/x"
        assert m.find("{jabber:client}body").text == "from a component: & <ok>"
        # To another component.
        comp.send(f"<message from='{COMP}' to='svc@{OTHER}' id='c2'><body>peer</body></message>")
        assert other.wait("message", id="c2").get("from") == COMP
        # A stanza with no 'to' is answered with an error; the stream stays.
        comp.send(f"<message from='{COMP}' id='c3'><body>nowhere</body></message>")
        e = comp.wait("message", id="c3", type="error")
        assert error_condition_any(e) == "bad-request"
        # To a domain nobody serves: remote-server-not-found comes back to the component.
        comp.send(f"<message from='{COMP}' to='x@elsewhere.example' id='c4'><body>far</body></message>")
        e = comp.wait("message", id="c4", type="error")
        assert error_condition_any(e) == "remote-server-not-found"
        assert e.get("from") == "x@elsewhere.example" and e.get("to") == COMP
    finally:
        bob.close()
        other.close()
        comp.close()


def error_condition_any(el):
    """The stanza error condition, whatever the stanza's namespace."""
    for err in el:
        if local(err.tag) == "error":
            for c in err:
                if c.tag.startswith("{urn:ietf:params:xml:ns:xmpp-stanzas}") and local(c.tag) != "text":
                    return local(c.tag)
    return None


def test_foreign_from_refused(cl):
    bob = Client(cl.c2s_port, "bob@localhost/f", "bob-pw")
    try:
        bob.presence()
        bob.wait("presence", frm="bob@localhost/f")
        r = RawComponent(cl.comp_port)
        assert r.handshake()[1] == "<handshake/>"
        r.send("<message from='alice@localhost/a' to='bob@localhost/f' id='forged'><body>spoof</body></message>")
        assert stream_error_of(r.recv_until("</stream:stream>")) == "invalid-from"
        assert r.closed(5)
        # No from at all: improper-addressing.
        r2 = RawComponent(cl.comp_port)
        assert r2.handshake()[1] == "<handshake/>"
        r2.send("<message to='bob@localhost/f' id='nofrom'><body>anonymous</body></message>")
        assert stream_error_of(r2.recv_until("</stream:stream>")) == "improper-addressing"
        assert r2.closed(5)
        # The forged message never reached bob: a later one from the component, sent after
        # the refusal, comes first.
        comp = connect_component(cl)
        try:
            comp.send(f"<message from='{COMP}' to='bob@localhost/f' id='marker'><body>m</body></message>")
            assert bob.none_before({"kind": "message", "id": "marker"}, "message",
                                   pred=lambda e: e.get("id") in ("forged", "nofrom"))
        finally:
            comp.close()
    finally:
        bob.close()


def test_disconnected_component_bounces(cl):
    comp = connect_component(cl)
    assert wait_until(lambda: routers_know(cl, 1), 10)
    comp.close()
    assert wait_until(lambda: routers_know(cl, 0), 10), "the routers did not forget the component"
    alice = Client(cl.c2s_port, "alice@localhost/d", "alice-pw")
    try:
        alice.send(f"<message to='{COMP}' type='chat' id='b1'><body>anyone there?</body></message>")
        e = alice.wait("message", id="b1", type="error")
        assert e.get("from") == COMP
        assert error_condition(e) == "service-unavailable"
        assert e.find("{jabber:client}error").get("type") == "wait"
        res = alice.iq("<query xmlns='urn:test:comp'/>", to=f"user@{COMP}")
        assert res.get("type") == "error" and error_condition(res) == "service-unavailable"
        # An unconfigured domain is another matter.
        res = alice.iq("<query xmlns='urn:test:comp'/>", to="nobody.localhost")
        assert error_condition(res) == "remote-server-not-found"
    finally:
        alice.close()


def test_malformed_input_closes_only_that_connection(cl):
    comp = connect_component(cl, OTHER, OTHER_SECRET)
    alice = Client(cl.c2s_port, "alice@localhost/m", "alice-pw")
    try:
        for bad in ("<message from='x@comp.localhost' to='alice@localhost'><body>a</bod></message>",
                    "<!DOCTYPE x [<!ENTITY a 'b'>]>",
                    "<iq from='comp.localhost' to='alice@localhost' type='get' id='x'><" + "b" * 70000):
            r = RawComponent(cl.comp_port)
            assert r.handshake()[1] == "<handshake/>"
            r.send(bad)
            err = stream_error_of(r.recv_until("</stream:stream>"))
            assert err in ("not-well-formed", "restricted-xml", "policy-violation"), err
            assert r.closed(5)
        # Before the handshake a connection may not make the server hold much.
        r = RawComponent(cl.comp_port)
        r.open()
        r.send("<handshake>" + "a" * 20000)
        assert stream_error_of(r.recv_until("</stream:stream>")) == "policy-violation"
        assert r.closed(5)
        # Garbage before any stream.
        r = RawComponent(cl.comp_port)
        r.send("\x00\xff not xml at all")
        assert r.closed(5)
        # Everybody else is still served.
        alice.send(f"<message to='{OTHER}' id='ok1'><body>still here</body></message>")
        assert comp.wait("message", id="ok1").get("from") == "alice@localhost/m"
        assert not comp.disconnected.is_set() and not alice.disconnected.is_set()
        for p in cl.procs:
            assert cl.healthy(p["id"]), p["id"]
    finally:
        alice.close()
        comp.close()


def test_second_connection_replaces_first(cl):
    first = connect_component(cl)
    second = connect_component(cl)
    try:
        assert first.disconnected.wait(10), "the first connection was not replaced"
        assert first.stream_error == "conflict"
        alice = Client(cl.c2s_port, "alice@localhost/r", "alice-pw")
        try:
            alice.send(f"<message to='{COMP}' id='n1'><body>to the new one</body></message>")
            assert second.wait("message", id="n1").get("from") == "alice@localhost/r"
            assert not second.disconnected.is_set()
        finally:
            alice.close()
    finally:
        second.close()


def test_router_restart_reregisters(cl):
    comp = connect_component(cl)
    alice = Client(cl.c2s_port, "alice@localhost/rr", "alice-pw")
    try:
        for rid in ("router.0", "router.1"):
            old = cl.child_pid(rid)
            os.kill(old, signal.SIGKILL)
            assert wait_until(lambda: not pid_alive(old), 10)
            assert wait_until(lambda: cl.child_pid(rid) not in (None, old) and cl.healthy(rid), 20), rid
        assert wait_until(lambda: routers_know(cl, 1), 15), "the component was not registered again"
        alice.send(f"<message to='{COMP}' id='rr1'><body>after the restart</body></message>")
        assert comp.wait("message", id="rr1", timeout=15).get("from") == "alice@localhost/rr"
    finally:
        alice.close()
        comp.close()


def test_admin_kick(cl):
    comp = connect_component(cl)
    assert wait_until(lambda: routers_know(cl, 1), 10)
    r = cl.ctl("kick", COMP)
    assert "kick sent" in r.stdout
    assert comp.disconnected.wait(10), "the kicked component is still connected"
    assert comp.stream_error == "policy-violation"
    assert wait_until(lambda: routers_know(cl, 0), 10), "the routers did not forget the kicked component"


def test_hostile_stanzas(cl):
    """Each bad input gets its defined answer; nothing takes a process down."""
    # Stanza errors: the stream stays.
    r = RawComponent(cl.comp_port)
    assert r.handshake()[1] == "<handshake/>"
    r.send(f"<iq from='{COMP}' to='alice@localhost' type='get'><ping xmlns='urn:xmpp:ping'/></iq>")
    ans = r.recv_until("</iq>")
    assert re.search(r"<iq[^>]*type=.error.*?<bad-request ", ans), ans
    r.send(f"<iq from='{COMP}' to='alice@localhost' type='bogus' id='t1'/>")
    assert "<bad-request " in r.recv_until("</iq>")
    r.send(f"<message from='{COMP}' to='a@@b' id='t2'><body>x</body></message>")
    ans = r.recv_until("</message>")
    assert re.search(r"type=.error.", ans) and "<jid-malformed " in ans and re.search(r"id=.t2.", ans), ans
    # Stream errors: only that connection goes.
    cases = [
        (f"<message from='{COMP}/' to='alice@localhost'/>", "invalid-from"),
        (f"<message from='x@{OTHER}' to='alice@localhost'/>", "invalid-from"),
        ("<foo/>", "unsupported-stanza-type"),
        (f"<message xmlns='urn:other' from='{COMP}' to='alice@localhost'/>", "invalid-namespace"),
        ("<handshake>00</handshake>", "policy-violation"),
        (f"<message from='{COMP}' to='alice@localhost'>" + "<a>" * 200 + "</a>" * 200 + "</message>",
         "policy-violation"),
        (f"<message from='{COMP}' to='alice@localhost'" + "".join(f" a{i}='x'" for i in range(100)) + "/>",
         "policy-violation"),
    ]
    for bad, condition in cases:
        r = RawComponent(cl.comp_port)
        assert r.handshake()[1] == "<handshake/>"
        r.send(bad)
        assert stream_error_of(r.recv_until("</stream:stream>")) == condition, bad[:80]
        assert r.closed(5)
    for p in cl.procs:
        assert cl.healthy(p["id"]), p["id"]
    comp = connect_component(cl)
    comp.close()


def test_idle_component_gets_keepalives(tmp_path):
    """A silent component is not closed at limits.idle_timeout_sec (a client would be):
    it gets whitespace keepalives and stays routable."""
    with open(tmp_path / "comp.secret", "w") as f:
        f.write(SECRET)
    extra = "\n".join(["limits: {idle_timeout_sec: 1}", "components:",
                       f"  - {{domain: {COMP}, secret_file: {tmp_path / 'comp.secret'}}}"])
    c = Cluster(tmp_path, c2s=1, router=1, mam=1, pusher=0, gd=0, extra=extra)
    c.comp_port = c.add_listener("component")
    c.start()
    try:
        r = RawComponent(c.comp_port)
        assert r.handshake()[1] == "<handshake/>"
        assert wait_until(lambda: registered_everywhere(c, COMP), 10)
        for _ in range(3):   # three idle periods: three keepalives, no stream error
            assert r.recv_until(r"\A\s", timeout=10) == " "
        r.send(f"<message from='{COMP}' to='self@{COMP}' id='alive'><body>still here</body></message>")
        assert re.search(r"<message[^>]*id=.alive.", r.recv_until("</message>"))
    finally:
        c.stop()
