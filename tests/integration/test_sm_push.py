"""tests/integration/test_sm_push.py - XEP-0198 with the rest of the server: a detached session's user is pushed (XEP-0357) for each message that arrives while it waits for resumption; the idle timeout of a silent connection with resumption on detaches the session instead of ending it."""
import re
import xml.etree.ElementTree as ET

import pytest

from harness import Cluster, wait_until
from test_component import Component
from test_push_publish import APP, SECRET, answer, enable as push_enable, publish_for, pusher_ok, summary
from test_sm import SM, abort, bodies, detached, enable, login, previd_of, resume, stanzas

IDLE = 3   # limits.idle_timeout_sec of the idle cluster


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """A cluster with an xep0357 backend and the app server connected as a component."""
    d = tmp_path_factory.mktemp("smpush")
    (d / "app.secret").write_text(SECRET + "\n")
    extra = "\n".join([
        "pusher:",
        "  backends:",
        "    - name: push",
        "      type: xep0357",
        "      timeout_ms: 1500",
        "      retry_base_ms: 50",
        "      retry_max_ms: 200",
        "components:",
        f"  - {{domain: {APP}, secret_file: {d / 'app.secret'}}}",
    ])
    c = Cluster(d, c2s=1, router=1, mam=1, pusher=1, gd=0, extra=extra)
    c.comp_port = c.add_listener("component")
    app = None
    try:
        c.start()
        for u in ("spa", "spb"):
            c.ctl("register", f"{u}@localhost", "pw")
        app = Component(c.comp_port, APP, SECRET)
        assert app.started.wait(10), "the app server's handshake was not accepted"
        yield c, app
    finally:
        if app is not None:
            app.close()
        c.stop()


@pytest.fixture(scope="module")
def idle_cl(tmp_path_factory):
    c = Cluster(tmp_path_factory.mktemp("smidle"), c2s=1, router=1, mam=1, pusher=0, gd=0,
                extra=f"limits: {{idle_timeout_sec: {IDLE}}}").start()
    for u in ("sia", "sib", "sic"):
        c.ctl("register", f"{u}@localhost", "pw")
    yield c
    c.stop()


def say(r, to, body):
    r.send(f"<message to='{to}' type='chat'><body>{body}</body></message>")


def test_detached_session_is_pushed_for_each_message(env):
    cl, app = env
    before = pusher_ok(cl)
    a, ajid = login(cl, "spa", "phone")
    push_enable(a, APP, "spa-phone", [])
    previd = previd_of(enable(a, resume=True))
    a.send("<presence/>")
    # The ONLINE event (the pusher's count starts again) is done before any message.
    assert wait_until(lambda: pusher_ok(cl) >= before + 1, 10), "the ONLINE event did not reach the pusher"
    b, _ = login(cl, "spb", "desk")
    # Attached: delivered to an available session, nothing published; the proof is the
    # count of the first publish below (1).
    say(b, ajid, "while attached")
    got = a.recv_until("while attached</body>.*?</message>")   # the presence echo, then it
    h = len(stanzas(got))
    a.send(f"<a xmlns='{SM}' h='{h}'/>")
    # Received and not acknowledged when the connection drops (with a chat state, which
    # has no body): pushed on detaching, as MongooseIM does.
    b.send(f"<message to='{ajid}' type='chat'><active xmlns='http://jabber.org/protocol/chatstates'/></message>")
    say(b, ajid, "unacked")
    a.recv_until("unacked</body>")
    d0 = detached(cl)
    abort(a)
    assert wait_until(lambda: detached(cl) >= d0 + 1, 10)
    p = publish_for(app, "spa-phone")
    assert summary(p) == [("FORM_TYPE", "urn:xmpp:push:summary"), ("message-count", "1"),
                          ("last-message-sender", "spb@localhost"), ("last-message-body", "unacked")]
    answer(app, p)
    # Each message with a body that arrives while detached: one publish, counted.
    for n in (1, 2, 3):
        say(b, ajid, f"away {n}")
        p = publish_for(app, "spa-phone")
        assert p.get("from") == "localhost" and p.get("to") == APP, ET.tostring(p)
        assert summary(p) == [("FORM_TYPE", "urn:xmpp:push:summary"), ("message-count", str(n + 1)),
                              ("last-message-sender", "spb@localhost"), ("last-message-body", f"away {n}")]
        answer(app, p)
    # A chat state (no body) publishes nothing: the next message's count is 5.
    b.send(f"<message to='{ajid}' type='chat'><composing xmlns='http://jabber.org/protocol/chatstates'/></message>")
    say(b, ajid, "away 4")
    p = publish_for(app, "spa-phone")
    assert ("message-count", "5") in summary(p) and ("last-message-body", "away 4") in summary(p), summary(p)
    answer(app, p)
    # Resumed: every message is there.
    a2, out = resume(cl, "spa", previd, h)
    assert out.startswith("<resumed"), out
    rest = a2.recv_until("away 4</body>")
    assert bodies(rest) == ["unacked", "away 1", "away 2", "away 3", "away 4"]
    a2.send("</stream:stream>")
    b.close()


def test_idle_timeout_detaches_a_resumable_session(idle_cl):
    cl = idle_cl
    a, ajid = login(cl, "sia", "phone")
    previd = previd_of(enable(a, resume=True))
    d0 = detached(cl)
    # Silent past limits.idle_timeout_sec: the socket closes, the session stays.
    assert a.closed(timeout=IDLE * 5), "the idle connection was not closed"
    assert "connection-timeout" not in a.buf, a.buf
    assert wait_until(lambda: detached(cl) >= d0 + 1, 10)
    assert re.search(r"event=conn_detached .*reason=idle_timeout", cl.read_log())
    b, _ = login(cl, "sib", "desk")
    say(b, ajid, "while idle")
    a2, out = resume(cl, "sia", previd, 0)
    assert out == f"<resumed xmlns='{SM}' h='0' previd='{previd}'/>", out
    assert "while idle" in a2.recv_until("while idle</body>")
    a2.send("</stream:stream>")
    b.close()


def test_idle_timeout_without_resumption_ends_the_stream(idle_cl):
    cl = idle_cl
    a, _ = login(cl, "sic", "phone")
    assert enable(a) == f"<enabled xmlns='{SM}'/>"   # SM without resumption: nothing to wait for
    out = a.recv_until("</stream:stream>", timeout=IDLE * 5)
    assert "<connection-timeout" in out, out
