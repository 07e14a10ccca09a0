"""tests/bench/muc_bench.py - one group chat room with 1,000 occupants: groupchat messages/s delivered to every occupant, latency to the last occupant, router CPU per fanned-out copy, and the router's event-loop lag while it fans out.

    MEERKAT_BUILD=build /usr/bin/python3 tests/bench/muc_bench.py [--users 1000] [--rates 10,20,50]
                                                                  [--senders 4] [--duration 4] [--routers 1]

A cluster of one c2s and one router (modules.muc on; the room, its occupants and their
sessions all live on that one router shard) and one mam. loadgen registers the users,
logs them in, joins every one to one room (no history) and then, for each step of
--rates, has --senders of them send groupchat messages at that total rate. For each
step: messages that reached every occupant per second, p50/p99 of the latency to the
last occupant (and of every single copy), the CPU of the router and of the c2s (from
/proc) per copy fanned out, and the router's meerkat_loop_lag_seconds histogram over the
step (the difference of two scrapes): a fan-out that blocked the shard would show as
lag samples as long as the fan-out. Stops after the first step where fewer than 99%
of the messages reach every occupant within 1 s.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "integration"))
BUILD = os.path.abspath(os.environ.get("MEERKAT_BUILD", "build"))
ROOM = "bench@conference.localhost"


def proc_cpu_s(pid):
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def lag_buckets(c, proc_id):
    """The router's meerkat_loop_lag_seconds histogram: {le: cumulative count}."""
    from harness import http_get
    out = {}
    for line in http_get(c.metrics_port(proc_id), "/metrics")[1].splitlines():
        if line.startswith("meerkat_loop_lag_seconds_bucket{"):
            le = line.split(' le="', 1)[1].split('"', 1)[0] if ' le="' in line else \
                line.split(',le="', 1)[1].split('"', 1)[0] if ',le="' in line else line.split('{le="', 1)[1].split('"', 1)[0]
            out[float("inf") if le == "+Inf" else float(le)] = float(line.rsplit(" ", 1)[1])
    return out


def lag_summary(before, after):
    """Samples, p99 bucket bound and the largest non-empty bucket bound over the step."""
    d = sorted((le, after[le] - before.get(le, 0)) for le in after)
    total = d[-1][1] if d else 0
    p99 = mx = 0.0
    for le, cum in d:
        if p99 == 0.0 and total and cum >= 0.99 * total:
            p99 = le
    prev = 0
    for le, cum in d:
        if cum > prev:
            mx = le
        prev = cum
    return int(total), p99, mx


def fanout_us(c, since):
    """The router's own time per groupchat fan-out (its muc_groupchat debug line: copies,
    microseconds in the one loop turn) logged after byte offset since; and the new offset."""
    with open(c.log_path, "rb") as f:
        f.seek(since)
        text = f.read()
    us = []
    for line in text.decode(errors="replace").splitlines():
        if "muc_groupchat" in line and " us=" in line:
            us.append(int(line.split(" us=", 1)[1].split()[0]))
    return sorted(us), since + len(text)


def q(v, f):
    return v[min(len(v) - 1, int(f * (len(v) - 1) + 0.5))] if v else 0


def fmt_le(v):
    return "> 5 s" if v == float("inf") else "<= %g ms" % (v * 1000)


def main():
    from harness import Cluster
    ap = argparse.ArgumentParser()
    ap.add_argument("--users", type=int, default=1000)
    ap.add_argument("--rates", default="10,20,50")
    ap.add_argument("--senders", type=int, default=4)
    ap.add_argument("--duration", type=float, default=4)
    ap.add_argument("--routers", type=int, default=1)
    a = ap.parse_args()
    loadgen = os.path.join(BUILD, "bench", "loadgen")
    tmp = tempfile.mkdtemp(prefix="meerkat-muc-bench-")
    c = Cluster(tmp, c2s=1, router=a.routers, mam=1, pusher=0, gd=0,
                extra="modules:\n  register: {enabled: true}\n"
                "  muc: {enabled: true, max_occupants: %d}\n"
                "limits: {shaper_bytes_per_sec: 0, auth_fail_per_ip: 1000000, auth_fail_per_user: 1000000, register_per_ip: 0, "
                "max_preauth_per_ip: 0}" % (a.users + 10))
    c.start()
    steps = []
    join = None
    muc = None
    try:
        keys = os.path.join(tmp, "keys")
        base = [loadgen, "--port", str(c.c2s_port), "--keycache", keys, "--timeout", "100", "--users", str(a.users)]
        subprocess.run(base + ["--scenario", "register", "--concurrency", "20"], check=True, capture_output=True)
        from harness import shard_of
        routers = ["router.%d" % i for i in range(a.routers)]
        home = shard_of(ROOM, routers)   # the room's shard: its loop lag is shown
        pids = [c.child_pid(r) for r in routers]
        c2s = c.child_pid("c2s.0")

        def router_cpu():
            return sum(proc_cpu_s(p) for p in pids)

        muc = subprocess.Popen(base + ["--scenario", "muc", "--room", ROOM, "--senders", str(a.senders),
                                       "--rates", a.rates, "--duration", str(a.duration), "--drain", "3"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for line in muc.stdout:
            ev = json.loads(line)
            if ev.get("event") == "online":
                j0, jlag0 = router_cpu(), lag_buckets(c, home)
            if ev.get("event") == "joined":
                join = dict(ev, router_cpu_s=router_cpu() - j0, lag=lag_summary(jlag0, lag_buckets(c, home)))
            if ev.get("event") in ("online", "joined"):
                print("  " + line.strip(), file=sys.stderr)
            elif ev.get("event") == "step_start":
                r0, c0, lag0 = router_cpu(), proc_cpu_s(c2s), lag_buckets(c, home)
                c.log.flush()
                log0 = os.path.getsize(c.log_path)
            elif ev.get("event") == "step":
                ev["router_cpu_s"] = router_cpu() - r0
                ev["c2s_cpu_s"] = proc_cpu_s(c2s) - c0
                ev["lag"] = lag_summary(lag0, lag_buckets(c, home))
                us, _ = fanout_us(c, log0)
                ev["fanout_ms"] = [len(us), q(us, 0.5) / 1000, q(us, 0.99) / 1000, (us[-1] if us else 0) / 1000]
                print("  " + json.dumps(ev), file=sys.stderr)
                steps.append(ev)
        muc.wait()
        err = muc.stderr.read()
        if err:
            print(err[-1500:], file=sys.stderr)
        assert steps, "loadgen gave no step: " + err[-500:]
    finally:
        if muc is not None and muc.poll() is None:
            muc.kill()
            muc.wait()
        c.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    print()
    print("1 c2s, %d router(s), 1 mam on %d cores; one room with %d occupants (%s); "
          "%d senders; %g s per step:" % (a.routers, os.cpu_count(), steps[0]["occupants"],
                                          "all on the room's router shard" if a.routers == 1 else
                                          "their bare JIDs spread over the shards", a.senders, a.duration))
    print("| offered msgs/s | delivered to all /s | within 1 s | p50 / p99 to last occupant (ms) "
          "| p99 per copy (ms) | router CPU us/copy | c2s CPU us/copy | one fan-out in the router: p50 / p99 / max (ms) "
          "| router loop lag: samples, p99, max |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for s in steps:
        n = max(s["copies"], 1)
        samples, p99, mx = s["lag"]
        f = s["fanout_ms"]
        print("| %d | %.1f | %.1f%% | %.1f / %.1f | %.1f | %.2f | %.2f | %.1f / %.1f / %.1f | %d, %s, %s |" % (
            s["rate"], s["delivered_to_all_per_s"], 100 * s["within_1s"], s["last_p50_ms"], s["last_p99_ms"],
            s["copy_p99_ms"], s["router_cpu_s"] / n * 1e6, s["c2s_cpu_s"] / n * 1e6, f[1], f[2], f[3], samples,
            fmt_le(p99),
            fmt_le(mx)))
    if join is not None:
        samples, p99, mx = join["lag"]
        print()
        print("The joins before the steps: %d users join one after the other's self-presence, %d presences in all "
              "(every occupant gets every occupant's): %.2f s, router CPU %.2f s, router loop lag: %d samples, "
              "p99 %s, max %s." % (join["occupants"], join["occupants"] ** 2, join["join_seconds"], join["router_cpu_s"],
                                   samples, fmt_le(p99), fmt_le(mx)))


if __name__ == "__main__":
    main()
