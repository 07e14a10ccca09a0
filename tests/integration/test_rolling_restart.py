"""tests/integration/test_rolling_restart.py - SIGTERM to one c2s under a steady chat load: its clients learn which of their stanzas were handled, get <see-other-host/> naming the cluster's client listener (or <system-shutdown/> when no other c2s is up), reconnect, and every message anyone sent is received exactly once (offline ones included)."""
import collections
import os
import re
import signal
import socket
import ssl
import time
import xml.etree.ElementTree as ET

import pytest

from harness import Cluster, cluster_on, wait_until
from rawxmpp import Raw, authed_on

SM = "urn:xmpp:sm:3"
STREAMS = "urn:ietf:params:xml:ns:xmpp-streams"
CLIENT = "jabber:client"
SEND_EVERY_S = 0.03
EXTRA = "limits: {offline_max: 100000}"


class Chatter:
    """One user's client: raw XMPP with stream management (acks answered, its own
    unacknowledged stanzas sent again on a new stream), counting the bodies it gets."""

    def __init__(self, cl, user, peers, resume=False):
        self.cl = cl
        self.resume = resume        # asks for resumption; tries <resume/> after a stream error
        self.previd = None
        self.resume_answers = []    # what each <resume/> got
        self.user = user
        self.peers = peers          # bare JIDs it writes to, in turn
        self.n = 0                  # messages made
        self.sent = collections.defaultdict(list)   # recipient -> bodies
        self.got = collections.Counter()
        self.unacked = []           # (stream seq, xml) of this stream, not acknowledged yet
        self.r = None
        self.errors = []            # stream errors: (condition, text)
        self.streams = 0
        self.next_send = 0.0
        self.reconnect_to = None    # (host, port) after a stream error

    # --- the stream -------------------------------------------------------------------
    def attach(self, r):
        """r: a stream authenticated and restarted (features read or not)."""
        r.send("<iq type='set' id='bind1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>"
               f"<resource>rr{self.streams}</resource></bind></iq>")
        r.recv_until(r"<iq[^>]*id=.bind1.*?</iq>")
        r.send(f"<enable xmlns='{SM}'" + (" resume='true'" if self.resume else "") + "/>")
        enabled = r.recv_until(r"<enabled[^>]*/>")
        m = re.search(r"id='([^']+)'", enabled)
        self.previd = m.group(1) if m else None
        self.r = r
        self.streams += 1
        self.out_seq = 0
        self.h_in = 0
        self.depth = 0
        self.closed = False
        self.broken = False
        self.parser = ET.XMLPullParser(events=("start", "end"))
        self.parser.feed("<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>")
        list(self.parser.read_events())   # the stream start: depth 1
        self.depth = 1
        pending = [x for _, x in self.unacked]
        self.unacked = []
        self.stanza("<presence/>")
        for x in pending:                # the previous stream did not handle them
            self.stanza(x)
        left = r.buf
        r.buf = ""
        self.feed(left.encode())
        r.sock.setblocking(False)

    def connect(self, host, port):
        r = Raw(port, host=host, timeout=15)
        r.open_stream()
        r.starttls()
        r.open_stream()
        assert "<success" in r.auth_scram(self.user, "pw")
        r.open_stream()
        if self.resume and self.previd:
            r.send(f"<resume xmlns='{SM}' previd='{self.previd}' h='{self.h_in}'/>")
            self.resume_answers.append(r.recv_until(r"<resumed[^>]*/>|</failed>|<failed[^>]*/>", timeout=10))
        self.attach(r)

    def stanza(self, xml):
        self.out_seq += 1
        self.unacked.append((self.out_seq, xml))
        self.send(xml)

    def send(self, xml):
        """A write the server may no longer read (it ended the stream): what it did not
        handle stays in unacked, and the stream error is still read by pump()."""
        if self.broken:
            return
        try:
            self.r.sock.setblocking(True)
            self.r.send(xml)
            self.r.sock.setblocking(False)
        except (OSError, ssl.SSLError):
            self.broken = True

    def send_next(self, now):
        if self.r is None or self.closed or self.broken or now < self.next_send:
            return
        self.next_send = now + SEND_EVERY_S
        to = self.peers[self.n % len(self.peers)]
        body = f"{self.user}-{self.n}"
        self.n += 1
        self.sent[to].append(body)
        self.stanza(f"<message to='{to}' type='chat' id='{body}'><body>{body}</body></message>")
        if self.n % 5 == 0:
            self.send(f"<r xmlns='{SM}'/>")

    def pump(self):
        """Reads what arrived; answers <r/>, applies <a/>, notes stream errors."""
        if self.r is None or self.closed:
            return
        while True:
            try:
                data = self.r.sock.recv(65536)
            except (BlockingIOError, ssl.SSLWantReadError, socket.timeout):
                return
            except (ConnectionError, ssl.SSLError, OSError):
                data = b""
            if not data:
                self.on_closed()
                return
            self.feed(data)
            if self.closed:
                return

    def feed(self, data):
        self.parser.feed(data)
        for ev, el in self.parser.read_events():
            if ev == "start":
                self.depth += 1
                continue
            self.depth -= 1
            if self.depth == 0:
                self.on_closed()
                return
            if self.depth == 1:
                self.element(el)

    def element(self, el):
        tag = el.tag
        if tag in (f"{{{CLIENT}}}message", f"{{{CLIENT}}}presence", f"{{{CLIENT}}}iq"):
            self.h_in += 1
            body = el.find(f"{{{CLIENT}}}body")
            if tag.endswith("message") and body is not None and el.get("type") != "error":
                self.got[body.text] += 1
            elif el.get("type") == "error":
                raise AssertionError(f"{self.user} got an error: {ET.tostring(el)!r}")
        elif tag == f"{{{SM}}}r":
            self.send(f"<a xmlns='{SM}' h='{self.h_in}'/>")
        elif tag == f"{{{SM}}}a":
            h = int(el.get("h"))
            self.unacked = [(s, x) for s, x in self.unacked if s > h]
        elif tag == "{http://etherx.jabber.org/streams}error":
            cond = next(iter(el), None)
            name = cond.tag.split("}")[1] if cond is not None else None
            self.errors.append((name, (cond.text or "") if cond is not None else ""))
            if name == "see-other-host":
                host, port = cond.text.rsplit(":", 1)
                self.reconnect_to = (host.strip("[]"), int(port))
            else:
                self.reconnect_to = ("127.0.0.1", self.cl.c2s_port)
        el.clear()

    def on_closed(self):
        self.closed = True
        self.r.close()

    def all_acked(self):
        return not self.unacked


def run_load(chatters, until, on_tick=None):
    """Sends and reads for every chatter until until() is true (or 60 s). Clients whose
    stream ended reconnect where they were told (retrying while nothing listens)."""
    end = time.monotonic() + 60
    while time.monotonic() < end:
        now = time.monotonic()
        for c in chatters:
            c.send_next(now)
            c.pump()
            if c.closed and c.reconnect_to is not None:
                try:
                    c.connect(*c.reconnect_to)
                except (ConnectionError, OSError, TimeoutError):
                    time.sleep(0.05)    # the only c2s is restarting: try again
        if on_tick is not None:
            on_tick()
        if until():
            return True
        time.sleep(0.005)
    return until()


def quiesce(chatters):
    """Stops sending; every client's stanzas acknowledged and every message received."""
    for c in chatters:
        c.next_send = float("inf")
        if c.r is not None and not c.closed:
            c.send(f"<r xmlns='{SM}'/>")

    def done():
        if not all(c.all_acked() and not c.closed for c in chatters):
            return False
        want = collections.Counter()
        for c in chatters:
            for to, bodies in c.sent.items():
                if to.split("@")[0] in {d.user for d in chatters}:
                    want.update(bodies)
        got = collections.Counter()
        for c in chatters:
            got.update(c.got)
        return got == want

    last_r = [time.monotonic()]

    def tick():
        if time.monotonic() - last_r[0] > 0.5:     # an <r/> now and then for the last acks
            last_r[0] = time.monotonic()
            for c in chatters:
                if c.r is not None and not c.closed and c.unacked:
                    c.send(f"<r xmlns='{SM}'/>")

    return run_load(chatters, done, tick)


def check_exactly_once(chatters):
    for c in chatters:
        for to, bodies in c.sent.items():
            rcpt = next(d for d in chatters if f"{d.user}@localhost" == to)
            missing = [b for b in bodies if rcpt.got[b] == 0]
            twice = [b for b in bodies if rcpt.got[b] > 1]
            assert not missing and not twice, (c.user, to, len(bodies), missing[:10], twice[:10])
    for c in chatters:
        assert sum(c.got.values()) == sum(len(d.sent.get(f"{c.user}@localhost", [])) for d in chatters), c.user


@pytest.mark.parametrize("driver", ["sqlite", "pgsql"])
def test_sigterm_sends_clients_to_the_other_c2s_and_loses_nothing(tmp_path, driver):
    with cluster_on(driver, tmp_path, c2s=2, router=2, mam=1, pusher=0, gd=0, extra=EXTRA) as cl:
        a_users = ["rra1", "rra2", "rra3"]
        b_users = ["rrb1", "rrb2", "rrb3"]
        for u in a_users + b_users:
            cl.ctl("register", f"{u}@localhost", "pw")
        chatters = []
        for i, u in enumerate(a_users):
            # each A writes to its B and to the next A (both on the stopping c2s)
            chatters.append(Chatter(cl, u, [f"{b_users[i]}@localhost", f"{a_users[(i + 1) % 3]}@localhost"]))
        for i, u in enumerate(b_users):
            chatters.append(Chatter(cl, u, [f"{a_users[i]}@localhost"]))
        for c in chatters:
            c.attach(authed_on(cl, c.user, "c2s.0" if c.user in a_users else "c2s.1"))
        a = [c for c in chatters if c.user in a_users]
        b = [c for c in chatters if c.user in b_users]
        # Steady load first: messages flow both ways.
        assert run_load(chatters, lambda: all(sum(c.got.values()) >= 5 for c in chatters))
        pid = cl.child_pid("c2s.0")
        os.kill(pid, signal.SIGTERM)
        # Every A client is told where to go, reconnects there, and chats on.
        assert run_load(chatters, lambda: all(c.streams == 2 and not c.closed for c in a)), \
            [(c.user, c.errors, c.streams) for c in a]
        for c in a:
            assert c.errors == [("see-other-host", f"127.0.0.1:{cl.c2s_port}")], c.errors
        assert all(not c.errors and c.streams == 1 for c in b)
        marks = [c.n for c in chatters]
        assert run_load(chatters, lambda: all(c.n >= m + 10 for c, m in zip(chatters, marks)))
        if not quiesce(chatters):
            if cl.pg:
                print("offline rows:", cl.pg.query("select username, xml from offline"))
            check_exactly_once(chatters)     # says what is missing or twice
            raise AssertionError([(c.user, len(c.unacked), c.closed) for c in chatters])
        check_exactly_once(chatters)
        assert wait_until(lambda: cl.child_pid("c2s.0") not in (None, pid), 10)
        log = cl.read_log()
        assert re.search(r"id=c2s\.0 event=drain_start sessions=3 routers=2 other_c2s_up=1", log), log[-3000:]
        assert "event=stop_forced" not in log


def test_sigterm_with_no_other_c2s_says_system_shutdown_and_loses_nothing(tmp_path):
    """The only c2s stops: its clients get <system-shutdown/> after the <a h/> of what it
    handled, and reconnect once the supervisor has restarted it; what was sent to them
    meanwhile comes from offline storage."""
    cl = Cluster(tmp_path, c2s=1, router=1, mam=1, pusher=0, gd=0, extra=EXTRA).start()
    try:
        users = ["rrs1", "rrs2"]
        for u in users:
            cl.ctl("register", f"{u}@localhost", "pw")
        chatters = [Chatter(cl, "rrs1", ["rrs2@localhost"]), Chatter(cl, "rrs2", ["rrs1@localhost"])]
        for c in chatters:
            c.connect("127.0.0.1", cl.c2s_port)
        assert run_load(chatters, lambda: all(sum(c.got.values()) >= 5 for c in chatters))
        pid = cl.child_pid("c2s.0")
        os.kill(pid, signal.SIGTERM)
        assert run_load(chatters, lambda: all(c.streams == 2 and not c.closed for c in chatters)), \
            [(c.user, c.errors, c.streams) for c in chatters]
        for c in chatters:
            assert c.errors == [("system-shutdown", "")], c.errors
        marks = [c.n for c in chatters]
        assert run_load(chatters, lambda: all(c.n >= m + 10 for c, m in zip(chatters, marks)))
        if not quiesce(chatters):
            check_exactly_once(chatters)     # says what is missing or twice
            raise AssertionError([(c.user, len(c.unacked), c.closed) for c in chatters])
        check_exactly_once(chatters)
        assert re.search(r"id=c2s\.0 event=drain_start sessions=2 routers=1 other_c2s_up=0", cl.read_log())
    finally:
        cl.stop()


def test_resumable_session_moves_by_a_failed_resume_and_a_new_bind(tmp_path):
    """A client with resumption on: the stopping c2s ended its session (everything
    acknowledged, nothing queued; the client learnt its h from the <a/> before the stream
    error), so its <resume/> on the other c2s fails at once; it binds anew and nothing is
    lost or doubled."""
    cl = Cluster(tmp_path, c2s=2, router=1, mam=1, pusher=0, gd=0, extra=EXTRA).start()
    try:
        for u in ("rrm", "rrn"):
            cl.ctl("register", f"{u}@localhost", "pw")
        m = Chatter(cl, "rrm", ["rrn@localhost"], resume=True)
        n = Chatter(cl, "rrn", ["rrm@localhost"])
        m.attach(authed_on(cl, "rrm", "c2s.0"))
        n.attach(authed_on(cl, "rrn", "c2s.1"))
        assert m.previd and m.previd.endswith("@c2s.0"), m.previd
        chatters = [m, n]
        assert run_load(chatters, lambda: all(sum(c.got.values()) >= 5 for c in chatters))
        os.kill(cl.child_pid("c2s.0"), signal.SIGTERM)
        assert run_load(chatters, lambda: m.streams == 2 and not m.closed), m.errors
        assert m.errors == [("see-other-host", f"127.0.0.1:{cl.c2s_port}")]
        assert len(m.resume_answers) == 1 and "<failed" in m.resume_answers[0], m.resume_answers
        marks = [c.n for c in chatters]
        assert run_load(chatters, lambda: all(c.n >= k + 10 for c, k in zip(chatters, marks)))
        if not quiesce(chatters):
            check_exactly_once(chatters)
            raise AssertionError([(c.user, len(c.unacked), c.closed) for c in chatters])
        check_exactly_once(chatters)
    finally:
        cl.stop()


def test_slixmpp_follows_see_other_host_and_gets_what_came_meanwhile(tmp_path):
    """slixmpp (no stream management: the plain path) follows <see-other-host/>, and the
    messages sent to it while it moved come after its presence, each once."""
    import threading
    from xmpp import login, loop
    cl = Cluster(tmp_path, c2s=2, router=1, mam=1, pusher=0, gd=0, extra=EXTRA).start()
    try:
        for u in ("rrx", "rry"):
            cl.ctl("register", f"{u}@localhost", "pw")
        x = login(cl, "rrx", "pw", "phone", c2s="c2s.0")
        y = login(cl, "rry", "pw", "desk", c2s="c2s.1")
        errors = []
        moved = threading.Event()

        def on_error(err):
            # slixmpp 1.8's own redirect loses the port (its reconnect() connects to the
            # JID's domain on 5222; max_redirects -1 turns it off): the address is followed
            # here with its connect(), once the stream is closed.
            errors.append((err["condition"], err["see_other_host"]))
            host, port = err["see_other_host"].rsplit(":", 1)

            async def go(_):
                x.xmpp.connect((host, int(port)))
            x.xmpp.add_event_handler("disconnected", go, disposable=True)

        def on_start(_):
            x.xmpp.send_presence()
            moved.set()

        def hook():
            x.xmpp.max_redirects = -1
            x.xmpp.add_event_handler("stream_error", on_error)
            x.xmpp.add_event_handler("session_start", on_start)
        loop().call_soon_threadsafe(hook)
        x.presence()
        y.presence()
        y.send("<message to='rrx@localhost' type='chat'><body>before</body></message>")
        x.wait("message", pred=lambda el: el.findtext("{jabber:client}body") == "before")
        os.kill(cl.child_pid("c2s.0"), signal.SIGTERM)
        for i in range(20):
            y.send(f"<message to='rrx@localhost' type='chat'><body>during {i}</body></message>")
        assert moved.wait(20), errors
        assert errors == [("see-other-host", f"127.0.0.1:{cl.c2s_port}")]
        y.send("<message to='rrx@localhost' type='chat'><body>after</body></message>")
        x.wait("message", timeout=15, pred=lambda el: el.findtext("{jabber:client}body") == "after")
        got = collections.Counter()
        with x.cond:
            for el in x.inbox:
                if el.tag == "{jabber:client}message" and el.findtext("{jabber:client}body"):
                    got[el.findtext("{jabber:client}body")] += 1
        assert got == collections.Counter(f"during {i}" for i in range(20)), got
        x.close()
        y.close()
    finally:
        cl.stop()


@pytest.mark.parametrize("setting,expect", [("xmpp.example.net:5222", ("see-other-host", "xmpp.example.net:5222")),
                                            ("off", ("system-shutdown", ""))])
def test_see_other_host_setting(tmp_path, setting, expect):
    """A fixed address is what every client is told, another c2s up or not; off says
    <system-shutdown/> even with another c2s up."""
    cl = Cluster(tmp_path, c2s=2, router=1, mam=1, pusher=0, gd=0, extra=EXTRA + f"\nsee_other_host: \"{setting}\"")
    cl.start()
    try:
        cl.ctl("register", "rrf@localhost", "pw")
        c = Chatter(cl, "rrf", ["rrf@localhost"])
        c.attach(authed_on(cl, "rrf", "c2s.0"))
        os.kill(cl.child_pid("c2s.0"), signal.SIGTERM)
        c.next_send = float("inf")
        assert run_load([c], lambda: c.errors)
        assert c.errors == [expect]
    finally:
        cl.stop()
