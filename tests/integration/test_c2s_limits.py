"""tests/integration/test_c2s_limits.py - limits and options: idle timeout, shaping, ANONYMOUS, admin passwd/unregister (failed-login limits: test_auth.py)."""
import time

import pytest

from harness import Cluster
from rawxmpp import Raw, stream_error


@pytest.fixture(scope="module")
def lim(tmp_path_factory):
    c = Cluster(tmp_path_factory.mktemp("limits"), c2s=1, router=1, mam=1,
                extra="limits: {idle_timeout_sec: 2, auth_timeout_sec: 2, "
                      "shaper_bytes_per_sec: 2000}\nmodules: {anonymous: {enabled: true}}").start()
    for u in ("erin", "frank", "gina"):
        c.ctl("register", f"{u}@localhost", f"{u}-pw")
    yield c
    c.stop()


def tls_stream(port):
    r = Raw(port)
    r.open_stream()
    r.starttls()
    return r, r.open_stream()


def test_anonymous_login(lim):
    r, feats = tls_stream(lim.c2s_port)
    assert "<mechanism>ANONYMOUS</mechanism>" in feats
    r.send("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='ANONYMOUS'/>")
    assert "<success" in r.recv_until(r"<success[^>]*(/>|>[^<]*</success>)|</failure>")
    jid = r.bind("anon")
    assert jid.startswith("anon-") and jid.endswith("@localhost/anon")


def test_unauthenticated_stream_times_out(lim):
    r, _ = tls_stream(lim.c2s_port)
    out = r.recv_until("</stream:stream>", timeout=8)
    assert stream_error(out) == "connection-timeout"


def test_idle_session_is_closed_and_keepalive_prevents_it(lim):
    quiet, busy = Raw(lim.c2s_port), Raw(lim.c2s_port)
    quiet.login("gina", "gina-pw", "quiet")
    busy.login("gina", "gina-pw", "busy")
    t0 = time.monotonic()
    while time.monotonic() - t0 < 3.5:
        busy.send(" ")          # whitespace keepalive
        time.sleep(0.5)
    assert stream_error(quiet.recv_until("</stream:stream>", timeout=3)) == "connection-timeout"
    busy.send("<iq type='get' id='alive'><ping xmlns='urn:xmpp:ping'/></iq>")
    busy.recv_until("id='alive'|id=\"alive\"")


def test_shaper_slows_a_flood_but_keeps_it(lim):
    r = Raw(lim.c2s_port)
    # ANONYMOUS needs no rate-limited account; the flood is 3 x 2000 bytes/s worth.
    r.open_stream()
    r.starttls()
    r.open_stream()
    r.send("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='ANONYMOUS'/>")
    r.recv_until("<success")
    jid = r.bind("flood")
    t0 = time.monotonic()
    pad = "x" * 1000
    for i in range(6):
        r.send(f"<message to='{jid}' id='f{i}'><body>{pad}</body></message>")
    r.recv_until("id='f5'|id=\"f5\"", timeout=10)
    assert time.monotonic() - t0 >= 1.5


def test_ctl_passwd_and_unregister(lim):
    lim.ctl("passwd", "frank@localhost", "new-pw")
    r, _ = tls_stream(lim.c2s_port)
    assert "<success" in r.auth_scram("frank", "new-pw")
    r.bind("x")
    lim.ctl("unregister", "frank@localhost")
    assert stream_error(r.recv_until("</stream:stream>")) == "not-authorized"
    res = lim.ctl("unregister", "frank@localhost", check=False)
    assert res.returncode != 0 and "not registered" in res.stderr
