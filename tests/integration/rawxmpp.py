"""tests/integration/rawxmpp.py - a small blocking XMPP client written for the tests, byte-exact where slixmpp hides things."""
import base64
import hashlib
import hmac
import os
import re
import socket
import ssl
import struct
import time
import xml.etree.ElementTree as ET

NS_SASL = "urn:ietf:params:xml:ns:xmpp-sasl"
NS_STREAMS = "urn:ietf:params:xml:ns:xmpp-streams"


def tls_context(max12=False):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if max12:
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    return ctx


class Raw:
    """One connection. recv_until() accumulates text until a pattern shows."""

    def __init__(self, port, host="127.0.0.1", direct_tls=False, max12=False, timeout=5.0, source=None):
        """source: the local address to connect from (any of 127/8 works on Linux)."""
        self.sock = socket.create_connection((host, port), timeout=timeout,
                                             source_address=(source, 0) if source else None)
        self.buf = ""
        self.timeout = timeout
        self.max12 = max12
        if direct_tls:
            self.sock = tls_context(max12).wrap_socket(self.sock, server_hostname="localhost")

    def send(self, data):
        if isinstance(data, str):
            data = data.encode()
        self.sock.sendall(data)

    def recv_until(self, pattern, timeout=None):
        end = time.monotonic() + (timeout or self.timeout)
        rx = re.compile(pattern, re.S)
        while True:
            m = rx.search(self.buf)
            if m:
                out = self.buf[: m.end()]
                self.buf = self.buf[m.end():]
                return out
            left = end - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no {pattern!r} in {self.buf[-500:]!r}")
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(65536)
            except socket.timeout:
                continue
            if not chunk:
                raise ConnectionError(f"closed while waiting for {pattern!r}; got {self.buf[-500:]!r}")
            self.buf += chunk.decode("utf-8", "replace")

    def closed(self, timeout=3.0):
        """True when the server closes the connection within timeout."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            self.sock.settimeout(max(0.05, end - time.monotonic()))
            try:
                chunk = self.sock.recv(65536)
            except socket.timeout:
                continue
            except (ConnectionResetError, ssl.SSLError, OSError):
                return True
            if not chunk:
                return True
            self.buf += chunk.decode("utf-8", "replace")
        return False

    def open_stream(self, domain="localhost"):
        self.send(f"<?xml version='1.0'?><stream:stream to='{domain}' xmlns='jabber:client' "
                  "xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>")
        return self.recv_until(r"</stream:features>|</stream:stream>")

    def starttls(self):
        self.send("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
        self.recv_until("<proceed[^>]*/>")
        self.sock = tls_context(self.max12).wrap_socket(self.sock, server_hostname="localhost")
        self.buf = ""

    def auth_plain(self, user, password, authzid=""):
        msg = base64.b64encode(f"{authzid}\0{user}\0{password}".encode()).decode()
        self.send(f"<auth xmlns='{NS_SASL}' mechanism='PLAIN'>{msg}</auth>")
        return self.recv_until(r"<success[^>]*(/>|>[^<]*</success>)|</failure>")

    def auth_scram(self, user, password, hashname="sha256", plus=False, cb_type="tls-server-end-point",
                   cb_data=None, gs2=None):
        """A SCRAM client (RFC 5802). Returns the server's final answer text."""
        st = self.scram_start(user, hashname, plus, cb_type, cb_data, gs2)
        return self.scram_finish(st, password)

    def scram_start(self, user, hashname="sha256", plus=False, cb_type="tls-server-end-point", cb_data=None,
                    gs2=None):
        """Sends SCRAM's <auth/> with client-first-message; returns the exchange's state
        for scram_finish (which may come later, with any password)."""
        mech = {"sha1": "SCRAM-SHA-1", "sha256": "SCRAM-SHA-256"}[hashname] + ("-PLUS" if plus else "")
        if gs2 is None:
            gs2 = f"p={cb_type},," if plus else "n,,"
        if plus and cb_data is None:
            cert = self.sock.getpeercert(binary_form=True)
            cb_data = hashlib.sha256(cert).digest()
        cnonce = base64.b64encode(os.urandom(18)).decode()
        first_bare = f"n={user},r={cnonce}"
        self.send(f"<auth xmlns='{NS_SASL}' mechanism='{mech}'>"
                  f"{base64.b64encode((gs2 + first_bare).encode()).decode()}</auth>")
        return {"hashname": hashname, "gs2": gs2, "cb_data": cb_data, "first_bare": first_bare}

    def scram_finish(self, st, password):
        """Waits for the challenge of the exchange st, answers it with password's proof and
        returns the server's final answer text (or the failure that came instead)."""
        hashname, gs2, cb_data, first_bare = st["hashname"], st["gs2"], st["cb_data"], st["first_bare"]
        ans = self.recv_until(r"</challenge>|</failure>")
        if "<failure" in ans:
            return ans
        chal = base64.b64decode(re.search(r"<challenge[^>]*>([^<]*)</challenge>", ans).group(1)).decode()
        parts = dict(p.split("=", 1) for p in chal.split(","))
        salt = base64.b64decode(parts["s"])
        it = int(parts["i"])
        h = getattr(hashlib, hashname)
        salted = hashlib.pbkdf2_hmac(hashname, password.encode(), salt, it)
        client_key = hmac.new(salted, b"Client Key", h).digest()
        stored = h(client_key).digest()
        cbind = base64.b64encode(gs2.encode() + (cb_data or b"")).decode()
        final_wo = f"c={cbind},r={parts['r']}"
        auth_msg = f"{first_bare},{chal},{final_wo}".encode()
        sig = hmac.new(stored, auth_msg, h).digest()
        proof = base64.b64encode(bytes(a ^ b for a, b in zip(client_key, sig))).decode()
        self.send(f"<response xmlns='{NS_SASL}'>"
                  f"{base64.b64encode((final_wo + ',p=' + proof).encode()).decode()}</response>")
        return self.recv_until(r"<success[^>]*(/>|>[^<]*</success>)|</failure>")

    def poll(self, timeout=0.05):
        """Reads what arrives within timeout into buf (nothing is consumed); returns buf.
        Raises ConnectionError when the server has closed the connection."""
        self.sock.settimeout(timeout)
        try:
            chunk = self.sock.recv(65536)
        except (socket.timeout, ssl.SSLWantReadError):
            return self.buf
        if not chunk:
            raise ConnectionError(f"closed; got {self.buf[-500:]!r}")
        self.buf += chunk.decode("utf-8", "replace")
        return self.buf

    def bind(self, resource="raw"):
        self.open_stream()
        res = f"<resource>{resource}</resource>" if resource else ""
        self.send(f"<iq type='set' id='bind1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>{res}</bind></iq>")
        out = self.recv_until(r"<iq[^>]*id=.bind1.*?</iq>")
        m = re.search(r"<jid>([^<]*)</jid>", out)
        return m.group(1) if m else out

    def login(self, user, password, resource="raw", mech="scram"):
        self.open_stream()
        self.starttls()
        self.open_stream()
        ans = self.auth_plain(user, password) if mech == "plain" else self.auth_scram(user, password)
        assert "<success" in ans, ans
        return self.bind(resource)

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


def stream_error(text):
    """The condition name of a stream error in text, or None."""
    m = re.search(r"<stream:error><([a-z-]+)", text)
    return m.group(1) if m else None


from harness import wait_until  # noqa: E402 (harness does not import this module)

_sources = iter(range(2560, 64000))


def authed_on(cl, user, c2s_id, password="pw"):
    """A raw stream authenticated as user (SCRAM) and restarted, that the kernel gave to
    c2s_id of cluster cl (the c2s processes share one port): connects from other loopback
    addresses until one lands there, as the c2s's auth_ok log line tells. Each address is
    used once in a test run, so an older line cannot answer."""
    for k in _sources:
        src = f"127.0.{k // 256}.{k % 256 or 1}"
        r = Raw(cl.c2s_port, timeout=15, source=src)
        r.open_stream()
        r.starttls()
        r.open_stream()
        assert "<success" in r.auth_scram(user, password)
        r.open_stream()
        pat = re.compile(rf"id=(c2s\.\d) event=auth_ok conn=\d+ ip={re.escape(src)} user={re.escape(user)}@")
        m = wait_until(lambda: pat.search(cl.read_log()), 5)
        assert m, f"no auth_ok from {src}"
        if m.group(1) == c2s_id:
            return r
        r.close()
    raise RuntimeError(f"could not land {user} on {c2s_id}")


def abort(r):
    """Drops r's TCP connection without a closing stream (RST), as a phone losing its network."""
    try:
        r.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    r.close()
