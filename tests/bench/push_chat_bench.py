"""tests/bench/push_chat_bench.py - issue 12's chat figure: server CPU per chat message with an HTTP webhook
backend on versus off, per rate and per process, builds and modes alternated in one sitting.

Each round starts, one after the other, run.py's "Meerkat" setup (push off) and its "Meerkat + HTTP
push" setup (2 c2s, 2 routers; with push also one meerkat-pusher in form mode to tests/bench/http_sink,
whose CPU is not counted) for every build given, each the same way: a fresh cluster, 1,000 accounts
registered, quiet again, then loadgen's chat scenario (1,000 users in pairs) at each RATE for SECONDS.
CPU is each server thread's time on a CPU from /proc/<pid>/task/<tid>/schedstat (nanoseconds, every
thread of every server process; /proc/<pid>/stat's clock ticks are too coarse at 250 msgs/s: 1,250
messages, a tick each side of each of six processes). Prints one JSON line per step, then per build
and rate the median of the rounds and on versus off, and the latency quantiles of every message of
every round pooled (loadgen --lat-log): one step's p99 at 250 msgs/s is its 13th slowest message,
which a single stall of a shared machine decides. Not part of `make bench` (run.py's push column
runs the same procedure).
usage: python3 tests/bench/push_chat_bench.py [--rates 250,4000] [--seconds 5] [--rounds 2] (push on first in every other round)
       [--builds NAME=DIR,...] (default: the one build in MEERKAT_BUILD) [--nice N]
--nice -20 (root) runs the clusters, the receiver and loadgen ahead of other jobs on a shared
machine: nearer a quiet machine's latency, and the other jobs lose little at low rates."""
import argparse
import itertools
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run  # noqa: E402


def pusher_frames(srv):
    m = re.search(r'id: pusher.0, bus: "[^"]*", metrics: "([^"]*)"', open(srv.cfg).read())
    if not m:
        return {}
    txt = urllib.request.urlopen("http://%s/metrics" % m.group(1), timeout=2).read().decode()
    out = {}
    for key, metric, label in (("pusher_frames", "meerkat_bus_frames_total", "received"),
                               ("pusher_envelopes", "meerkat_bus_envelopes_received_total", None)):
        out[key] = sum(float(line.split()[-1]) for line in txt.splitlines()
                       if line.startswith(metric) and (label is None or label in line))
    return out


def context_switches(root):
    t = run.proc_table()
    n = 0
    for p in run.tree(root, t):
        try:
            for tid in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{tid}/status") as f:
                    n += sum(int(line.split()[1]) for line in f if "ctxt_switches" in line)
        except OSError:
            pass
    return n


def per_process(root):
    """{process name: CPU seconds} of every process under root (run.cpu_ns_by_process)."""
    return {k: v / 1e9 for k, v in run.cpu_ns_by_process([root]).items()}


def one_cluster(cls, build, base, cert, key, args, label, pipeline=1):
    run.BUILD = build
    srv = cls(base, cert, key, None)
    srv.pipeline = pipeline
    why = srv.installed() or srv.start(mam=False)
    if why:
        srv.stop()
        sys.exit(f"{label} {cls.name}: {why}")
    rows = []
    try:
        keys = os.path.join(srv.dir, "keys")
        run.loadgen(args, srv.port, keys, ["--scenario", "register", "--users", "1000", "--concurrency", "100"], 600)
        run.wait_quiet(srv.roots())
        snap = {}

        def on_line(d, p):
            if d.get("event") == "step_start":
                snap.update(cpu=per_process(srv.proc.pid), frames=pusher_frames(srv),
                            cs=context_switches(srv.proc.pid))
            elif d.get("event") == "step":
                n = max(d["delivered"], 1)
                cpu = per_process(srv.proc.pid)
                us = {k: (v - snap["cpu"].get(k, 0)) * 1e6 / n for k, v in cpu.items()}
                res = {"build": label, "mode": "on" if cls is run.MeerkatPush else "off", "rate": d["rate"],
                       "delivered": d["delivered"], "within_1s": d["within_1s"], "p99_ms": d["p99_ms"],
                       "server_cpu_us_per_msg": round(sum(us.values()), 1)}
                res.update({k: round(v, 1) for k, v in sorted(us.items()) if v > 0})
                res["context_switches_per_msg"] = round((context_switches(srv.proc.pid) - snap["cs"]) / n, 2)
                frames = pusher_frames(srv)
                res.update({k + "_per_msg": round((v - snap["frames"][k]) / n, 3) for k, v in frames.items()})
                res["load_average_1m"] = round(os.getloadavg()[0], 2)
                print(json.dumps(res), flush=True)
                rows.append(res)
        lat_log = os.path.join(srv.dir, "latency.log")
        run.loadgen(args, srv.port, keys, ["--scenario", "chat", "--users", "1000", "--rates", args.rates,
                                           "--duration", str(args.seconds), "--lat-log", lat_log], 600, on_line)
        # Every message's latency, kept per step (the step's index in --rates) for the pooled quantiles.
        steps = [float(r) for r in args.rates.split(",")]
        for r in rows:
            r["_lat"] = []
        by_rate = {r["rate"]: r for r in rows}
        with open(lat_log) as f:
            for line in f:
                v = line.split()
                if len(v) == 4 and int(v[0]) < len(steps) and steps[int(v[0])] in by_rate:
                    by_rate[steps[int(v[0])]]["_lat"].append(int(v[2]) / 1000.0)
        if args.lat_dir:
            os.makedirs(args.lat_dir, exist_ok=True)
            n = sum(1 for f in os.listdir(args.lat_dir) if f.startswith(f"{label}-"))
            shutil.copy(lat_log, os.path.join(args.lat_dir, f"{label}-{rows[0]['mode'] if rows else 'x'}-{n}.log"))
    finally:
        srv.stop()
        shutil.rmtree(srv.dir, ignore_errors=True)
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rates", default="250,4000,8000,16000")
    ap.add_argument("--seconds", type=float, default=5)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--builds", default="", help="NAME=DIR[:PIPELINE],... (push on runs for each, its backend with "
                    "that pipeline, default 1; push off with the first)")
    ap.add_argument("--off-each", action="store_true", help="push off with every build too, not only the first")
    ap.add_argument("--lat-dir", default="", help="keep each run's loadgen --lat-log in DIR as BUILD-MODE-N.log")
    ap.add_argument("--nice", type=int, default=0, help="niceness increment for this run and its children "
                    "(negative needs root)")
    args = ap.parse_args()
    if args.nice:
        os.nice(args.nice)
    builds = [tuple(b.split("=", 1)) for b in args.builds.split(",") if b] or [("build", run.BUILD)]
    depth = {label: int(path.rsplit(":", 1)[1]) if ":" in path else 1 for label, path in builds}
    builds = [(label, path.rsplit(":", 1)[0] if ":" in path else path) for label, path in builds]
    base = tempfile.mkdtemp(prefix="meerkat-pushchat-")
    os.chmod(base, 0o755)
    cert, key = os.path.join(base, "cert.pem"), os.path.join(base, "key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-keyout", key, "-out", cert, "-days", "30", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost"], check=True, capture_output=True)
    rows = []
    try:
        for n in range(args.rounds):
            for i, (label, path) in enumerate(builds):
                runs = [(run.MeerkatPush, depth[label])]
                if i == 0 or args.off_each:
                    runs.insert(0, (run.Meerkat, 1))
                # Every other round push on goes first: a drift of the machine within a round
                # (load, page cache, thermal) falls on both sides alike.
                for cls, pipeline in (runs if n % 2 == 0 else runs[::-1]):
                    rows += one_cluster(cls, os.path.abspath(path), base, cert, key, args, label, pipeline)
    finally:
        shutil.rmtree(base, ignore_errors=True)

    def med(build, mode, rate, k):
        v = [r[k] for r in rows if r["mode"] == mode and r["rate"] == rate and (build is None or r["build"] == build)]
        return statistics.median(v) if v else None
    def pooled(build, mode, rate):
        """Every message of every round of (build, mode, rate), sorted: a step's own p99 at 250 msgs/s
        is its 13th slowest message of 1,250, which one stall of the machine decides."""
        return sorted(x for r in rows if r["mode"] == mode and r["rate"] == rate and (build is None or r["build"] == build)
                      for x in r["_lat"])

    def q(v, p):
        return v[int(p * (len(v) - 1) + 0.5)] if v else float("nan")
    print("\n| build | rate | off CPU us/msg | on CPU us/msg | on vs off | pusher us/msg | p99 off / on ms (median of rounds) |"
          " pooled p90 off / on | pooled p99 off / on | pooled p99.9 off / on |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for label, _ in builds:
        for rate in sorted({r["rate"] for r in rows}):
            off_build = label if args.off_each else builds[0][0]
            off = med(off_build, "off", rate, "server_cpu_us_per_msg")
            on = med(label, "on", rate, "server_cpu_us_per_msg")
            pu = med(label, "on", rate, "meerkat-pusher.pusher.0")
            p99 = (med(off_build, "off", rate, "p99_ms"), med(label, "on", rate, "p99_ms"))
            lo, ln = pooled(off_build, "off", rate), pooled(label, "on", rate)
            print(f"| {label} | {rate:,.0f} | {off:.1f} | {on:.1f} | {(on / off - 1) * 100:+.0f}% | "
                  f"{pu if pu is not None else 0:.1f} | {p99[0]:.1f} / {p99[1]:.1f} | "
                  + " | ".join(f"{q(lo, p):.2f} / {q(ln, p):.2f}" for p in (0.9, 0.99, 0.999)) + " |")

    print("\np99 of each round (a fresh cluster each: the rounds are the independent samples), and how often a"
          " random relabelling of the same rounds as off / on gives a difference of the medians at least as large"
          " (exact permutation test, two-sided): a small share says push changed p99, a large one that the"
          " difference is within what the rounds vary by.")
    print("\n| build | rate | p99 off, each round (ms) | p99 on, each round (ms) | median off / on | on - off | permutation p |")
    print("|---|---|---|---|---|---|---|")
    for label, _ in builds:
        off_build = label if args.off_each else builds[0][0]
        for rate in sorted({r["rate"] for r in rows}):
            a = [r["p99_ms"] for r in rows if r["mode"] == "off" and r["rate"] == rate and r["build"] == off_build]
            b = [r["p99_ms"] for r in rows if r["mode"] == "on" and r["rate"] == rate and r["build"] == label]
            if not a or not b:
                continue
            d = statistics.median(b) - statistics.median(a)
            p = permutation_p(a, b)
            print(f"| {label} | {rate:,.0f} | {', '.join(f'{x:.1f}' for x in a)} | {', '.join(f'{x:.1f}' for x in b)} | "
                  f"{statistics.median(a):.1f} / {statistics.median(b):.1f} | {d:+.1f} | {p:.2f} |")


def permutation_p(a, b):
    """Share of the ways to split a + b into groups of len(a) and len(b) whose difference of medians is
    at least as far from zero as the observed one (the observed split included, so never 0)."""
    v = a + b
    observed = abs(statistics.median(b) - statistics.median(a)) - 1e-9
    hits = total = 0
    for idx in itertools.combinations(range(len(v)), len(a)):
        chosen = set(idx)
        x = [v[i] for i in idx]
        y = [v[i] for i in range(len(v)) if i not in chosen]
        total += 1
        hits += abs(statistics.median(y) - statistics.median(x)) >= observed
    return hits / total


if __name__ == "__main__":
    main()
