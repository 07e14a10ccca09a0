"""tests/integration/test_c2s_module_limits.py - the c2s modules' memory bounds: presence held while the roster loads, roster size, block list size."""
import re

import pytest

from harness import cluster_on, http_get, wait_until
from rawxmpp import Raw, stream_error
from xmpp import error_condition, login

HELD, ROSTER, BLOCK = 5, 3, 3
USERS = ["hp", "ra", "rb", "rc", "rd", "re", "ba", "bb", "bo", "ro", "ok"]


@pytest.fixture(scope="module", params=["sqlite", "pgsql"])
def cl(request, tmp_path_factory):
    extra = (f"limits: {{max_held_presence: {HELD}, max_roster_items: {ROSTER}, "
             f"max_block_items: {BLOCK}}}")
    with cluster_on(request.param, tmp_path_factory.mktemp("modlimits"), c2s=1, router=1, extra=extra) as c:
        for u in USERS:
            c.ctl("register", f"{u}@localhost", f"{u}-pw")
        yield c


def refusals(cl, limit):
    _, text = http_get(cl.metrics_port("c2s.0"), "/metrics")
    m = re.search(rf'^meerkat_c2s_limit_refusals_total{{[^}}]*limit="{limit}"[^}}]*}} (\S+)$', text, re.M)
    return float(m.group(1)) if m else 0.0


def still_serves(cl):
    """The c2s is healthy and a fresh session gets answers and messages."""
    assert cl.healthy("c2s.0")
    a = login(cl, "ok", "ok-pw", "check")
    try:
        assert a.iq("<ping xmlns='urn:xmpp:ping'/>").get("type") == "result"
        a.send(f"<message to='{a.jid}' id='self1' type='chat'><body>still here</body></message>")
        a.wait("message", id="self1")
    finally:
        a.close()


def raw_authenticated(cl, user):
    r = Raw(cl.c2s_port, timeout=10.0)
    r.open_stream()
    r.starttls()
    r.open_stream()
    assert "<success" in r.auth_scram(user, f"{user}-pw")
    r.open_stream()
    return r


def bind_and_presence(n, resource):
    """The bind request and n presence stanzas, sent in one write: all of them reach the
    c2s before the session's roster load can answer."""
    bind = (f"<iq type='set' id='bind1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>"
            f"<resource>{resource}</resource></bind></iq>")
    pres = "".join(f"<presence><status>s{i}</status></presence>" for i in range(n))
    return bind + pres


def test_presence_held_past_the_limit_ends_the_stream(cl):
    before = refusals(cl, "held_presence")
    r = raw_authenticated(cl, "hp")
    try:
        r.send(bind_and_presence(HELD + 3, "flood"))
        out = r.recv_until("</stream:stream>")
        assert stream_error(out) == "policy-violation", out
        assert r.closed()
    finally:
        r.close()
    assert wait_until(lambda: refusals(cl, "held_presence") == before + 1)
    # Up to the limit, held presence is handled in order once the roster is in: the
    # last one sent is the one broadcast back to the user's own resource.
    r = raw_authenticated(cl, "hp")
    try:
        r.send(bind_and_presence(HELD, "calm"))
        out = r.recv_until(rf"<status>s{HELD - 1}</status>")
        assert stream_error(out) is None, out
        r.send("<iq type='get' id='p1'><ping xmlns='urn:xmpp:ping'/></iq>")
        r.recv_until(r"<iq[^>]*id=.p1.")
    finally:
        r.close()
    still_serves(cl)


def roster_set(c, jid):
    return c.iq(f"<query xmlns='jabber:iq:roster'><item jid='{jid}'/></query>", type="set")


def roster_jids(c):
    return sorted(i.get("jid") for i in c.iq("<query xmlns='jabber:iq:roster'/>").iter("{jabber:iq:roster}item"))


def test_roster_set_past_the_limit_is_not_allowed(cl):
    before = refusals(cl, "roster_items")
    a = login(cl, "ra", "ra-pw", "r")
    try:
        for i in range(ROSTER):
            assert roster_set(a, f"friend{i}@example.org").get("type") == "result"
        r = roster_set(a, "onetoomany@example.org")
        assert error_condition(r) == "not-allowed"
        # Changing an item already there adds nothing: still allowed.
        r = a.iq("<query xmlns='jabber:iq:roster'><item jid='friend0@example.org' name='F'/></query>", type="set")
        assert r.get("type") == "result"
        # So is a subscription request that would add an item.
        a.send("<presence type='subscribe' to='stranger@example.org' id='sub1'/>")
        err = a.wait("presence", id="sub1", type="error")
        assert error_condition(err) == "not-allowed"
        assert roster_jids(a) == [f"friend{i}@example.org" for i in range(ROSTER)]
        # Room again after a removal.
        r = a.iq("<query xmlns='jabber:iq:roster'><item jid='friend0@example.org' subscription='remove'/></query>",
                 type="set")
        assert r.get("type") == "result"
        assert roster_set(a, "onetoomany@example.org").get("type") == "result"
    finally:
        a.close()
    assert refusals(cl, "roster_items") == before + 2
    still_serves(cl)


def sets_sent_together(a, iqs, limit, condition):
    """Sends the IQ sets (each with an id) without waiting, then checks that
    exactly limit of them succeed and every other one fails with condition."""
    ids = [re.search(r"id='([^']+)'", x).group(1) for x in iqs]
    for x in iqs:
        a.send(x)
    answers = [a.wait("iq", id=iid, type=("result", "error")) for iid in ids]
    assert sum(x.get("type") == "result" for x in answers) == limit
    assert all(error_condition(x) == condition for x in answers if x.get("type") == "error")


def test_roster_sets_sent_together_stop_at_the_limit(cl):
    a = login(cl, "rb", "rb-pw", "r")
    try:
        sets_sent_together(a, [f"<iq type='set' id='burst{i}'><query xmlns='jabber:iq:roster'>"
                               f"<item jid='burst{i}@example.org'/></query></iq>" for i in range(ROSTER + 3)],
                           ROSTER, "not-allowed")
        assert len(roster_jids(a)) == ROSTER
    finally:
        a.close()


def test_subscription_to_a_full_roster_is_refused(cl):
    full = login(cl, "rc", "rc-pw", "r")
    asker = login(cl, "rd", "rd-pw", "r")
    try:
        for i in range(ROSTER):
            assert roster_set(full, f"pal{i}@example.org").get("type") == "result"
        before = refusals(cl, "roster_items")
        asker.send("<presence type='subscribe' to='rc@localhost' id='sub2'/>")
        err = asker.wait("presence", id="sub2", type="error")
        assert error_condition(err) == "resource-constraint"
        assert err.get("from") == "rc@localhost"
        # Nothing was stored on either side.
        assert roster_jids(full) == [f"pal{i}@example.org" for i in range(ROSTER)]
        assert roster_jids(asker) == []
        assert refusals(cl, "roster_items") == before + 1
        # With room on the contact's side, the same request goes through (to the
        # contact's available resource).
        full.presence()
        full.wait("presence", frm=full.jid)
        r = full.iq("<query xmlns='jabber:iq:roster'><item jid='pal0@example.org' subscription='remove'/></query>",
                    type="set")
        assert r.get("type") == "result"
        asker.send("<presence type='subscribe' to='rc@localhost' id='sub3'/>")
        full.wait("presence", type="subscribe", frm="rd@localhost")
    finally:
        full.close()
        asker.close()
    still_serves(cl)


def block(c, *jids):
    items = "".join(f"<item jid='{j}'/>" for j in jids)
    return c.iq(f"<block xmlns='urn:xmpp:blocking'>{items}</block>", type="set")


def blocklist(c):
    r = c.iq("<blocklist xmlns='urn:xmpp:blocking'/>")
    return sorted(i.get("jid") for i in r.iter("{urn:xmpp:blocking}item"))


def test_block_past_the_limit_is_refused(cl):
    before = refusals(cl, "block_items")
    a = login(cl, "ba", "ba-pw", "r")
    try:
        assert block(a, "x1@example.org", "x2@example.org").get("type") == "result"
        # One of the two is already there: the list reaches the limit, no more.
        assert block(a, "x2@example.org", "x3@example.org").get("type") == "result"
        r = block(a, "x4@example.org")
        assert error_condition(r) == "resource-constraint"
        # Blocking what is already blocked adds nothing.
        assert block(a, "x1@example.org").get("type") == "result"
        # More items in one request than the limit: refused at once.
        r = block(a, *[f"y{i}@example.org" for i in range(BLOCK + 1)])
        assert error_condition(r) == "resource-constraint"
        assert blocklist(a) == ["x1@example.org", "x2@example.org", "x3@example.org"]
        r = a.iq("<unblock xmlns='urn:xmpp:blocking'><item jid='x1@example.org'/></unblock>", type="set")
        assert r.get("type") == "result"
        assert block(a, "x4@example.org").get("type") == "result"
    finally:
        a.close()
    assert refusals(cl, "block_items") == before + 2
    still_serves(cl)


def test_blocks_sent_together_stop_at_the_limit(cl):
    a = login(cl, "bb", "bb-pw", "r")
    try:
        sets_sent_together(a, [f"<iq type='set' id='blk{i}'><block xmlns='urn:xmpp:blocking'>"
                               f"<item jid='z{i}@example.org'/></block></iq>" for i in range(BLOCK + 2)],
                           BLOCK, "resource-constraint")
        assert len(blocklist(a)) == BLOCK
    finally:
        a.close()


def test_blocks_and_unblocks_sent_together_apply_in_order(cl):
    """Block, unblock, block... of one JID sent without waiting: each answered in the order
    sent and the list ends as the last one left it (the store's pool must not let an
    unblock overtake the block before it)."""
    a = login(cl, "bo", "bo-pw", "r")
    try:
        iqs = []
        for i in range(8):
            verb = "block" if i % 2 == 0 else "unblock"
            iqs.append(f"<iq type='set' id='bo{i}'><{verb} xmlns='urn:xmpp:blocking'>"
                       f"<item jid='flip@example.org'/></{verb}></iq>")
        iqs.append("<iq type='set' id='bo8'><block xmlns='urn:xmpp:blocking'><item jid='flip@example.org'/>"
                   "</block></iq>")
        a.send("".join(iqs))
        answers = [a.wait("iq", id=f"bo{i}", type=("result", "error")) for i in range(9)]
        assert [x.get("type") for x in answers] == ["result"] * 9
        assert blocklist(a) == ["flip@example.org"]
        a.send(iqs[1] + iqs[0].replace("bo0", "bo9") + iqs[1].replace("bo1", "bo10"))
        for iid in ("bo1", "bo9", "bo10"):
            assert a.wait("iq", id=iid, type=("result", "error")).get("type") == "result"
        assert blocklist(a) == []
    finally:
        a.close()


def test_roster_set_and_remove_sent_together_apply_in_order(cl):
    """A roster set and removal of one contact sent together, again and again: the roster
    ends as the last request left it."""
    a = login(cl, "ro", "ro-pw", "r")
    try:
        def set_(i):
            return (f"<iq type='set' id='ro{i}'><query xmlns='jabber:iq:roster'>"
                    f"<item jid='flip@example.org' name='n{i}'/></query></iq>")

        def remove(i):
            return (f"<iq type='set' id='ro{i}'><query xmlns='jabber:iq:roster'>"
                    f"<item jid='flip@example.org' subscription='remove'/></query></iq>")
        a.send("".join(set_(i) if i % 2 == 0 else remove(i) for i in range(8)) + set_(8))
        answers = [a.wait("iq", id=f"ro{i}", type=("result", "error")) for i in range(9)]
        assert [x.get("type") for x in answers] == ["result"] * 9
        r = a.iq("<query xmlns='jabber:iq:roster'/>")
        items = list(r.iter("{jabber:iq:roster}item"))
        assert [(x.get("jid"), x.get("name")) for x in items] == [("flip@example.org", "n8")]
    finally:
        a.close()
