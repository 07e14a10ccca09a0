"""tests/integration/test_register_offline.py - in-band registration (XEP-0077) and offline messages (XEP-0160)."""
import re

import pytest

from harness import Cluster, cluster_on, http_get, wait_until
from rawxmpp import Raw
from xmpp import AuthFailed, Client, error_condition, login, q

EMOJI = "\U0001F600\U0001F98A"


@pytest.fixture(scope="module", params=["sqlite", "pgsql"])
def cl(request, tmp_path_factory):
    """2 c2s, 2 router shards and a mam, on sqlite and on a real PostgreSQL."""
    # Every test registers from 127.0.0.1: no per-address registration limit here
    # (test_auth.py tests it).
    with cluster_on(request.param, tmp_path_factory.mktemp("reg"), extra="limits: {register_per_ip: 0}") as c:
        for u in ("oa", "ob"):
            c.ctl("register", f"{u}@localhost", "pw")
        yield c


def offline_stored(cl):
    """Offline messages the mam shard has stored so far (its /metrics)."""
    _, text = http_get(cl.metrics_port("mam.0"), "/metrics")
    return sum(float(m.group(1)) for m in
               re.finditer(r'^meerkat_mam_offline_total\{[^}]*result="stored"[^}]*\} (\S+)$', text, re.M))


def wait_stored(cl, n):
    assert wait_until(lambda: offline_stored(cl) >= n, 20), f"{offline_stored(cl)} offline messages stored, not {n}"


def raw_preauth(cl):
    r = Raw(cl.c2s_port)
    r.open_stream()
    r.starttls()
    feats = r.open_stream()
    return r, feats


def raw_register(r, user, password, iid="reg1"):
    r.send(f"<iq type='set' id='{iid}'><query xmlns='jabber:iq:register'>"
           f"<username>{user}</username><password>{password}</password></query></iq>")
    return r.recv_until(rf"<iq[^>]*id=.{iid}.[^>]*(/>|>.*?</iq>)")


def test_register_form_create_and_conflict(cl):
    r, feats = raw_preauth(cl)
    assert "http://jabber.org/features/iq-register" in feats
    r.send("<iq type='get' id='f1'><query xmlns='jabber:iq:register'/></iq>")
    form = r.recv_until(r"<iq[^>]*id=.f1.*?</iq>")
    assert "<instructions>" in form and "<username/>" in form and "<password/>" in form
    out = raw_register(r, "NewUser", "s3cret")
    assert "type='result'" in out or 'type="result"' in out, out
    out = raw_register(r, "newuser", "other", "reg2")
    assert "conflict" in out, out
    out = raw_register(r, "", "x", "reg3")
    assert "not-acceptable" in out, out
    out = raw_register(r, "bad@name", "x", "reg4")
    assert "bad-request" in out, out
    out = raw_register(r, "nopass", "", "reg5")
    assert "not-acceptable" in out, out
    r.close()
    # The node was prepared: NewUser is newuser.
    c = Client(cl.c2s_port, "newuser@localhost/r", "s3cret")
    c.close()


def test_change_password_then_cancel(cl):
    r, _ = raw_preauth(cl)
    assert "result" in raw_register(r, "pwuser", "old-pw")
    r.close()
    c = Client(cl.c2s_port, "pwuser@localhost/one", "old-pw")
    got = c.iq("<query xmlns='jabber:iq:register'/>")
    assert q(got, "reg:query/reg:registered") is not None and q(got, "reg:query/reg:username").text == "pwuser"
    res = c.iq("<query xmlns='jabber:iq:register'><username>pwuser</username>"
               "<password>new-pw</password></query>", type="set")
    assert res.get("type") == "result"
    c.close()
    with pytest.raises(AuthFailed):
        Client(cl.c2s_port, "pwuser@localhost/x", "old-pw")
    c1 = Client(cl.c2s_port, "pwuser@localhost/one", "new-pw")
    c2 = Client(cl.c2s_port, "pwuser@localhost/two", "new-pw")
    res = c1.iq("<query xmlns='jabber:iq:register'><remove/></query>", type="set")
    assert res.get("type") == "result"
    assert c1.disconnected.wait(5)
    assert c2.disconnected.wait(5)          # the account's other sessions are closed too
    with pytest.raises(AuthFailed):
        Client(cl.c2s_port, "pwuser@localhost/x", "new-pw")


def test_offline_messages_in_order_with_delay(cl):
    b = login(cl, "ob", "pw", "r")
    bodies = ["one", "two", f"three {EMOJI}"]
    stored = offline_stored(cl)
    for i, body in enumerate(bodies):
        b.send(f"<message to='oa@localhost' type='chat' id='off{i}'><body>{body}</body></message>")
    wait_stored(cl, stored + 3)
    a = login(cl, "oa", "pw", "r")
    a.presence()
    got = [a.wait("message", id=f"off{i}") for i in range(3)]
    assert [q(m, "c:body").text for m in got] == bodies
    for m in got:
        d = q(m, "delay:delay")
        assert d is not None and d.get("stamp")
    assert got[0].get("from") == b.jid
    a.close()
    # Delivered once: the next login gets only what was stored since (stored after the
    # first three, so it comes after them if they are still there).
    stored = offline_stored(cl)
    b.send("<message to='oa@localhost' type='chat' id='once'><body>since</body></message>")
    wait_stored(cl, stored + 1)
    a = login(cl, "oa", "pw", "r2")
    a.presence()
    assert a.none_before({"kind": "message", "id": "once"}, "message", pred=lambda el: el.get("id") != "once")
    # A negative priority session does not fetch them: a session that comes after it
    # gets the message, and it was delivered once.
    a.close()
    stored = offline_stored(cl)
    b.send("<message to='oa@localhost' type='chat' id='neg1'><body>later</body></message>")
    wait_stored(cl, stored + 1)
    neg = login(cl, "oa", "pw", "r3")
    neg.presence(children="<priority>-1</priority>")
    neg.wait("presence", frm=neg.jid)       # the router has it as available, priority -1
    a = login(cl, "oa", "pw", "r4")
    a.presence()
    a.wait("message", id="neg1")
    assert not any(el.get("id") == "neg1" for el in neg.inbox)
    neg.close()
    a.close()
    b.close()


def test_emoji_round_trip(cl):
    a = login(cl, "oa", "pw", "emoji", c2s="c2s.0")
    b = login(cl, "ob", "pw", "emoji", c2s="c2s.1")
    try:
        body = f"4-byte {EMOJI} end"
        a.send(f"<message to='{b.jid}' type='chat' id='em1'><body>{body}</body></message>")
        m = b.wait("message", id="em1")
        assert q(m, "c:body").text == body
        res = a.iq(f"<vCard xmlns='vcard-temp'><FN>{EMOJI}</FN></vCard>", type="set")
        assert res.get("type") == "result"
        got = b.iq("<vCard xmlns='vcard-temp'/>", to="oa@localhost")
        assert q(got, "v:vCard/v:FN").text == EMOJI
        assert error_condition(got) is None
    finally:
        a.close()
        b.close()
