"""tests/integration/xmpp.py - slixmpp clients driven synchronously from tests: log in, send XML, wait for stanzas."""
import asyncio
import itertools
import ssl
import threading
import time
import uuid
import xml.etree.ElementTree as ET

import slixmpp

C = "{jabber:client}"
_ids = itertools.count(1)
_loop = None
_loop_lock = threading.Lock()


def loop():
    """The one asyncio loop (in a daemon thread) every client of the test process runs on."""
    global _loop
    with _loop_lock:
        if _loop is None:
            _loop = asyncio.new_event_loop()
            threading.Thread(target=_loop.run_forever, daemon=True, name="slixmpp").start()
    return _loop


def run(coro, timeout=15):
    return asyncio.run_coroutine_threadsafe(coro, loop()).result(timeout)


class AuthFailed(Exception):
    pass


def local(tag):
    return tag.rsplit("}", 1)[-1]


class Client:
    """One logged-in resource. Every stanza it receives is kept in an inbox; wait()
    takes the first one that matches, so a test reads in the order it expects."""

    def __init__(self, port, jid, password, timeout=10.0, host="127.0.0.1", plugins=()):
        self.jid = jid
        self.plugins = plugins       # slixmpp plugins to register ("xep_0163", ...)
        self.bare = jid.split("/")[0]
        self.timeout = timeout
        self.inbox = []
        self.recording = False
        self.cond = threading.Condition()
        self.disconnected = threading.Event()
        self.xmpp = run(self._start(host, port, password), timeout + 5)

    async def _start(self, host, port, password):
        # slixmpp's SCRAM offers only tls-unique channel binding and otherwise sends the
        # 'y' flag, which a server offering -PLUS must refuse; PLAIN over TLS it is.
        x = slixmpp.ClientXMPP(self.jid, password, plugin_config={"feature_mechanisms": {"use_mech": "PLAIN"}})
        x.auto_authorize = None      # the tests answer subscription requests themselves
        x.auto_subscribe = False
        x.ssl_context.check_hostname = False
        x.ssl_context.verify_mode = ssl.CERT_NONE
        x.reconnect_max_attempts = 0
        for p in self.plugins:
            x.register_plugin(p)
        done = asyncio.get_running_loop().create_future()

        def started(_):
            self.recording = True
            if not done.done():
                done.set_result(True)

        def failed(_):
            if not done.done():
                done.set_exception(AuthFailed(self.jid))

        def gone(_):
            self.disconnected.set()
            if not done.done():
                done.set_exception(ConnectionError(f"{self.jid}: disconnected before the session started"))

        x.add_event_handler("session_bind", lambda j: setattr(self, "jid", str(j)))
        x.add_event_handler("session_start", started)
        x.add_event_handler("failed_all_auth", failed)
        x.add_event_handler("disconnected", gone)
        x.add_filter("in", self._record)
        x.connect((host, port))
        await asyncio.wait_for(done, self.timeout)
        return x

    def _record(self, stanza):
        xml = stanza.xml
        if self.recording and local(xml.tag) in ("message", "presence", "iq"):
            with self.cond:
                self.inbox.append(ET.fromstring(ET.tostring(xml)))
                self.cond.notify_all()
        return stanza

    # --- sending ------------------------------------------------------------------------
    def send(self, xml):
        """Sends raw XML text as it is."""
        loop().call_soon_threadsafe(self.xmpp.send_raw, xml)

    def iq(self, payload, type="get", to=None, timeout=None):
        """Sends an IQ and returns its answer (result or error) as an Element."""
        iid = f"t{next(_ids)}"
        to_attr = f" to='{to}'" if to else ""
        self.send(f"<iq type='{type}' id='{iid}'{to_attr}>{payload}</iq>")
        return self.wait("iq", id=iid, type=("result", "error"), timeout=timeout)

    def presence(self, type=None, to=None, children=""):
        attrs = (f" type='{type}'" if type else "") + (f" to='{to}'" if to else "")
        self.send(f"<presence{attrs}>{children}</presence>")

    # --- receiving ----------------------------------------------------------------------
    @staticmethod
    def matches(el, kind, id=None, type=None, frm=None, child=None, pred=None):
        if local(el.tag) != kind:
            return False
        if id is not None and el.get("id") != id:
            return False
        if type is not None:
            t = el.get("type") or ("normal" if kind == "message" else "available" if kind == "presence" else None)
            if (t not in type) if isinstance(type, tuple) else (t != type):
                return False
        if frm is not None and el.get("from") != frm:
            return False
        if child is not None and el.find(child) is None:
            return False
        return pred is None or pred(el)

    def wait(self, kind, timeout=None, **kw):
        """Takes the first received stanza of that kind matching kw (id, type, frm, child
        as an ElementPath, pred); raises TimeoutError with the inbox when none comes."""
        end = time.monotonic() + (timeout or self.timeout)
        with self.cond:
            while True:
                for i, el in enumerate(self.inbox):
                    if self.matches(el, kind, **kw):
                        return self.inbox.pop(i)
                left = end - time.monotonic()
                if left <= 0:
                    seen = "\n".join(ET.tostring(e, encoding="unicode")[:300] for e in self.inbox)
                    raise TimeoutError(f"{self.jid}: no {kind} {kw}; inbox:\n{seen}")
                self.cond.wait(left)

    def none_before(self, marker, kind, **kw):
        """True when no stanza of kind matching kw came before the marker: marker is a dict
        of wait() arguments (kind first), waited for and taken. The marker must travel the
        same ordered path after the unwanted stanza would have, so that its arrival proves
        the unwanted one is not coming - an event, not a guess of how long to wait."""
        mkind = marker.pop("kind")
        end = time.monotonic() + (marker.pop("timeout", None) or self.timeout)
        with self.cond:
            while True:
                for i, el in enumerate(self.inbox):
                    if self.matches(el, mkind, **marker):
                        before = self.inbox[:i]
                        del self.inbox[i]
                        return not any(self.matches(e, kind, **kw) for e in before)
                left = end - time.monotonic()
                if left <= 0:
                    seen = "\n".join(ET.tostring(e, encoding="unicode")[:300] for e in self.inbox)
                    raise TimeoutError(f"{self.jid}: no marker {mkind} {marker}; inbox:\n{seen}")
                self.cond.wait(left)

    def drain(self):
        with self.cond:
            self.inbox.clear()

    # --- end -----------------------------------------------------------------------------
    def close(self, wait=True):
        loop().call_soon_threadsafe(self.xmpp.disconnect)
        if wait:
            self.disconnected.wait(5)


def auth_successes(cluster):
    """{c2s id: SASL successes so far}, from each c2s's /metrics."""
    from harness import http_get
    out = {}
    for p in cluster.procs:
        if not p["id"].startswith("c2s."):
            continue
        _, text = http_get(p["metrics"], "/metrics")
        out[p["id"]] = sum(float(l.split()[-1]) for l in text.splitlines()
                           if l.startswith("meerkat_c2s_auth_total") and 'result="success"' in l)
    return out


def login(cluster, user, password, resource, c2s=None, attempts=40, plugins=()):
    """Logs user@localhost/resource in. With c2s set ('c2s.0', 'c2s.1'), reconnects until the
    kernel's SO_REUSEPORT choice puts the connection on that process (tests log in one at a
    time, so the c2s whose success counter moved is the one)."""
    for _ in range(attempts):
        before = auth_successes(cluster) if c2s else None
        cl = Client(cluster.c2s_port, f"{user}@localhost/{resource}", password, plugins=plugins)
        if c2s is None:
            return cl
        after = auth_successes(cluster)
        if after.get(c2s, 0) > before.get(c2s, 0):
            return cl
        cl.close()
    raise RuntimeError(f"could not land {user}/{resource} on {c2s}")


def q(el, path):
    """el.find with the usual namespaces: c: jabber:client, r: roster, d: disco info."""
    ns = {"c": "jabber:client", "r": "jabber:iq:roster", "d": "http://jabber.org/protocol/disco#info",
          "di": "http://jabber.org/protocol/disco#items", "b": "urn:xmpp:blocking", "s": NS_STANZAS,
          "v": "vcard-temp", "p": "jabber:iq:private", "l": "jabber:iq:last", "t": "urn:xmpp:time",
          "ver": "jabber:iq:version", "reg": "jabber:iq:register", "delay": "urn:xmpp:delay",
          "be": "urn:xmpp:blocking:errors"}
    return el.find(path, ns)


NS_STANZAS = "urn:ietf:params:xml:ns:xmpp-stanzas"


def error_condition(el):
    """The defined condition of a stanza error, or None."""
    err = el.find(f"{C}error")
    if err is None:
        return None
    for c in err:
        if c.tag.startswith("{" + NS_STANZAS + "}") and local(c.tag) != "text":
            return local(c.tag)
    return None


def mam_bodies(c, with_jid):
    """The bodies of Client c's archive with with_jid (one MAM query, urn:xmpp:mam:2)."""
    qid = uuid.uuid4().hex[:8]
    c.send(f"<iq type='set' id='m{qid}'><query xmlns='urn:xmpp:mam:2' queryid='{qid}'>"
           "<x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE' type='hidden'>"
           "<value>urn:xmpp:mam:2</value></field>"
           f"<field var='with'><value>{with_jid}</value></field></x></query></iq>")
    c.wait("iq", id=f"m{qid}", type="result", timeout=20)
    out = []
    with c.cond:
        for el in list(c.inbox):
            res = el.find("{urn:xmpp:mam:2}result")
            if res is not None and res.get("queryid") == qid:
                c.inbox.remove(el)
                b = res.find("{urn:xmpp:forward:0}forwarded/{jabber:client}message/{jabber:client}body")
                out.append(b.text if b is not None else None)
    return out
