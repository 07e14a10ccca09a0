"""tests/integration/test_push_events.py - push events from c2s and the router reach the pusher and its backend
(a JSON webhook received by a real HTTP server here); nothing is emitted without a backend; with the pusher down
chat flows, events past the window are dropped and counted, and the ones kept reach the restarted pusher."""
import json
import os
import signal
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from harness import Cluster, free_port, http_get, pid_alive, resume, wait_until
from xmpp import Client

BODY = "hi bob \u2603 & % + = <ok>"


class Receiver:
    """An HTTP server on loopback keeping every JSON body POSTed to it (events, in arrival
    order, and posts: (monotonic time, body) of every request, retries included). answer(event,
    n) gives (status, headers, delay_s) for the n-th request (0 first) carrying that event's
    id; by default 200 at once."""

    def __init__(self, answer=None):
        self.events = []
        self.posts = []
        self.cond = threading.Condition()
        self.answer = answer or (lambda ev, n: (200, {}, 0))
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):
                n = int(self.headers.get("Content-Length", "0"))
                ev = json.loads(self.rfile.read(n))
                with outer.cond:
                    tries = sum(1 for _, e in outer.posts if e["id"] == ev["id"])
                    outer.posts.append((time.monotonic(), ev))
                    outer.cond.notify_all()
                status, headers, delay = outer.answer(ev, tries)
                if delay:
                    time.sleep(delay)
                if 200 <= status < 300:
                    with outer.cond:
                        outer.events.append(ev)
                        outer.cond.notify_all()
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.port = free_port()
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def snapshot(self):
        with self.cond:
            return list(self.events)

    def tries(self, ev_id=None):
        """(time, event) of every request (for one event id when given)."""
        with self.cond:
            return [(t, e) for t, e in self.posts if ev_id is None or e["id"] == ev_id]

    def of(self, kind, user=None):
        return [e for e in self.snapshot() if e["kind"] == kind and (user is None or e["user"] == user)]

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def metric(cl, pid, name, *labels):
    """Sum of the samples of name on pid whose labels include every labels item ('k="v"')."""
    _, text = http_get(cl.metrics_port(pid), "/metrics")
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") and all(l in line for l in labels):
            total += float(line.split()[-1])
    return total


def backend_yaml(rx, tmp, events, window=None, **opts):
    secret = os.path.join(str(tmp), "hook.secret")
    with open(secret, "w") as f:
        f.write("hook-secret\n")
    text = "pusher:\n"
    if window is not None:
        text += f"  max_pending_events: {window}\n"
    text += ("  backends:\n"
             "    - name: hook\n"
             "      type: http\n"
             f"      url: http://127.0.0.1:{rx.port}/events\n"
             "      format: json\n"
             f"      secret_file: {secret}\n"
             f"      events: [{', '.join(events)}]\n")
    for k, v in opts.items():
        text += f"      {k}: {v}\n"
    return text


@pytest.fixture
def rx():
    r = Receiver()
    yield r
    r.close()


def online(*clients):
    """Initial presence, waited for (its echo comes once the router knows the session is
    available: a message sent after that is delivered, not stored)."""
    for c in clients:
        c.presence()
        c.wait("presence", frm=c.jid)


def users(cl, *names):
    for u in names:
        cl.ctl("register", f"{u}@localhost", "pw")


def test_no_backend_emits_nothing(tmp_path):
    """The default configuration lists pusher.0 but no backend: chat works and no process
    emits an event (the emitter is not even made), so the pusher receives none."""
    cl = Cluster(tmp_path).start()
    try:
        users(cl, "alice", "bob")
        a = Client(cl.c2s_port, "alice@localhost/a", "pw")
        b = Client(cl.c2s_port, "bob@localhost/b", "pw")
        online(a, b)
        for i in range(3):
            a.send(f"<message to='bob@localhost' type='chat' id='m{i}'><body>m{i}</body></message>")
        for i in range(3):
            b.wait("message", id=f"m{i}")
        b.close()
        a.send("<message to='bob@localhost' type='chat' id='off'><body>stored</body></message>")
        assert wait_until(lambda: metric(cl, "router.0", "meerkat_router_offline_total") >= 1)
        for pid in ("c2s.0", "router.0"):
            _, text = http_get(cl.metrics_port(pid), "/metrics")
            assert "meerkat_router_routed_total" in text or "meerkat_c2s" in text   # the page is there
            assert "meerkat_push_events_emitted_total" not in text
        _, text = http_get(cl.metrics_port("pusher.0"), "/metrics")
        assert "meerkat_push_events_received_total" in text or "# TYPE meerkat_push_events_received_total" in text
        assert metric(cl, "pusher.0", "meerkat_push_events_received_total") == 0
        a.close()
    finally:
        cl.stop()


def test_events_reach_the_backend(tmp_path, rx):
    """Every kind, from c2s (sent, groupchat, online, offline) and the router (delivered,
    stored), reaches the webhook with its fields; each id is unique; the pusher counts
    them received and ok."""
    kinds = ["sent", "delivered", "stored", "groupchat", "online", "offline"]
    cl = Cluster(tmp_path, extra=backend_yaml(rx, tmp_path, kinds)).start()
    try:
        users(cl, "alice", "bob")
        a = Client(cl.c2s_port, "alice@localhost/a", "pw")
        b = Client(cl.c2s_port, "bob@localhost/b", "pw")
        online(a, b)
        assert wait_until(lambda: len(rx.of("online")) == 2)
        a.send(f"<message to='bob@localhost' type='chat' id='m1'><body>{BODY.replace('&', '&amp;').replace('<', '&lt;')}"
               "</body></message>")
        b.wait("message", id="m1")
        # A chat state: no sent event (no body), a delivered one without a body.
        a.send("<message to='bob@localhost' type='chat' id='cs'>"
               "<active xmlns='http://jabber.org/protocol/chatstates'/></message>")
        b.wait("message", id="cs")
        assert wait_until(lambda: len(rx.of("delivered")) == 2)
        b.close()
        assert wait_until(lambda: len(rx.of("offline", "bob@localhost")) == 1)
        a.send("<message to='bob@localhost' id='m2'><body>later</body></message>")
        a.send("<message to='room@conference.localhost' type='groupchat' id='g1'><body>to the room</body></message>")
        assert wait_until(lambda: len(rx.of("stored")) == 1 and len(rx.of("groupchat")) == 1)

        ev = rx.snapshot()
        assert len({e["id"] for e in ev}) == len(ev)
        on = {e["user"]: e for e in rx.of("online")}
        assert set(on) == {"alice@localhost", "bob@localhost"}
        assert on["alice@localhost"]["from"] == "alice@localhost/a"
        sent = rx.of("sent")
        assert len(sent) == 2
        s1 = next(e for e in sent if e["type"] == "chat")
        assert (s1["user"], s1["from"], s1["to"], s1["body"]) == ("alice@localhost", "alice@localhost/a",
                                                                   "bob@localhost", BODY)
        assert next(e for e in sent if e["type"] == "normal")["body"] == "later"   # no type: normal
        d = sorted(rx.of("delivered"), key=lambda e: e["body"] is None)
        assert (d[0]["user"], d[0]["from"], d[0]["body"], d[0]["unavailable"]) == (
            "bob@localhost", "alice@localhost/a", BODY, False)
        assert d[0]["mam_id"]                       # the recipient's archive id
        assert d[1]["body"] is None and not d[1]["unavailable"]
        off = rx.of("offline", "bob@localhost")[0]
        assert off["from"] == "bob@localhost/b"
        st = rx.of("stored")[0]
        assert (st["user"], st["body"], st["unavailable"]) == ("bob@localhost", "later", True)
        g = rx.of("groupchat")[0]
        assert (g["user"], g["to"], g["body"]) == ("alice@localhost", "room@conference.localhost", "to the room")

        n = len(ev)
        assert metric(cl, "pusher.0", "meerkat_push_events_received_total", 'result="accepted"') == n
        assert metric(cl, "pusher.0", "meerkat_push_events_total", 'backend="hook"', 'result="ok"') == n
        assert metric(cl, "pusher.0", "meerkat_push_backend_latency_seconds_count", 'backend="hook"') == n
        c2s_n = metric(cl, "c2s.0", "meerkat_push_events_emitted_total")
        router_n = metric(cl, "router.0", "meerkat_push_events_emitted_total")
        assert c2s_n + router_n == n and router_n == 3
        # Every event acknowledged back to its emitter.
        assert wait_until(lambda: metric(cl, "c2s.0", "meerkat_push_events_unacknowledged") == 0 and
                          metric(cl, "router.0", "meerkat_push_events_unacknowledged") == 0)
        a.close()
    finally:
        cl.stop()


def test_pusher_down_chat_flows_window_kept(tmp_path, rx):
    """With the pusher stopped, chat still flows; past the window (3) each emitter drops
    events and counts them; once the pusher is back (killed, restarted by the supervisor),
    the events kept in the window reach the backend, and only those."""
    window = 3
    cl = Cluster(tmp_path, extra=backend_yaml(rx, tmp_path, ["sent", "delivered"], window=window)).start()
    try:
        users(cl, "alice", "bob")
        a = Client(cl.c2s_port, "alice@localhost/a", "pw")
        b = Client(cl.c2s_port, "bob@localhost/b", "pw")
        online(a, b)
        a.send("<message to='bob@localhost' type='chat' id='first'><body>first</body></message>")
        b.wait("message", id="first")
        assert wait_until(lambda: len(rx.snapshot()) == 2)
        assert wait_until(lambda: metric(cl, "c2s.0", "meerkat_push_events_unacknowledged") == 0 and
                          metric(cl, "router.0", "meerkat_push_events_unacknowledged") == 0)

        pid = cl.child_pid("pusher.0")
        os.kill(pid, signal.SIGSTOP)
        try:
            total = 8
            for i in range(total):
                a.send(f"<message to='bob@localhost' type='chat' id='d{i}'><body>d{i}</body></message>")
            for i in range(total):
                b.wait("message", id=f"d{i}")          # chat flows with the pusher down
            for pid_ in ("c2s.0", "router.0"):
                assert wait_until(lambda: metric(cl, pid_, "meerkat_push_events_dropped_total",
                                                 'reason="backpressure"') == total - window), pid_
                assert metric(cl, pid_, "meerkat_push_events_unacknowledged") == window
            assert metric(cl, "c2s.0", "meerkat_push_events_emitted_total", 'kind="sent"') == 1 + window
            assert metric(cl, "router.0", "meerkat_push_events_emitted_total", 'kind="delivered"') == 1 + window
            os.kill(pid, signal.SIGKILL)
        finally:
            resume(pid)   # killed and maybe reaped by its supervisor already
        assert wait_until(lambda: not pid_alive(pid), 10)
        assert wait_until(lambda: cl.child_pid("pusher.0") not in (None, pid) and cl.healthy("pusher.0"), 30)
        # The restarted pusher says hello: both emitters re-send their window.
        assert wait_until(lambda: len(rx.snapshot()) == 2 + 2 * window, 30), rx.snapshot()
        assert wait_until(lambda: metric(cl, "c2s.0", "meerkat_push_events_unacknowledged") == 0 and
                          metric(cl, "router.0", "meerkat_push_events_unacknowledged") == 0, 15)
        bodies = sorted(e["body"] for e in rx.of("sent"))
        assert bodies == sorted(["first"] + [f"d{i}" for i in range(window)])
        assert sorted(e["body"] for e in rx.of("delivered")) == bodies
        assert metric(cl, "pusher.0", "meerkat_push_events_received_total", 'result="accepted"') == 2 * window
        a.close()
        b.close()
    finally:
        cl.stop()


def chat_pair(cl):
    users(cl, "alice", "bob")
    a = Client(cl.c2s_port, "alice@localhost/a", "pw")
    b = Client(cl.c2s_port, "bob@localhost/b", "pw")
    online(a, b)
    return a, b


def test_retries_then_final_failure(tmp_path):
    """A backend that always answers 503: the event is tried 1 + max_retries times (same
    id), then given up: counted failed, the failure logged with its id, and the event
    acknowledged to its emitter (nothing left waiting)."""
    r = Receiver(lambda ev, n: (503, {}, 0))
    try:
        cl = Cluster(tmp_path, extra=backend_yaml(r, tmp_path, ["sent"], max_retries=3, retry_base_ms=10,
                                                  retry_max_ms=40)).start()
        try:
            a, b = chat_pair(cl)
            a.send("<message to='bob@localhost' type='chat' id='x'><body>doomed</body></message>")
            b.wait("message", id="x")
            assert wait_until(lambda: metric(cl, "pusher.0", "meerkat_push_events_total", 'result="failed"') == 1)
            tries = r.tries()
            assert len(tries) == 4 and len({e["id"] for _, e in tries}) == 1
            ev_id = tries[0][1]["id"]
            assert metric(cl, "pusher.0", "meerkat_push_retries_total", 'backend="hook"') == 3
            assert metric(cl, "pusher.0", "meerkat_push_events_total", 'result="ok"') == 0
            assert wait_until(lambda: f"event={ev_id}" in cl.read_log() and "push_failed" in cl.read_log())
            line = next(l for l in cl.read_log().splitlines() if "push_failed" in l)
            assert "backend=hook" in line and "attempts=4" in line and "spent=retries" in line and "HTTP 503" in line
            assert wait_until(lambda: metric(cl, "c2s.0", "meerkat_push_events_unacknowledged") == 0)
            a.close()
            b.close()
        finally:
            cl.stop()
    finally:
        r.close()


def test_deadline_and_retry_after(tmp_path):
    """429 with Retry-After: 1 makes the next try wait at least a second although
    retry_max_ms is 50; a backend still failing past deadline_sec (2) is given up then
    (spent=deadline), long before max_retries."""
    def answer(ev, n):
        if ev["body"] == "patient":
            return (429, {"Retry-After": "1"}, 0) if n == 0 else (200, {}, 0)
        return (500, {}, 0)
    r = Receiver(answer)
    try:
        cl = Cluster(tmp_path, extra=backend_yaml(r, tmp_path, ["sent"], max_retries=1000, retry_base_ms=20,
                                                  retry_max_ms=50, deadline_sec=2)).start()
        try:
            a, b = chat_pair(cl)
            a.send("<message to='bob@localhost' type='chat' id='p'><body>patient</body></message>")
            assert wait_until(lambda: len(r.of("sent")) == 1, 15), (r.tries(), cl.read_log()[-3000:])
            (t0, first), (t1, second) = r.tries()
            assert first["id"] == second["id"] and t1 - t0 >= 0.95
            # The receiver records a request before it answers: the pusher counts it once answered.
            assert wait_until(lambda: metric(cl, "pusher.0", "meerkat_push_events_total", 'result="ok"') == 1)

            start = time.monotonic()
            a.send("<message to='bob@localhost' type='chat' id='q'><body>hopeless</body></message>")
            assert wait_until(lambda: metric(cl, "pusher.0", "meerkat_push_events_total", 'result="failed"') == 1, 15)
            took = time.monotonic() - start
            hopeless = [t for t, e in r.tries() if e["body"] == "hopeless"]
            assert 5 <= len(hopeless) < 1000 and took < 6
            assert hopeless[-1] - hopeless[0] <= 2.0 + 0.2
            line = next(l for l in cl.read_log().splitlines() if "push_failed" in l)
            assert "spent=deadline" in line
            a.close()
            b.close()
        finally:
            cl.stop()
    finally:
        r.close()


def test_graceful_stop_finishes_in_flight(tmp_path):
    """SIGTERM while an attempt is in flight: the pusher lets it finish, acknowledges the
    event and exits; the restarted pusher gets nothing again (a later event arrives, the
    first one is still there once)."""
    started = threading.Event()

    def answer(ev, n):
        if ev["body"] == "slow":
            started.set()
            return 200, {}, 1.5
        return 200, {}, 0
    r = Receiver(answer)
    try:
        cl = Cluster(tmp_path, extra=backend_yaml(r, tmp_path, ["sent"], timeout_ms=10000)).start()
        try:
            a, b = chat_pair(cl)
            a.send("<message to='bob@localhost' type='chat' id='s'><body>slow</body></message>")
            assert started.wait(10)
            pid = cl.child_pid("pusher.0")
            os.kill(pid, signal.SIGTERM)
            assert wait_until(lambda: not pid_alive(pid), 10)
            assert len(r.of("sent")) == 1
            assert "pusher_stopping" in cl.read_log()
            assert wait_until(lambda: metric(cl, "c2s.0", "meerkat_push_events_unacknowledged") == 0, 10)
            assert wait_until(lambda: cl.child_pid("pusher.0") not in (None, pid) and cl.healthy("pusher.0"), 30)
            a.send("<message to='bob@localhost' type='chat' id='t'><body>after</body></message>")
            assert wait_until(lambda: len(r.of("sent")) == 2, 15)
            assert [e["body"] for e in r.of("sent")] == ["slow", "after"]
            assert metric(cl, "pusher.0", "meerkat_push_events_received_total", 'result="accepted"') == 1
            a.close()
            b.close()
        finally:
            cl.stop()
    finally:
        r.close()


def test_two_pushers_share_the_users(tmp_path, rx):
    """With two pusher processes every user's events go to one of them (rendezvous on the
    bare JID): all arrive, each pusher takes a share, and no user's events are split."""
    cl = Cluster(tmp_path, pusher=2, extra=backend_yaml(rx, tmp_path, ["online", "sent"])).start()
    try:
        names = [f"u{i}" for i in range(12)]
        users(cl, *names)
        clients = [Client(cl.c2s_port, f"{u}@localhost/r", "pw") for u in names]
        online(*clients)
        for c in clients:
            c.send(f"<message to='u0@localhost' type='chat'><body>from {c.bare}</body></message>")
        assert wait_until(lambda: len(rx.of("online")) == 12 and len(rx.of("sent")) == 12, 20)
        taken = [metric(cl, f"pusher.{i}", "meerkat_push_events_received_total", 'result="accepted"')
                 for i in range(2)]
        assert sum(taken) == 24 and min(taken) > 0, taken
        # Each pusher's count is even: a user's online and sent went to the same one.
        assert all(t % 2 == 0 for t in taken), taken
        for c in clients:
            c.close()
    finally:
        cl.stop()


def test_acks_wait_for_earlier_events(tmp_path):
    """Acknowledgements are cumulative: an event finished while an earlier one of the same
    emitter is still being tried stays unacknowledged, so a kill -9 of the pusher then
    makes the emitter re-send both, and nothing is lost (the later one arrives twice,
    with the same id)."""
    def answer(ev, n):
        return (200, {}, 3.0) if ev["body"] == "slow" and n == 0 else (200, {}, 0)
    r = Receiver(answer)
    try:
        cl = Cluster(tmp_path, extra=backend_yaml(r, tmp_path, ["sent"], timeout_ms=10000)).start()
        try:
            a, b = chat_pair(cl)
            a.send("<message to='bob@localhost' type='chat'><body>slow</body></message>")
            assert wait_until(lambda: len(r.tries()) == 1)
            a.send("<message to='bob@localhost' type='chat'><body>fast</body></message>")
            assert wait_until(lambda: len(r.of("sent")) == 1)
            assert r.of("sent")[0]["body"] == "fast"
            assert wait_until(lambda: metric(cl, "pusher.0", "meerkat_push_events_total", 'result="ok"') == 1)
            # fast is done, but slow (earlier) is not: neither is acknowledged.
            assert metric(cl, "c2s.0", "meerkat_push_events_unacknowledged") == 2
            pid = cl.child_pid("pusher.0")
            os.kill(pid, signal.SIGKILL)
            assert wait_until(lambda: cl.child_pid("pusher.0") not in (None, pid) and cl.healthy("pusher.0"), 30)
            assert wait_until(lambda: metric(cl, "c2s.0", "meerkat_push_events_unacknowledged") == 0, 30)
            bodies = sorted(e["body"] for e in r.of("sent"))
            assert bodies.count("fast") == 2 and "slow" in bodies, bodies
            assert len({e["id"] for e in r.of("sent") if e["body"] == "fast"}) == 1
            a.close()
            b.close()
        finally:
            cl.stop()
    finally:
        r.close()
