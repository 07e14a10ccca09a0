"""tests/bench/bus_curve.py - what CURVE costs on the bus, with and without it back to back: two bus_peer processes, and a whole cluster under chat load.

    MEERKAT_BUILD=build /usr/bin/python3 tests/bench/bus_curve.py [--rounds 3] [--cluster-only | --peers-only]

Part 1 (bus_peer): CPU of a sender and a receiver (reliable channel with acks).
(build/bench/bus_curve_frames gives the raw cost of CURVE per ZeroMQ frame by size.)

Three loads: a flood (the sender hands everything over at once: 64 KiB batches), and
two paced rates (each millisecond's envelopes leave as one frame: small batches, as in
a chat cluster). Prints CPU seconds (user+sys of both processes, from wait4) per mode,
and microseconds of CPU per envelope and per frame. Modes alternate within each round
so that a machine shared with other work loads both alike.

Part 2 (cluster): a cluster of one c2s, one router and one mam (meerkat start) with
bus.curve false, then true, alternating; loadgen logs 200 users in and chats at a
fixed rate; the CPU of the three processes over the chat step (from /proc) per
message delivered, and bus frames per message (meerkat_bus_frames_total).
"""
import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "integration"))
BUILD = os.path.abspath(os.environ.get("MEERKAT_BUILD", "build"))
BUS_PEER = os.path.join(BUILD, "tools", "bus_peer")


def free_ports(n):
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def cpu_of(proc):
    _, status, ru = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return ru.ru_utime + ru.ru_stime


def run_once(tmp, count, rate, curve):
    p_send, p_recv = free_ports(2)
    send_ep, recv_ep = "tcp://127.0.0.1:%d" % p_send, "tcp://127.0.0.1:%d" % p_recv
    extra = ["--curve", os.path.join(tmp, "keys")] if curve else []
    state = os.path.join(tmp, "state.txt")
    if os.path.exists(state):
        os.unlink(state)
    recv_log = os.path.join(tmp, "recv.log")
    with open(recv_log, "wb") as err:
        recv = subprocess.Popen([BUS_PEER, "recv", "--self", "r", "--inbox", recv_ep, "--peer", "s=" + send_ep,
                                 "--state", state] + extra, stdout=subprocess.DEVNULL, stderr=err)
    deadline = time.monotonic() + 10
    while b"recv_restored" not in open(recv_log, "rb").read():
        assert time.monotonic() < deadline and recv.poll() is None, open(recv_log).read()
        time.sleep(0.01)
    send_args = [BUS_PEER, "send", "--self", "s", "--inbox", send_ep, "--peer", "r=" + recv_ep,
                 "--count", str(count), "--timeout", "120"] + extra
    if rate:
        send_args += ["--rate", str(rate)]
    t0 = time.monotonic()
    sender = subprocess.Popen(send_args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out = sender.stdout.read()
    err = sender.stderr.read()
    cpu_send = cpu_of(sender)
    wall = time.monotonic() - t0
    assert sender.returncode == 0 and out.decode().splitlines()[0] == "sent=%d acked=%d" % (count, count), (sender.returncode, out, err)
    recv.send_signal(signal.SIGTERM)
    cpu_recv = cpu_of(recv)
    text = open(recv_log).read()
    frames = int(re.search(r"event=recv_done .* frames=(\d+)", text).group(1))
    m = re.search(rb"event=send_done envelopes=(\d+) frames=(\d+)", err)
    # envelopes as handed to the bus: a resend (the receiver's first hello) counts too
    return cpu_send + cpu_recv, int(m.group(1)), frames + int(m.group(2)), wall


def proc_cpu_s(pid):
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cluster_frames(c):
    from harness import http_get
    total = 0.0
    for p in c.procs:
        for line in http_get(p["metrics"], "/metrics")[1].splitlines():
            if line.startswith("meerkat_bus_frames_total{") and 'direction="sent"' in line:
                total += float(line.rsplit(" ", 1)[1])
    return total


def cluster_once(tmp, curve, rate, duration, users):
    from harness import Cluster
    loadgen = os.path.join(BUILD, "bench", "loadgen")
    d = tempfile.mkdtemp(dir=tmp)
    c = Cluster(d, c2s=1, router=1, mam=1, pusher=0, gd=0,
                extra="bus: {curve: %s}\nmodules:\n  register: {enabled: true}\n"
                "limits: {auth_fail_per_ip: 1000000, auth_fail_per_user: 1000000, register_per_ip: 0}"
                % ("true" if curve else "false"))
    c.start()
    try:
        keys = os.path.join(d, "keys")
        base = [loadgen, "--port", str(c.c2s_port), "--keycache", keys, "--timeout", "120", "--users", str(users)]
        subprocess.run(base + ["--scenario", "register", "--concurrency", "20"], check=True, capture_output=True)
        pids = [c.child_pid(p["id"]) for p in c.procs]
        # The counters are read when loadgen says the chat starts (everyone logged in)
        # and when it reports the step (messages drained): logins are not counted.
        chat = subprocess.Popen(base + ["--scenario", "chat", "--rates", str(rate), "--duration", str(duration),
                                        "--drain", "3"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        step = None
        for line in chat.stdout:
            if '"step_start"' in line:
                cpu0, fr0 = sum(proc_cpu_s(p) for p in pids), cluster_frames(c)
            elif '"event":"step"' in line:
                cpu, frames = sum(proc_cpu_s(p) for p in pids) - cpu0, cluster_frames(c) - fr0
                step = json.loads(line)
        chat.wait()
        assert step is not None and step["sent"] > 0 and step["delivered"] == step["sent"], step
        return step["delivered"], cpu, frames
    finally:
        c.stop()


def cluster_bench(rounds, rate=2000, duration=10, users=200):
    tmp = tempfile.mkdtemp(prefix="meerkat-bus-curve-cluster-")
    try:
        total = {False: [0, 0.0, 0.0], True: [0, 0.0, 0.0]}
        for r in range(rounds):
            for curve in ((False, True) if r % 2 == 0 else (True, False)):
                delivered, cpu, frames = cluster_once(tmp, curve, rate, duration, users)
                t = total[curve]
                t[0] += delivered
                t[1] += cpu
                t[2] += frames
                print("  round %d %s: delivered=%d cpu=%.2fs frames=%d" % (r, "CURVE" if curve else "plain",
                                                                      delivered, cpu, frames), file=sys.stderr)
        print()
        print("Cluster (1 c2s, 1 router, 1 mam; %d users, chat at %d msg/s for %d s, %d rounds):" % (
            users, rate, duration, rounds))
        print("| mode | messages delivered | bus frames sent | frames/message | CPU s (c2s+router+mam, chat only) | CPU us/message |")
        print("|---|---:|---:|---:|---:|---:|")
        for curve in (False, True):
            n, cpu, frames = total[curve]
            print("| %s | %d | %d | %.2f | %.2f | %.1f |" % ("CURVE" if curve else "plain", n, frames, frames / n, cpu,
                                                          cpu / n * 1e6))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--cluster-only", action="store_true")
    ap.add_argument("--peers-only", action="store_true")
    ap.add_argument("--rate", type=int, default=2000, help="cluster: chat messages per second")
    ap.add_argument("--duration", type=int, default=10, help="cluster: seconds of chat")
    ap.add_argument("--users", type=int, default=200, help="cluster: users (pairs chat)")
    args = ap.parse_args()
    if not args.peers_only and args.cluster_only:
        cluster_bench(args.rounds, args.rate, args.duration, args.users)
        return
    loads = [("flood", 200000, 0), ("paced 20000/s", 60000, 20000), ("paced 2000/s", 6000, 2000)]
    tmp = tempfile.mkdtemp(prefix="meerkat-bus-curve-")
    try:
        print("| load | mode | envelopes sent | frames (both ways) | CPU s (both processes) | CPU us/envelope | CPU us/frame |")
        print("|---|---|---:|---:|---:|---:|---:|")
        for name, count, rate in loads:
            total = {False: [0.0, 0, 0, 0.0], True: [0.0, 0, 0, 0.0]}
            for r in range(args.rounds):
                for curve in ((False, True) if r % 2 == 0 else (True, False)):
                    cpu, envelopes, frames, wall = run_once(tmp, count, rate, curve)
                    t = total[curve]
                    t[0] += cpu
                    t[1] += envelopes
                    t[2] += frames
                    t[3] += wall
            for curve in (False, True):
                cpu, n, frames, _ = total[curve]
                print("| %s | %s | %d | %d | %.3f | %.2f | %.2f |" % (
                    name, "CURVE" if curve else "plain", n, frames, cpu, cpu / n * 1e6, cpu / frames * 1e6))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if not args.peers_only:
        cluster_bench(args.rounds, args.rate, args.duration, args.users)


if __name__ == "__main__":
    main()
