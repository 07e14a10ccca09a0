"""tests/bench/custody_bench.py - chat CPU per message with the router's custody table off and on.

    MEERKAT_BUILD=build /usr/bin/python3 tests/bench/custody_bench.py [--rounds 2] [--rate 1000] [--users 200] [--sm]

A cluster of one c2s, one router and one mam (meerkat start). loadgen logs the users in
and chats in pairs at a fixed rate to bare JIDs (with --sm: XEP-0198 on, acknowledging
the server's <r/>, so a kept copy is done when the client's <a h/> comes):
  off   limits.custody_max_per_c2s: 0 (no copy kept, no CustodyDone)
  on    the default: each message Deliver kept by the router until the c2s reports it
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

from carbons_bench import BUILD, proc_cpu_s   # also puts tests/integration on the path


def once(tmp, custody, sm, rate, duration, users):
    from harness import Cluster
    loadgen = os.path.join(BUILD, "bench", "loadgen")
    d = tempfile.mkdtemp(dir=tmp)
    c = Cluster(d, c2s=1, router=1, mam=1, pusher=0, gd=0,
                extra="modules:\n  register: {enabled: true}\n"
                "limits: {auth_fail_per_ip: 1000000, auth_fail_per_user: 1000000, register_per_ip: 0"
                + ("" if custody else ", custody_max_per_c2s: 0") + "}")
    c.start()
    try:
        keys = os.path.join(d, "keys")
        base = [loadgen, "--port", str(c.c2s_port), "--keycache", keys, "--timeout", "180", "--users", str(users)]
        subprocess.run(base + ["--scenario", "register", "--concurrency", "20"], check=True, capture_output=True)
        pids = [c.child_pid(p["id"]) for p in c.procs]
        chat = subprocess.Popen(base + ["--scenario", "chat", "--rates", str(rate), "--duration", str(duration),
                                        "--drain", "3"] + (["--sm"] if sm else []),
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        step = None
        for line in chat.stdout:
            if '"step_start"' in line:
                cpu0 = sum(proc_cpu_s(p) for p in pids)
            elif '"event":"step"' in line:
                cpu = sum(proc_cpu_s(p) for p in pids) - cpu0
                step = json.loads(line)
        chat.wait()
        assert step is not None and step["sent"] > 0 and step["delivered"] == step["sent"], step
        return step["delivered"], cpu
    finally:
        c.stop()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--rate", type=int, default=1000)
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--users", type=int, default=200)
    ap.add_argument("--sm", action="store_true")
    a = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="meerkat-custody-bench-")
    try:
        total = {False: [0, 0.0], True: [0, 0.0]}
        for r in range(a.rounds):
            for custody in ((False, True) if r % 2 == 0 else (True, False)):
                n, cpu = once(tmp, custody, a.sm, a.rate, a.duration, a.users)
                total[custody][0] += n
                total[custody][1] += cpu
                print("  round %d custody %s: delivered=%d cpu=%.2fs" % (r, "on" if custody else "off", n, cpu),
                      file=sys.stderr)
        print()
        print("1 c2s, 1 router, 1 mam; %d users; chat at %d msg/s for %d s; stream management %s; %d rounds:"
              % (a.users, a.rate, a.duration, "on" if a.sm else "off", a.rounds))
        print("| custody | messages delivered | CPU s (c2s+router+mam, chat only) | CPU us/message |")
        print("|---|---:|---:|---:|")
        for custody in (False, True):
            n, cpu = total[custody]
            print("| %s | %d | %.2f | %.1f |" % ("on" if custody else "off", n, cpu, cpu / n * 1e6))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
