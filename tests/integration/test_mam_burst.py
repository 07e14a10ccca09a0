"""tests/integration/test_mam_burst.py - the embedded default (sqlite) under an archive burst: every row committed and found by full-text search; the lag gauges rise and fall; past limits.mam_max_pending_rows writes are refused, counted, and still archived."""
import re
import threading

import pytest

from harness import cluster_on, http_get, wait_until
from test_mam import login, query, send_chat, sync, wait_count


def metric(cl, name, label=""):
    """The sum of the mam shard's series of name whose labels contain label."""
    status, text = http_get(cl.metrics_port("mam.0"), "/metrics")
    assert status == 200
    total = 0.0
    for line in text.splitlines():
        if re.match(rf"{re.escape(name)}[{{ ]", line) and label in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


@pytest.fixture(scope="module")
def burst(tmp_path_factory):
    """The default storage (sqlite), default batching: 2 c2s + 2 routers + 1 mam; a WAL
    checkpoint every 256 pages (instead of 8,192) so that the burst runs several beside
    its commits."""
    with cluster_on("sqlite", tmp_path_factory.mktemp("mamburst"),
                    extra="storage: {driver: sqlite, sqlite: {checkpoint_pages: 256}}\n") as c:
        for u in ("sam", "tia"):
            c.ctl("register", f"{u}@localhost", f"{u}-pw")
        yield c


def test_burst_all_committed_and_searchable(burst):
    """6,000 messages as fast as one client sends them (12,000 archive rows, batches of up
    to 1,024): every row is committed, and full-text search finds each word in exactly
    the rows that hold it - per-batch indexing misses none and adds none."""
    n = 6000
    a, _ = login(burst, "sam")
    b, _ = login(burst, "tia")
    stored0 = metric(burst, "meerkat_mam_archive_writes_total", 'result="stored"')
    for i in range(n):
        send_chat(a, "tia@localhost", f"w{i}x common{i % 7}")
        if i % 1000 == 999:
            sync(a)
    sync(a)
    wait_count(a, n, timeout=120)
    wait_count(b, n, timeout=120)
    assert wait_until(lambda: metric(burst, "meerkat_mam_pending_rows") == 0, 30)
    assert metric(burst, "meerkat_mam_archive_writes_total", 'result="stored"') - stored0 == 2 * n
    assert metric(burst, "meerkat_mam_oldest_pending_seconds") == 0
    # The WAL was checkpointed beside the commits (PASSIVE, on the checkpointer's thread).
    assert metric(burst, "meerkat_store_checkpoints_total", 'mode="passive"') > 0
    assert metric(burst, "meerkat_store_checkpoint_seconds_max") > 0
    # The writer's transactions are counted (the grouped batches beside them; how many
    # were queued together depends on the machine's pace, test_store.c pins that down).
    assert metric(burst, "meerkat_store_commits_total") > 0
    assert metric(burst, "meerkat_store_grouped_batches_total") >= 0
    for r, peer in ((a, "tia@localhost"), (b, "sam@localhost")):
        # One word per message: exactly that message, spread over the whole burst.
        for i in (0, 1, 511, 1023, 1024, 2047, 3333, 4095, 5000, n - 1):
            p = query(r, "2", {"full-text-search": f"w{i}x", "with": peer})
            assert [it[1] for it in p.items] == [f"w{i}x common{i % 7}"], (i, p.items)
        # A word in every 7th message: the exact count.
        p = query(r, "2", {"full-text-search": "common3"}, {"max": "0"})
        assert p.count == len([i for i in range(n) if i % 7 == 3])
        p = query(r, "2", {"full-text-search": "w17x common3"}, {"max": "5"})
        assert [it[1] for it in p.items] == ["w17x common3"]
        p = query(r, "2", {"full-text-search": "w17x common4"}, {"max": "5"})
        assert p.items == []


@pytest.fixture(scope="module")
def bounded(tmp_path_factory):
    """sqlite, a commit every 400 ms unless 256 rows wait, and at most 150 rows pending."""
    extra = "modules:\n  mam: {batch_ms: 400}\nlimits: {mam_max_pending_rows: 150}"
    with cluster_on("sqlite", tmp_path_factory.mktemp("mambound"), extra=extra) as c:
        for u in ("uma", "vic"):
            c.ctl("register", f"{u}@localhost", f"{u}-pw")
        yield c


def test_lag_gauges_rise_and_fall(bounded):
    """Rows waiting for the 400 ms batch timer show in meerkat_mam_pending_rows and in the
    age of the oldest, which both go back to 0 once they are committed."""
    a, _ = login(bounded, "uma")
    b, _ = login(bounded, "vic")
    for i in range(20):
        send_chat(a, "vic@localhost", f"lag{i}")
    sync(a)
    assert wait_until(lambda: metric(bounded, "meerkat_mam_pending_rows") >= 1 and
                      metric(bounded, "meerkat_mam_oldest_pending_seconds") > 0, 10, 0.02)
    wait_count(a, 20, timeout=20)
    assert wait_until(lambda: metric(bounded, "meerkat_mam_pending_rows") == 0 and
                      metric(bounded, "meerkat_mam_oldest_pending_seconds") == 0, 10)
    wait_count(b, 20, timeout=20)


def test_bound_refuses_then_archives_everything(bounded):
    """200 messages (400 rows) against a bound of 150 pending rows: writes past it are
    refused and counted, the mam never holds more than the bound, and the senders'
    re-sends still get every message archived, once, on both sides."""
    a, _ = login(bounded, "uma", "bound")
    b, _ = login(bounded, "vic", "bound")
    base_a = query(a, "2", None, {"max": "0"}).count
    base_b = query(b, "2", None, {"max": "0"}).count
    refused0 = metric(bounded, "meerkat_mam_archive_refused_total")
    seen = [0.0]
    stop = threading.Event()

    def watch():
        while not stop.is_set():
            seen[0] = max(seen[0], metric(bounded, "meerkat_mam_pending_rows"))
            stop.wait(0.02)
    th = threading.Thread(target=watch, daemon=True)
    th.start()
    try:
        for i in range(200):
            send_chat(a, "vic@localhost", f"bound{i:03d}")
        sync(a)
        assert wait_until(lambda: metric(bounded, "meerkat_mam_archive_refused_total") > refused0, 20)
        wait_count(a, base_a + 200, timeout=90)
        wait_count(b, base_b + 200, timeout=90)
    finally:
        stop.set()
        th.join()
    assert 0 < seen[0] <= 150
    for r, peer in ((a, "vic@localhost"), (b, "uma@localhost")):
        p = query(r, "2", {"with": peer, "full-text-search": "bound199"})
        assert [it[1] for it in p.items] == ["bound199"]
    assert wait_until(lambda: metric(bounded, "meerkat_mam_pending_rows") == 0, 10)


@pytest.fixture(scope="module")
def slow_timer(tmp_path_factory):
    """sqlite, a batch committed only after 20 s unless 256 rows wait: other owners' rows
    stay pending for the whole test."""
    with cluster_on("sqlite", tmp_path_factory.mktemp("mamurgent"), extra="modules:\n  mam: {batch_ms: 20000}") as c:
        for u in ("wes", "wyn", "xia", "yan"):
            c.ctl("register", f"{u}@localhost", f"{u}-pw")
        yield c


def test_query_waits_only_for_its_owner(slow_timer):
    """Other owners have 20 rows waiting for the 20 s batch timer; xia sends one message and
    asks for her archive at once: she gets it (her row is committed ahead of the others, in
    a transaction of its own) while the others' rows are still pending - she did not wait
    for them, nor for the timer (her query's wait would have timed out after 3 s)."""
    cl = slow_timer
    w, _ = login(cl, "wes")
    x, _ = login(cl, "xia")
    for i in range(10):
        send_chat(w, "wyn@localhost", f"other{i}")
    sync(w)
    assert wait_until(lambda: metric(cl, "meerkat_mam_pending_rows") >= 20, 10)
    committed0 = metric(cl, "meerkat_mam_query_waits_total", 'result="committed"')
    send_chat(x, "yan@localhost", "mine")
    p = query(x, "2", None, {"max": "5", "before": ""})
    assert [it[1] for it in p.items] == ["mine"]
    assert metric(cl, "meerkat_mam_query_waits_total", 'result="committed"') == committed0 + 1
    assert metric(cl, "meerkat_mam_query_waits_total", 'result="timeout"') == 0
    # wes's 20 rows and yan's copy of "mine" are still waiting for the timer.
    assert metric(cl, "meerkat_mam_pending_rows") >= 21
