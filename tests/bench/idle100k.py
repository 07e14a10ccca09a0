"""tests/bench/idle100k.py - 100,000 idle TLS sessions on one machine: RSS per session over every Meerkat process.

Started by `make bench-idle100k` (MEERKAT_BUILD points at the build folder; BENCH_ARGS
passes options, e.g. `--sm` or `--sessions 10000`). Builds nothing.

A process may open at most RLIMIT_NOFILE files (20,000 here) and one (source address,
server address, port) tuple has about 28,000 ephemeral ports, so the sessions are spread:
Meerkat runs enough c2s processes sharing one listener port (SO_REUSEPORT) that each holds
at most ~12,500 sessions, and the generator is several tests/bench/loadgen processes, each
with its own account range and its own loopback source address (--source).

Steps: start Meerkat (MAM off, sqlite storage); register the accounts (parallel loadgen
processes); restart Meerkat so that what registration allocated is not in the baseline;
read the baseline RSS; start the idle generators (TLS + SCRAM-SHA-1 + bind + presence,
optionally stream management with resumption); wait until each one has reported its
sessions logged in; wait a quiet period; read RSS and open files of every server process
from /proc and meerkat_c2s_sessions from each c2s's /metrics. Prints one JSON object on
stdout (also written to --json) and a Markdown table on stderr.
"""
import argparse
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from run import BUILD, LOADGEN, Meerkat, log, machine, proc_table, raise_nofile, tree, usage, wait_quiet  # noqa: E402


def status_kib(pid, key):
    """A KiB field (VmRSS, VmHWM) of /proc/pid/status, or None when the process is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def open_files(pid):
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


def server_procs(srv):
    """{process id from the config (c2s.0, router.1, ...) or 'supervisor': pid} of the running cluster."""
    out = {"supervisor": srv.proc.pid}
    t = proc_table()
    for pid in tree(srv.proc.pid, t):
        if pid == srv.proc.pid:
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                args = [a.decode(errors="replace") for a in f.read().split(b"\0")]
        except OSError:
            continue
        name = next((a for a in args if a in srv.procs), None)
        out[name or f"pid{pid}"] = pid
    return out


def metrics_ports(cfg):
    """{process id: metrics port} from the YAML that run.Meerkat.start wrote."""
    ports = {}
    with open(cfg) as f:
        for line in f:
            m = re.search(r"\{id: ([\w.]+), .*metrics: \"127\.0\.0\.1:(\d+)\"", line)
            if m:
                ports[m.group(1)] = int(m.group(2))
    return ports


def metric(port, name, label=""):
    """The value of the sample `name` on 127.0.0.1:port/metrics with only the process's own
    role and id labels, or also label (e.g. 'event="enabled"'); None when absent."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
            text = r.read().decode()
    except OSError as e:
        log(f"  /metrics on {port}: {e}")
        return None
    labels = r"\{role=\"[^\"]*\",id=\"[^\"]*\"" + ("," + re.escape(label) if label else "") + r"\}"
    m = re.search(r"^" + re.escape(name) + "(?:" + labels + ")" + ("" if label else "?") + r" ([0-9.e+]+)$", text,
                  re.M)
    return float(m.group(1)) if m else None


class Generator:
    """One loadgen process, its JSON lines read by a thread as they come."""

    def __init__(self, argv, name):
        self.name = name
        self.lines = []
        self.stderr = b""
        self.got = threading.Event()   # a line with "scenario" arrived (the run's figures)
        log("  $", " ".join(argv))
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     preexec_fn=raise_nofile)
        self.t0 = time.monotonic()
        self.t_done = None
        threading.Thread(target=self._read_out, daemon=True).start()
        threading.Thread(target=self._read_err, daemon=True).start()

    def _read_out(self):
        for line in self.proc.stdout:
            line = line.strip()
            if not line.startswith("{"):
                continue
            d = json.loads(line)
            self.lines.append(d)
            if "scenario" in d:
                self.t_done = time.monotonic()
                self.got.set()
        self.got.set()   # ended without figures: the waiter sees result() is None

    def _read_err(self):
        self.stderr = self.proc.stderr.read()

    def result(self):
        return next((d for d in self.lines if "scenario" in d), None)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.stderr.strip():
            log(f"  {self.name} stderr: {self.stderr.strip()[-400:]}")


def chunks(total, per):
    """[(first, count)] covering 0..total-1 in count <= per pieces of near-equal size."""
    k = max(1, math.ceil(total / per))
    out, first = [], 0
    for i in range(k):
        n = total // k + (1 if i < total % k else 0)
        out.append((first, n))
        first += n
    return out


def run_generators(argvs, names, timeout):
    """Starts every generator at once; waits until each has printed its figures or ended
    (at most timeout s in all). Returns the Generators (still running) and the seconds from
    the first start to the last figures."""
    gens = []
    t0 = time.monotonic()
    try:
        for a, n in zip(argvs, names):
            gens.append(Generator(a, n))
        for g in gens:
            if not g.got.wait(max(1.0, timeout - (time.monotonic() - t0))):
                raise RuntimeError(f"{g.name} gave no figures in {timeout} s")
    except BaseException:
        for g in gens:
            g.stop()
        raise
    done = [g.t_done for g in gens if g.t_done is not None]
    return gens, (max(done) - t0) if done else None


def register(args, srv, base, parts, res):
    """Registers the accounts of every range at once, one generator per range, each from its
    own source address (127.0.1.x); fills res["register"]. Raises when an account is missing."""
    t = time.monotonic()
    regs, _ = run_generators(
        [[LOADGEN, "--port", str(srv.port), "--keycache", os.path.join(base, f"keys.{i}"), "--scenario",
          "register", "--users", str(n), "--first", str(first), "--concurrency", "50",
          "--source", f"127.0.1.{i + 1}", "--timeout", str(2 * args.login_timeout)]
         for i, (first, n) in enumerate(parts)], [f"register.{i}" for i in range(len(parts))], 2 * args.login_timeout + 60)
    for g in regs:
        g.proc.wait()
        g.stop()
    reg = [g.result() or {} for g in regs]
    res["register"] = {"accounts": sum(r.get("logins", 0) for r in reg),
                       "failed": sum(r.get("failed", 0) for r in reg),
                       "seconds": round(time.monotonic() - t, 1)}
    log(f"registered {res['register']['accounts']:,} accounts ({res['register']['failed']} failed) "
        f"in {res['register']['seconds']:.0f} s")
    if res["register"]["accounts"] < args.sessions:
        raise RuntimeError(f"only {res['register']['accounts']} of {args.sessions} accounts registered")


class MeerkatIdle(Meerkat):
    """run.py's Meerkat with as many c2s processes and router shards as asked, no mam process."""
    name = "Meerkat"

    def __init__(self, base, cert, key, c2s, routers):
        super().__init__(base, cert, key, None)
        self.procs = [f"c2s.{i}" for i in range(c2s)] + [f"router.{i}" for i in range(routers)]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sessions", type=int, default=100000, help="idle sessions (and accounts) (100,000)")
    ap.add_argument("--per-c2s", type=int, default=12500,
                    help="sessions per c2s process the c2s count is chosen for (12,500; under the 20,000-file limit)")
    ap.add_argument("--c2s", type=int, default=0, help="c2s processes (default: sessions / --per-c2s, at least 2)")
    ap.add_argument("--routers", type=int, default=2, help="router shards (2)")
    ap.add_argument("--per-loadgen", type=int, default=12500, help="sessions per generator process (12,500; max 15,000)")
    ap.add_argument("--concurrency", type=int, default=100, help="logins in flight per generator process (100)")
    ap.add_argument("--sm", action="store_true", help="the clients enable stream management (XEP-0198, resume='true')")
    ap.add_argument("--idle-wait", type=float, default=15, help="quiet seconds after the last login before RSS is read")
    ap.add_argument("--settle", type=float, default=3, help="seconds after the restart before the baseline RSS")
    ap.add_argument("--login-timeout", type=float, default=1800,
                    help="seconds allowed for every session to log in (twice that for the registrations)")
    ap.add_argument("--json", default=os.path.join(BUILD, "bench", "idle100k.json"))
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder (logs, config)")
    ap.add_argument("--workdir", help="folder for the cluster's data, kept: a later run with the same folder and "
                                      "at most as many sessions reuses its accounts instead of registering again")
    args = ap.parse_args()
    if args.per_loadgen > 15000 or args.per_loadgen < 1:
        sys.exit("--per-loadgen must be 1..15000 (each generator holds one descriptor per session)")
    if args.sessions < 1:
        sys.exit("--sessions must be positive")
    if not os.access(LOADGEN, os.X_OK):
        sys.exit(f"{LOADGEN} is missing: run `make bench-idle100k` (it builds it)")
    nc2s = args.c2s or max(2, math.ceil(args.sessions / args.per_c2s))
    raise_nofile()
    import resource
    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())

    if args.workdir:
        base = os.path.abspath(args.workdir)
        os.makedirs(base, exist_ok=True)
    else:
        base = tempfile.mkdtemp(prefix="meerkat-idle100k-")
    os.chmod(base, 0o755)
    cert, key = os.path.join(base, "cert.pem"), os.path.join(base, "key.pem")
    marker = os.path.join(base, "registered")   # "<accounts> <sessions per generator>" once registered
    registered = None
    try:
        with open(marker) as f:
            registered = [int(x) for x in f.read().split()]
    except (OSError, ValueError):
        pass
    # the key caches are per generator range: reuse only with the same ranges
    reuse = registered is not None and registered[0] >= args.sessions and registered[1] == args.per_loadgen and \
        os.path.exists(cert)
    if not reuse and os.path.exists(cert):
        os.remove(cert)
    if not reuse:
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-keyout", key, "-out", cert, "-days", "30", "-subj", "/CN=localhost",
                        "-addext", "subjectAltName=DNS:localhost"], check=True, capture_output=True)
    srv = MeerkatIdle(base, cert, key, nc2s, args.routers)
    parts = chunks(registered[0] if reuse else args.sessions, args.per_loadgen)
    parts = [(first, min(n, args.sessions - first)) for first, n in parts if first < args.sessions]
    res = {"started": started, "machine": machine(), "version": srv.version(), "sessions_wanted": args.sessions,
           "sm": args.sm, "c2s_processes": nc2s, "router_shards": args.routers, "generators": len(parts),
           "nofile_limit": nofile, "concurrency_per_generator": args.concurrency}
    gens = []
    try:
        why = srv.start(mam=False, fresh=not reuse)
        if why:
            raise RuntimeError(why)
        log(f"Meerkat: {nc2s} c2s + {args.routers} routers on port {srv.port}; {len(parts)} generators")
        if reuse:
            log(f"reusing the {registered[0]:,} accounts registered in {base}")
            res["register"] = {"reused": registered[0]}
        else:
            register(args, srv, base, parts, res)
            with open(marker, "w") as f:
                f.write(f"{args.sessions} {args.per_loadgen}\n")
        
        # --- a fresh cluster for the figures: what registration allocated is not in the baseline ---
        srv.stop()
        why = srv.start(mam=False, fresh=False)
        if why:
            raise RuntimeError("restart after registration: " + why)
        time.sleep(args.settle)
        wait_quiet(srv.roots())
        pids = server_procs(srv)
        mports = metrics_ports(srv.cfg)
        before = {n: status_kib(p, "VmRSS") for n, p in pids.items()}
        cpu0, _ = usage(srv.roots())

        # --- the idle sessions ---
        extra = ["--sm"] if args.sm else []
        gens, all_in = run_generators(
            [[LOADGEN, "--port", str(srv.port), "--keycache", os.path.join(base, f"keys.{i}"), "--scenario", "idle",
              "--users", str(n), "--first", str(first), "--concurrency", str(args.concurrency),
              "--source", f"127.0.2.{i + 1}", "--hold", "86400", "--timeout", "86400", *extra]
             for i, (first, n) in enumerate(parts)], [f"idle.{i}" for i in range(len(parts))], args.login_timeout)
        idle = [g.result() or {} for g in gens]
        cpu1, _ = usage(srv.roots())
        online = sum(d.get("sessions", 0) for d in idle)
        failed = sum(d.get("failed", 0) for d in idle)
        log(f"{online:,} sessions logged in ({failed} failed) in {all_in or 0:.1f} s; "
            f"waiting {args.idle_wait:.0f} s")
        time.sleep(args.idle_wait)
        ended = [g.name for g in gens if g.proc.poll() is not None]

        after = {n: status_kib(p, "VmRSS") for n, p in pids.items()}
        fds = {n: open_files(p) for n, p in pids.items()}
        c2s_sessions = {n: metric(mports[n], "meerkat_c2s_sessions") for n in srv.procs if n.startswith("c2s.")}
        c2s_conns = {n: metric(mports[n], "meerkat_c2s_connections") for n in c2s_sessions}
        # what the c2s processes say they enabled: the generator does not wait for <enabled/>
        sm_on = sum(metric(mports[n], "meerkat_c2s_sm_events_total", 'event="enabled_resumable"') or 0
                    for n in c2s_sessions)
        gone = [n for n, v in after.items() if v is None]
        rss0, rss1 = sum(v or 0 for v in before.values()), sum(v or 0 for v in after.values())
        res.update({
            "sessions": online,
            "login_failed": failed,
            "generators_ended_early": ended,
            "server_processes_gone": gone,
            "seconds_to_log_all_in": round(all_in, 1) if all_in is not None else None,
            "logins_per_s": round(online / all_in, 0) if all_in else None,
            "server_cpu_ms_per_login": round((cpu1 - cpu0) * 1000 / max(online, 1), 2),
            "login_p99_ms_worst_generator": max((d.get("login_p99_ms", 0) for d in idle), default=None),
            "server_rss_before_kib": rss0,
            "server_rss_after_kib": rss1,
            "kib_per_session": round((rss1 - rss0) / max(online, 1), 2),
            "kib_per_session_total": round(rss1 / max(online, 1), 2),
            "per_process": {n: {"rss_before_kib": before[n], "rss_kib": after[n], "open_files": fds[n],
                                **({"sessions": c2s_sessions[n] and int(c2s_sessions[n]),
                                    "connections": c2s_conns[n] and int(c2s_conns[n])}
                                   if n in c2s_sessions else {})} for n in pids},
            "c2s_sessions_total": int(sum(v or 0 for v in c2s_sessions.values())),
            "sm_enabled_resumable": int(sm_on),
            "generator_rss_kib": {g.name: status_kib(g.proc.pid, "VmRSS") for g in gens},
            "generator_cpu_s": round(sum(d.get("gen_cpu_s", 0) for d in idle), 1),
            "generator_figures": idle,
        })
        res["generator_rss_kib_total"] = sum(v or 0 for v in res["generator_rss_kib"].values())
    finally:
        for g in gens:
            g.stop()
        srv.stop()
        if args.keep or args.workdir:
            log(f"kept {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)

    os.makedirs(os.path.dirname(args.json), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump(res, f, indent=1)
    print(json.dumps(res))
    log("\n" + table(res))
    errors = res["login_failed"] or res["generators_ended_early"] or res["server_processes_gone"] or \
        res["sessions"] < args.sessions or res["c2s_sessions_total"] != res["sessions"] or \
        res["sm_enabled_resumable"] != (res["sessions"] if args.sm else 0)
    sys.exit(1 if errors else 0)


def table(r):
    c2s = {n: p for n, p in r["per_process"].items() if n.startswith("c2s.")}
    rows = [
        ("Sessions logged in (TLS + SCRAM-SHA-1 + bind + presence)" + (", stream management on" if r["sm"] else ""),
         f"{r['sessions']:,} of {r['sessions_wanted']:,} ({r['login_failed']} failed)"),
        ("Time to log all in", f"{r['seconds_to_log_all_in']} s ({r['logins_per_s']:,.0f} logins/s, "
                               f"{r['generators']} generators x {r['concurrency_per_generator']} in flight; "
                               f"server CPU {r['server_cpu_ms_per_login']} ms per login)"),
        ("Server RSS before → with the sessions (all processes)",
         f"{r['server_rss_before_kib'] / 1024:,.0f} → {r['server_rss_after_kib'] / 1024:,.0f} MiB"),
        ("**KiB per idle session** (RSS growth / sessions)", f"**{r['kib_per_session']:.1f}**"),
        ("KiB per session, whole RSS / sessions", f"{r['kib_per_session_total']:.1f}"),
        ("c2s processes: sessions (/metrics), open files",
         ", ".join(f"{p.get('sessions')} / {p['open_files']}" for p in c2s.values())),
        ("Sessions in the c2s /metrics, total; of them with stream management (resumable)",
         f"{r['c2s_sessions_total']:,}; {r['sm_enabled_resumable']:,}"),
        ("Routers: RSS MiB", ", ".join(f"{p['rss_kib'] / 1024:,.0f}" for n, p in r["per_process"].items()
                                       if n.startswith("router."))),
        ("Generator RSS (client side, for information)", f"{r['generator_rss_kib_total'] / 1024:,.0f} MiB "
                                                         f"({r['generator_cpu_s']} s CPU)"),
        ("Errors", ", ".join(filter(None, [
            f"{r['login_failed']} logins failed" if r["login_failed"] else "",
            f"generators ended early: {r['generators_ended_early']}" if r["generators_ended_early"] else "",
            f"server processes gone: {r['server_processes_gone']}" if r["server_processes_gone"] else ""])) or "none"),
    ]
    return "\n".join(["| | Meerkat |", "|---|---|"] + [f"| {a} | {b} |" for a, b in rows])


if __name__ == "__main__":
    main()
