"""tests/bench/rss_per_role.py - resident memory of each role, the figures behind the resources of
deploy/k8s: a cluster of one process per role (gd with a Redis), RSS idle, with N idle TLS
sessions on the c2s (loadgen), and the peak (VmHWM) after a chat step on top of them.

  MEERKAT_BUILD=build python3 tests/bench/rss_per_role.py [--users 2000] [--rate 1000]
Prints one JSON object: MiB per process at each point, and KiB per session on the c2s."""
import argparse
import json
import os
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "integration"))
from harness import BUILD, Cluster, free_port, wait_until  # noqa: E402
from test_gd_basic import redis_server  # noqa: E402

LOADGEN = os.path.join(BUILD, "bench", "loadgen")


def status(pid, key):
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(key + ":")) / 1024


def rss(c, key="VmRSS"):
    return {p["id"]: round(status(c.child_pid(p["id"]), key), 1) for p in c.procs}


def loadgen(c, keys, *args):
    r = subprocess.run([LOADGEN, "--port", str(c.c2s_port), "--keycache", keys, *args], capture_output=True,
                       text=True, timeout=900)
    return [json.loads(x) for x in r.stdout.splitlines() if x.startswith("{")]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--users", type=int, default=2000)
    ap.add_argument("--rate", type=int, default=1000)
    a = ap.parse_args()
    d = tempfile.mkdtemp(prefix="meerkat-rss-")
    rport = free_port()
    redis = redis_server(os.path.join(d, "redis"), rport)
    extra = ("limits: {auth_fail_per_ip: 1000000, auth_fail_per_user: 1000000, register_per_ip: 0, "
             "max_preauth_per_ip: 0}\n"
             f"gd: {{enabled: true, dc: dc-a, link: {{bind: \"tcp://127.0.0.1:{free_port()}\"}}, "
             f"redis: {{primary: \"127.0.0.1:{rport}\"}}}}")
    c = Cluster(d, c2s=1, router=1, mam=1, pusher=1, gd=1, extra=extra).start()
    out = {}
    try:
        keys = os.path.join(d, "keys")
        out["idle_mib"] = rss(c)
        r = loadgen(c, keys, "--scenario", "register", "--users", str(a.users), "--prefix", "idle",
                    "--concurrency", "50")
        assert r and r[-1]["failed"] == 0, r
        r = loadgen(c, keys, "--scenario", "register", "--users", "200", "--prefix", "chat", "--concurrency", "50")
        idle = subprocess.Popen([LOADGEN, "--port", str(c.c2s_port), "--keycache", keys, "--scenario", "idle",
                                 "--users", str(a.users), "--prefix", "idle", "--hold", "600", "--timeout", "900"],
                                stdout=subprocess.PIPE, text=True)
        line = idle.stdout.readline()
        assert json.loads(line)["sessions"] == a.users, line
        sessions_mib = rss(c)
        out["with_sessions_mib"] = sessions_mib
        out["c2s_kib_per_session"] = round((sessions_mib["c2s.0"] - out["idle_mib"]["c2s.0"]) * 1024 / a.users, 2)
        out["router_kib_per_session"] = round((sessions_mib["router.0"] - out["idle_mib"]["router.0"]) * 1024
                                              / a.users, 2)
        r = loadgen(c, keys, "--scenario", "chat", "--users", "200", "--prefix", "chat", "--rates", str(a.rate),
                    "--duration", "10")
        out["chat"] = r[-1] if r else None
        out["peak_mib"] = rss(c, "VmHWM")
        idle.terminate()
        idle.wait(30)
    finally:
        c.stop()
        redis.terminate()
    out["users"] = a.users
    print(json.dumps(out))


if __name__ == "__main__":
    main()
