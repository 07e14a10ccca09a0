"""tests/integration/test_push_publish.py - XEP-0357 publishes: an app server (a slixmpp component) gets the summary when the user is offline, counts, cancel disables; MongoosePush's v3 JSON, 410, 429."""
import json
import re
import threading
import time
import uuid
import xml.etree.ElementTree as ET
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from harness import Cluster, Postgres, http_get, wait_until
from rawxmpp import Raw
from test_component import Component

APP = "push.app.example"          # the app server: an external component
VIRTUAL = "mpush.example"         # served by MongoosePush (the stand-in below)
SECRET = "app-secret"
PUSH = "urn:xmpp:push:0"
PO = "http://jabber.org/protocol/pubsub#publish-options"
XD = "{jabber:x:data}"
PS = "{http://jabber.org/protocol/pubsub}"
USERS = ("alice", "bob", "carol", "dave", "erin", "frank", "grace", "ivan")


class MongoosePush:
    """A stand-in for MongoosePush's REST API: records every request (path, headers,
    body bytes) and answers each device with the statuses queued for it (200 after)."""

    def __init__(self):
        self.requests = []
        self.statuses = {}
        self.cond = threading.Condition()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with outer.cond:
                    outer.requests.append((self.path, dict(self.headers), body))
                    queue = outer.statuses.get(self.path, [])
                    status = queue.pop(0) if queue else 200
                    outer.cond.notify_all()
                out = b"null" if status == 200 else b'{"reason":"x"}'
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            def log_message(self, *a):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait(self, path, n=1, timeout=15):
        """The first n requests to path (waits for them)."""
        end = time.monotonic() + timeout
        with self.cond:
            while True:
                got = [r for r in self.requests if r[0] == path]
                if len(got) >= n:
                    return got[:n]
                left = end - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"no {n} requests to {path}: {[r[0] for r in self.requests]}")
                self.cond.wait(left)

    def close(self):
        self.server.shutdown()


@pytest.fixture(scope="module", params=["sqlite", "pgsql"])
def env(request, tmp_path_factory):
    """The cluster (its registrations on sqlite, then on PostgreSQL), the app server
    connected as a component, the MongoosePush stand-in."""
    d = tmp_path_factory.mktemp("pushpub")
    pg = Postgres() if request.param == "pgsql" else None
    (d / "app.secret").write_text(SECRET + "\n")
    mp = MongoosePush()
    extra = "\n".join([
        "pusher:",
        "  backends:",
        "    - name: push",
        "      type: xep0357",
        f"      virtual_hosts: [{VIRTUAL}]",
        f"      mongoosepush_url: http://127.0.0.1:{mp.port}/",
        "      timeout_ms: 1500",
        "      retry_base_ms: 50",
        "      retry_max_ms: 200",
        "components:",
        f"  - {{domain: {APP}, secret_file: {d / 'app.secret'}}}",
    ])
    c = Cluster(d, c2s=1, router=2, mam=1, pusher=1, gd=0, extra=extra, storage=pg.storage_yaml() if pg else None)
    c.comp_port = c.add_listener("component")
    app = None
    try:
        c.start()
        for u in USERS:
            c.ctl("register", f"{u}@localhost", f"{u}-pw")
        app = Component(c.comp_port, APP, SECRET)
        assert app.started.wait(10), "the app server's handshake was not accepted"
        yield c, app, mp
    finally:
        try:
            if app is not None:
                app.close()
            c.stop()
        finally:
            mp.close()
            if pg:
                pg.stop()


def metric(cl, proc, name, labels=""):
    body = http_get(cl.metrics_port(proc), "/metrics")[1]
    total = 0.0
    for line in body.splitlines():
        if line.startswith(name + "{") and labels in line or line.startswith(name + " ") and not labels:
            total += float(line.rsplit(" ", 1)[1])
    return total


def pusher_ok(cl):
    return metric(cl, "pusher.0", "meerkat_push_events_total", 'result="ok"')


def login(cl, user, presence=True):
    r = Raw(cl.c2s_port, timeout=20.0)
    jid = r.login(user, f"{user}-pw", "r" + uuid.uuid4().hex[:6])
    if presence:
        r.send("<presence/>")
        r.recv_until(rf"<presence[^>]*from=['\"]{re.escape(jid)}['\"]")
    return r, jid


def iq(r, body):
    iid = "i" + uuid.uuid4().hex[:10]
    r.send(f"<iq type='set' id='{iid}'>{body}</iq>")
    rx = rf"<iq[^>]*id=['\"]{iid}['\"](?:[^>]*/>|.*?</iq>)"
    return re.search(rx, r.recv_until(rx), re.S).group(0)


def enable(r, jid, node, fields):
    form = "".join(f"<field var='{k}'><value>{v}</value></field>" for k, v in fields)
    x = (f"<x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE'><value>{PO}</value></field>{form}</x>"
         if fields else "")
    ans = iq(r, f"<enable xmlns='{PUSH}' jid='{jid}' node='{node}'>{x}</enable>")
    assert "type='result'" in ans or 'type="result"' in ans, ans


def offline(cl, r, user):
    """Closes user's only session and waits until no router has it."""
    r.close()
    assert wait_until(lambda: f"{user}@localhost" not in cl.ctl("sessions").stdout, 10)


def registered_with(cl, user, user_enables):
    """Logs user in, enables the registrations (jid, node, fields), logs out; waits until
    the pusher has finished the user's ONLINE event, so that it cannot come after a message."""
    before = pusher_ok(cl)
    r, _ = login(cl, user)
    assert wait_until(lambda: pusher_ok(cl) >= before + 1, 10), "the ONLINE event did not reach the pusher"
    for jid, node, fields in user_enables:
        enable(r, jid, node, fields)
    offline(cl, r, user)


def form_fields(x):
    return [(f.get("var"), (f.find(XD + "value").text or "") if f.find(XD + "value") is not None else None)
            for f in x.findall(XD + "field")]


def publish_for(app, node, timeout=15):
    return app.wait("iq", timeout=timeout, type="set",
                    pred=lambda el: el.find(f".//{PS}publish[@node='{node}']") is not None)


def summary(iq_el):
    x = iq_el.find(f"{PS}pubsub/{PS}publish/{PS}item/{{{PUSH}}}notification/{XD}x")
    assert x is not None and x.get("type") == "submit", ET.tostring(iq_el)
    return form_fields(x)


def answer(app, iq_el, error=None):
    if error is None:
        app.send(f"<iq type='result' id='{iq_el.get('id')}' from='{APP}' to='{iq_el.get('from')}'/>")
    else:
        etype, cond = error
        app.send(f"<iq type='error' id='{iq_el.get('id')}' from='{APP}' to='{iq_el.get('from')}'><error type='{etype}'>"
                 f"<{cond} xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>")


def say(r, to, body):
    r.send(f"<message to='{to}' type='chat' id='{uuid.uuid4().hex[:8]}'><body>{body}</body></message>")


def test_publish_iq_counts(env):
    cl, app, mp = env
    registered_with(cl, "bob", [(APP, "bob-phone", [("service", "apns"), ("device_id", "tok-bob"),
                                                   ("topic", "com.example")])])
    alice, _ = login(cl, "alice")
    for n in (1, 2, 3):
        say(alice, "bob@localhost", f"hello {n} \U0001F600 &amp; &lt;b&gt;")
        p = publish_for(app, "bob-phone")
        assert p.get("from") == "localhost" and p.get("to") == APP, ET.tostring(p)
        assert p.get("id").startswith("mkpush-pusher.0-"), p.get("id")
        assert summary(p) == [("FORM_TYPE", "urn:xmpp:push:summary"), ("message-count", str(n)),
                              ("last-message-sender", "alice@localhost"),
                              ("last-message-body", f"hello {n} \U0001F600 & <b>")]
        po = p.find(f"{PS}pubsub/{PS}publish-options/{XD}x")
        assert po is not None and po.get("type") == "submit", ET.tostring(p)
        assert form_fields(po) == [("FORM_TYPE", PO), ("service", "apns"), ("device_id", "tok-bob"),
                                   ("topic", "com.example")]
        answer(app, p)
    # bob comes online (and the pusher has seen it), goes away: the count starts again.
    before = pusher_ok(cl)
    bob, _ = login(cl, "bob")
    assert wait_until(lambda: pusher_ok(cl) >= before + 1, 10)
    offline(cl, bob, "bob")
    say(alice, "bob@localhost", "after")
    p = publish_for(app, "bob-phone")
    assert ("message-count", "1") in summary(p) and ("last-message-body", "after") in summary(p)
    answer(app, p)
    # Online with a session: no publish (the message reaches the session); the proof
    # that nothing was published is the next offline message's count, 2 after "after".
    bob, _ = login(cl, "bob", presence=False)   # bound, not available: still pushed (priority rule)
    say(alice, "bob@localhost", "bound only")
    p = publish_for(app, "bob-phone")
    assert ("message-count", "2") in summary(p)
    answer(app, p)
    bob.close()
    alice.close()


def test_cancel_error_disables(env):
    cl, app, mp = env
    registered_with(cl, "carol", [(APP, "c-dead", [("service", "fcm")]), (APP, "c-live", [("service", "fcm")])])
    lines = cl.ctl("push", "registrations", "carol@localhost").stdout.splitlines()
    assert len(lines) == 2, lines
    alice, _ = login(cl, "alice")
    say(alice, "carol@localhost", "one")
    dead = publish_for(app, "c-dead")
    live = publish_for(app, "c-live")
    answer(app, dead, ("cancel", "item-not-found"))
    answer(app, live)
    assert wait_until(lambda: cl.ctl("push", "registrations", "carol@localhost").stdout.split(" ")[1:2] == ["c-live"]
                      and len(cl.ctl("push", "registrations", "carol@localhost").stdout.splitlines()) == 1, 10), \
        cl.ctl("push", "registrations", "carol@localhost").stdout
    assert metric(cl, "pusher.0", "meerkat_push_registrations_disabled_total") >= 1
    # A wait error does not disable: the publish is tried again (same count), then ok.
    say(alice, "carol@localhost", "two")
    p = publish_for(app, "c-live")
    answer(app, p, ("wait", "resource-constraint"))
    again = publish_for(app, "c-live")
    assert again.get("id") != p.get("id") and summary(again) == summary(p)
    assert ("message-count", "2") in summary(again)
    answer(app, again)
    assert len(cl.ctl("push", "registrations", "carol@localhost").stdout.splitlines()) == 1
    alice.close()


def test_no_reply_is_retried(env):
    cl, app, mp = env
    registered_with(cl, "frank", [(APP, "f1", [])])
    alice, _ = login(cl, "alice")
    say(alice, "frank@localhost", "are you there")
    first = publish_for(app, "f1")
    # Not answered: after timeout_ms the pusher publishes again (a new id, the same summary).
    second = publish_for(app, "f1", timeout=20)
    assert second.get("id") != first.get("id") and summary(second) == summary(first)
    assert second.find(f"{PS}pubsub/{PS}publish-options") is None   # no options given: none echoed
    answer(app, second)
    alice.close()


def test_mongoosepush_v3(env):
    cl, app, mp = env
    registered_with(cl, "dave", [(VIRTUAL, "d1", [("service", "apns"), ("device_id", "dev/1 +x"),
                                                  ("topic", "com.app"), ("priority", "high"),
                                                  ("time_to_live", "600"), ("click_action", "OPEN")]),
                                 (VIRTUAL, "d2", [("service", "fcm"), ("device_id", "silent-dev"),
                                                  ("silent", "true"), ("mode", "dev")])])
    alice, _ = login(cl, "alice")
    say(alice, "dave@localhost", "q&amp;a \"quoted\" \U0001F600")
    (path, headers, body), = mp.wait("/v3/notification/dev%2F1%20%2Bx")
    assert headers.get("Content-Type") == "application/json"
    assert body == ('{"service":"apns","mode":"prod","priority":"high","time_to_live":600,"topic":"com.app",'
                    '"alert":{"title":"alice@localhost","body":"q&a \\"quoted\\" \U0001F600","badge":1,'
                    '"tag":"alice@localhost","click_action":"OPEN"}}').encode()
    (_, _, sbody), = mp.wait("/v3/notification/silent-dev")
    assert json.loads(sbody) == {"service": "fcm", "mode": "dev",
                                 "data": {"message-count": 1, "last-message-sender": "alice@localhost",
                                          "last-message-body": "q&a \"quoted\" \U0001F600"}}
    # 429 then 200: retried (the count stays that of the message).
    mp.statuses["/v3/notification/silent-dev"] = [429]
    say(alice, "dave@localhost", "second")
    reqs = mp.wait("/v3/notification/silent-dev", n=3)
    assert json.loads(reqs[1][2])["data"]["message-count"] == 2
    assert reqs[2][2] == reqs[1][2]
    alice.close()


def test_mongoosepush_410_disables(env):
    cl, app, mp = env
    registered_with(cl, "erin", [(VIRTUAL, "gone", [("service", "fcm"), ("device_id", "dead-token")]),
                                 (VIRTUAL, "kept", [("service", "fcm"), ("device_id", "live-token")])])
    mp.statuses["/v3/notification/dead-token"] = [410]
    alice, _ = login(cl, "alice")
    say(alice, "erin@localhost", "hi")
    mp.wait("/v3/notification/dead-token")
    mp.wait("/v3/notification/live-token")
    assert wait_until(lambda: [l.split(" ")[1] for l in
                               cl.ctl("push", "registrations", "erin@localhost").stdout.splitlines()] == ["kept"], 10)
    # The next message goes to the live token only: its request comes, and still one to the dead.
    say(alice, "erin@localhost", "again")
    mp.wait("/v3/notification/live-token", n=2)
    assert len([r for r in mp.requests if r[0] == "/v3/notification/dead-token"]) == 1
    alice.close()


def test_removed_account_not_pushed_to_old_registrations(env):
    """Removing an account (meerkat ctl unregister, or in-band) drops what the pusher cached:
    the same name registered again with a new registration gets pushes on it only."""
    cl, app, mp = env
    alice, _ = login(cl, "alice")
    for user, inband in (("grace", False), ("heidi", True)):
        if inband:
            cl.ctl("register", f"{user}@localhost", f"{user}-pw")
        registered_with(cl, user, [(APP, f"{user}-old", [])])
        say(alice, f"{user}@localhost", "cached")
        answer(app, publish_for(app, f"{user}-old"))   # the pusher now holds the old registration
        changes = metric(cl, "pusher.0", "meerkat_push_registration_changes_total")
        if inband:
            r, _ = login(cl, user, presence=False)
            ans = iq(r, "<query xmlns='jabber:iq:register'><remove/></query>")
            assert "type='result'" in ans or 'type="result"' in ans, ans
            r.close()
        else:
            cl.ctl("unregister", f"{user}@localhost")
        assert wait_until(lambda: f"{user}@localhost" not in cl.ctl("sessions").stdout, 10)
        # The pusher has been told (the notice and the next message travel different paths).
        assert wait_until(lambda: metric(cl, "pusher.0", "meerkat_push_registration_changes_total") > changes, 10)
        # To the removed account: nothing may be published from the old registration.
        say(alice, f"{user}@localhost", "nobody home")
        cl.ctl("register", f"{user}@localhost", f"{user}-pw")
        registered_with(cl, user, [(APP, f"{user}-new", [])])
        say(alice, f"{user}@localhost", "fresh")
        p = app.wait("iq", type="set", pred=lambda el: el.find(f".//{PS}publish") is not None
                     and el.find(f".//{PS}publish").get("node", "").startswith(user))
        # Registrations are published in the order they were made: the old one would come first.
        assert p.find(f".//{PS}publish").get("node") == f"{user}-new", ET.tostring(p)
        assert ("message-count", "1") in summary(p)
        answer(app, p)
    alice.close()


def test_reply_from_the_service_domain(env):
    """A registration at a JID of the app server's domain: the reply may come from the
    domain itself (a component answers for its domain), and it finishes the event."""
    cl, app, mp = env
    registered_with(cl, "ivan", [(f"svc@{APP}", "i1", [])])
    alice, _ = login(cl, "alice")
    before = pusher_ok(cl)
    say(alice, "ivan@localhost", "to svc")
    p = publish_for(app, "i1")
    assert p.get("to") == f"svc@{APP}", ET.tostring(p)
    answer(app, p)   # from APP, not svc@APP
    assert wait_until(lambda: pusher_ok(cl) >= before + 1, 10), "the reply did not finish the event"
    alice.close()
