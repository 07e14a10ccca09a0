"""tests/bench/push_chat_bench.py - issue 12's chat figure: server CPU per chat message with an HTTP webhook
backend on versus off, at one fixed rate, per process.

Runs run.py's "Meerkat" and "Meerkat + HTTP push" setups (2 c2s, 2 routers; with push also one
meerkat-pusher in form mode to tests/bench/http_sink, whose CPU is not counted) one after the
other; in each, 1,000 accounts chat in pairs (loadgen's chat scenario) at RATE msgs/s for
SECONDS, ROUNDS times. Prints one JSON line per round: CPU per delivered message of each server
process (/proc utime+stime), context switches per message (all threads of the server), and with
push on the bus frames and envelopes the pusher read per message. Not part of `make bench`.
usage: MEERKAT_BUILD=build python3 tests/bench/push_chat_bench.py [RATE [SECONDS [ROUNDS]]]"""
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run  # noqa: E402


def pusher_frames(srv):
    m = re.search(r'id: pusher.0, bus: "[^"]*", metrics: "([^"]*)"', open(srv.cfg).read())
    if not m:
        return {}
    txt = urllib.request.urlopen("http://%s/metrics" % m.group(1), timeout=2).read().decode()
    out = {}
    for key, metric, label in (("pusher_frames", "meerkat_bus_frames_total", "received"),
                               ("pusher_envelopes", "meerkat_bus_envelopes_received_total", None)):
        out[key] = sum(float(line.split()[-1]) for line in txt.splitlines()
                       if line.startswith(metric) and (label is None or label in line))
    return out


def context_switches(root):
    t = run.proc_table()
    n = 0
    for p in run.tree(root, t):
        try:
            for tid in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{tid}/status") as f:
                    n += sum(int(line.split()[1]) for line in f if "ctxt_switches" in line)
        except OSError:
            pass
    return n


def per_process(root):
    t = run.proc_table()
    out = {}
    for p in run.tree(root, t):
        try:
            with open(f"/proc/{p}/cmdline") as f:
                cmd = f.read().split("\0")
        except OSError:
            continue
        name = os.path.basename(cmd[0]) + ("." + cmd[cmd.index("--id") + 1] if "--id" in cmd else "")
        out[name] = out.get(name, 0) + t[p][1]
    return out


def main():
    rate = sys.argv[1] if len(sys.argv) > 1 else "4000"
    secs = sys.argv[2] if len(sys.argv) > 2 else "8"
    rounds = int(sys.argv[3]) if len(sys.argv) > 3 else 1
    base = tempfile.mkdtemp(prefix="meerkat-pushchat-")
    os.chmod(base, 0o755)
    cert, key = os.path.join(base, "cert.pem"), os.path.join(base, "key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-keyout", key, "-out", cert, "-days", "30", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost"], check=True, capture_output=True)

    class Args:
        pass
    try:
        for cls in (run.Meerkat, run.MeerkatPush):
            srv = cls(base, cert, key, None)
            why = srv.start(mam=False)
            if why:
                sys.exit(f"{cls.name}: {why}")
            try:
                keys = os.path.join(srv.dir, "keys")
                run.loadgen(Args, srv.port, keys, ["--scenario", "register", "--users", "1000", "--concurrency", "100"],
                            600)
                for _ in range(rounds):
                    snap = {}

                    def on_line(d, p):
                        if d.get("event") == "step_start":
                            snap.update(cpu=per_process(srv.proc.pid), frames=pusher_frames(srv),
                                        cs=context_switches(srv.proc.pid))
                        elif d.get("event") == "step":
                            n = max(d["delivered"], 1)
                            cpu = per_process(srv.proc.pid)
                            us = {k: (v - snap["cpu"].get(k, 0)) / run.TICK * 1e6 / n for k, v in cpu.items()}
                            res = {"mode": cls.name, "rate": d["rate"], "delivered": d["delivered"],
                                   "p99_ms": d["p99_ms"], "server_cpu_us_per_msg": round(sum(us.values()), 1)}
                            res.update({k: round(v, 1) for k, v in sorted(us.items()) if v > 0})
                            res["context_switches_per_msg"] = round((context_switches(srv.proc.pid) - snap["cs"]) / n, 2)
                            frames = pusher_frames(srv)
                            res.update({k + "_per_msg": round((v - snap["frames"][k]) / n, 3) for k, v in frames.items()})
                            res["load_average_1m"] = os.getloadavg()[0]
                            print(json.dumps(res), flush=True)
                    run.loadgen(Args, srv.port, keys, ["--scenario", "chat", "--users", "1000", "--rates", rate,
                                                       "--duration", secs], 600, on_line)
            finally:
                srv.stop()
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
