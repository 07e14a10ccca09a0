"""tests/integration/test_auth.py - SASL exchanges against a slow store, failed-login and registration limits."""
import re

import pytest

from harness import Cluster, TableLock, cluster_on, http_get, wait_until
from rawxmpp import NS_SASL, Raw


@pytest.fixture(scope="module")
def pgcl(tmp_path_factory):
    """One c2s on a real PostgreSQL, whose tables a test can lock."""
    with cluster_on("pgsql", tmp_path_factory.mktemp("auth-pg"), c2s=1, router=1, mam=1, pusher=0, gd=0) as c:
        c.ctl("register", "mallory@localhost", "mallory-pw")
        c.ctl("register", "victim@localhost", "victim-pw")
        yield c


def lookups_waiting(pg):
    """Credential lookups of the cluster blocked on a lock."""
    return int(pg.query("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'meerkat' "
                        "AND wait_event_type = 'Lock' AND query LIKE 'SELECT%FROM users WHERE username%'"))


def test_stale_lookup_cannot_finish_another_users_exchange(pgcl):
    # Mallory knows her own password and wants in as victim: she starts SCRAM as
    # herself, her lookup is held up, she aborts and starts again as victim. Her
    # lookup's row (her salt and keys) must not land in victim's exchange, where her
    # own password would then prove "victim".
    pg = pgcl.pg
    r = Raw(pgcl.c2s_port, timeout=20)
    r.open_stream()
    r.starttls()
    r.open_stream()
    first = TableLock(pg, "lock-first")
    second = None
    try:
        assert wait_until(first.granted, 10)
        r.scram_start("mallory")
        assert wait_until(lambda: lookups_waiting(pg) == 1, 10)
        # Queued behind mallory's lookup: once the first lock goes, her lookup runs,
        # then this lock is granted and victim's lookup (queued behind it) waits.
        second = TableLock(pg, "lock-second")
        assert wait_until(second.waiting, 10)
        r.send(f"<abort xmlns='{NS_SASL}'/>")
        assert "<aborted/>" in r.recv_until("</failure>")
        victim = r.scram_start("victim")
        assert wait_until(lambda: lookups_waiting(pg) == 2, 10)
        first.release()
        assert wait_until(second.granted, 10)
        # Mallory's row is now back at the c2s (her query ended before the second lock
        # was granted): it either answers victim's exchange (the bug) or is dropped.
        assert wait_until(lambda: "</challenge>" in r.poll() or "auth_stale_answer" in pgcl.read_log(), 10)
        if "</challenge>" not in r.buf:
            second.release()
        answer = r.scram_finish(victim, "mallory-pw")
        assert "<success" not in answer, "mallory's password logged in as victim: " + answer
        assert "<not-authorized/>" in answer, answer
        second.release()
        # The connection is still usable: victim's own password works.
        assert "<success" in r.auth_scram("victim", "victim-pw")
    finally:
        first.release()
        if second is not None:
            second.release()
        r.close()



def test_stale_plain_lookup_is_dropped(pgcl):
    # The same with PLAIN: mallory's delayed lookup must not log in the exchange she
    # aborted (nor, arriving late, a second time); victim's exchange is checked
    # against victim's row only.
    import base64
    pg = pgcl.pg

    def plain(user, password):
        msg = base64.b64encode(f"\0{user}\0{password}".encode()).decode()
        r.send(f"<auth xmlns='{NS_SASL}' mechanism='PLAIN'>{msg}</auth>")

    r = Raw(pgcl.c2s_port, timeout=20)
    r.open_stream()
    r.starttls()
    r.open_stream()
    first = TableLock(pg, "lock-plain-1")
    second = None
    try:
        assert wait_until(first.granted, 10)
        plain("mallory", "mallory-pw")
        assert wait_until(lambda: lookups_waiting(pg) == 1, 10)
        second = TableLock(pg, "lock-plain-2")
        assert wait_until(second.waiting, 10)
        r.send(f"<abort xmlns='{NS_SASL}'/>")
        assert "<aborted/>" in r.recv_until("</failure>")
        stale_before = pgcl.read_log().count("event=auth_stale_answer")
        plain("victim", "mallory-pw")
        assert wait_until(lambda: lookups_waiting(pg) == 2, 10)
        first.release()
        assert wait_until(second.granted, 10)
        assert wait_until(lambda: "<success" in r.poll() or "</failure>" in r.buf or
                          pgcl.read_log().count("event=auth_stale_answer") > stale_before, 10)
        assert "<success" not in r.buf, "the aborted exchange logged in: " + r.buf
        second.release()
        answer = r.recv_until(r"<success[^>]*(/>|>[^<]*</success>)|</failure>")
        assert "<not-authorized/>" in answer, answer
        assert "<success" in r.auth_plain("victim", "victim-pw")
    finally:
        first.release()
        if second is not None:
            second.release()
        r.close()

# --- failed-login and registration limits (c2s/authlimit.h) ----------------------------------

def metric_sum(cl, proc, name, label=None):
    """The sum of name's samples (those whose labels contain label) on proc's /metrics."""
    body = http_get(cl.metrics_port(proc), "/metrics")[1]
    return sum(float(l.rsplit(" ", 1)[1]) for l in body.splitlines()
               if (l.startswith(name + "{") or l.startswith(name + " ")) and (label is None or label in l))


def waits(cl):
    """Login attempts held back so far, over every c2s."""
    return sum(metric_sum(cl, p["id"], "meerkat_c2s_auth_waits_total") for p in cl.procs if p["id"].startswith("c2s."))


def tls_stream(cl, source, timeout=40):
    r = Raw(cl.c2s_port, source=source, timeout=timeout)
    r.open_stream()
    r.starttls()
    r.open_stream()
    return r


def wrong_logins(cl, source, users, n):
    """n wrong passwords from source, cycling over users, each answered not-authorized
    (a connection takes at most 3 before the server closes it)."""
    users = list(users)
    done = 0
    while done < n:
        r = tls_stream(cl, source)
        for _ in range(min(3, n - done)):
            ans = r.auth_scram(users[done % len(users)], "not-the-password")
            assert "<not-authorized/>" in ans, ans
            done += 1
        r.close()


def is_result(iq):
    return re.match(r"<iq[^>]*type=.result.", iq) is not None


def raw_register(r, user, password, iid):
    r.send(f"<iq type='set' id='{iid}'><query xmlns='jabber:iq:register'>"
           f"<username>{user}</username><password>{password}</password></query></iq>")
    return r.recv_until(rf"<iq[^>]*id=.{iid}.[^>]*(/>|>.*?</iq>)")


@pytest.fixture(scope="module")
def lim(tmp_path_factory):
    """One c2s (every attempt meets the same table; test_limits_hold_across_c2s_processes
    has two) with the default limits: 5 failures per (address, account), 10 per
    address, one registration per address per 600 s."""
    c = Cluster(tmp_path_factory.mktemp("authlimit"), c2s=1, router=1, mam=1, pusher=0, gd=0).start()
    for u in ("alice", "carol", "dave"):
        c.ctl("register", f"{u}@localhost", f"{u}-pw")
    yield c
    c.stop()


def test_wrong_passwords_from_one_address_do_not_hold_the_account_elsewhere(lim):
    # The first lock-out: six wrong passwords for alice from 127.0.0.3, then
    # the right one from 127.0.0.2 was refused ("too many failed attempts").
    wrong_logins(lim, "127.0.0.3", ["alice"], 6)
    before = waits(lim)
    r = tls_stream(lim, "127.0.0.2")
    assert "<success" in r.auth_scram("alice", "alice-pw")
    r.close()
    assert waits(lim) == before          # not even held back: 127.0.0.2 never failed for alice


def test_a_noisy_nat_address_slows_its_neighbours_but_never_refuses_them(lim):
    # The second: ten wrong passwords from one address (over any accounts) refused the
    # right password of everyone behind it. Twelve failures over other accounts here...
    wrong_logins(lim, "127.0.0.4", [f"nobody{i}" for i in range(12)], 12)
    # ... and carol, behind the same address, still gets in with her password.
    r = tls_stream(lim, "127.0.0.4")
    ans = r.auth_scram("carol", "carol-pw")
    assert "<success" in ans, ans
    r.close()


def test_guessing_is_slowed_not_refused(lim):
    # dave's five wrong passwords from 127.0.0.5 reach the limit: the next attempt from
    # there waits before it is even checked, while dave's own login from 127.0.0.6
    # goes straight through. Both are sent together; the right one is answered first.
    wrong_logins(lim, "127.0.0.5", ["dave"], 5)
    guesser = tls_stream(lim, "127.0.0.5")
    owner = tls_stream(lim, "127.0.0.6")
    before = waits(lim)
    g = guesser.scram_start("dave")
    o = owner.scram_start("dave")
    order = []

    def answered(r, st, password, who):
        ans = r.scram_finish(st, password)
        order.append((who, ans))

    import threading
    threads = [threading.Thread(target=answered, args=(guesser, g, "guess-7", "guesser")),
               threading.Thread(target=answered, args=(owner, o, "dave-pw", "owner"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert [who for who, _ in order] == ["owner", "guesser"], order
    assert "<success" in order[0][1]
    assert "<not-authorized/>" in order[1][1]      # a failure, after its wait: never "too many"
    assert waits(lim) == before + 1
    assert "auth_wait" in lim.read_log() and "user=dave@localhost" in lim.read_log()
    # The right password from the guessing address is not refused either, only held.
    ans = guesser.auth_scram("dave", "dave-pw")
    assert "<success" in ans, ans
    guesser.close()
    owner.close()


def test_registrations_are_limited_per_address(lim):
    r = tls_stream(lim, "127.0.0.8")
    assert is_result(raw_register(r, "newbie1", "pw1", "r1"))
    out = raw_register(r, "newbie2", "pw2", "r2")
    assert "<resource-constraint" in out and re.search(r"type=.wait.", out), out
    r.close()
    # Another connection from the same address: still refused.
    r = tls_stream(lim, "127.0.0.8")
    assert "<resource-constraint" in raw_register(r, "newbie3", "pw3", "r3")
    r.close()
    # Another address may register.
    r = tls_stream(lim, "127.0.0.9")
    assert is_result(raw_register(r, "newbie4", "pw4", "r4"))
    r.close()


def tls_stream_on(cl, proc, source, attempts=60):
    """A TLS stream from source that the kernel gave to c2s proc (SO_REUSEPORT picks by
    the connection's ports): reconnects until proc's handshake counter is the one that
    moved (the tests open one connection at a time)."""
    for _ in range(attempts):
        before = {p["id"]: metric_sum(cl, p["id"], "meerkat_c2s_tls_handshakes_total", 'result="ok"')
                  for p in cl.procs if p["id"].startswith("c2s.")}
        r = tls_stream(cl, source)
        if wait_until(lambda: metric_sum(cl, proc, "meerkat_c2s_tls_handshakes_total", 'result="ok"') > before[proc]
                      or any(metric_sum(cl, q, "meerkat_c2s_tls_handshakes_total", 'result="ok"') > before[q]
                             for q in before if q != proc), 5) and \
                metric_sum(cl, proc, "meerkat_c2s_tls_handshakes_total", 'result="ok"') > before[proc]:
            return r
        r.close()
    raise RuntimeError(f"no connection landed on {proc}")


def test_limits_hold_across_c2s_processes(tmp_path):
    cl = Cluster(tmp_path, c2s=2, router=1, mam=1, pusher=0, gd=0).start()
    try:
        cl.ctl("register", "erin@localhost", "erin-pw")
        # Five wrong passwords for erin from 127.0.0.7, all on c2s.0 ...
        for n in (3, 2):
            r = tls_stream_on(cl, "c2s.0", "127.0.0.7")
            for _ in range(n):
                assert "<not-authorized/>" in r.auth_scram("erin", "wrong")
            r.close()
        assert metric_sum(cl, "c2s.0", "meerkat_c2s_auth_limit_events_total", 'origin="local"') == 5
        # ... reach c2s.1 over the bus ...
        assert wait_until(lambda: metric_sum(cl, "c2s.1", "meerkat_c2s_auth_limit_events_total",
                                             'origin="peer"') == 5, 10)
        # ... where the next attempt from that address for erin is held back, and then
        # answered (the right password: never refused).
        r = tls_stream_on(cl, "c2s.1", "127.0.0.7")
        assert metric_sum(cl, "c2s.1", "meerkat_c2s_auth_waits_total") == 0
        ans = r.auth_scram("erin", "erin-pw")
        assert "<success" in ans, ans
        assert metric_sum(cl, "c2s.1", "meerkat_c2s_auth_waits_total") == 1
        r.close()
        # Registrations too: one on c2s.0 from 127.0.0.12 uses the address's allowance on c2s.1.
        r = tls_stream_on(cl, "c2s.0", "127.0.0.12")
        assert is_result(raw_register(r, "reg1", "pw", "x1"))
        r.close()
        assert wait_until(lambda: metric_sum(cl, "c2s.1", "meerkat_c2s_auth_limit_events_total",
                                             'origin="peer"') == 6, 10)
        r = tls_stream_on(cl, "c2s.1", "127.0.0.12")
        assert "<resource-constraint" in raw_register(r, "reg2", "pw", "x2")
        r.close()
    finally:
        cl.stop()


def test_unauthenticated_connections_per_address_are_capped(tmp_path):
    # Parallel connections must not multiply the guesses one address has waiting: past
    # limits.max_preauth_per_ip connections that have not authenticated, a new one from
    # that address is closed at once. Authenticating or closing frees a place, and other
    # addresses are not affected.
    cl = Cluster(tmp_path, c2s=1, router=1, mam=1, pusher=0, gd=0, extra="limits: {max_preauth_per_ip: 3}").start()
    held = []
    try:
        cl.ctl("register", "erin@localhost", "erin-pw")
        for _ in range(3):
            held.append(tls_stream(cl, "127.0.0.7"))
        extra = Raw(cl.c2s_port, source="127.0.0.7")
        assert extra.closed(10), "a fourth unauthenticated connection from one address was kept"
        assert metric_sum(cl, "c2s.0", "meerkat_c2s_limit_refusals_total", 'limit="preauth_per_ip"') == 1
        other = tls_stream(cl, "127.0.0.8")         # another address: its own count
        other.close()
        # One of the three authenticates: its place is free for a new connection.
        assert "<success" in held[0].auth_scram("erin", "erin-pw")
        again = tls_stream(cl, "127.0.0.7")
        held.append(again)
        # One closes: once the server has seen it, a place is free again.
        held.pop(1).close()

        def accepted():
            try:
                held.append(tls_stream(cl, "127.0.0.7"))
                return True
            except (ConnectionError, OSError, TimeoutError):
                return False
        assert wait_until(accepted, 10, 0.1)
        assert metric_sum(cl, "c2s.0", "meerkat_c2s_limit_refusals_total", 'limit="preauth_per_ip"') >= 1
    finally:
        for r in held:
            r.close()
        cl.stop()
