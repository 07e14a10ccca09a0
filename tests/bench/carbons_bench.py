"""tests/bench/carbons_bench.py - chat CPU per message with XEP-0280 carbons off and on.

    MEERKAT_BUILD=build /usr/bin/python3 tests/bench/carbons_bench.py [--rounds 3] [--rate 1000] [--users 200]

A cluster of one c2s, one router and one mam (meerkat start). loadgen logs the users in
(resource "lg") and chats in pairs at a fixed rate to bare JIDs; meanwhile a second
loadgen holds a second resource of every account at priority -1 (so RFC 6121 gives it
no bare-JID message):
  off   the second resource has carbons off: one delivery per message
  on    the second resource has carbons on: every message also gives a sent copy to
        the sender's second resource and a received copy to the recipient's
The CPU of the three processes (from /proc) over the chat step, per message delivered.
Modes alternate within each round so that a shared machine loads both alike.
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


def proc_cpu_s(pid):
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def carbon_copies(c):
    from harness import http_get
    total = 0.0
    for p in c.procs:
        if p["id"].startswith("router."):
            for line in http_get(p["metrics"], "/metrics")[1].splitlines():
                if line.startswith("meerkat_router_delivered_total{") and 'kind="carbon"' in line:
                    total += float(line.rsplit(" ", 1)[1])
    return total


def once(tmp, carbons, rate, duration, users):
    from harness import Cluster, wait_until
    loadgen = os.path.join(BUILD, "bench", "loadgen")
    d = tempfile.mkdtemp(dir=tmp)
    c = Cluster(d, c2s=1, router=1, mam=1, pusher=0, gd=0,
                extra="modules:\n  register: {enabled: true}\n"
                "limits: {auth_fail_per_ip: 1000000, auth_fail_per_user: 1000000, register_per_ip: 0}")
    c.start()
    idle = None
    try:
        keys = os.path.join(d, "keys")
        base = [loadgen, "--port", str(c.c2s_port), "--keycache", keys, "--timeout", "180", "--users", str(users)]
        subprocess.run(base + ["--scenario", "register", "--concurrency", "20"], check=True, capture_output=True)
        idle = subprocess.Popen(base + ["--scenario", "idle", "--resource", "idle", "--priority", "-1", "--hold", "600"]
                                + (["--carbons"] if carbons else []),
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        # idle prints its figures once every account is online
        line = idle.stdout.readline()
        assert line, "idle loadgen ended"
        pids = [c.child_pid(p["id"]) for p in c.procs]
        chat = subprocess.Popen(base + ["--scenario", "chat", "--rates", str(rate), "--duration", str(duration),
                                        "--drain", "3"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        step = None
        for line in chat.stdout:
            if '"step_start"' in line:
                cpu0, cc0 = sum(proc_cpu_s(p) for p in pids), carbon_copies(c)
            elif '"event":"step"' in line:
                cpu = sum(proc_cpu_s(p) for p in pids) - cpu0
                step = json.loads(line)
                # the copies of the last messages may still be on their way
                wait_until(lambda: not carbons or carbon_copies(c) - cc0 >= 2 * step["delivered"], 5)
                copies = carbon_copies(c) - cc0
        chat.wait()
        assert step is not None and step["sent"] > 0 and step["delivered"] == step["sent"], step
        return step["delivered"], cpu, copies
    finally:
        if idle is not None:
            idle.kill()
            idle.wait()
        c.stop()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--rate", type=int, default=1000)
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--users", type=int, default=200)
    a = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="meerkat-carbons-bench-")
    try:
        total = {False: [0, 0.0, 0.0], True: [0, 0.0, 0.0]}
        for r in range(a.rounds):
            for carbons in ((False, True) if r % 2 == 0 else (True, False)):
                n, cpu, copies = once(tmp, carbons, a.rate, a.duration, a.users)
                t = total[carbons]
                t[0] += n
                t[1] += cpu
                t[2] += copies
                print("  round %d carbons %s: delivered=%d cpu=%.2fs copies=%d" % (r, "on" if carbons else "off", n,
                                                                                  cpu, copies), file=sys.stderr)
        print()
        print("1 c2s, 1 router, 1 mam; %d users each with a second resource at priority -1; chat at %d msg/s for "
              "%d s; %d rounds:" % (a.users, a.rate, a.duration, a.rounds))
        print("| carbons | messages delivered | carbon copies | CPU s (c2s+router+mam, chat only) | CPU us/message |")
        print("|---|---:|---:|---:|---:|")
        for carbons in (False, True):
            n, cpu, copies = total[carbons]
            print("| %s | %d | %d | %.2f | %.1f |" % ("on" if carbons else "off", n, copies, cpu, cpu / n * 1e6))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
