"""tests/bench/bus_curve.py - what CURVE costs on the bus: CPU of two bus_peer processes (sender and receiver, reliable channel with acks) with and without CURVE, back to back.

    MEERKAT_BUILD=build /usr/bin/python3 tests/bench/bus_curve.py [--rounds 3]

Three loads: a flood (the sender hands everything over at once: 64 KiB batches), and
two paced rates (each millisecond's envelopes leave as one frame: small batches, as in
a chat cluster). Prints CPU seconds (user+sys of both processes, from wait4) per mode,
and microseconds of CPU per envelope and per frame. Modes alternate within each round
so that a machine shared with other work loads both alike.
"""
import argparse
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time

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


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
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


if __name__ == "__main__":
    main()
