"""tests/integration/test_sm.py - XEP-0198 stream management: acks and counters, the unacknowledged queue and its bound, resumption, what a session that times out leaves (offline with delay, IQ errors), offline rows deleted only once acknowledged, the hostile cases."""
import asyncio
import re
import ssl

import pytest

from harness import Cluster, metric, wait_until
from rawxmpp import Raw, abort, authed_on, stream_error
from xmpp import loop, run

SM = "urn:xmpp:sm:3"
MAX_UNACKED = 200
USERS = ("sma", "smb", "smc", "smd", "sme", "smf", "smg", "smh", "smi", "smj", "smk", "sml", "smm", "smn", "smo")


@pytest.fixture(scope="module")
def cl(tmp_path_factory):
    c = Cluster(tmp_path_factory.mktemp("sm"), c2s=1, router=1, mam=1, pusher=0, gd=0,
                extra="limits: {offline_max: 100000, max_output_bytes: 67108864}\n"
                      f"modules: {{sm: {{max_unacked: {MAX_UNACKED}}}}}").start()
    for u in USERS:
        c.ctl("register", f"{u}@localhost", "pw")
    yield c
    c.stop()


def offline_stored(cl):
    return metric(cl, "mam.0", "meerkat_mam_offline_total", result="stored")


def authed(cl, user):
    """A stream authenticated as user and restarted: returns it and the features offered."""
    r = Raw(cl.c2s_port, timeout=15)
    r.open_stream()
    r.starttls()
    r.open_stream()
    assert "<success" in r.auth_scram(user, "pw")
    return r, r.open_stream()


def login(cl, user, resource="sm"):
    r, _ = authed(cl, user)
    r.send(f"<iq type='set' id='bind1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>"
           f"<resource>{resource}</resource></bind></iq>")
    out = r.recv_until(r"<iq[^>]*id=.bind1.*?</iq>")
    return r, re.search(r"<jid>([^<]*)</jid>", out).group(1)


def enable(r, resume=False, extra=""):
    r.send(f"<enable xmlns='{SM}'" + (" resume='true'" if resume else "") + extra + "/>")
    return r.recv_until(r"<enabled[^>]*/>|</failed>")


def previd_of(enabled):
    return re.search(r"id='([^']+)'", enabled).group(1)


def stanzas(text):
    """The stanzas (top-level message/presence/iq) complete in text, in order."""
    return re.findall(r"<(?:message|iq|presence)\b[^>]*?(?:/>|>.*?</(?:message|iq|presence)>)", text, re.S)


def bodies(text):
    return re.findall(r"<body>([^<]*)</body>", text)


def detached(cl):
    return metric(cl, "c2s.0", "meerkat_c2s_sm_events_total", event="detached")


def resume(cl, user, previd, h):
    r, _ = authed(cl, user)
    r.send(f"<resume xmlns='{SM}' previd='{previd}' h='{h}'/>")
    return r, r.recv_until(r"<resumed[^>]*/>|</failed>|</stream:stream>")


def test_sm_advertised_only_after_authentication(cl):
    r = Raw(cl.c2s_port)
    r.open_stream()
    r.starttls()
    pre = r.open_stream()
    assert SM not in pre
    assert "<success" in r.auth_scram("sma", "pw")
    post = r.open_stream()
    assert f'<sm xmlns="{SM}"/>' in post
    # XEP-0198 3: before a resource is bound, <enable/> fails.
    assert enable(r) == f"<failed xmlns='{SM}'><unexpected-request xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></failed>"
    r.close()


def test_enable_request_ack_and_counts(cl):
    r, _ = login(cl, "sma")
    assert enable(r) == f"<enabled xmlns='{SM}'/>"
    r.send(f"<r xmlns='{SM}'/>")
    assert r.recv_until(r"<a [^>]*/>") == f"<a xmlns='{SM}' h='0'/>"
    # A stanza from the server comes with a request for an ack (none is outstanding).
    r.send("<iq type='get' id='p1'><ping xmlns='urn:xmpp:ping'/></iq>")
    out = r.recv_until(rf"<r xmlns='{SM}'/>")
    assert re.search(r"id=.p1.", out) and re.search(r"id=.p1.", out).start() < out.index("<r xmlns")
    r.send(f"<iq type='get' id='p2'><ping xmlns='urn:xmpp:ping'/></iq><r xmlns='{SM}'/>")
    out = r.recv_until(r"<a [^>]*/>")
    assert out.endswith(f"<a xmlns='{SM}' h='2'/>") and re.search(r"id=.p2.", out)
    r.send(f"<a xmlns='{SM}' h='2'/>")
    # A second <enable/> fails; the stream goes on.
    assert "<unexpected-request" in enable(r)
    # Acknowledging more than was sent: the XEP's stream error.
    r.send(f"<a xmlns='{SM}' h='3'/>")
    out = r.recv_until("</stream:stream>")
    assert stream_error(out) == "undefined-condition"
    assert f"<handled-count-too-high xmlns='{SM}' h='3' send-count='2'/></stream:error>" in out


def test_enable_resumable_gives_id_and_max(cl):
    r, _ = login(cl, "sma", "res1")
    out = enable(r, resume=True)
    assert re.fullmatch(rf"<enabled xmlns='{SM}' id='[0-9a-f]{{48}}@c2s\.0' resume='true' max='300'/>", out), out
    r2, _ = login(cl, "sma", "res2")
    out2 = enable(r2, resume=True, extra=" max='30'")
    assert "max='30'" in out2 and previd_of(out2) != previd_of(out)
    r.close()
    r2.close()


def test_resume_resends_exactly_what_was_not_acknowledged(cl):
    a, ajid = login(cl, "smb", "phone")
    previd = previd_of(enable(a, resume=True))
    b, _ = login(cl, "smc", "desk")
    for i in range(5):
        b.send(f"<message to='{ajid}' type='chat' id='b{i}'><body>before {i}</body></message>")
    got = a.recv_until("before 4</body>.*?</message>")
    assert bodies(got) == [f"before {i}" for i in range(5)]
    h = len(stanzas(got))
    a.send(f"<a xmlns='{SM}' h='{h}'/>")
    a.send("<iq type='get' id='pa'><ping xmlns='urn:xmpp:ping'/></iq>")   # one stanza handled: h=1
    a.recv_until(r"<iq[^>]*id=.pa.[^>]*>")
    d0 = detached(cl)
    abort(a)
    assert wait_until(lambda: detached(cl) >= d0 + 1, 10)
    for i in range(5):
        b.send(f"<message to='{ajid}' type='chat' id='d{i}'><body>during {i}</body></message>")
    a2, out = resume(cl, "smb", previd, h)
    assert out == f"<resumed xmlns='{SM}' h='1' previd='{previd}'/>", out
    got = a2.recv_until("during 4</body>.*?</message>")
    assert [x for x in bodies(got)] == [f"during {i}" for i in range(5)], got
    assert re.search(r"id=.pa.", got)   # the ping's answer was not acknowledged either: sent again
    # The session goes on on the new connection, with the same full JID.
    b.send(f"<message to='{ajid}' type='chat'><body>after</body></message>")
    assert "after" in a2.recv_until("after</body>")
    a2.send("<iq type='get' id='j1'><ping xmlns='urn:xmpp:ping'/></iq>")
    assert f'to="{ajid}"' in a2.recv_until(r"<iq[^>]*id=.j1.*?(/>|</iq>)")
    a2.close()
    b.close()


def test_drop_mid_burst_every_message_after_resumption(cl):
    n = 180   # under modules.sm.max_unacked: the client acknowledges only part of it
    a, ajid = login(cl, "smd", "phone")
    previd = previd_of(enable(a, resume=True))
    b, _ = login(cl, "sme", "desk")
    b.send("".join(f"<message to='{ajid}' type='chat'><body>burst {i}</body></message>" for i in range(n)))
    first = a.recv_until("burst 60</body>.*?</message>")
    a.send(f"<a xmlns='{SM}' h='{len(stanzas(first))}'/>")
    first += a.recv_until("burst 120</body>")
    abort(a)
    counted = stanzas(first)
    seen = bodies("".join(counted))
    a2, out = resume(cl, "smd", previd, len(counted))
    assert out.startswith("<resumed"), out
    rest = a2.recv_until(f"burst {n - 1}</body>", timeout=30)
    after = bodies(rest)
    # Nothing lost, nothing the client had counted sent twice, in order.
    assert seen + after == [f"burst {i}" for i in range(n)]
    a2.send(f"<a xmlns='{SM}' h='{len(counted) + len(stanzas(rest))}'/>")
    a2.send("</stream:stream>")
    b.close()


def test_timeout_stores_messages_offline_with_delay_and_bounces_iqs(cl):
    a, ajid = login(cl, "smf", "phone")
    a.send("<iq type='get' id='pf'><ping xmlns='urn:xmpp:ping'/></iq>")   # handled before enable: not counted
    a.recv_until(r"<iq[^>]*id=.pf.[^>]*>")
    previd = previd_of(enable(a, resume=True, extra=" max='1'"))
    a.send("<iq type='get' id='pg'><ping xmlns='urn:xmpp:ping'/></iq>")   # h=1
    a.recv_until(r"<iq[^>]*id=.pg.[^>]*>")
    b, _ = login(cl, "smg", "desk")
    stored0 = offline_stored(cl)
    d0 = detached(cl)
    abort(a)
    assert wait_until(lambda: detached(cl) >= d0 + 1, 10)
    b.send(f"<message to='{ajid}' type='chat' id='o1'><body>kept one</body></message>"
           f"<message to='{ajid}' type='chat' id='o2'><body>kept two</body></message>"
           f"<iq type='get' to='{ajid}' id='q1'><query xmlns='jabber:iq:version'/></iq>")
    # After the resumption timeout the IQ comes back as an error, the messages are stored.
    err = b.recv_until(r"<iq[^>]*id=.q1.*?</iq>", timeout=15)
    assert 'type="error"' in err and "service-unavailable" in err
    assert wait_until(lambda: offline_stored(cl) >= stored0 + 2, 15), offline_stored(cl) - stored0
    # Too late to resume: <failed/> with the h the server had reached.
    r, out = resume(cl, "smf", previd, 0)
    assert out == (f"<failed xmlns='{SM}' h='1'><item-not-found "
                   "xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></failed>"), out
    r.close()
    a2, _ = login(cl, "smf", "again")
    a2.send("<presence/>")
    got = a2.recv_until("kept two</body>.*?</message>", timeout=15)
    for one in stanzas(got):
        if "kept" in one:
            assert re.search(r"<delay xmlns=.urn:xmpp:delay. from=.localhost. stamp=.\d{4}-\d\d-\d\dT[^'\"]+Z", one), one
    assert bodies(got) == ["kept one", "kept two"]
    a2.close()
    b.close()


def test_resume_of_someone_elses_session_fails(cl):
    a, ajid = login(cl, "smh", "phone")
    previd = previd_of(enable(a, resume=True))
    # Another account with the right id: refused, and its own stream goes on.
    r, out = resume(cl, "smi", previd, 0)
    assert out == f"<failed xmlns='{SM}'><item-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></failed>"
    # A guessed id of the same account: refused too.
    forged = "0" * 48 + "@c2s.0"
    r2, out2 = resume(cl, "smh", previd[:16] + "0" * 32 + "@c2s.0", 0)
    assert "<item-not-found" in out2
    r3, out3 = resume(cl, "smh", forged, 0)
    assert "<item-not-found" in out3
    r.send("<iq type='set' id='bind1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/></iq>")
    assert "<jid>smi@localhost/" in r.recv_until(r"<iq[^>]*id=.bind1.*?</iq>")
    # The owner's session is untouched.
    r.send(f"<message to='{ajid}' type='chat'><body>still yours</body></message>")
    assert "still yours" in a.recv_until("still yours</body>")
    for x in (a, r, r2, r3):
        x.close()


def test_resume_with_h_over_what_was_sent(cl):
    a, _ = login(cl, "smh", "watch")
    previd = previd_of(enable(a, resume=True))
    a.send("<iq type='get' id='w1'><ping xmlns='urn:xmpp:ping'/></iq>")
    a.recv_until(r"<iq[^>]*id=.w1.[^>]*>")
    abort(a)
    r, out = resume(cl, "smh", previd, 5)
    assert stream_error(out) == "undefined-condition", out
    assert f"<handled-count-too-high xmlns='{SM}' h='5' send-count='1'/></stream:error>" in out
    # The session is not harmed: resumed with the right h, the answer comes again.
    r2, out = resume(cl, "smh", previd, 0)
    assert out == f"<resumed xmlns='{SM}' h='1' previd='{previd}'/>", out
    assert re.search(r"id=.w1.", r2.recv_until(r"<iq[^>]*id=.w1.[^>]*>"))
    r2.close()


def test_resume_while_the_old_connection_is_open(cl):
    a, ajid = login(cl, "smh", "tablet")
    previd = previd_of(enable(a, resume=True))
    a2, out = resume(cl, "smh", previd, 0)
    assert out.startswith(f"<resumed xmlns='{SM}' h='0'")
    old = a.recv_until("</stream:stream>")
    assert stream_error(old) == "conflict"
    a2.send("<iq type='get' id='t1'><ping xmlns='urn:xmpp:ping'/></iq>")
    assert f'to="{ajid}"' in a2.recv_until(r"<iq[^>]*id=.t1.*?(/>|</iq>)")
    a2.close()


def test_offline_rows_deleted_only_once_acknowledged(cl):
    b, _ = login(cl, "smj", "desk")
    stored0 = offline_stored(cl)
    b.send("<message to='smk@localhost' type='chat'><body>stored 1</body></message>"
           "<message to='smk@localhost' type='chat'><body>stored 2</body></message>")
    assert wait_until(lambda: offline_stored(cl) >= stored0 + 2, 15)
    # Delivered with stream management on, never acknowledged, connection lost: kept.
    c, _ = login(cl, "smk", "one")
    enable(c)
    c.send("<presence/>")
    assert bodies(c.recv_until("stored 2</body>")) == ["stored 1", "stored 2"]
    abort(c)
    # Delivered again; acknowledged this time: deleted.
    c, _ = login(cl, "smk", "two")
    enable(c)
    c.send("<presence/>")
    got = c.recv_until("stored 2</body>.*?</message>")
    assert bodies(got) == ["stored 1", "stored 2"]
    c.send(f"<a xmlns='{SM}' h='{len(stanzas(got))}'/>")
    assert wait_until(lambda: "offline_deleted user=smk@localhost" in cl.read_log(), 10)
    c.send("</stream:stream>")
    c.recv_until("</stream:stream>")
    # Nothing left: the next login gets only what is sent after it (the marker proves the end).
    c, cjid = login(cl, "smk", "three")
    c.send("<presence/>")
    b.send(f"<message to='{cjid}' type='chat'><body>marker</body></message>")
    got = c.recv_until("marker</body>")
    assert bodies(got) == ["marker"]
    c.close()
    b.close()


def test_client_that_never_acks_is_bounded_and_nothing_is_lost(cl):
    n = 10000
    a, ajid = login(cl, "sml", "greedy")
    enable(a)
    b, _ = login(cl, "smm", "blaster")
    stored0 = offline_stored(cl)
    chunk = 500
    for k in range(0, n, chunk):
        b.send("".join(f"<message to='{ajid}' type='chat'><body>flood {i}</body></message>"
                       for i in range(k, k + chunk)))
    out = a.recv_until("</stream:stream>", timeout=30)
    assert stream_error(out) == "resource-constraint"
    assert "too many stanzas the client has not acknowledged" in out
    # The stanza that passed the bound is the last one written.
    assert len(bodies(out)) == MAX_UNACKED + 1
    # Every one of them is stored offline: the unacknowledged ones by stream management,
    # the rest by the router once the session was gone.
    assert wait_until(lambda: offline_stored(cl) >= stored0 + n, 60), offline_stored(cl) - stored0
    assert metric(cl, "c2s.0", "meerkat_c2s_sm_unacked_total", result="offline") >= MAX_UNACKED + 1
    b.close()


def test_slixmpp_resumes_after_the_connection_drops(cl):
    """slixmpp's own XEP-0198 plugin: enable with resume, lose the TCP connection,
    resume on reconnect, and get what was sent meanwhile."""
    import slixmpp

    got = []
    events = {"enabled": asyncio.Event, "resumed": asyncio.Event}

    async def start():
        x = slixmpp.ClientXMPP("smn@localhost/slix", "pw",
                               plugin_config={"feature_mechanisms": {"use_mech": "PLAIN"}})
        x.register_plugin("xep_0198")
        x.ssl_context.check_hostname = False
        x.ssl_context.verify_mode = ssl.CERT_NONE
        ev = {k: v() for k, v in events.items()}
        x.add_event_handler("sm_enabled", lambda _: ev["enabled"].set())
        x.add_event_handler("session_resumed", lambda _: ev["resumed"].set())
        x.add_event_handler("message", lambda m: got.append(m["body"]))
        x.connect(("127.0.0.1", cl.c2s_port))
        await asyncio.wait_for(ev["enabled"].wait(), 15)
        return x, ev

    x, ev = run(start(), 20)
    b, _ = login(cl, "smo", "peer")
    b.send("<message to='smn@localhost/slix' type='chat'><body>one</body></message>")
    assert wait_until(lambda: "one" in got, 10)

    async def drop():
        x.transport.abort()
    run(drop())
    b.send("<message to='smn@localhost/slix' type='chat'><body>two</body></message>")

    async def back():
        x.connect(("127.0.0.1", cl.c2s_port))
        await asyncio.wait_for(ev["resumed"].wait(), 15)
    run(back(), 20)
    assert wait_until(lambda: "two" in got, 10), got
    assert got.count("one") == 1 and got.count("two") == 1

    async def stop():
        x.disconnect()
    run(stop())
    b.close()


# --- resumption across c2s processes (two c2s behind one port, SO_REUSEPORT) ----------------

@pytest.fixture(scope="module")
def cl2(tmp_path_factory):
    c = Cluster(tmp_path_factory.mktemp("sm2"), c2s=2, router=1, mam=1, pusher=0, gd=0).start()
    for u in ("smx", "smy", "smz", "smw"):
        c.ctl("register", f"{u}@localhost", "pw")
    yield c
    c.stop()


def test_resume_on_another_c2s_takes_the_session_over(cl2):
    a, ajid = login(cl2, "smx", "phone")
    previd = previd_of(enable(a, resume=True))
    home = previd.split("@")[1]
    other = "c2s.1" if home == "c2s.0" else "c2s.0"
    b, _ = login(cl2, "smy", "desk")
    for i in range(3):
        b.send(f"<message to='{ajid}' type='chat'><body>before {i}</body></message>")
    got = a.recv_until("before 2</body>.*?</message>")
    first = stanzas(got)[:1]
    a.send(f"<a xmlns='{SM}' h='1'/>")
    abort(a)
    for i in range(3):
        b.send(f"<message to='{ajid}' type='chat'><body>during {i}</body></message>")
    a2 = authed_on(cl2, "smx", other)
    a2.send(f"<resume xmlns='{SM}' previd='{previd}' h='1'/>")
    out = a2.recv_until(r"<resumed[^>]*/>|</failed>|</stream:stream>")
    assert out == f"<resumed xmlns='{SM}' h='0' previd='{previd}'/>", out
    got = a2.recv_until("during 2</body>.*?</message>", timeout=15)
    assert bodies(got) == ["before 1", "before 2", "during 0", "during 1", "during 2"], got
    assert "before 0" in "".join(first)
    # The router sends the session's traffic to its new c2s.
    b.send(f"<message to='{ajid}' type='chat'><body>after move</body></message>")
    assert "after move" in a2.recv_until("after move</body>")
    a2.send("<iq type='get' id='m1'><ping xmlns='urn:xmpp:ping'/></iq>")
    assert f'to="{ajid}"' in a2.recv_until(r"<iq[^>]*id=.m1.*?(/>|</iq>)")
    assert metric(cl2, home, "meerkat_c2s_sm_events_total", event="handed_over") == 1
    # Lost again; the same previd resumes it back on the first c2s (nothing more acknowledged).
    abort(a2)
    b.send(f"<message to='{ajid}' type='chat'><body>gone again</body></message>")
    a3 = authed_on(cl2, "smx", home)
    a3.send(f"<resume xmlns='{SM}' previd='{previd}' h='1'/>")
    out = a3.recv_until(r"<resumed[^>]*/>|</failed>|</stream:stream>")
    assert out.startswith(f"<resumed xmlns='{SM}' h='1' previd='{previd}'"), out
    got = a3.recv_until("gone again</body>.*?</message>", timeout=15)
    assert bodies(got)[-1] == "gone again" and "after move" in bodies(got)
    a3.send("</stream:stream>")
    b.close()


def test_resume_on_another_c2s_keeps_the_client_state(cl2):
    """What the session was beside its queue travels with it: XEP-0352 inactive (and what
    it held: a contact's presence comes once the client says <active/> on the new c2s), the
    contacts it sent directed presence to (they learn it went offline when it does)."""
    a, ajid = login(cl2, "smz", "phone")
    previd = previd_of(enable(a, resume=True))
    home = previd.split("@")[1]
    other = "c2s.1" if home == "c2s.0" else "c2s.0"
    b, bjid = login(cl2, "smw", "desk")
    b.send("<presence/>")
    # b's own presence back: its router shard has its session (b's c2s sent it first), so a
    # directed presence from the other c2s cannot overtake b's login there.
    b.recv_until(rf"<presence[^>]*from=.{re.escape(bjid)}.")
    # a, available, sends directed presence to b, then goes inactive (the ping's answer says
    # it is handled).
    a.send("<presence/>")
    a.send(f"<presence to='{bjid}'><status>here</status></presence>")
    assert "here" in b.recv_until(r"<presence[^>]*>.*?here.*?</presence>")
    a.send("<inactive xmlns='urn:xmpp:csi:0'/><iq type='get' id='p0'><ping xmlns='urn:xmpp:ping'/></iq>")
    a.recv_until(r"<iq[^>]*id=.p0.*?(/>|</iq>)")
    # Held for the inactive client: b's directed presence (nothing written to a).
    b.send(f"<presence to='{ajid}'><status>held one</status></presence>")
    assert wait_until(lambda: metric(cl2, home, "meerkat_c2s_csi_held_total", kind="presence") >= 1, 10)
    a.send(f"<a xmlns='{SM}' h='2'/>")
    abort(a)
    a2 = authed_on(cl2, "smz", other)
    a2.send(f"<resume xmlns='{SM}' previd='{previd}' h='2'/>")
    out = a2.recv_until(r"<resumed[^>]*/>|</failed>|</stream:stream>")
    assert out.startswith(f"<resumed xmlns='{SM}'"), out
    # Still inactive there: the held presence comes with <active/>, not before.
    a2.send("<iq type='get' id='p1'><ping xmlns='urn:xmpp:ping'/></iq>")
    got = a2.recv_until(r"<iq[^>]*id=.p1.*?(/>|</iq>)")
    assert "held one" not in got, got
    a2.send("<active xmlns='urn:xmpp:csi:0'/>")
    assert "held one" in a2.recv_until(r"held one</status>")
    # The directed presence is remembered there: b learns a went offline when it does.
    a2.send("</stream:stream>")
    got = b.recv_until(rf"<presence[^>]*from=.{re.escape(ajid)}.[^>]*type=.unavailable.|"
                       rf"<presence[^>]*type=.unavailable.[^>]*from=.{re.escape(ajid)}.")
    assert "unavailable" in got
    b.send("</stream:stream>")
