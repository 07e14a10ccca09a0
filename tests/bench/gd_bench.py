"""tests/bench/gd_bench.py - global distribution's figures (issue 13): 1-1 chat between two data centers
(gd_bed: two network namespaces on this machine, one Meerkat cluster each, gd links through the bed's
TCP proxy) against the same chat inside one data center, with no added delay and with 20 ms of added
round trip; and the Redis commands per login. Run by `make bench` (as root: it makes network
namespaces); prints one JSON line and writes docs/BENCHMARKS-GD.md.

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

USERS = int(os.environ.get("GD_BENCH_USERS", "200"))          # 100 chat pairs
RATES = os.environ.get("GD_BENCH_RATES", "2000,4000,8000,12000,16000,24000")
STEP_S = int(os.environ.get("GD_BENCH_STEP_SECONDS", "4"))


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


def chat(bed, keys, label, cross):
    a, b = bed.dc["a"], bed.dc["b"]
    other = b if cross else a
    gd_pids = [c.child_pid("gd.0") for c in (a, b)]
    gd0 = [cpu_s(p) for p in gd_pids]
    steps = []

    def on_line(d, p):
        if d.get("event") == "step":
            steps.append(d)
    t0 = time.monotonic()
    R.loadgen(None, a.c2s_port, keys, ["--host", a.host, "--host2", other.host, "--port2", str(other.c2s_port),
                                       "--scenario", "chat", "--users", str(USERS), "--rates", RATES,
                                       "--duration", str(STEP_S), "--drain", "3", "--stop-below", "0.99"],
              300, on_line)
    wall = time.monotonic() - t0
    best = [s for s in steps if s["within_1s"] >= 0.99]
    top = max(best, key=lambda s: s["rate"]) if best else None
    delivered = sum(s["delivered"] for s in steps)
    gd_cpu = sum(cpu_s(p) - c for p, c in zip(gd_pids, gd0))
    r = {"label": label, "steps": steps, "best_step": top,
         "gd_cpu_us_per_msg": round(gd_cpu * 1e6 / max(delivered, 1), 1) if cross else None,
         "wall_s": round(wall, 1)}
    R.log(f"  {label}: " + ", ".join(f"{s['rate']:.0f}/s -> {s['within_1s'] * 100:.1f}% p50 {s['p50_ms']:.2f} "
                                     f"p99 {s['p99_ms']:.2f} ms" for s in steps))
    return r


def main():
    if os.geteuid() != 0:
        sys.exit("gd_bench: needs root (network namespaces)")
    base = tempfile.mkdtemp(prefix="meerkat-gdbench-")
    os.chmod(base, 0o755)
    out = {"scenario": "gd", "users": USERS}
    extra = ("limits: {shaper_bytes_per_sec: 0, auth_fail_per_ip: 1000000, auth_fail_per_user: 1000000, "
             "register_per_ip: 0, max_preauth_per_ip: 0}\nmodules:\n  register: {enabled: true}")
    with Bed(base, gd=True, log_level="warn", extra_yaml=extra) as bed:
        keys = os.path.join(base, "keys")
        a, b = bed.dc["a"], bed.dc["b"]
        R.loadgen(None, a.c2s_port, keys, ["--host", a.host, "--host2", b.host, "--port2", str(b.c2s_port),
                                           "--scenario", "register", "--users", str(USERS), "--concurrency", "50"], 300)
        # Redis commands per login (and logout) with GD on: a login/close cycle of every account.
        n0 = redis_commands(bed)
        R.loadgen(None, a.c2s_port, keys, ["--host", a.host, "--host2", b.host, "--port2", str(b.c2s_port),
                                           "--scenario", "login", "--users", str(USERS), "--concurrency", "20"], 300)
        out["redis_commands_per_login_and_close"] = round((redis_commands(bed) - n0) / USERS, 1)

        out["in_dc"] = chat(bed, keys, "inside DC-A", cross=False)
        out["cross_dc"] = chat(bed, keys, "DC-A <-> DC-B", cross=True)
        for p in bed.proxies.values():
            p.delay = 0.010
        out["cross_dc_20ms"] = chat(bed, keys, "DC-A <-> DC-B, 20 ms RTT added", cross=True)
        for p in bed.proxies.values():
            p.delay = 0.0
    shutil.rmtree(base, ignore_errors=True)
    rate = {k: (out[k]["best_step"] or {}).get("rate", 0) for k in ("in_dc", "cross_dc", "cross_dc_20ms")}
    out["cross_over_in_dc_rate"] = round(rate["cross_dc"] / rate["in_dc"], 3) if rate["in_dc"] else None
    out["load_average_1m_at_end"] = round(os.getloadavg()[0], 2)
    print(json.dumps(out), flush=True)
    write_doc(out)


def write_doc(out):
    doc = os.path.join(R.ROOT, "docs", "BENCHMARKS-GD.md")
    with open(doc, "w") as f:
        f.write("# Global distribution benchmark\n\n"
                f"Written by `tests/bench/gd_bench.py` (`make bench`) on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}. "
                "Two data centers on one machine (tests/integration/gd_bed.py: network namespaces joined by a veth), "
                "each with 1 c2s, 1 router, 1 mam and 1 gd; one PostgreSQL (archive on), the Redis primary in DC-A and "
                "its replica in DC-B; the gd links through the bed's TCP proxy (Python, in the namespaces), which adds "
                f"the delay. {out['users'] // 2} chat pairs, {STEP_S} s per step; latency is one way, sender to "
                "recipient. Everything, the load generator included, shares the same 2 cores.\n\n"
                "| run | max msgs/s with >= 99% delivered within 1 s | p50 / p99 ms at that rate | gd CPU us per message (both DCs) |\n"
                "|---|---|---|---|\n")
        for k in ("in_dc", "cross_dc", "cross_dc_20ms"):
            r = out[k]
            s = r["best_step"]
            f.write(f"| {r['label']} | {s['rate']:.0f} | {s['p50_ms']:.2f} / {s['p99_ms']:.2f} | "
                    f"{r['gd_cpu_us_per_msg'] if r['gd_cpu_us_per_msg'] is not None else '-'} |\n" if s else
                    f"| {r['label']} | none | - | - |\n")
        f.write(f"\nCross-DC max rate / in-DC max rate: {out['cross_over_in_dc_rate']} (at the steps' granularity). "
                f"Redis commands per login and close, on the primary: {out['redis_commands_per_login_and_close']}. "
                "gd CPU per message: both gd processes' CPU over the whole run (logins, refresh and heartbeats "
                "included) over the messages delivered. Load average (1 min) at the end: "
                f"{out['load_average_1m_at_end']} (a shared machine: read the figures as rough).\n\n"
                "Every step:\n\n| run | offered msgs/s | delivered within 1 s | p50 ms | p99 ms | p99.9 ms |\n|---|---|---|---|---|---|\n")
        for k in ("in_dc", "cross_dc", "cross_dc_20ms"):
            for s in out[k]["steps"]:
                f.write(f"| {out[k]['label']} | {s['rate']:.0f} | {s['within_1s'] * 100:.2f}% | {s['p50_ms']:.2f} | "
                        f"{s['p99_ms']:.2f} | {s['p999_ms']:.2f} |\n")


if __name__ == "__main__":
    main()
