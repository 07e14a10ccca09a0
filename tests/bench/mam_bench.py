"""tests/bench/mam_bench.py - the archive's figures (issue 4): archive writes committed per second on
PostgreSQL under 1-1 chat, and the latency of a 50-message page query on a 1,000,000-message archive.
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
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "integration"))
import run as R  # noqa: E402
from rawxmpp import Raw  # noqa: E402

ROWS = int(os.environ.get("MAM_BENCH_ROWS", "1000000"))
QUERIES = int(os.environ.get("MAM_BENCH_QUERIES", "300"))


def metric(port, name, must=""):
    """The sum of a family's series whose labels contain must (e.g. 'result="stored"')."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
        text = r.read().decode()
    total = 0.0
    for line in text.splitlines():
        if (line.startswith(name + "{") or line.startswith(name + " ")) and must in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def mam_metrics_port(cfg_path):
    with open(cfg_path) as f:
        m = re.search(r"id: mam\.0, bus: \"[^\"]+\", metrics: \"127\.0\.0\.1:(\d+)\"", f.read())
    return int(m.group(1))


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * p / 100))]


def main():
    base = tempfile.mkdtemp(prefix="meerkat-mambench-")
    os.chmod(base, 0o755)
    cert, key = os.path.join(base, "cert.pem"), os.path.join(base, "key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-keyout", key, "-out", cert, "-days", "30", "-subj", "/CN=localhost"], check=True,
                   capture_output=True)
    pg = R.Postgres(base)
    srv = R.Meerkat(base, cert, key, pg)
    out = {"scenario": "mam"}
    try:
        reason = srv.start(mam=True)
        if reason:
            sys.exit("Meerkat " + reason)
        port, keys = srv.port, os.path.join(base, "keys")
        mport = mam_metrics_port(srv.cfg)
        R.loadgen(None, port, keys, ["--scenario", "register", "--users", "1000", "--concurrency", "100"], 300)

        # 1. Archive writes committed per second, while 1,000 users chat at stepped rates.
        steps = []
        for rate in (5000, 10000, 15000, 20000, 25000):
            samples = []
            stop = threading.Event()

            def sample():
                while not stop.is_set():
                    samples.append((time.monotonic(), metric(mport, "meerkat_mam_archive_writes_total", 'result="stored"')))
                    time.sleep(0.1)
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
            w0 = samples[0][1]
            moving = [t for (t, w), (_, wp) in zip(samples[1:], samples) if w != wp]
            rows = samples[-1][1] - w0
            span = (moving[-1] - moving[0]) if len(moving) > 1 else 1.0
            step = {"offered_msgs_per_s": rate, "rows_expected": sent * 2, "rows_committed": int(rows),
                    "rows_committed_per_s": round(rows / span), "commit_span_s": round(span, 1)}
            steps.append(step)
            R.log(f"  archive: offered {rate} msgs/s -> {step['rows_committed']} of {step['rows_expected']} rows, "
                  f"{step['rows_committed_per_s']} rows/s over {step['commit_span_s']} s")
        out["archive_steps"] = steps
        out["archive_rows_per_s_max"] = max(s["rows_committed_per_s"] for s in steps)

        # 2. A 1,000,000-message archive for bench0, then page queries against it.
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
        WARMUP = 30   # the first queries read the freshly written table from disk: not a steady state
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
        allq = [x for v in lat.values() for x in v]
        out["warmup_queries"] = WARMUP
        out["page_queries"] = len(allq)
        out["page_ms"] = {k: {"p50": round(pct(v, 50), 2), "p99": round(pct(v, 99), 2)} for k, v in lat.items() if v}
        out["page_ms_all"] = {"p50": round(pct(allq, 50), 2), "p99": round(pct(allq, 99), 2)}
    finally:
        srv.stop()
        pg.stop()
        shutil.rmtree(base, ignore_errors=True)
    print(json.dumps(out), flush=True)
    doc = os.path.join(R.ROOT, "docs", "BENCHMARKS-MAM.md")
    with open(doc, "w") as f:
        f.write("# Archive benchmark\n\nWritten by `tests/bench/mam_bench.py` (`make bench`) on "
                f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}. Meerkat: 2 c2s, 2 router shards, 1 mam "
                "shard, archive in one local PostgreSQL 15 (fsync off); the load generator on the same 2 cores.\n\n"
                "| figure | value |\n|---|---|\n")
        f.write(f"| archive rows committed per second (max over the steps; each message is 2 rows, "
                f"sender's and recipient's) | {out['archive_rows_per_s_max']:,} |\n")
        for s in out["archive_steps"]:
            f.write(f"| offered {s['offered_msgs_per_s']:,} msgs/s for 5 s: rows committed (of 2 x messages sent: {s['rows_expected']:,}), "
                    f"rows/s while committing | {s['rows_committed']:,}, {s['rows_committed_per_s']:,} |\n")
        f.write(f"| archive of bench0 | {ROWS:,} messages |\n")
        for k, v in out["page_ms"].items():
            f.write(f"| 50-message page, {k.replace('_', ' ')}: p50 / p99 ms | {v['p50']} / {v['p99']} |\n")
        f.write(f"| every page query ({out['page_queries']}, after {WARMUP} unmeasured): p50 / p99 ms | {out['page_ms_all']['p50']} / "
                f"{out['page_ms_all']['p99']} |\n")


if __name__ == "__main__":
    main()
