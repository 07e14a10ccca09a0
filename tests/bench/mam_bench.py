"""tests/bench/mam_bench.py - the archive's figures (issues 4 and 17): archive writes committed per second
on PostgreSQL and on the embedded sqlite side by side under 1-1 chat, with the CPU per row; MAM query
latency and archive lag during a chat burst; the latency of a 50-message page query on a
1,000,000-message archive (PostgreSQL).
Run by `make bench` after run.py; prints one JSON line and writes docs/BENCHMARKS-MAM.md."""
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "integration"))
import run as R  # noqa: E402
from rawxmpp import Raw  # noqa: E402

ROWS = int(os.environ.get("MAM_BENCH_ROWS", "1000000"))
QUERIES = int(os.environ.get("MAM_BENCH_QUERIES", "300"))
WARMUP = 30   # the first queries read the freshly written table from disk: not a steady state
RATES = [int(x) for x in os.environ.get("MAM_BENCH_RATES", "5000,10000,15000,20000,25000").split(",")]
STORAGES = os.environ.get("MAM_BENCH_STORAGES", "pgsql,sqlite").split(",")
BURST_RATE = int(os.environ.get("MAM_BENCH_BURST_RATE", "4000"))
BURST_SECONDS = int(os.environ.get("MAM_BENCH_BURST_SECONDS", "20"))
KEEP_MARK = "<!-- everything below this line is kept by mam_bench.py -->"


metric = R.metric


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * p / 100))]


def mam_pid(srv):
    """The meerkat-mam process: its program's name, not a substring of the command line (the
    bench's temporary folder, meerkat-mambench-*, is in every process's -c path)."""
    t = R.proc_table()
    for pid in R.tree(srv.proc.pid, t):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if os.path.basename(f.read().split(b"\0", 1)[0]) == b"meerkat-mam":
                    return pid
        except OSError:
            pass
    return None


def cpu_s(pids):
    """CPU seconds (user+sys, every thread) of the process trees under pids."""
    t = R.proc_table()
    return sum(t[q][1] for p in pids if p for q in R.tree(p, t)) / R.TICK


def archive_steps(srv, port, keys, mport, db_pids):
    """Archive rows committed per second while 1,000 users chat at stepped rates, and the CPU per
    row of the mam process and of the database server (PostgreSQL; sqlite runs inside mam)."""
    steps = []
    mpid = mam_pid(srv)
    for rate in RATES:
        samples = []
        stop = threading.Event()

        def sample():
            while not stop.is_set():
                samples.append((time.monotonic(), metric(mport, "meerkat_mam_archive_writes_total", 'result="stored"')))
                time.sleep(0.1)
        c_mam, c_db, c_all = cpu_s([mpid]), cpu_s(db_pids), cpu_s([srv.proc.pid])
        th = threading.Thread(target=sample, daemon=True)
        th.start()
        lines = R.loadgen(None, port, keys, ["--scenario", "chat", "--users", "1000", "--rates", str(rate),
                                             "--duration", "5"], 120)
        # what the generator sent: a step that fell behind catches up, so it can be
        # a few percent over rate x 5 s
        sent = next((d["sent"] for d in lines if d.get("event") == "step"), rate * 5)
        # wait for the archive to catch up: the counter still for 2 s
        while len(samples) < 25 or samples[-1][1] != samples[-20][1]:
            time.sleep(0.2)
        stop.set()
        th.join()
        c_mam, c_db, c_all = cpu_s([mpid]) - c_mam, cpu_s(db_pids) - c_db, cpu_s([srv.proc.pid]) - c_all
        w0 = samples[0][1]
        moving = [t for (t, w), (_, wp) in zip(samples[1:], samples) if w != wp]
        rows = samples[-1][1] - w0
        span = (moving[-1] - moving[0]) if len(moving) > 1 else 1.0
        step = {"offered_msgs_per_s": rate, "rows_expected": sent * 2, "rows_committed": int(rows),
                "rows_committed_per_s": round(rows / span), "commit_span_s": round(span, 1),
                "mam_cpu_us_per_row": round(c_mam * 1e6 / max(rows, 1), 1),
                "db_cpu_us_per_row": round(c_db * 1e6 / max(rows, 1), 1),
                "meerkat_cpu_us_per_row": round(c_all * 1e6 / max(rows, 1), 1)}
        steps.append(step)
        R.log(f"  archive: offered {rate} msgs/s -> {step['rows_committed']} of {step['rows_expected']} rows, "
              f"{step['rows_committed_per_s']} rows/s over {step['commit_span_s']} s, "
              f"mam {step['mam_cpu_us_per_row']} us/row, database {step['db_cpu_us_per_row']} us/row, "
              f"all of Meerkat {step['meerkat_cpu_us_per_row']} us/row")
    return steps


def burst_queries(port, keys, mport, rate, duration):
    """MAM queries during a chat burst: bench0 (another resource) sends bench2 (who chats with
    bench3 only) a message, then asks for the last message of its archive with bench2; the
    time to the answer, and whether it held that message (read-your-writes while the archive
    has a backlog). Also the lag gauges' highest values and the queries whose wait for their
    owner's writes timed out (answered without them)."""
    c = Raw(port, timeout=30)
    c.login("bench0", "bench", "q", mech="plain")
    lat, lag_rows, lag_s, misses = [], [0.0], [0.0], 0
    timeouts0 = metric(mport, "meerkat_mam_query_waits_total", 'result="timeout"')
    done = threading.Event()

    def gen():
        R.loadgen(None, port, keys, ["--scenario", "chat", "--users", "1000", "--rates", str(rate),
                                     "--duration", str(duration)], 120 + duration)
        done.set()
    th = threading.Thread(target=gen, daemon=True)
    th.start()
    time.sleep(2)   # the generator's logins first
    form = ("<x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE' type='hidden'><value>urn:xmpp:mam:2"
            "</value></field><field var='with'><value>bench2@localhost</value></field></x>")
    i = 0
    while not done.is_set():
        i += 1
        body = f"burstcheck{i}x{int(time.time() * 1000)}"
        c.send(f"<message to='bench2@localhost' type='chat' id='b{i}'><body>{body}</body></message>")
        t = time.monotonic()
        c.send(f"<iq type='set' id='bq{i}'><query xmlns='urn:xmpp:mam:2' queryid='bq{i}'>{form}"
               "<set xmlns='http://jabber.org/protocol/rsm'><max>1</max><before/></set></query></iq>")
        res = c.recv_until(rf"<iq[^>]*id=.bq{i}.*?</iq>")
        lat.append((time.monotonic() - t) * 1000)
        if body not in res:
            misses += 1
        lag_rows.append(metric(mport, "meerkat_mam_pending_rows"))
        lag_s.append(metric(mport, "meerkat_mam_oldest_pending_seconds"))
        time.sleep(0.1)
    th.join()
    c.close()
    return {"offered_msgs_per_s": rate, "seconds": duration, "queries": len(lat), "misses": misses,
            "wait_timeouts": int(metric(mport, "meerkat_mam_query_waits_total", 'result="timeout"') - timeouts0),
            "query_ms_p50": round(pct(lat, 50), 1), "query_ms_p99": round(pct(lat, 99), 1),
            "query_ms_max": round(max(lat), 1), "pending_rows_max": int(max(lag_rows)),
            "oldest_pending_s_max": round(max(lag_s), 3)}


def page_queries(port, pg):
    """A 1,000,000-message archive for bench0 (PostgreSQL), then page queries against it."""
    out = {}
    t0 = time.monotonic()
    now_us = int(time.time() * 1e6)
    sql = (f"INSERT INTO mam_message (username, domain, id, peer, peer_resource, outgoing, stamp_us, xml, body) "
           f"SELECT 'bench0', 'localhost', (({now_us - ROWS * 1000}::bigint + g * 1000) << 8) | 200, "
           f"'peer' || (g % 50) || '@localhost', 'r', (g % 2)::smallint, {now_us - ROWS * 1000}::bigint + g * 1000, "
           f"'<message to=''bench0@localhost'' type=''chat''><body>message ' || g || '</body></message>', "
           f"'message ' || g FROM generate_series(1, {ROWS}) g")
    r = pg.psql("meerkat_bench", "-c", sql, user="meerkat")
    if r.returncode != 0:
        sys.exit("filling the archive failed: " + r.stderr)
    pg.psql("meerkat_bench", "-c", "ANALYZE mam_message", user="meerkat")
    out["fill_seconds"] = round(time.monotonic() - t0, 1)
    R.log(f"  archive of {ROWS} rows filled in {out['fill_seconds']} s")
    c = Raw(port, timeout=30)
    c.login("bench0", "bench", "q", mech="plain")
    lat = {"last_page": [], "with_peer": [], "after_id": []}
    first_ids = []
    for i in range(QUERIES + WARMUP):
        kind = ("last_page", "with_peer", "after_id")[i % 3]
        if kind == "last_page":
            q = "<set xmlns='http://jabber.org/protocol/rsm'><max>50</max><before/></set>"
            form = ""
        elif kind == "with_peer":
            q = "<set xmlns='http://jabber.org/protocol/rsm'><max>50</max></set>"
            form = ("<x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE' type='hidden'>"
                    "<value>urn:xmpp:mam:2</value></field><field var='with'>"
                    f"<value>peer{i % 50}@localhost</value></field></x>")
        else:
            after = first_ids[(i * 7919) % len(first_ids)] if first_ids else ""
            q = f"<set xmlns='http://jabber.org/protocol/rsm'><max>50</max><after>{after}</after></set>"
            form = ""
        qid = f"q{i}"
        t = time.monotonic()
        c.send(f"<iq type='set' id='{qid}'><query xmlns='urn:xmpp:mam:2' queryid='{qid}'>{form}{q}</query></iq>")
        res = c.recv_until(rf"<iq[^>]*id=.{qid}.*?</iq>")
        if i >= WARMUP:
            lat[kind].append((time.monotonic() - t) * 1000)
        ids = re.findall(r"<result[^>]* id=['\"]([^'\"]+)['\"]", res)
        assert "type='result'" in res or 'type="result"' in res, res[-500:]
        if kind == "last_page":
            assert len(ids) == 50, f"a page of {len(ids)}"
        if ids and len(first_ids) < 200:
            first_ids.append(ids[0])
    c.close()
    allq = [x for v in lat.values() for x in v]
    out["warmup_queries"] = WARMUP
    out["page_queries"] = len(allq)
    out["page_ms"] = {k: {"p50": round(pct(v, 50), 2), "p99": round(pct(v, 99), 2)} for k, v in lat.items() if v}
    out["page_ms_all"] = {"p50": round(pct(allq, 50), 2), "p99": round(pct(allq, 99), 2)}
    return out


def main():
    base = tempfile.mkdtemp(prefix="meerkat-mambench-")
    os.chmod(base, 0o755)
    cert, key = os.path.join(base, "cert.pem"), os.path.join(base, "key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-keyout", key, "-out", cert, "-days", "30", "-subj", "/CN=localhost"], check=True,
                   capture_output=True)
    pg = R.Postgres(base)
    out = {"scenario": "mam"}
    try:
        for storage in STORAGES:
            srv = R.Meerkat(base, cert, key, pg)
            srv.storage = storage
            try:
                reason = srv.start(mam=True)
                if reason:
                    sys.exit("Meerkat " + reason)
                R.log(f"  archive on {storage}")
                port, keys = srv.port, os.path.join(base, "keys")
                mport = R.metrics_port(srv.cfg, "mam.0")
                R.loadgen(None, port, keys, ["--scenario", "register", "--users", "1000", "--concurrency", "100"], 300)
                res = {}
                res["archive_steps"] = archive_steps(srv, port, keys, mport,
                                                     [pg.pid()] if storage == "pgsql" else [])
                res["archive_rows_per_s_max"] = max(s["rows_committed_per_s"] for s in res["archive_steps"])
                if BURST_RATE > 0:
                    res["burst"] = burst_queries(port, keys, mport, BURST_RATE, BURST_SECONDS)
                    R.log(f"  burst: {res['burst']}")
                if storage == "pgsql" and ROWS > 0:
                    res.update(page_queries(port, pg))
                out[storage] = res
            finally:
                srv.stop()
    finally:
        pg.stop()
        shutil.rmtree(base, ignore_errors=True)
    print(json.dumps(out), flush=True)
    write_doc(out)


def write_doc(out):
    doc = os.path.join(R.ROOT, "docs", "BENCHMARKS-MAM.md")
    kept = ""
    try:
        with open(doc) as f:
            old = f.read()
        if KEEP_MARK in old:
            kept = old[old.index(KEEP_MARK):]
    except OSError:
        pass
    cols = [s for s in STORAGES if s in out]
    name = {"pgsql": "PostgreSQL 15 (fsync off)", "sqlite": "sqlite (the embedded default, WAL)"}

    def row(label, f):
        cells = []
        for s in cols:
            try:
                cells.append(f(out[s]))
            except (KeyError, IndexError, TypeError, ValueError):
                cells.append("-")
        return f"| {label} | " + " | ".join(cells) + " |\n"
    with open(doc, "w") as f:
        f.write("# Archive benchmark\n\nWritten by `tests/bench/mam_bench.py` (`make bench`) on "
                f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}. Meerkat: 2 c2s, 2 router shards, 1 mam "
                "shard, the archive in one local PostgreSQL or in the embedded sqlite, full-text search on; "
                "the load generator on the same 2 cores. CPU per row: the mam process (sqlite runs on its "
                "threads), the database server, and in brackets all of Meerkat's processes (c2s, routers, "
                "mam).\n\n")
        f.write("| figure | " + " | ".join(name[s] for s in cols) + " |\n|---|" + "---|" * len(cols) + "\n")
        f.write(row("archive rows committed per second (max over the steps; each message is 2 rows, "
                    "sender's and recipient's)", lambda r: f"{r['archive_rows_per_s_max']:,}"))
        for i, rate in enumerate(RATES):
            f.write(row(f"offered {rate:,} msgs/s for 5 s: rows committed of 2 x sent, rows/s while "
                        "committing, CPU us/row mam + database (all of Meerkat)",
                        lambda r, i=i: (f"{r['archive_steps'][i]['rows_committed']:,} of "
                                        f"{r['archive_steps'][i]['rows_expected']:,}, "
                                        f"{r['archive_steps'][i]['rows_committed_per_s']:,}, "
                                        f"{r['archive_steps'][i]['mam_cpu_us_per_row']} + "
                                        f"{r['archive_steps'][i]['db_cpu_us_per_row']} "
                                        f"({r['archive_steps'][i]['meerkat_cpu_us_per_row']})")))
        if BURST_RATE > 0:
            f.write(row(f"MAM query for the message just sent, during {BURST_RATE:,} msgs/s for {BURST_SECONDS} s: "
                        "queries, p50 / p99 / max ms, answers without the message, waits timed out",
                        lambda r: (f"{r['burst']['queries']}, {r['burst']['query_ms_p50']} / "
                                   f"{r['burst']['query_ms_p99']} / {r['burst']['query_ms_max']}, "
                                   f"{r['burst']['misses']}, {r['burst']['wait_timeouts']}")))
            f.write(row("archive lag during that burst: highest meerkat_mam_pending_rows, "
                        "meerkat_mam_oldest_pending_seconds",
                        lambda r: f"{r['burst']['pending_rows_max']:,}, {r['burst']['oldest_pending_s_max']}"))
        f.write(row("archive of bench0", lambda r: f"{ROWS:,} messages" if "page_ms" in r else "-"))
        for k in ("last_page", "with_peer", "after_id"):
            f.write(row(f"50-message page, {k.replace('_', ' ')}: p50 / p99 ms",
                        lambda r, k=k: f"{r['page_ms'][k]['p50']} / {r['page_ms'][k]['p99']}"))
        f.write(row(f"every page query (after {WARMUP} unmeasured): p50 / p99 ms",
                    lambda r: f"{r['page_ms_all']['p50']} / {r['page_ms_all']['p99']}"))
        if kept:
            f.write("\n" + kept)


if __name__ == "__main__":
    main()
