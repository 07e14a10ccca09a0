"""tests/integration/test_c2s.py - the client stream: TLS, SASL, bind, stamping, conflicts, routing, hostile input."""
import os
import re
import signal
import socket
import time
import xml.etree.ElementTree as ET

import pytest

from harness import Cluster, cluster_on, wait_until
from rawxmpp import Raw, stream_error


@pytest.fixture(scope="module", params=["sqlite", "pgsql"])
def c2(request, tmp_path_factory):
    """2 c2s + 2 router shards + mam, on sqlite and on a real PostgreSQL, with four accounts."""
    with cluster_on(request.param, tmp_path_factory.mktemp("c2s")) as c:
        for u in ("alice", "bob", "carol", "dave"):
            c.ctl("register", f"{u}@localhost", f"{u}-pw")
        yield c


def test_ctl_register_refuses_duplicates_and_bad_names(c2):
    r = c2.ctl("register", "alice@localhost", "x", check=False)
    assert r.returncode != 0 and "already registered" in r.stderr
    r = c2.ctl("register", "bad user@localhost", "x", check=False)
    assert r.returncode != 0
    r = c2.ctl("register", "eve@elsewhere.example", "x", check=False)
    assert r.returncode != 0 and "not served" in r.stderr


@pytest.mark.parametrize("mech", ["plain", "sha1", "sha256"])
def test_sasl_mechanisms(c2, mech):
    r = Raw(c2.c2s_port)
    feats = r.open_stream()
    assert "<starttls" in feats and "<required/>" in feats and "mechanisms" not in feats
    r.starttls()
    feats = r.open_stream()
    for m in ("SCRAM-SHA-256-PLUS", "SCRAM-SHA-1-PLUS", "SCRAM-SHA-256", "SCRAM-SHA-1", "PLAIN"):
        assert f"<mechanism>{m}</mechanism>" in feats
    ans = r.auth_plain("alice", "alice-pw") if mech == "plain" else r.auth_scram("alice", "alice-pw", mech)
    assert "<success" in ans
    assert r.bind("m-" + mech).startswith("alice@localhost/m-")
    r.close()


@pytest.mark.parametrize("mech", ["plain", "sha1", "sha256"])
def test_wrong_password_fails(c2, mech):
    r = Raw(c2.c2s_port)
    r.open_stream()
    r.starttls()
    r.open_stream()
    ans = r.auth_plain("bob", "nope") if mech == "plain" else r.auth_scram("bob", "nope", mech)
    assert "<failure" in ans and "not-authorized" in ans
    r.close()


def test_unknown_user_fails_like_wrong_password(c2):
    r = Raw(c2.c2s_port)
    r.open_stream()
    r.starttls()
    r.open_stream()
    ans = r.auth_scram("nobody-here", "x")
    assert "<failure" in ans and "not-authorized" in ans


@pytest.mark.parametrize("max12", [False, True])
def test_scram_plus_server_end_point(c2, max12):
    r = Raw(c2.c2s_port, max12=max12)
    r.open_stream()
    r.starttls()
    r.open_stream()
    ans = r.auth_scram("carol", "carol-pw", "sha256", plus=True)
    assert "<success" in ans, ans
    r.close()


def test_scram_plus_binding_mismatch_fails(c2):
    r = Raw(c2.c2s_port)
    r.open_stream()
    r.starttls()
    r.open_stream()
    ans = r.auth_scram("carol", "carol-pw", "sha256", plus=True, cb_data=b"\0" * 32)
    assert "<failure" in ans and "not-authorized" in ans


def test_scram_downgrade_flag_y_fails(c2):
    # 'y': the client thinks the server lacks -PLUS, but it offered it: a downgrade.
    r = Raw(c2.c2s_port)
    r.open_stream()
    r.starttls()
    r.open_stream()
    ans = r.auth_scram("carol", "carol-pw", "sha1", gs2="y,,")
    assert "<failure" in ans


def test_auth_before_starttls_is_refused(c2):
    r = Raw(c2.c2s_port)
    r.open_stream()
    r.send("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>AGFsaWNlAGFsaWNlLXB3</auth>")
    out = r.recv_until("</stream:stream>")
    assert stream_error(out) == "policy-violation"


def test_direct_tls_port(c2):
    r = Raw(c2.c2s_tls_port, direct_tls=True)
    feats = r.open_stream()
    assert "<starttls" not in feats and "SCRAM-SHA-256" in feats
    assert "<success" in r.auth_scram("dave", "dave-pw")
    assert r.bind("direct").startswith("dave@localhost/direct")


def test_unknown_host_and_bad_version(c2):
    r = Raw(c2.c2s_port)
    out = r.open_stream("nowhere.example")
    assert stream_error(out) == "host-unknown"
    r = Raw(c2.c2s_port)
    r.send("<?xml version='1.0'?><stream:stream to='localhost' xmlns='jabber:client' "
           "xmlns:stream='http://etherx.jabber.org/streams'>")
    assert stream_error(r.recv_until("</stream:stream>")) == "unsupported-version"


def test_server_generates_resource(c2):
    r = Raw(c2.c2s_port)
    jid = r.login("bob", "bob-pw", resource=None)
    assert jid.startswith("bob@localhost/") and len(jid) > len("bob@localhost/")


def test_forged_from_is_rejected(c2):
    r = Raw(c2.c2s_port)
    r.login("alice", "alice-pw", "forger")
    r.send("<message from='bob@localhost/x' to='carol@localhost' type='chat'><body>hi</body></message>")
    out = r.recv_until("</stream:stream>")
    assert stream_error(out) == "invalid-from"


def test_malformed_to_gets_jid_malformed(c2):
    r = Raw(c2.c2s_port)
    r.login("alice", "alice-pw", "badto")
    r.send("<message to='a@b@c' id='m1' type='chat'><body>x</body></message>")
    out = r.recv_until(r"</message>")
    el = ET.fromstring(f"<w xmlns='jabber:client'>{out[out.index('<message'):]}</w>")[0]
    assert el.get("type") == "error" and el.get("id") == "m1", out
    assert el.find("{jabber:client}error/{urn:ietf:params:xml:ns:xmpp-stanzas}jid-malformed") is not None, out


def test_chat_between_two_c2s_with_emoji(c2):
    a, b = Raw(c2.c2s_port), Raw(c2.c2s_port)
    ja = a.login("alice", "alice-pw", "chat")
    jb = b.login("bob", "bob-pw", "chat")
    b.send("<presence/>")
    # Its own presence coming back: the router has the session as available.
    b.recv_until(rf"<presence[^>]*from=['\"]{re.escape(jb)}['\"]")
    body = "hello \U0001F600 & <bob>"
    a.send(f"<message to='{jb}' type='chat' id='e1'><body>hello \U0001F600 &amp; &lt;bob&gt;</body></message>")
    out = b.recv_until(r"<message[^>]*id=.e1.*?</message>")
    el = ET.fromstring(f"<w xmlns='jabber:client'>{out[out.rindex('<message'):]}</w>")[0]
    assert el.get("from") == ja, out
    assert el.findtext("{jabber:client}body") == body, out   # the escaped form travelled intact


def test_conflict_closes_old_session(c2):
    a1 = Raw(c2.c2s_port)
    a1.login("carol", "carol-pw", "same")
    a2 = Raw(c2.c2s_port)
    a2.login("carol", "carol-pw", "same")
    out = a1.recv_until("</stream:stream>")
    assert stream_error(out) == "conflict"


def test_iq_to_unavailable_full_jid(c2):
    a = Raw(c2.c2s_port)
    a.login("alice", "alice-pw", "iqs")
    a.send("<iq to='bob@localhost/nosuch' type='get' id='q1'><query xmlns='jabber:iq:version'/></iq>")
    out = a.recv_until(r"<iq[^>]*id=.q1.*?</iq>")
    assert "service-unavailable" in out


def test_ctl_sessions_and_kick(c2):
    d = Raw(c2.c2s_port)
    d.login("dave", "dave-pw", "kickme")
    assert wait_until(lambda: "dave@localhost/kickme" in c2.ctl("sessions").stdout, 5)
    c2.ctl("kick", "dave@localhost/kickme")
    out = d.recv_until("</stream:stream>")
    assert stream_error(out) == "policy-violation"


# --- hostile input -------------------------------------------------------------------

HOSTILE = {
    "doctype": ("<?xml version='1.0'?><!DOCTYPE x [<!ENTITY a 'b'>]><stream:stream to='localhost' "
                "xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>",
                ("restricted-xml", "not-well-formed", "bad-format")),
    "entity_bomb": ("<?xml version='1.0'?><!DOCTYPE lolz [<!ENTITY lol 'lol'><!ENTITY lol2 "
                    "'&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;'>]><lolz>&lol2;</lolz>",
                    ("restricted-xml", "not-well-formed", "bad-format")),
    "garbage": ("\x00\x01\x02garbage<<<>>>", ("not-well-formed", "bad-format")),
    "wrong_root": ("<?xml version='1.0'?><html><body/></html>", ("bad-format", "invalid-namespace")),
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_prelude_gets_stream_error(c2, name):
    data, conds = HOSTILE[name]
    r = Raw(c2.c2s_port)
    r.send(data)
    out = r.recv_until("</stream:stream>")
    assert stream_error(out) in conds, out
    assert r.closed()


def test_processing_instruction_and_comment_in_stream(c2):
    for junk in ("<?evil pi?>", "<!-- comment -->"):
        r = Raw(c2.c2s_port)
        r.open_stream()
        r.send(junk)
        out = r.recv_until("</stream:stream>")
        assert stream_error(out) in ("restricted-xml", "not-well-formed"), out


def test_oversized_stanza_after_login(c2):
    r = Raw(c2.c2s_port)
    r.login("alice", "alice-pw", "big")
    r.send("<message to='bob@localhost' type='chat'><body>" + "x" * 70000)
    out = r.recv_until("</stream:stream>", timeout=10)
    assert stream_error(out) == "policy-violation"


def test_preauth_flood_is_cut(c2):
    r = Raw(c2.c2s_port)
    r.open_stream()
    r.starttls()
    r.open_stream()
    try:
        r.send("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>" + "A" * 20000)
    except OSError:
        pass
    out = r.recv_until("</stream:stream>")
    assert stream_error(out) == "policy-violation"


def test_garbage_after_starttls_closes_only_that_connection(c2):
    r = Raw(c2.c2s_port)
    r.open_stream()
    r.send("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
    r.recv_until("<proceed[^>]*/>")
    r.send(b"this is not a TLS record at all\r\n" * 10)
    assert r.closed(5)
    ok = Raw(c2.c2s_port)
    ok.open_stream()
    ok.starttls()
    ok.open_stream()
    assert "<success" in ok.auth_scram("bob", "bob-pw")


def test_slow_drip_does_not_block_others(c2):
    slow = Raw(c2.c2s_port)
    header = ("<?xml version='1.0'?><stream:stream to='localhost' xmlns='jabber:client' "
              "xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>")
    for ch in header[:40]:
        slow.send(ch)
        time.sleep(0.01)
    t0 = time.monotonic()
    other = Raw(c2.c2s_port)
    other.login("bob", "bob-pw", "meanwhile")
    assert time.monotonic() - t0 < 3
    for ch in header[40:]:
        slow.send(ch)
    assert "<starttls" in slow.recv_until("</stream:features>")


def test_invalid_utf8_gets_not_well_formed(c2):
    r = Raw(c2.c2s_port)
    r.login("alice", "alice-pw", "utf8")
    r.send(b"<message to='bob@localhost'><body>\xc3\x28\xff</body></message>")
    out = r.recv_until("</stream:stream>")
    assert stream_error(out) == "not-well-formed"


def test_router_shard_restart_recovers_routing(c2):
    a, b = Raw(c2.c2s_port), Raw(c2.c2s_port)
    a.login("alice", "alice-pw", "rr")
    jb = b.login("bob", "bob-pw", "rr")
    b.send("<presence/>")
    for rid in ("router.0", "router.1"):
        pid = c2.child_pid(rid)
        os.kill(pid, signal.SIGKILL)
        assert wait_until(lambda: c2.child_pid(rid) not in (None, pid) and c2.healthy(rid), 5)
    # Sessions re-register from every c2s: a message to bob's full and bare JID gets through.
    def delivered(n=[0]):
        n[0] += 1
        mid = f"after-restart-{n[0]}"
        a.send(f"<message to='{jb}' type='chat' id='{mid}'><body>back</body></message>")
        try:
            b.recv_until(mid, timeout=0.5)
            return True
        except TimeoutError:
            return False
    assert wait_until(delivered, 10, 0.1)
    a.send("<message to='bob@localhost' type='chat' id='bare-after'><body>bare</body></message>")
    b.recv_until("bare-after")


def test_process_survives_all_of_the_above(c2):
    assert c2.all_healthy()


def test_stock_slixmpp_with_default_settings_logs_in_and_chats(c2):
    """slixmpp as shipped: it walks the mechanism list (its -PLUS needs tls-unique, which
    TLS 1.3 lacks) and must still get in, then chat."""
    import asyncio
    import ssl
    import slixmpp

    class Client(slixmpp.ClientXMPP):
        def __init__(self, jid, pw):
            super().__init__(jid, pw)
            self.ssl_context.check_hostname = False
            self.ssl_context.verify_mode = ssl.CERT_NONE
            self.started = asyncio.Event()
            self.got = asyncio.Event()
            self.bodies = []
            self.add_event_handler("session_start", self.on_start)
            self.add_event_handler("message", self.on_message)

        async def on_start(self, ev):
            self.send_presence()
            await self.get_roster()
            self.started.set()

        def on_message(self, m):
            self.bodies.append(m["body"])
            self.got.set()

    # Accounts of its own: an earlier test's late messages to bob may sit in bob's
    # offline store and would be delivered to this login.
    for u in ("stock-a", "stock-b"):
        c2.ctl("register", f"{u}@localhost", f"{u}-pw")

    async def run():
        a = Client("stock-a@localhost/stock", "stock-a-pw")
        b = Client("stock-b@localhost/stock", "stock-b-pw")
        for cl in (a, b):
            cl.connect(("127.0.0.1", c2.c2s_port))
        await asyncio.wait_for(asyncio.gather(a.started.wait(), b.started.wait()), 10)
        a.send_message(mto="stock-b@localhost/stock", mbody="stock \U0001F600", mtype="chat")
        await asyncio.wait_for(b.got.wait(), 5)
        for cl in (a, b):
            cl.disconnect()
        await asyncio.sleep(0.2)
        return b.bodies

    assert asyncio.run(run()) == ["stock \U0001F600"]


def test_unknown_user_gets_the_same_salt_from_every_c2s(c2):
    """Two c2s processes must not disagree about an unknown user's salt (that would tell
    an attacker the account does not exist)."""
    import base64
    import re
    salts = set()
    for _ in range(12):   # SO_REUSEPORT spreads connections over both c2s
        r = Raw(c2.c2s_port)
        r.open_stream()
        r.starttls()
        r.open_stream()
        r.send("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='SCRAM-SHA-1'>"
               + base64.b64encode(b"n,,n=ghost-user,r=abcdefgh").decode() + "</auth>")
        chal = base64.b64decode(re.search(r"<challenge[^>]*>([^<]*)<", r.recv_until("</challenge>")).group(1))
        salts.add(dict(p.split(b"=", 1) for p in chal.split(b","))[b"s"])
        r.close()
    assert len(salts) == 1


def test_scram_plus_tls_exporter_and_its_mismatch(c2):
    tool = os.path.join(os.environ.get("MEERKAT_BUILD", "build"), "tools", "scram_plus_client")
    import subprocess
    ok = subprocess.run([tool, str(c2.c2s_port), "carol", "carol-pw"], capture_output=True, text=True, timeout=20)
    assert ok.returncode == 0 and ok.stdout.strip() == "success", ok.stdout + ok.stderr
    bad = subprocess.run([tool, str(c2.c2s_port), "carol", "carol-pw", "--wrong-binding"], capture_output=True,
                         text=True, timeout=20)
    assert bad.returncode == 1 and bad.stdout.strip() == "failure", bad.stdout + bad.stderr
