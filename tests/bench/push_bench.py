"""tests/bench/push_bench.py - the event pusher's figure (issue 12): events/s through one meerkat-pusher to a
local HTTP webhook receiver over keep-alive connections, and the pusher's CPU per event.

The emitter is tests/bench/push_inject (a c2s.0 sending events through common/push_emit on the
reliable channel, as c2s does); the receiver is tests/bench/http_sink (C, one loop, 200 at once).
An event counts when the pusher has acknowledged it, i.e. after the receiver's 200.
Run by `make bench`; prints one JSON line. PUSH_BENCH_EVENTS (default 200000) and
PUSH_BENCH_FORMAT (form | json, default form) change the run."""
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request

BUILD = os.environ.get("MEERKAT_BUILD", os.path.join(os.path.dirname(__file__), "..", "..", "build"))
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "integration"))
from harness import free_port  # noqa: E402

EVENTS = int(os.environ.get("PUSH_BENCH_EVENTS", "200000"))
FORMAT = os.environ.get("PUSH_BENCH_FORMAT", "form")


def ready(port):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as r:
            return r.status == 200
    except OSError:
        return False


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main():
    d = tempfile.mkdtemp(prefix="meerkat-pushbench-")
    sink_port = free_port()
    ports = {pid: (free_port(), free_port()) for pid in ("c2s.0", "router.0", "pusher.0")}  # router.0 is configured (required), never started
    secret = os.path.join(d, "hmac")
    with open(secret, "w") as f:
        f.write("bench-secret\n")
    os.chmod(secret, 0o600)
    fmt = f"      format: json\n      secret_file: {secret}\n" if FORMAT == "json" else ""
    lines = ["domains: [localhost]", f"data_dir: {d}/var", "log: {level: warn}",
             "pusher:", "  max_pending_events: 100000", "  backends:",
             "    - name: bench", "      type: http", f"      url: http://127.0.0.1:{sink_port}/hook",
             "      events: [sent]", "      max_connections: 16", "      timeout_ms: 30000",
             "      deadline_sec: 600", fmt.rstrip("\n"), "processes:"]
    for pid, (bus, met) in ports.items():
        lines.append(f'  - {{id: {pid}, bus: "tcp://127.0.0.1:{bus}", metrics: "127.0.0.1:{met}"}}')
    cfg = os.path.join(d, "meerkat.yaml")
    with open(cfg, "w") as f:
        f.write("\n".join(l for l in lines if l) + "\n")
    os.makedirs(os.path.join(d, "var"), exist_ok=True)

    procs = []
    try:
        sink = subprocess.Popen([os.path.join(BUILD, "bench", "http_sink"), str(sink_port)],
                                stdout=subprocess.PIPE, text=True)
        procs.append(sink)
        assert sink.stdout.readline().startswith("listening"), "http_sink did not start"
        log = open(os.path.join(d, "pusher.log"), "ab")
        pusher = subprocess.Popen([os.path.join(BUILD, "meerkat-pusher"), "-c", cfg, "--id", "pusher.0"],
                                  stdout=log, stderr=subprocess.STDOUT, cwd=d)
        procs.append(pusher)
        end = time.monotonic() + 15
        while not ready(ports["pusher.0"][1]):
            if time.monotonic() > end or pusher.poll() is not None:
                sys.exit("meerkat-pusher did not become ready; see " + os.path.join(d, "pusher.log"))
            time.sleep(0.05)
        cpu0 = cpu_seconds(pusher.pid)
        env = dict(os.environ, PUSH_INJECT_EVENTS=str(EVENTS))
        sink_cpu0 = cpu_seconds(sink.pid)
        ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        r = subprocess.run([os.path.join(BUILD, "bench", "push_inject"), "-c", cfg, "--id", "c2s.0"],
                           capture_output=True, text=True, env=env, timeout=600, cwd=d)
        ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu1 = cpu_seconds(pusher.pid)
        sink_cpu1 = cpu_seconds(sink.pid)
        if r.returncode != 0:
            sys.exit("push_inject failed: " + r.stdout + r.stderr)
        res = dict(kv.split("=") for kv in r.stdout.split())
        sink.send_signal(signal.SIGTERM)
        counts = dict(kv.split("=") for kv in sink.stdout.readline().split())
        sink.wait(10)
        events = int(res["events"])
        out = {
            "scenario": "push_http",
            "format": FORMAT,
            "events": events,
            "seconds": float(res["seconds"]),
            "events_per_s": round(float(res["events_per_s"])),
            "dropped": int(res["dropped"]),
            "receiver_requests": int(counts["requests"]),
            "receiver_connections": int(counts["connections"]),
            "pusher_cpu_us_per_event": round((cpu1 - cpu0) * 1e6 / max(events, 1), 1),
            "emitter_cpu_us_per_event": round((ru1.ru_utime + ru1.ru_stime - ru0.ru_utime - ru0.ru_stime)
                                              * 1e6 / max(events, 1), 1),
            "receiver_cpu_us_per_event": round((sink_cpu1 - sink_cpu0) * 1e6 / max(events, 1), 1),
            "load_average_1m": os.getloadavg()[0],
        }
        print(json.dumps(out))
        print(f"push: {out['events_per_s']} events/s through one pusher to a local HTTP receiver "
              f"({FORMAT}, {out['receiver_connections']} keep-alive connections, "
              f"{out['pusher_cpu_us_per_event']} us pusher CPU per event; emitter "
              f"{out['emitter_cpu_us_per_event']} us, receiver {out['receiver_cpu_us_per_event']} us; "
              f"load average {out['load_average_1m']:.1f} on {os.cpu_count()} CPUs)")
        if out["receiver_requests"] < events - out["dropped"]:
            sys.exit("the receiver got fewer requests than events acknowledged")
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
        if os.environ.get("PUSH_BENCH_KEEP") is None:
            shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    main()
