"""tests/bench/gd_bench.py - global distribution's figures (issue 13): 1-1 chat between two data centers
(gd_bed: two network namespaces on this machine, one Meerkat cluster each) against the same chat inside
one data center, with no added delay and with 20 ms of added round trip; and the Redis commands per
login. Run by `make bench` (as root: it makes network namespaces); prints one JSON line and writes
docs/BENCHMARKS-GD.md.

Two beds, one after the other. The first has no proxy: the gd links go straight over the A-B veth, as
in a deployment, and the in-DC and cross-DC ramps alternate on it (in, cross, in, cross...), so that
both see the same machine. The second puts the bed's delaying TCP proxy (Python, in the namespaces) on
the gd links with 10 ms each way; the proxy is there only for the delay (it costs CPU of its own, which
would otherwise be charged to cross-DC).

Each ramp starts with a warm-up step (not counted: connections, caches, allocator) and every rate is run
GD_BENCH_REPEATS times (whole ramps, alternating); a run's max rate is the best of its ramps, so a single
stall of the shared machine does not decide it, and every ramp's steps are written out.

Latency is one way, sender to recipient (the generator stamps its monotonic clock into each body and
the same process receives), so 20 ms of added round trip (10 ms each way, on each link direction)
adds 10 ms to it."""
import json
import os
import shutil
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "integration"))
import run as R  # noqa: E402
from gd_bed import Bed  # noqa: E402
from harness import children_of  # noqa: E402

USERS = int(os.environ.get("GD_BENCH_USERS", "200"))          # 100 chat pairs
RATES = os.environ.get("GD_BENCH_RATES", "2000,4000,8000,12000,16000,20000,24000,28000,32000")
WARMUP_RATE = os.environ.get("GD_BENCH_WARMUP_RATE", "1000")
STEP_S = int(os.environ.get("GD_BENCH_STEP_SECONDS", "6"))
REPEATS = int(os.environ.get("GD_BENCH_REPEATS", "2"))
RTT_MS = 20
ROLES = ("c2s", "router", "mam", "gd")


def cpu_s(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def redis_commands(bed):
    out = bed.redis_cli("a", "INFO", "stats").stdout
    for line in out.splitlines():
        if line.startswith("total_commands_processed:"):
            return int(line.split(":")[1])
    return 0


def role_pids(bed):
    """{role: [pids in both data centers]} of the Meerkat processes."""
    out = {r: [] for r in ROLES}
    for c in bed.dc.values():
        for pid in children_of(c.proc.pid):
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    args = f.read().split(b"\0")
            except OSError:
                continue
            for r in ROLES:
                if any(a.startswith(r.encode() + b".") for a in args):
                    out[r].append(pid)
    return out


def chat(bed, keys, label, cross, rep):
    a, b = bed.dc["a"], bed.dc["b"]
    other = b if cross else a
    pids = role_pids(bed)
    cpu0 = {r: sum(cpu_s(p) for p in ps) for r, ps in pids.items()}
    proxy0 = cpu_s(os.getpid()) if bed.proxies else 0.0
    load0 = os.getloadavg()[0]
    steps = []

    def on_line(d, p):
        if d.get("event") == "step":
            steps.append(d)
    t0 = time.monotonic()
    R.loadgen(None, a.c2s_port, keys, ["--host", a.host, "--host2", other.host, "--port2", str(other.c2s_port),
                                       "--scenario", "chat", "--users", str(USERS),
                                       "--rates", f"{WARMUP_RATE},{RATES}",
                                       "--duration", str(STEP_S), "--drain", "3", "--stop-below", "0.99"],
              600, on_line)
    wall = time.monotonic() - t0
    warm, steps = steps[:1], steps[1:]
    best = [s for s in steps if s["within_1s"] >= 0.99]
    top = max(best, key=lambda s: s["rate"]) if best else None
    delivered = sum(s["delivered"] for s in warm + steps)
    cpu = {r: sum(cpu_s(p) for p in ps) - cpu0[r] for r, ps in pids.items()}
    us = {r: round(v * 1e6 / max(delivered, 1), 1) for r, v in cpu.items()}
    if bed.proxies:
        us["proxy"] = round((cpu_s(os.getpid()) - proxy0) * 1e6 / max(delivered, 1), 1)
    r = {"label": label, "rep": rep, "warmup": warm[0] if warm else None, "steps": steps, "best_step": top,
         "cpu_us_per_msg": us, "load_1m_before": round(load0, 2), "load_1m_after": round(os.getloadavg()[0], 2),
         "wall_s": round(wall, 1)}
    R.log(f"  {label} #{rep}: " + ", ".join(f"{s['rate']:.0f}/s -> {s['within_1s'] * 100:.1f}% p50 {s['p50_ms']:.2f} "
                                            f"p99 {s['p99_ms']:.2f} ms" for s in steps) + f"; us/msg {us}")
    return r


def registered(bed, base):
    keys = os.path.join(base, "keys")
    a, b = bed.dc["a"], bed.dc["b"]
    R.loadgen(None, a.c2s_port, keys, ["--host", a.host, "--host2", b.host, "--port2", str(b.c2s_port),
                                       "--scenario", "register", "--users", str(USERS), "--concurrency", "50"], 300)
    return keys


def summary(runs):
    """The runs of one label folded: max rate = best over its ramps."""
    tops = [r["best_step"] for r in runs if r["best_step"]]
    top = max(tops, key=lambda s: (s["rate"], -s["p99_ms"])) if tops else None
    return {"label": runs[0]["label"], "best_step": top, "ramps": runs,
            "max_rates": [r["best_step"]["rate"] if r["best_step"] else 0 for r in runs]}


def main():
    if os.geteuid() != 0:
        sys.exit("gd_bench: needs root (network namespaces)")
    out = {"scenario": "gd", "users": USERS, "step_s": STEP_S, "repeats": REPEATS,
           "load_1m_at_start": round(os.getloadavg()[0], 2)}
    extra = ("limits: {shaper_bytes_per_sec: 0, auth_fail_per_ip: 1000000, auth_fail_per_user: 1000000, "
             "register_per_ip: 0, max_preauth_per_ip: 0}\nmodules:\n  register: {enabled: true}")
    runs = {"in_dc": [], "cross_dc": [], "cross_dc_20ms": []}
    base = tempfile.mkdtemp(prefix="meerkat-gdbench-")
    os.chmod(base, 0o755)
    with Bed(base, gd=True, proxy=False, log_level="warn", extra_yaml=extra) as bed:
        keys = registered(bed, base)
        # Redis commands per login (and logout) with GD on: a login/close cycle of every account.
        a, b = bed.dc["a"], bed.dc["b"]
        n0 = redis_commands(bed)
        R.loadgen(None, a.c2s_port, keys, ["--host", a.host, "--host2", b.host, "--port2", str(b.c2s_port),
                                           "--scenario", "login", "--users", str(USERS), "--concurrency", "20"], 300)
        out["redis_commands_per_login_and_close"] = round((redis_commands(bed) - n0) / USERS, 1)
        for rep in range(1, REPEATS + 1):
            runs["in_dc"].append(chat(bed, keys, "inside DC-A", False, rep))
            runs["cross_dc"].append(chat(bed, keys, "DC-A <-> DC-B", True, rep))
    shutil.rmtree(base, ignore_errors=True)
    base = tempfile.mkdtemp(prefix="meerkat-gdbench-")
    os.chmod(base, 0o755)
    with Bed(base, gd=True, proxy=True, log_level="warn", extra_yaml=extra) as bed:
        keys = registered(bed, base)
        for p in bed.proxies.values():
            p.delay = RTT_MS / 2000.0
        for rep in range(1, REPEATS + 1):
            runs["cross_dc_20ms"].append(chat(bed, keys, f"DC-A <-> DC-B, {RTT_MS} ms RTT added (proxy)", True, rep))
    shutil.rmtree(base, ignore_errors=True)
    for k, v in runs.items():
        out[k] = summary(v)
    rate = {k: (out[k]["best_step"] or {}).get("rate", 0) for k in runs}
    out["cross_over_in_dc_rate"] = round(rate["cross_dc"] / rate["in_dc"], 3) if rate["in_dc"] else None
    out["p99_added_by_rtt"] = p99_added(out)
    out["load_1m_at_end"] = round(os.getloadavg()[0], 2)
    print(json.dumps(out), flush=True)
    write_doc(out)


def best_per_rate(summ):
    """{rate: the step with the lowest p99 over the ramps that ran it}."""
    by = {}
    for r in summ["ramps"]:
        for s in r["steps"]:
            if s["rate"] not in by or s["p99_ms"] < by[s["rate"]]["p99_ms"]:
                by[s["rate"]] = s
    return by


def p99_added(out):
    """Per rate that both cross-DC runs delivered fully: p99 with the added RTT, without it, and
    what the delay added; the aim is met when the delay adds at most its one-way share + 2 ms."""
    plain, slow = best_per_rate(out["cross_dc"]), best_per_rate(out["cross_dc_20ms"])
    rows = []
    for rate in sorted(set(plain) & set(slow)):
        p, s = plain[rate], slow[rate]
        if p["within_1s"] < 0.99 or s["within_1s"] < 0.99:
            continue
        added = s["p99_ms"] - p["p99_ms"]
        rows.append({"rate": rate, "p99_plain_ms": p["p99_ms"], "p99_rtt_ms": s["p99_ms"], "added_ms": round(added, 2),
                     "met": added <= RTT_MS / 2 + 2})
    return rows


def write_doc(out):
    doc = os.path.join(R.ROOT, "docs", "BENCHMARKS-GD.md")
    with open(doc, "w") as f:
        f.write("# Global distribution benchmark\n\n"
                f"Written by `tests/bench/gd_bench.py` (`make bench`) on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}. "
                "Two data centers on one machine (tests/integration/gd_bed.py: network namespaces joined by a veth), "
                "each with 1 c2s, 1 router, 1 mam and 1 gd; one PostgreSQL (archive on), the Redis primary in DC-A and "
                "its replica in DC-B. The in-DC and cross-DC runs share one bed whose gd links go straight over the "
                "veth, and alternate on it; the 20 ms run is a second bed whose gd links go through the bed's TCP "
                f"proxy (Python), there only to add the delay. {out['users'] // 2} chat pairs; each ramp starts with a "
                f"warm-up step at {WARMUP_RATE} msgs/s (not counted), then {out['step_s']} s per step, stopping after "
                f"the first step under 99% delivered within 1 s; every run is {out['repeats']} ramps and its max rate "
                "is the best of them. Latency is one way, sender to recipient. Everything, the load generator "
                "included, shares the same 2 cores, and the machine was shared with other work during the run "
                f"(load average, 1 min: {out['load_1m_at_start']} at the start, {out['load_1m_at_end']} at the end; "
                "per ramp below): read the figures as rough.\n\n"
                "| run | max msgs/s with >= 99% delivered within 1 s (best; each ramp) | p50 / p99 ms at that rate |\n"
                "|---|---|---|\n")
        for k in ("in_dc", "cross_dc", "cross_dc_20ms"):
            r = out[k]
            s = r["best_step"]
            each = ", ".join(f"{x:.0f}" for x in r["max_rates"])
            f.write(f"| {r['label']} | {s['rate']:.0f} ({each}) | {s['p50_ms']:.2f} / {s['p99_ms']:.2f} |\n" if s else
                    f"| {r['label']} | none ({each}) | - |\n")
        f.write(f"\nCross-DC max rate / in-DC max rate: {out['cross_over_in_dc_rate']} (at the steps' granularity; "
                "aim >= 0.8). Redis commands per login and close, on the primary: "
                f"{out['redis_commands_per_login_and_close']}.\n\n"
                f"p99 with {RTT_MS} ms RTT added. A message crosses the inter-DC network once, so it pays one way of "
                f"the round trip ({RTT_MS // 2} ms); the aim (\"p99 within 2 ms of the added RTT\") is read as: at a "
                "rate both runs carry, the p99 with the delay is at most the p99 without it plus the delay's one-way "
                f"share plus 2 ms (here: added <= {RTT_MS // 2 + 2} ms). Anything that waited an extra round trip "
                f"(an ack, a window, a timer) would add {RTT_MS} ms or more. Per rate, the ramp with the lower p99:\n\n"
                "| offered msgs/s | p99 ms, no delay | p99 ms, 20 ms RTT | added ms | aim met |\n|---|---|---|---|---|\n")
        for row in out["p99_added_by_rtt"]:
            f.write(f"| {row['rate']:.0f} | {row['p99_plain_ms']:.2f} | {row['p99_rtt_ms']:.2f} | {row['added_ms']:.2f} | "
                    f"{'yes' if row['met'] else 'no'} |\n")
        f.write("\nCPU per message delivered, us, summed over both data centers' processes of each role (the whole "
                "ramp, warm-up included; for the 20 ms run, the proxy is the bench process's own CPU):\n\n"
                "| run | ramp | load 1 min before / after | " + " | ".join(ROLES) + " | proxy |\n"
                "|---|---|---|" + "---|" * (len(ROLES) + 1) + "\n")
        for k in ("in_dc", "cross_dc", "cross_dc_20ms"):
            for r in out[k]["ramps"]:
                us = r["cpu_us_per_msg"]
                f.write(f"| {r['label']} | {r['rep']} | {r['load_1m_before']} / {r['load_1m_after']} | " +
                        " | ".join(f"{us[x]}" for x in ROLES) + f" | {us.get('proxy', '-')} |\n")
        f.write("\nEvery step:\n\n| run | ramp | offered msgs/s | delivered within 1 s | p50 ms | p99 ms | p99.9 ms |\n"
                "|---|---|---|---|---|---|---|\n")
        for k in ("in_dc", "cross_dc", "cross_dc_20ms"):
            for r in out[k]["ramps"]:
                for s in ([r["warmup"]] if r["warmup"] else []) + r["steps"]:
                    tag = " (warm-up)" if s is r["warmup"] else ""
                    f.write(f"| {r['label']} | {r['rep']} | {s['rate']:.0f}{tag} | {s['within_1s'] * 100:.2f}% | "
                            f"{s['p50_ms']:.2f} | {s['p99_ms']:.2f} | {s['p999_ms']:.2f} |\n")


if __name__ == "__main__":
    main()
