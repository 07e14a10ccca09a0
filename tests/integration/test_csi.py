"""tests/integration/test_csi.py - XEP-0352 client state indication: the stream feature, presence and chat states held and collapsed while inactive, urgent stanzas flushing the hold first, <active/> flushing it, the counters."""
import re

import pytest

from harness import cluster_on, http_get, wait_until
from rawxmpp import Raw, stream_error
from xmpp import C, login

CSI = "urn:xmpp:csi:0"
CS = "http://jabber.org/protocol/chatstates"
USERS = ["ia", "ib", "ja", "jb", "ka", "kb", "la", "lb", "lc"]


@pytest.fixture(scope="module")
def cl(tmp_path_factory):
    """2 c2s, 2 router shards, sqlite."""
    with cluster_on("sqlite", tmp_path_factory.mktemp("csi")) as c:
        for u in USERS:
            c.ctl("register", f"{u}@localhost", "pw")
        yield c


def metric(cl, name, label=""):
    """Sum of a c2s metric over the c2s processes."""
    total = 0.0
    for p in cl.procs:
        if p["id"].startswith("c2s."):
            body = http_get(p["metrics"], "/metrics")[1]
            total += sum(float(l.rsplit(" ", 1)[1]) for l in body.splitlines()
                         if (l.startswith(name + " ") or l.startswith(name + "{")) and label in l)
    return total


def online(cl, user, c2s):
    c = login(cl, user, "pw", "r", c2s=c2s)
    c.presence()
    c.wait("presence", frm=c.jid)
    return c


def describe(el):
    """A short description of a received stanza, for order checks."""
    kind = el.tag.rsplit("}", 1)[-1]
    if kind == "presence":
        return ("presence", el.get("from"), el.findtext(f"{C}show") or el.get("type") or "available")
    if kind == "message":
        body = el.findtext(f"{C}body")
        if body is not None:
            return ("body", el.get("from"), body)
        states = [c.tag.rsplit("}", 1)[-1] for c in el if c.tag.startswith("{" + CS + "}")]
        return ("state", el.get("from"), states[0] if states else "?")
    return ("iq", el.get("id"), el.get("type"))


def inbox_until(c, pred):
    """Waits until a stanza matching pred is in c's inbox; returns the descriptions of the
    inbox up to and including it, in arrival order, and clears the inbox."""
    assert wait_until(lambda: any(pred(e) for e in list(c.inbox)), 10), [describe(e) for e in c.inbox]
    with c.cond:
        out = []
        for e in c.inbox:
            out.append(describe(e))
            if pred(e):
                break
        c.inbox.clear()
    return out


def go_inactive(c):
    c.send(f"<inactive xmlns='{CSI}'/>")
    # The ping's answer comes after the c2s handled <inactive/> (one stream, in order).
    assert c.iq("<ping xmlns='urn:xmpp:ping'/>").get("type") == "result"
    c.drain()


def test_stream_feature_and_unknown_element(cl):
    r = Raw(cl.c2s_port)
    r.open_stream()
    r.starttls()
    assert "<csi" not in r.open_stream()   # offered only after authentication
    assert "<success" in r.auth_plain("ia", "pw")
    feats = r.open_stream()
    assert re.search(r"<csi xmlns=.urn:xmpp:csi:0./>", feats), feats
    r.send("<iq type='set' id='b1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/></iq>")
    r.recv_until("</iq>")
    r.send(f"<inactive xmlns='{CSI}'/><active xmlns='{CSI}'/><iq type='get' id='p1'><ping xmlns='urn:xmpp:ping'/></iq>")
    out = r.recv_until(r"<iq[^>]*id=.p1.")
    assert "stream:error" not in out
    r.send(f"<bogus xmlns='{CSI}'/>")
    assert stream_error(r.recv_until("</stream:stream>")) == "invalid-namespace"
    r.close()


def test_hold_collapse_and_flush_on_active(cl):
    x = online(cl, "ja", "c2s.0")
    y = online(cl, "jb", "c2s.1")
    go_inactive(x)
    assert metric(cl, "meerkat_c2s_csi_inactive_sessions") == 1
    held0 = metric(cl, "meerkat_c2s_csi_held_total")
    coll0 = metric(cl, "meerkat_c2s_csi_collapsed_total")
    for show in ("away", "dnd", "xa"):
        y.send(f"<presence to='{x.jid}'><show>{show}</show></presence>")
    for st in ("composing", "paused"):
        y.send(f"<message to='{x.jid}' type='chat'><{st} xmlns='{CS}'/></message>")
    assert wait_until(lambda: metric(cl, "meerkat_c2s_csi_held_total") == held0 + 5, 10)
    assert metric(cl, "meerkat_c2s_csi_collapsed_total") == coll0 + 3
    # Held: a ping answered now (the server's own answer does not flush) comes with
    # nothing of y before it.
    x.send("<iq type='get' id='held1'><ping xmlns='urn:xmpp:ping'/></iq>")
    got = inbox_until(x, lambda e: e.get("id") == "held1")
    assert got == [("iq", "held1", "result")], got
    # <active/>: the latest presence and the latest chat state, in the order they came,
    # then the ping sent after it.
    flushed0 = metric(cl, "meerkat_c2s_csi_flushed_total", 'reason="active"')
    x.send(f"<active xmlns='{CSI}'/><iq type='get' id='act1'><ping xmlns='urn:xmpp:ping'/></iq>")
    got = inbox_until(x, lambda e: e.get("id") == "act1")
    assert got == [("presence", y.jid, "xa"), ("state", y.jid, "paused"), ("iq", "act1", "result")], got
    assert metric(cl, "meerkat_c2s_csi_flushed_total", 'reason="active"') == flushed0 + 2
    assert metric(cl, "meerkat_c2s_csi_inactive_sessions") == 0
    # Active again: stanzas go out at once.
    y.send(f"<presence to='{x.jid}'><show>chat</show></presence>")
    assert x.wait("presence", frm=y.jid) is not None
    x.close()
    y.close()


def test_urgent_flushes_hold_first(cl):
    x = online(cl, "ka", "c2s.1")
    y = online(cl, "kb", "c2s.0")
    go_inactive(x)
    held0 = metric(cl, "meerkat_c2s_csi_held_total")
    y.send(f"<presence to='{x.jid}'><show>away</show></presence>")
    y.send(f"<message to='{x.jid}' type='chat'><composing xmlns='{CS}'/></message>")
    assert wait_until(lambda: metric(cl, "meerkat_c2s_csi_held_total") == held0 + 2, 10)
    # A message with a body goes out at once, still inactive: what was held first.
    urgent0 = metric(cl, "meerkat_c2s_csi_flushed_total", 'reason="urgent"')
    y.send(f"<message to='{x.jid}' type='chat'><body>wake up</body><active xmlns='{CS}'/></message>")
    got = inbox_until(x, lambda e: e.findtext(f"{C}body") == "wake up")
    assert got == [("presence", y.jid, "away"), ("state", y.jid, "composing"), ("body", y.jid, "wake up")], got
    assert metric(cl, "meerkat_c2s_csi_flushed_total", 'reason="urgent"') == urgent0 + 2
    # Still inactive: the next presence is held again, and an IQ from y (urgent) brings it
    # out before itself.
    y.send(f"<presence to='{x.jid}'><show>dnd</show></presence>")
    assert wait_until(lambda: metric(cl, "meerkat_c2s_csi_held_total") == held0 + 3, 10)
    x.send("<iq type='get' id='held2'><ping xmlns='urn:xmpp:ping'/></iq>")
    assert inbox_until(x, lambda e: e.get("id") == "held2") == [("iq", "held2", "result")]
    y.send(f"<iq type='get' id='u1' to='{x.jid}'><ping xmlns='urn:xmpp:ping'/></iq>")
    got = inbox_until(x, lambda e: e.get("id") == "u1")
    assert got == [("presence", y.jid, "dnd"), ("iq", "u1", "get")], got
    x.close()
    y.close()


def test_hold_is_bounded(cl):
    """Past 128 KiB held, what is held is written first (reason limit), then the new one held."""
    x = online(cl, "la", "c2s.0")
    y = online(cl, "lb", "c2s.1")
    z = online(cl, "lc", "c2s.0")
    go_inactive(x)
    big = "s" * 50000
    held0 = metric(cl, "meerkat_c2s_csi_held_total")
    limit0 = metric(cl, "meerkat_c2s_csi_flushed_total", 'reason="limit"')
    # One after the other: y is on the other c2s, so its presence and z's take different
    # ways to x's router shard and, sent together, may be held in either order.
    y.send(f"<presence to='{x.jid}'><show>away</show><status>{big}</status></presence>")
    assert wait_until(lambda: metric(cl, "meerkat_c2s_csi_held_total") == held0 + 1, 10)
    z.send(f"<presence to='{x.jid}'><show>dnd</show><status>{big}</status></presence>")
    assert wait_until(lambda: metric(cl, "meerkat_c2s_csi_held_total") == held0 + 2, 10)
    # The third (about 150 KB in all) makes room: the two presences come, in order.
    y.send(f"<message to='{x.jid}' type='chat'><thread>{big}</thread><gone xmlns='{CS}'/></message>")
    got = inbox_until(x, lambda e: e.get("from") == z.jid)
    assert got == [("presence", y.jid, "away"), ("presence", z.jid, "dnd")], got
    assert wait_until(lambda: metric(cl, "meerkat_c2s_csi_held_total") == held0 + 3, 10)
    assert metric(cl, "meerkat_c2s_csi_flushed_total", 'reason="limit"') == limit0 + 2
    # The chat state was held: it comes with <active/>, before the ping after it.
    x.send(f"<active xmlns='{CSI}'/><iq type='get' id='act2'><ping xmlns='urn:xmpp:ping'/></iq>")
    got = inbox_until(x, lambda e: e.get("id") == "act2")
    assert got == [("state", y.jid, "gone"), ("iq", "act2", "result")], got
    for c in (x, y, z):
        c.close()
