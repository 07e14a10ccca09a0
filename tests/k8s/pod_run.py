"""tests/k8s/pod_run.py - runs one pod's containers as a Kubernetes node would, inside a network
namespace of its own (started by tests/integration/test_k8s.py as `unshare --net python3
pod_run.py SPEC.json`), and reports in JSON what the process really serves.

SPEC: {"init": [{"argv": [...], "env": {...}}], "main": {"argv": [...], "env": {...}},
       "metrics_port": N, "timeout": S}
Output (stdout, one JSON object): init return codes, then for the main process: /healthz,
/readyz and /metrics status and body excerpts, the TCP ports listening in the namespace,
its resident memory, and how long it took to exit after SIGTERM, with its exit status and the tail of its log."""
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request


def get(port, path):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as r:
            return r.status, r.read().decode(errors="replace")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")
    except OSError:
        return None, ""


def listening():
    ports = set()
    for f in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(f) as fh:
                next(fh)
                for line in fh:
                    parts = line.split()
                    if parts[3] == "0A":
                        ports.add(int(parts[1].rsplit(":", 1)[1], 16))
        except OSError:
            pass
    return sorted(ports)


def main():
    with open(sys.argv[1]) as f:
        spec = json.load(f)
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    out = {"init": []}
    for c in spec["init"]:
        r = subprocess.run(c["argv"], env=c["env"], capture_output=True, text=True, timeout=30)
        out["init"].append({"rc": r.returncode, "stderr": r.stderr[-500:]})
        if r.returncode != 0:
            print(json.dumps(out))
            return
    log = open(spec["log"], "wb")
    m = spec["main"]
    p = subprocess.Popen(m["argv"], env=m["env"], stdout=log, stderr=subprocess.STDOUT, cwd="/")
    port = spec["metrics_port"]
    end = time.monotonic() + spec["timeout"]
    health = (None, "")
    while time.monotonic() < end and p.poll() is None:
        health = get(port, "/healthz")
        if health[0] == 200:
            break
        time.sleep(0.05)
    out["healthz"] = health[0]
    out["readyz"], body = get(port, "/readyz")
    out["readyz_body"] = body[:200]
    out["metrics"], body = get(port, "/metrics")
    out["metrics_body"] = body
    out["listening"] = listening()
    out["alive"] = p.poll() is None
    try:
        with open(f"/proc/{p.pid}/status") as f:
            out["rss_kib"] = next(int(x.split()[1]) for x in f if x.startswith("VmRSS:"))
    except (OSError, StopIteration):
        out["rss_kib"] = None
    t0 = time.monotonic()
    if p.poll() is None:
        p.send_signal(signal.SIGTERM)
    try:
        out["rc"] = p.wait(spec["timeout"])
    except subprocess.TimeoutExpired:
        p.kill()
        out["rc"] = p.wait()
    out["stop_seconds"] = time.monotonic() - t0
    log.close()
    with open(spec["log"], errors="replace") as f:
        out["log_tail"] = f.read()[-3000:]
    print(json.dumps(out))


if __name__ == "__main__":
    main()
