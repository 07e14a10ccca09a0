"""tests/integration/test_push_http.py - the HTTP webhook backend against real HTTP servers in the test: MongooseIM's form bytes, signed JSON, retries, a hanging receiver, kill -9 of the pusher during a burst, automatic pipelining (probed, dropped, Connection: close)."""
import hashlib
import hmac
import json
import os
import signal
import socket
import ssl
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from harness import Cluster, http_get, make_test_ca, wait_until
from xmpp import login

SECRET = "webhook-hmac-secret \u00e9 0123456789"
BODY = "Hi Bob \U0001F600 \u00e9t\u00e9 % & + = ~*/? done"


def cow_qs(text):
    """MongooseIM 2.2.0's form encoding (cowlib's cow_qs:qs), written independently."""
    out = []
    for b in text.encode("utf-8"):
        c = chr(b)
        if c.isascii() and (c.isalnum() or c in "-._"):
            out.append(c)
        elif c == " ":
            out.append("+")
        else:
            out.append("%%%02X" % b)
    return "".join(out)


def xml_text(s):
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


class QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        # A pusher killed with -9 resets its connections: expected here, not noise.
        if not isinstance(sys.exc_info()[1], (ConnectionResetError, BrokenPipeError)):
            super().handle_error(request, client_address)


class Receiver:
    """A webhook receiver over HTTP/1.1 keep-alive. Each request is kept as (path, headers,
    body). Per path: "/hang" holds the request until release(); "/flaky" answers 500 to
    the first delivery of each event id and 200 after; "/slow" waits 2 ms; anything else
    answers 200 at once."""

    def __init__(self, tls=None):
        self.requests = []
        self.cond = threading.Condition()
        self.released = threading.Event()
        self.holding = 0
        self.seen_flaky = set()
        self.count_ahead = False
        self.ahead = 0                 # requests answered with the next one already received
        rx = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_POST(self):
                n = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(n)
                if rx.count_ahead:
                    # Bytes of the next request already here before this one is answered:
                    # the client pipelines. (A non-blocking peek: an empty buffer reads nothing.)
                    self.connection.settimeout(0)
                    try:
                        ahead = self.rfile.peek(1)
                    except (BlockingIOError, ssl.SSLWantReadError, OSError):
                        ahead = b""
                    finally:
                        self.connection.settimeout(None)
                    with rx.cond:
                        rx.ahead += 1 if ahead else 0
                status = rx.handle(self.path, {k.lower(): v for k, v in self.headers.items()}, body)
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = QuietServer(("127.0.0.1", 0), Handler)
        self.scheme = "http"
        if tls is not None:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(*tls)
            self.server.socket = ctx.wrap_socket(self.server.socket, server_side=True)
            self.scheme = "https"
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path):
        return f"{self.scheme}://127.0.0.1:{self.port}{path}"

    def handle(self, path, headers, body):
        with self.cond:
            self.requests.append((path, headers, body))
            self.cond.notify_all()
        if path == "/hang":
            with self.cond:
                self.holding += 1
                self.cond.notify_all()
            self.released.wait(60)
            with self.cond:
                self.holding -= 1
            return 200
        if path == "/flaky":
            eid = json.loads(body)["id"]
            with self.cond:
                first = eid not in self.seen_flaky
                self.seen_flaky.add(eid)
            return 500 if first else 200
        if path == "/slow":
            time.sleep(0.002)
        return 200

    def on(self, path):
        with self.cond:
            return [(h, b) for p, h, b in self.requests if p == path]

    def wait_for(self, pred, timeout=20.0):
        end = time.monotonic() + timeout
        with self.cond:
            while True:
                for p, h, b in self.requests:
                    if pred(p, h, b):
                        return h, b
                left = end - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no matching request; got {[(p, b[:120]) for p, h, b in self.requests][-20:]}")
                self.cond.wait(left)

    def stop(self):
        self.released.set()
        self.server.shutdown()
        self.server.server_close()


def metric(cl, name, *labels):
    body = http_get(cl.metrics_port("pusher.0"), "/metrics")[1]
    return sum(float(l.rsplit(" ", 1)[1]) for l in body.splitlines()
               if l.startswith(name + "{") and all(x in l for x in labels))


def available(cl, user, resource):
    """Logs in and sends available presence; returns once the router has it (the
    presence comes back to the sender), so a message to the bare JID is delivered."""
    c = login(cl, user, "pw", resource)
    c.presence()
    c.wait("presence", frm=f"{user}@localhost/{resource}")
    return c


def backend(name, url, extra=""):
    return f"""    - name: {name}
      type: http
      url: "{url}"
      retry_base_ms: 20
      retry_max_ms: 200
{extra}"""


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("pushhttp"))
    rx = Receiver()
    ca, cert, key = make_test_ca(d, "meerkat webhook test CA")
    tls = Receiver(tls=(cert, key))
    secret_file = os.path.join(d, "hmac")
    with open(secret_file, "w") as f:
        f.write(SECRET + "\n")
    os.chmod(secret_file, 0o600)
    extra = "pusher:\n  backends:\n" + "\n".join([
        backend("form", rx.url("/form?src=meerkat")),
        backend("json", rx.url("/json"), f"      format: json\n      secret_file: {secret_file}\n"),
        backend("flaky", rx.url("/flaky"), f"      format: json\n      secret_file: {secret_file}\n"
                "      events: [sent]\n"),
        backend("hang", rx.url("/hang"), "      timeout_ms: 60000\n"),
        # HTTPS: verified against the test's CA; the system's CAs (the default) refuse
        # the test's certificate; tls_verify: false takes it.
        backend("tls_ca", tls.url("/ca"), f"      ca_file: {ca}\n"),
        backend("tls_system", tls.url("/system"), "      max_retries: 1\n"),
        backend("tls_off", tls.url("/off"), "      tls_verify: false\n"),
    ])
    cl = Cluster(d, c2s=1, router=1, mam=1, pusher=1, gd=0, extra=extra)
    cl.start()
    for u in ("alice", "bob"):
        cl.ctl("register", f"{u}@localhost", "pw")
    try:
        yield cl, rx, tls
    finally:
        rx.stop()
        tls.stop()
        cl.stop()


def test_form_body_exact(env):
    cl, rx, tls = env
    alice = login(cl, "alice", "pw", "phone")
    bob = available(cl, "bob", "laptop")
    alice.send(f"<message to='bob@localhost' type='chat' id='f1'><body>{xml_text(BODY)}</body></message>")
    bob.wait("message", id="f1")
    want = ("author=alice&server=localhost&receiver=bob&message=" + cow_qs(BODY)).encode()
    h, b = rx.wait_for(lambda p, h, b: p == "/form?src=meerkat" and b"receiver=bob" in b)
    assert b == want
    assert h["content-type"] == "application/x-www-form-urlencoded"
    assert "x-meerkat-signature" not in h
    # Only chat messages with a body: a normal message and a chat state send nothing.
    alice.send("<message to='bob@localhost' id='f2'><body>normal one</body></message>")
    alice.send("<message to='bob@localhost' type='chat' id='f3'>"
               "<active xmlns='http://jabber.org/protocol/chatstates'/></message>")
    alice.send("<message to='bob@localhost' type='chat' id='f4'><body>marker</body></message>")
    bob.wait("message", id="f4")
    rx.wait_for(lambda p, h, b: p.startswith("/form") and b.endswith(b"message=marker"))
    forms = [b for h, b in rx.on("/form?src=meerkat")]
    assert forms.count(want) == 1
    assert not any(b"normal" in b for b in forms)
    assert len(forms) == 2
    alice.close()
    bob.close()


def test_json_signed(env):
    cl, rx, tls = env
    alice = available(cl, "alice", "phone")
    bob = available(cl, "bob", "laptop")
    body = 'json "quoted" \\ \t tab ' + BODY
    alice.send(f"<message to='bob@localhost/laptop' type='chat' id='j1'><body>{xml_text(body)}</body></message>")
    bob.wait("message", id="j1")

    def is_sent(p, h, b):
        return p == "/json" and json.loads(b)["kind"] == "sent" and json.loads(b)["body"] == body

    h, b = rx.wait_for(is_sent)
    sig = hmac.new(SECRET.encode(), b, hashlib.sha256).hexdigest()
    assert h["x-meerkat-signature"] == "sha256=" + sig
    assert h["content-type"] == "application/json"
    ev = json.loads(b)
    assert ev["from"] == "alice@localhost/phone"
    assert ev["to"] == "bob@localhost/laptop"
    assert ev["user"] == "alice@localhost"
    assert ev["type"] == "chat"
    assert ev["direction"] == "in"
    assert ev["id"]
    assert abs(ev["stamp_us"] / 1e6 - time.time()) < 60
    assert ev["timestamp"].endswith("Z")
    # The delivery to bob is an "out" event of bob's.
    h2, b2 = rx.wait_for(lambda p, h, b: p == "/json" and json.loads(b)["kind"] == "delivered"
                         and json.loads(b)["body"] == body)
    dv = json.loads(b2)
    assert dv["direction"] == "out" and dv["user"] == "bob@localhost" and isinstance(dv["unavailable"], bool)
    assert dv["id"] != ev["id"]
    assert h2["x-meerkat-signature"] == "sha256=" + hmac.new(SECRET.encode(), b2, hashlib.sha256).hexdigest()
    # Every request on /json carries a valid signature (online, offline, ...).
    alice.close()
    rx.wait_for(lambda p, h, b: p == "/json" and json.loads(b)["kind"] == "offline"
                and json.loads(b)["user"] == "alice@localhost")
    for h, b in rx.on("/json"):
        assert h["x-meerkat-signature"] == "sha256=" + hmac.new(SECRET.encode(), b, hashlib.sha256).hexdigest()
    kinds = {json.loads(b)["kind"] for h, b in rx.on("/json")}
    assert {"sent", "delivered", "online", "offline"} <= kinds
    bob.close()


def test_500_then_200_delivered_once(env):
    cl, rx, tls = env
    alice = login(cl, "alice", "pw", "phone")
    alice.send("<message to='bob@localhost' type='chat' id='r1'><body>flaky one</body></message>")

    def flaky_one():
        return [b for h, b in rx.on("/flaky") if json.loads(b)["body"] == "flaky one"]

    def ids():
        out = {}
        for h, b in rx.on("/flaky"):
            eid = json.loads(b)["id"]
            out[eid] = out.get(eid, 0) + 1
        return out

    assert wait_until(lambda: len(flaky_one()) >= 2, 20), rx.on("/flaky")
    got = flaky_one()
    assert got[0] == got[1]                      # the same event, id included, re-sent
    # Every event the flaky receiver saw (this test's and the earlier tests') ends up
    # counted ok exactly once: the ok count settles at the number of distinct ids.
    assert wait_until(lambda: metric(cl, "meerkat_push_events_total", 'backend="flaky"', 'result="ok"')
                      == len(ids()) and all(n == 2 for n in ids().values()), 20), \
        (ids(), metric(cl, "meerkat_push_events_total", 'backend="flaky"', 'result="ok"'))
    assert len(flaky_one()) == 2                 # 500, then 200, and no third request
    assert metric(cl, "meerkat_push_retries_total", 'backend="flaky"') >= len(ids())
    assert metric(cl, "meerkat_push_events_total", 'backend="flaky"', 'result="failed"') == 0
    alice.close()


def test_hanging_receiver_never_delays_chat(env):
    cl, rx, tls = env
    alice = login(cl, "alice", "pw", "phone")
    bob = available(cl, "bob", "laptop")
    alice.send("<message to='bob@localhost' type='chat' id='h1'><body>first while hanging</body></message>")
    bob.wait("message", id="h1")
    # The hanging receiver holds the request for h1 ...
    rx.wait_for(lambda p, h, b: p == "/hang" and b.endswith(cow_qs("first while hanging").encode()))
    assert wait_until(lambda: rx.holding >= 1, 10)
    # ... and chat keeps flowing: more messages reach bob while it still holds them.
    for i in range(2, 6):
        alice.send(f"<message to='bob@localhost' type='chat' id='h{i}'><body>more {i}</body></message>")
    for i in range(2, 6):
        bob.wait("message", id=f"h{i}", timeout=5)
    assert rx.holding >= 1
    assert not rx.released.is_set()
    alice.close()
    bob.close()


def test_https_verified_by_default(env):
    cl, rx, tls = env
    alice = login(cl, "alice", "pw", "phone")
    alice.send("<message to='bob@localhost' type='chat' id='t1'><body>over tls</body></message>")
    want = b"author=alice&server=localhost&receiver=bob&message=over+tls"
    tls.wait_for(lambda p, h, b: p == "/ca" and b == want)
    tls.wait_for(lambda p, h, b: p == "/off" and b == want)
    # The certificate is not one the system trusts: the attempt fails in the handshake
    # (no request reaches the server), is retried, then given up and counted.
    assert wait_until(lambda: metric(cl, "meerkat_push_events_total", 'backend="tls_system"', 'result="failed"')
                      >= 1, 20), http_get(cl.metrics_port("pusher.0"), "/metrics")[1]
    assert metric(cl, "meerkat_push_retries_total", 'backend="tls_system"') >= 1
    assert metric(cl, "meerkat_push_events_total", 'backend="tls_system"', 'result="ok"') == 0
    assert tls.on("/system") == []
    assert "certificate" in cl.read_log()
    alice.close()


@pytest.fixture
def burst_env(tmp_path):
    d = str(tmp_path)
    rx = Receiver()
    secret_file = os.path.join(d, "hmac")
    with open(secret_file, "w") as f:
        f.write(SECRET + "\n")
    extra = "pusher:\n  backends:\n" + backend(
        "burst", rx.url("/slow"), f"      format: json\n      secret_file: {secret_file}\n"
        "      events: [sent]\n      max_connections: 4\n")
    cl = Cluster(d, c2s=1, router=1, mam=1, pusher=1, gd=0, extra=extra)
    cl.start()
    for u in ("alice", "bob"):
        cl.ctl("register", f"{u}@localhost", "pw")
    try:
        yield cl, rx
    finally:
        rx.stop()
        cl.stop()


def test_kill9_pusher_during_burst_loses_nothing(burst_env):
    cl, rx = burst_env
    n = 2000
    alice = login(cl, "alice", "pw", "phone")
    bob = available(cl, "bob", "laptop")

    def received():
        out = {}
        for h, b in rx.on("/slow"):
            ev = json.loads(b)
            if ev["body"].startswith("burst "):
                out.setdefault(ev["body"], set()).add(ev["id"])
        return out

    for i in range(n):
        alice.send(f"<message to='bob@localhost' type='chat' id='b{i}'><body>burst {i}</body></message>")
    assert wait_until(lambda: len(received()) >= 300, 60)
    pid = cl.child_pid("pusher.0")
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    at_kill = len(received())
    assert at_kill < n, "the burst was over before the kill: the test proves nothing"
    bob.wait("message", id=f"b{n - 1}", timeout=60)
    # The supervisor restarts the pusher; the emitter re-sends what was not acknowledged.
    assert wait_until(lambda: cl.child_pid("pusher.0") not in (None, pid), 30)
    assert wait_until(lambda: len(received()) == n, 90), \
        f"{n - len(received())} events missing, e.g. {sorted(set(f'burst {i}' for i in range(n)) - set(received()))[:5]}"
    got = received()
    # Every event id arrived at least once, and an event kept its id across re-sends.
    assert all(len(ids) == 1 for ids in got.values())
    assert len({next(iter(ids)) for ids in got.values()}) == n
    total = sum(1 for h, b in rx.on("/slow") if json.loads(b)["body"].startswith("burst "))
    print(f"burst: {at_kill} distinct at the kill, {total} requests for {n} events")
    assert total >= n
    alice.close()
    bob.close()


def test_pipelined_backend_in_order(tmp_path):
    """pipeline: 4 over one connection to Python's own http.server: 24 messages sent at
    once reach the receiver exactly once each and in the order they were sent, with
    requests behind an unanswered one on the same connection (the receiver sees the next
    request before it answers), and the pusher counts them ok without a single retry."""
    rx = Receiver()
    rx.count_ahead = True
    try:
        extra = "pusher:\n  backends:\n" + backend("piped", rx.url("/piped"),
                                                     "      events: [sent]\n      max_connections: 1\n"
                                                     "      pipeline: 4\n")
        cl = Cluster(str(tmp_path), c2s=1, router=1, mam=1, pusher=1, gd=0, extra=extra)
        cl.start()
        try:
            for u in ("alice", "bob"):
                cl.ctl("register", f"{u}@localhost", "pw")
            alice = login(cl, "alice", "pw", "phone")
            bob = available(cl, "bob", "laptop")
            n = 24
            for i in range(n):
                alice.send(f"<message to='bob@localhost' type='chat' id='p{i}'><body>piped {i}</body></message>")
            bob.wait("message", id=f"p{n - 1}")
            assert wait_until(lambda: len(rx.on("/piped")) >= n, 20), len(rx.on("/piped"))
            assert wait_until(lambda: metric(cl, "meerkat_push_events_total", 'backend="piped"', 'result="ok"') == n, 10)
            bodies = [b.decode() for h, b in rx.on("/piped")]
            assert bodies == [f"author=alice&server=localhost&receiver=bob&message=piped+{i}" for i in range(n)]
            assert metric(cl, "meerkat_push_retries_total", 'backend="piped"') == 0
            assert rx.ahead > 0
            alice.close()
            bob.close()
        finally:
            cl.stop()
    finally:
        rx.stop()


class RawReceiver:
    """A webhook receiver over plain TCP sockets, one thread per connection, that handles
    no pipelining. Each read: the first complete request in it is kept (its body) and
    answered 200; whatever else the read brought is discarded ("drop"), or the
    connection is closed after the answer, announced with Connection: close ("close")."""

    def __init__(self, mode):
        self.mode = mode
        self.bodies = []
        self.connections = 0
        self.discarded = 0             # reads with bytes after their first request, thrown away
        self.cond = threading.Condition()
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.stopping = False
        threading.Thread(target=self.accept_loop, daemon=True).start()

    def url(self, path):
        return f"http://127.0.0.1:{self.port}{path}"

    def accept_loop(self):
        while not self.stopping:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with self.cond:
                self.connections += 1
            threading.Thread(target=self.serve, args=(conn,), daemon=True).start()

    def serve(self, conn):
        with conn:
            buf = b""
            while True:
                try:
                    data = conn.recv(65536)
                except OSError:
                    return
                if not data:
                    return
                buf += data
                head_end = buf.find(b"\r\n\r\n")
                if head_end < 0:
                    continue
                clen = 0
                for line in buf[:head_end].split(b"\r\n")[1:]:
                    k, _, v = line.partition(b":")
                    if k.strip().lower() == b"content-length":
                        clen = int(v)
                end = head_end + 4 + clen
                if len(buf) < end:
                    continue
                with self.cond:
                    self.bodies.append(buf[head_end + 4:end].decode())
                    self.discarded += len(buf) > end
                    self.cond.notify_all()
                buf = b""
                close = self.mode == "close"
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n" +
                             (b"Connection: close\r\n" if close else b"") + b"\r\n")
                if close:
                    return

    def stop(self):
        self.stopping = True
        self.sock.close()


def auto_pipeline_cluster(tmp_path, url, extra=""):
    """A cluster with one webhook backend "auto" (form, sent events, one connection, no
    `pipeline`: automatic) at url; alice and bob registered."""
    conf = "pusher:\n  backends:\n" + backend("auto", url, "      events: [sent]\n      max_connections: 1\n" + extra)
    cl = Cluster(str(tmp_path), c2s=1, router=1, mam=1, pusher=1, gd=0, extra=conf)
    cl.start()
    for u in ("alice", "bob"):
        cl.ctl("register", f"{u}@localhost", "pw")
    return cl


def send_burst(cl, n, tag):
    """alice sends bob n chat messages at once; returns once bob has the last. The form
    bodies the backend posts for them, in order."""
    alice = login(cl, "alice", "pw", "phone")
    bob = available(cl, "bob", "laptop")
    for i in range(n):
        alice.send(f"<message to='bob@localhost' type='chat' id='{tag}{i}'><body>{tag} {i}</body></message>")
    bob.wait("message", id=f"{tag}{n - 1}")
    alice.close()
    bob.close()
    return [f"author=alice&server=localhost&receiver=bob&message={tag}+{i}" for i in range(n)]


def burst_in_order(cl, rx, n, tag):
    """send_burst through cl to the RawReceiver rx: every event received within 20 s, counted
    ok by the backend, and the bodies in the order sent; returns them."""
    want = send_burst(cl, n, tag)
    with rx.cond:
        assert rx.cond.wait_for(lambda: len(rx.bodies) >= len(want), 20), len(rx.bodies)
    assert wait_until(lambda: metric(cl, "meerkat_push_events_total", 'backend="auto"', 'result="ok"') == len(want), 10)
    assert rx.bodies == want
    return want


def test_auto_pipeline_on_for_a_pipelining_receiver(tmp_path):
    """No `pipeline` in the config, a receiver that handles pipelining (Python's
    http.server over keep-alive): the probe succeeds, meerkat_push_pipeline_depth shows 8,
    requests wait behind unanswered ones on the connection, and every event arrives
    exactly once, in order, without a retry."""
    rx = Receiver()
    rx.count_ahead = True
    try:
        cl = auto_pipeline_cluster(tmp_path, rx.url("/auto"))
        try:
            assert metric(cl, "meerkat_push_pipeline_depth", 'backend="auto"') == 1
            want = send_burst(cl, 48, "a")
            assert wait_until(lambda: len(rx.on("/auto")) >= len(want), 20), len(rx.on("/auto"))
            assert wait_until(lambda: metric(cl, "meerkat_push_events_total", 'backend="auto"', 'result="ok"') == len(want), 10)
            assert [b.decode() for h, b in rx.on("/auto")] == want
            assert metric(cl, "meerkat_push_pipeline_depth", 'backend="auto"') == 8
            assert metric(cl, "meerkat_push_retries_total", 'backend="auto"') == 0
            assert metric(cl, "meerkat_push_pipeline_resent_total", 'backend="auto"') == 0
            assert rx.ahead > 0
            assert "event=http_pipeline_on pool=auto depth=8" in cl.read_log()
        finally:
            cl.stop()
    finally:
        rx.stop()


def test_auto_pipeline_off_for_a_receiver_that_drops(tmp_path):
    """No `pipeline`, a receiver that answers only the first request of each read and
    discards the rest of its buffer: the probe's second request goes unanswered, the
    backend falls back to one request per connection (gauge 1, one warning naming it),
    the dropped request is sent again at once (counted in
    meerkat_push_pipeline_resent_total, not as a retry), and every event arrives, in
    order. The request timeout is 60 s: had anything waited for it, the 20 s wait fails."""
    rx = RawReceiver("drop")
    try:
        cl = auto_pipeline_cluster(tmp_path, rx.url("/drop"), "      timeout_ms: 60000\n")
        try:
            burst_in_order(cl, rx, 48, "d")
            assert rx.discarded == 1
            assert metric(cl, "meerkat_push_pipeline_depth", 'backend="auto"') == 1
            assert metric(cl, "meerkat_push_pipeline_resent_total", 'backend="auto"') == 1
            assert metric(cl, "meerkat_push_retries_total", 'backend="auto"') == 0
            log = cl.read_log()
            assert log.count("event=http_pipeline_off pool=auto ") == 1, log[-3000:]
        finally:
            cl.stop()
    finally:
        rx.stop()


def test_auto_pipeline_connection_close_receiver(tmp_path):
    """No `pipeline`, a receiver that answers each request with Connection: close and
    closes: no connection is ever kept, so nothing is probed; every event arrives once,
    in order, each on its own connection."""
    rx = RawReceiver("close")
    try:
        cl = auto_pipeline_cluster(tmp_path, rx.url("/close"))
        try:
            want = burst_in_order(cl, rx, 24, "c")
            assert rx.connections == len(want)
            assert metric(cl, "meerkat_push_pipeline_depth", 'backend="auto"') == 1
            assert metric(cl, "meerkat_push_retries_total", 'backend="auto"') == 0
        finally:
            cl.stop()
    finally:
        rx.stop()
