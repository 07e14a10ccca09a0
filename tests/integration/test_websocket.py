"""tests/integration/test_websocket.py - XMPP over WebSocket (RFC 7395, RFC 6455) and XEP-0156 host-meta on the c2s_ws listener, with a WebSocket client written here (raw frames over TLS): handshake, SASL PLAIN and SCRAM-SHA-256 logins, chat with a slixmpp TCP client, ping/pong, fragmentation, and hostile input (unmasked, oversize, bad UTF-8, missing subprotocol, incomplete element) answered with clear errors and a closed connection."""
import base64
import hashlib
import json
import os
import socket
import ssl
import struct
import xml.etree.ElementTree as ET

import pytest

from harness import Cluster, free_port
from xmpp import Client

FRAMING = "urn:ietf:params:xml:ns:xmpp-framing"
GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


@pytest.fixture(scope="module")
def cl(tmp_path_factory):
    c = Cluster(tmp_path_factory.mktemp("ws"))
    c.ws_port = c.add_listener("c2s_ws", ", origins: ['https://example.test', 'null']")
    c.start()
    for u in ("wsa", "wsb"):
        c.ctl("register", f"{u}@localhost", "pw")
    yield c
    c.stop()


class WS:
    """A WebSocket client over TLS that speaks raw frames."""

    def __init__(self, port):
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        raw = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.s = ctx.wrap_socket(raw, server_hostname="localhost")
        self.buf = b""

    def _fill(self):
        d = self.s.recv(65536)
        if not d:
            raise EOFError("server closed the connection")
        self.buf += d

    def _take(self, n):
        while len(self.buf) < n:
            self._fill()
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def http(self, head):
        """Sends a request head; returns (status code, headers dict lower-cased, rest of the bytes until close or the head's end)."""
        self.s.sendall(head.encode())
        while b"\r\n\r\n" not in self.buf:
            self._fill()
        h, self.buf = self.buf.split(b"\r\n\r\n", 1)
        lines = h.decode().split("\r\n")
        code = int(lines[0].split()[1])
        hdrs = {}
        for ln in lines[1:]:
            k, v = ln.split(":", 1)
            hdrs[k.strip().lower()] = v.strip()
        body = b""
        if "content-length" in hdrs:
            body = self._take(int(hdrs["content-length"]))
        return code, hdrs, body

    def upgrade(self, protocol="xmpp", key=None):
        key = key or base64.b64encode(os.urandom(16)).decode()
        proto = f"Sec-WebSocket-Protocol: {protocol}\r\n" if protocol else ""
        code, hdrs, body = self.http(
            "GET /xmpp-websocket HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n{proto}Origin: https://example.test\r\n\r\n")
        return code, hdrs, body, key

    def frame(self, op, payload, fin=True, mask=True, rsv=0):
        if isinstance(payload, str):
            payload = payload.encode()
        b0 = (0x80 if fin else 0) | rsv | op
        n = len(payload)
        mbit = 0x80 if mask else 0
        if n < 126:
            h = struct.pack("!BB", b0, mbit | n)
        elif n < 65536:
            h = struct.pack("!BBH", b0, mbit | 126, n)
        else:
            h = struct.pack("!BBQ", b0, mbit | 127, n)
        if mask:
            key = os.urandom(4)
            payload = bytes(c ^ key[i & 3] for i, c in enumerate(payload))
            h += key
        return h + payload

    def send(self, op, payload, **kw):
        self.s.sendall(self.frame(op, payload, **kw))

    def text(self, s):
        self.send(1, s)

    def recv_frame(self):
        b0, b1 = self._take(2)
        assert b1 & 0x80 == 0, "server frames must not be masked"
        n = b1 & 0x7F
        if n == 126:
            n = struct.unpack("!H", self._take(2))[0]
        elif n == 127:
            n = struct.unpack("!Q", self._take(8))[0]
        return bool(b0 & 0x80), b0 & 0x0F, self._take(n)

    def recv_text(self):
        fin, op, p = self.recv_frame()
        assert fin and op == 1, (fin, op, p)
        return p.decode()

    def recv_el(self):
        return ET.fromstring(self.recv_text())

    def expect_close(self):
        """Reads frames until a Close; returns (status, reason, the text frames before it), then checks the socket closes."""
        texts = []
        while True:
            fin, op, p = self.recv_frame()
            if op == 8:
                code = struct.unpack("!H", p[:2])[0] if len(p) >= 2 else None
                assert self.eof(), "the connection stays open after the Close frame"
                return code, p[2:].decode(), texts
            texts.append(p.decode())

    def eof(self):
        try:
            while True:
                if not self.s.recv(65536):
                    return True
        except (ConnectionResetError, ssl.SSLError):
            return True
        except socket.timeout:
            return False

    def close(self):
        try:
            self.s.close()
        except OSError:
            pass


def ws_login(cl, user, resource):
    w = WS(cl.ws_port)
    code, hdrs, _, key = w.upgrade()
    assert code == 101
    expected = base64.b64encode(hashlib.sha1((key + GUID).encode()).digest()).decode()
    assert hdrs["sec-websocket-accept"] == expected
    assert hdrs["sec-websocket-protocol"] == "xmpp"
    w.text(f"<open xmlns='{FRAMING}' to='localhost' version='1.0'/>")
    op = w.recv_el()
    assert op.tag == f"{{{FRAMING}}}open" and op.get("from") == "localhost" and op.get("version") == "1.0" and op.get("id")
    feats = w.recv_el()
    assert feats.tag == "{http://etherx.jabber.org/streams}features"
    mechs = [m.text for m in feats.iter("{urn:ietf:params:xml:ns:xmpp-sasl}mechanism")]
    assert "PLAIN" in mechs
    assert feats.find("{urn:ietf:params:xml:ns:xmpp-tls}starttls") is None
    cred = base64.b64encode(f"\0{user}\0pw".encode()).decode()
    w.text(f"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{cred}</auth>")
    assert w.recv_el().tag == "{urn:ietf:params:xml:ns:xmpp-sasl}success"
    w.text(f"<open xmlns='{FRAMING}' to='localhost' version='1.0'/>")
    assert w.recv_el().tag == f"{{{FRAMING}}}open"
    feats = w.recv_el()
    assert feats.find("{urn:ietf:params:xml:ns:xmpp-bind}bind") is not None
    w.text("<iq xmlns='jabber:client' type='set' id='b1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>"
           f"<resource>{resource}</resource></bind></iq>")
    res = w.recv_el()
    assert res.tag == "{jabber:client}iq" and res.get("type") == "result", ET.tostring(res)
    jid = res.find(".//{urn:ietf:params:xml:ns:xmpp-bind}jid").text
    assert jid == f"{user}@localhost/{resource}"
    return w


def test_host_meta(cl):
    w = WS(cl.ws_port)
    code, hdrs, body = w.http("GET /.well-known/host-meta HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n\r\n" % cl.ws_port)
    assert code == 200 and hdrs["content-type"].startswith("application/xrd+xml")
    x = ET.fromstring(body)
    link = x.find("{http://docs.oasis-open.org/ns/xri/xrd-1.0}Link")
    assert link.get("rel") == "urn:xmpp:alt-connections:websocket"
    assert link.get("href") == f"wss://127.0.0.1:{cl.ws_port}/xmpp-websocket"
    assert w.eof()
    w = WS(cl.ws_port)
    code, hdrs, body = w.http("GET /.well-known/host-meta.json HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n\r\n" % cl.ws_port)
    assert code == 200 and hdrs["content-type"] == "application/json"
    assert json.loads(body) == {"links": [{"rel": "urn:xmpp:alt-connections:websocket",
                                           "href": f"wss://127.0.0.1:{cl.ws_port}/xmpp-websocket"}]}
    w = WS(cl.ws_port)
    code, _, body = w.http("GET /nope HTTP/1.1\r\nHost: x\r\n\r\n")
    assert code == 404 and b"/xmpp-websocket" in body


def test_login_chat_with_tcp_client(cl):
    w = ws_login(cl, "wsa", "web")
    w.text("<presence xmlns='jabber:client'/>")
    tcp = Client(cl.c2s_port, "wsb@localhost/tcp", "pw")
    try:
        w.text("<message xmlns='jabber:client' to='wsb@localhost/tcp' type='chat' id='m1'><body>hello from ws</body></message>")
        m = tcp.wait("message", frm="wsa@localhost/web")
        assert m.find("{jabber:client}body").text == "hello from ws"
        tcp.send("<message to='wsa@localhost/web' type='chat' id='m2'><body>hello from tcp</body></message>")
        while True:
            el = w.recv_el()
            if el.tag == "{jabber:client}message":
                break
        assert el.get("from") == "wsb@localhost/tcp" and el.find("{jabber:client}body").text == "hello from tcp"
        # ping/pong, and one element in two fragments
        w.send(9, b"are you there")
        fin, op, p = w.recv_frame()
        while op == 1:   # presence may still be on its way
            fin, op, p = w.recv_frame()
        assert (fin, op, p) == (True, 10, b"are you there")
        w.send(1, "<iq xmlns='jabber:client' type='get' id='p1'><ping xmlns='urn", fin=False)
        w.send(0, ":xmpp:ping'/></iq>")
        while True:
            el = w.recv_el()
            if el.get("id") == "p1":
                break
        assert el.get("type") == "result"
        # RFC 7395 close: <close/> answered by <close/> and a Close frame
        w.text(f"<close xmlns='{FRAMING}'/>")
        code, _, texts = w.expect_close()
        assert code == 1000
        assert texts[-1] == f"<close xmlns='{FRAMING}'/>"
    finally:
        tcp.close()
        w.close()


@pytest.mark.parametrize("case,status,reason", [
    ("unmasked", 1002, "client frames must be masked"),
    ("oversize", 1009, "message larger than the stanza size limit"),
    ("bad_utf8", 1007, "text message is not UTF-8"),
    ("binary", 1003, "binary frames are not XMPP"),
    ("big_ping", 1002, "control frame longer than 125 bytes"),
])
def test_hostile_frames(cl, case, status, reason):
    w = WS(cl.ws_port)
    assert w.upgrade()[0] == 101
    if case == "unmasked":
        w.send(1, f"<open xmlns='{FRAMING}' to='localhost' version='1.0'/>", mask=False)
    elif case == "oversize":
        w.s.sendall(struct.pack("!BBQ", 0x81, 0xFF, 10 * 1024 * 1024) + b"abcd")
    elif case == "bad_utf8":
        w.send(1, b"<open xmlns='" + FRAMING.encode() + b"' to='\xc3\x28'/>")
    elif case == "binary":
        w.send(2, b"<open/>")
    else:
        w.send(9, b"x" * 126)
    code, why, texts = w.expect_close()
    assert (code, why[:len(reason)]) == (status, reason)
    assert texts == []
    # the server lives on
    assert ws_login(cl, "wsa", f"after-{case}") is not None


def test_missing_subprotocol(cl):
    w = WS(cl.ws_port)
    code, _, body, _ = w.upgrade(protocol=None)
    assert code == 400 and b"xmpp subprotocol is required" in body
    assert w.eof()
    w = WS(cl.ws_port)
    code, _, body, _ = w.upgrade(protocol="chat, mqtt")
    assert code == 400
    w = WS(cl.ws_port)
    code, hdrs, body = w.http("GET /xmpp-websocket HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                              "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 8\r\n"
                              "Sec-WebSocket-Protocol: xmpp\r\n\r\n")
    assert code == 426 and hdrs["sec-websocket-version"] == "13"


def test_origin_allow_list(cl):
    w = WS(cl.ws_port)
    code, _, body = w.http("GET /xmpp-websocket HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                           "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
                           "Sec-WebSocket-Protocol: xmpp\r\nOrigin: https://evil.test\r\n\r\n")
    assert code == 403 and b"this Origin may not open the XMPP WebSocket" in body
    assert w.eof()


def test_incomplete_element_and_bad_open(cl):
    w = WS(cl.ws_port)
    assert w.upgrade()[0] == 101
    w.text(f"<open xmlns='{FRAMING}' to='localhost' version='1.0'/>")
    assert w.recv_el().tag == f"{{{FRAMING}}}open"
    w.recv_el()
    w.text("<iq xmlns='jabber:client' type='get' id='x'>")
    code, _, texts = w.expect_close()
    assert code == 1000
    err = ET.fromstring(texts[0])
    assert err.tag == "{http://etherx.jabber.org/streams}error"
    assert err.find("{urn:ietf:params:xml:ns:xmpp-streams}bad-format") is not None
    assert texts[-1] == f"<close xmlns='{FRAMING}'/>"
    w = WS(cl.ws_port)
    assert w.upgrade()[0] == 101
    w.text("<open xmlns='jabber:client' to='localhost' version='1.0'/>")
    code, _, texts = w.expect_close()
    assert any("bad-format" in t for t in texts), texts


def test_oversize_request_head(cl):
    w = WS(cl.ws_port)
    w.s.sendall(b"GET /xmpp-websocket HTTP/1.1\r\n" + b"X-Junk: " + b"a" * 9000 + b"\r\n")
    code, _, _ = w.http("")
    assert code == 431
    assert w.eof()


BROWSER_DIR = os.path.join(os.path.dirname(__file__), "..", "browser")


def test_browser_xmppjs(cl, tmp_path):
    """Headless Chromium runs xmpp.js (@xmpp/client): it logs in over wss, chats with a slixmpp TCP client, and posts what it saw to an HTTP receiver here."""
    import http.server
    import shutil
    import subprocess
    import threading
    from harness import wait_until

    chromium = shutil.which("chromium")
    lib = os.path.join(BROWSER_DIR, "node_modules", "@xmpp", "client", "dist", "xmpp.min.js")
    # Test dependencies (deploy/install-deps.sh installs both): their absence is a failure.
    assert chromium is not None and os.path.exists(lib), \
        "needs chromium and tests/browser/node_modules: run deploy/install-deps.sh"
    reports = []

    class Recv(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers["Content-Length"]))
            reports.append(json.loads(body))
            self.send_response(204)
            self.send_header("Access-Control-Allow-Origin", "*")
            self.end_headers()

        def log_message(self, *a):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Recv)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    for u in ("wsc", "wsd"):
        cl.ctl("register", f"{u}@localhost", "pw")
    tcp = Client(cl.c2s_port, "wsd@localhost/tcp", "pw")
    url = (f"file://{os.path.abspath(BROWSER_DIR)}/page.html?ws=wss://127.0.0.1:{cl.ws_port}/xmpp-websocket"
           f"&user=wsc&peer=wsd@localhost/tcp&recv={srv.server_address[1]}")
    browser = subprocess.Popen([chromium, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
                                "--ignore-certificate-errors", f"--user-data-dir={tmp_path}/profile", url],
                               stdout=subprocess.DEVNULL, stderr=open(f"{tmp_path}/chromium.log", "wb"))
    try:
        assert wait_until(lambda: any("online" in r or "error" in r for r in reports), 60), reports
        assert {"online": "wsc@localhost/browser"} in reports, reports
        m = tcp.wait("message", frm="wsc@localhost/browser", timeout=20)
        assert m.find("{jabber:client}body").text == "hello from chromium"
        tcp.send("<message to='wsc@localhost/browser' type='chat' id='b1'><body>hello browser</body></message>")
        assert wait_until(lambda: {"got": "hello browser", "from": "wsd@localhost/tcp"} in reports, 20), reports
        assert not any("error" in r for r in reports), reports
    finally:
        browser.terminate()
        try:
            browser.wait(10)
        except subprocess.TimeoutExpired:
            browser.kill()
            browser.wait(10)
        srv.shutdown()
        tcp.close()


def test_limits_same_as_tcp(cl):
    # before login a message may not exceed max_preauth_bytes (8 KiB by default)
    w = WS(cl.ws_port)
    assert w.upgrade()[0] == 101
    # (only the frame's header: the server refuses it from its length, before the payload)
    w.s.sendall(struct.pack("!BBH", 0x81, 0x80 | 126, 8193) + b"mask")
    code, why, texts = w.expect_close()
    assert (code, why) == (1009, "message larger than the stanza size limit") and texts == []
    # after login, max_stanza_bytes (64 KiB): one byte over is refused, the limit itself is not
    w = ws_login(cl, "wsa", "limits")
    pad = 65536 - len("<message xmlns='jabber:client' to='wsa@localhost/limits'><body></body></message>")
    w.text(f"<message xmlns='jabber:client' to='wsa@localhost/limits'><body>{'y' * pad}</body></message>")
    while True:
        el = w.recv_el()
        if el.tag == "{jabber:client}message":
            break
    assert len(el.find("{jabber:client}body").text) == pad
    w.s.sendall(struct.pack("!BBQ", 0x81, 0x80 | 127, 65537) + b"mask")
    code, why, _ = w.expect_close()
    assert (code, why) == (1009, "message larger than the stanza size limit")
    # a wrong password is a SASL failure, as on TCP
    w = WS(cl.ws_port)
    assert w.upgrade()[0] == 101
    w.text(f"<open xmlns='{FRAMING}' to='localhost' version='1.0'/>")
    w.recv_el()
    w.recv_el()
    cred = base64.b64encode(b"\0wsa\0wrong").decode()
    w.text(f"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{cred}</auth>")
    fail = w.recv_el()
    assert fail.tag == "{urn:ietf:params:xml:ns:xmpp-sasl}failure"
    assert fail.find("{urn:ietf:params:xml:ns:xmpp-sasl}not-authorized") is not None


def test_auth_timeout(tmp_path):
    c = Cluster(tmp_path)
    c.ws_port = free_port()
    with open(c.config) as f:
        text = f.read()
    text = text.replace("listeners:\n", f"listeners:\n  c2s_ws: {{host: 127.0.0.1, port: {c.ws_port}}}\n", 1)
    with open(c.config, "w") as f:
        f.write(text + "limits: {auth_timeout_sec: 1}\n")
    c.start()
    try:
        w = WS(c.ws_port)
        assert w.upgrade()[0] == 101
        w.text(f"<open xmlns='{FRAMING}' to='localhost' version='1.0'/>")
        code, _, texts = w.expect_close()
        assert code == 1000
        err = ET.fromstring(texts[-2])
        assert err.find("{urn:ietf:params:xml:ns:xmpp-streams}connection-timeout") is not None, texts
        assert texts[-1] == f"<close xmlns='{FRAMING}'/>"
    finally:
        c.stop()


def test_scram_sha256_login(cl):
    """SCRAM-SHA-256 (RFC 7677) over the WebSocket, computed here; the server's signature is checked."""
    import hmac
    w = WS(cl.ws_port)
    assert w.upgrade()[0] == 101
    w.text(f"<open xmlns='{FRAMING}' to='localhost' version='1.0'/>")
    w.recv_el()
    feats = w.recv_el()
    assert "SCRAM-SHA-256" in [m.text for m in feats.iter("{urn:ietf:params:xml:ns:xmpp-sasl}mechanism")]
    cnonce = base64.b64encode(os.urandom(18)).decode()
    bare = f"n=wsb,r={cnonce}"
    w.text("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='SCRAM-SHA-256'>"
           + base64.b64encode(("n,," + bare).encode()).decode() + "</auth>")
    ch = w.recv_el()
    assert ch.tag == "{urn:ietf:params:xml:ns:xmpp-sasl}challenge", ET.tostring(ch)
    first = base64.b64decode(ch.text).decode()
    attrs = dict(kv.split("=", 1) for kv in first.split(","))
    assert attrs["r"].startswith(cnonce)
    salted = hashlib.pbkdf2_hmac("sha256", b"pw", base64.b64decode(attrs["s"]), int(attrs["i"]))
    ckey = hmac.new(salted, b"Client Key", "sha256").digest()
    final_bare = f"c=biws,r={attrs['r']}"
    auth_msg = f"{bare},{first},{final_bare}".encode()
    sig = hmac.new(hashlib.sha256(ckey).digest(), auth_msg, "sha256").digest()
    proof = bytes(a ^ b for a, b in zip(ckey, sig))
    w.text("<response xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>"
           + base64.b64encode(f"{final_bare},p={base64.b64encode(proof).decode()}".encode()).decode() + "</response>")
    ok = w.recv_el()
    assert ok.tag == "{urn:ietf:params:xml:ns:xmpp-sasl}success", ET.tostring(ok)
    skey = hmac.new(salted, b"Server Key", "sha256").digest()
    expect = "v=" + base64.b64encode(hmac.new(skey, auth_msg, "sha256").digest()).decode()
    assert base64.b64decode(ok.text).decode() == expect
    w.text(f"<open xmlns='{FRAMING}' to='localhost' version='1.0'/>")
    assert w.recv_el().tag == f"{{{FRAMING}}}open"
    assert w.recv_el().find("{urn:ietf:params:xml:ns:xmpp-bind}bind") is not None
