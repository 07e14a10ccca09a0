"""tests/bench/run.py - runs the load generator against Meerkat, ejabberd and Prosody side by side and writes docs/BENCHMARKS.md.

Started by `make bench` (MEERKAT_BUILD points at the build folder). Builds nothing. Each
server runs as a local, non-root-friendly instance in a temporary folder with free
ports, equivalent settings (STARTTLS required, SCRAM with stored keys, in-band
registration open to loopback, no shapers or rate limits, the same ECDSA P-256
self-signed certificate, listen backlog 1024) and is stopped at the end. A peer that
is not installed is skipped and the table says so.
"""
import argparse
import json
import os
import platform
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
BUILD = os.path.abspath(os.environ.get("MEERKAT_BUILD", os.path.join(ROOT, "build")))
LOADGEN = os.path.join(BUILD, "bench", "loadgen")
TICK = os.sysconf("SC_CLK_TCK")
ALL_CPUS = frozenset(os.sched_getaffinity(0))
PROFILE_MARK = "<!-- everything below this line is kept by run.py -->"


def log(*a):
    print("[bench]", *a, file=sys.stderr, flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, timeout):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.2)
    return False


def metric(port, name, must=""):
    """The sum of a family's series on a Meerkat process's /metrics whose labels contain must
    (e.g. 'result="stored"')."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
        text = r.read().decode()
    total = 0.0
    for line in text.splitlines():
        if (line.startswith(name + "{") or line.startswith(name + " ")) and must in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def metrics_port(cfg_path, proc):
    """The metrics port of process proc (e.g. "mam.0") in a configuration run.py wrote."""
    with open(cfg_path) as f:
        m = re.search(r"id: %s, bus: \"[^\"]+\", metrics: \"127\.0\.0\.1:(\d+)\"" % re.escape(proc), f.read())
    return int(m.group(1))


class ArchiveLag:
    """Samples the mam's archive lag (meerkat_mam_pending_rows and
    meerkat_mam_oldest_pending_seconds) every 100 ms from a thread while a chat step runs;
    take() returns the highest of each since the last take()."""

    def __init__(self, port):
        self.port, self.rows, self.age = port, 0.0, 0.0
        self.lock = threading.Lock()
        self.done = threading.Event()
        self.thread = threading.Thread(target=self.loop, daemon=True)
        self.thread.start()

    def loop(self):
        while not self.done.wait(0.1):
            try:
                rows = metric(self.port, "meerkat_mam_pending_rows")
                age = metric(self.port, "meerkat_mam_oldest_pending_seconds")
            except OSError:
                continue
            with self.lock:
                self.rows, self.age = max(self.rows, rows), max(self.age, age)

    def take(self):
        with self.lock:
            out = (self.rows, self.age)
            self.rows = self.age = 0.0
        return out

    def drained(self, timeout):
        """Seconds until the archive has nothing pending (None past timeout)."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            try:
                if metric(self.port, "meerkat_mam_pending_rows") == 0:
                    return time.monotonic() - t0
            except OSError:
                pass
            time.sleep(0.1)
        return None

    def stop(self):
        self.done.set()
        self.thread.join()


def raise_nofile():
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


# ---- /proc accounting ----------------------------------------------------------

def proc_table():
    """{pid: (ppid, utime+stime ticks, rss KiB)} of every live process."""
    out = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            rss = 0
            with open(f"/proc/{d}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        rss = int(line.split()[1])
                        break
            out[int(d)] = (int(fields[1]), int(fields[11]) + int(fields[12]), rss)
        except (OSError, IndexError, ValueError):
            pass
    return out


def tree(root, table):
    """root and all its live descendants."""
    pids, todo = [], [root]
    while todo:
        p = todo.pop()
        if p in table:
            pids.append(p)
            todo.extend(q for q, v in table.items() if v[0] == p)
    return pids


def usage(roots):
    """(CPU seconds, RSS KiB) summed over the process trees under roots."""
    t = proc_table()
    cpu = rss = 0
    for r in roots:
        for p in tree(r, t):
            cpu += t[p][1]
            rss += t[p][2]
    return cpu / TICK, rss


def cpu_ns_by_process(roots):
    """{name: nanoseconds on a CPU} of every process under roots, summed over its live
    threads (/proc/<pid>/task/<tid>/schedstat). Per step at low rates this is the figure
    to use: /proc/<pid>/stat counts clock ticks (10 ms), and at 250 msgs/s for 5 s a tick
    of each of six processes is 8 us per message. The name is the binary and its --id
    ("meerkat-c2s.c2s.0"), or the pid; threads that ended are not counted (the servers'
    threads live as long as their process)."""
    t = proc_table()
    out = {}
    for r in roots:
        for p in tree(r, t):
            try:
                with open(f"/proc/{p}/cmdline") as f:
                    cmd = f.read().split("\0")
                name = os.path.basename(cmd[0]) + ("." + cmd[cmd.index("--id") + 1] if "--id" in cmd else "")
                ns = 0
                for tid in os.listdir(f"/proc/{p}/task"):
                    try:
                        with open(f"/proc/{p}/task/{tid}/schedstat") as f:
                            ns += int(f.read().split()[0])
                    except (OSError, ValueError, IndexError):
                        pass   # a thread that just ended
            except (OSError, ValueError):
                continue
            if name in out or not name:
                name = f"{name}#{p}"
            out[name] = ns
    return out


def cpu_precise(roots):
    """CPU seconds of the process trees under roots (cpu_ns_by_process, summed)."""
    return sum(cpu_ns_by_process(roots).values()) / 1e9


def wait_quiet(roots, limit=30.0, idle_share=0.05, window=1.0):
    """Waits until the server has finished what the last scenario left it (closing
    10,000 sessions is work too): until it used under idle_share of a core over a
    window, at most limit seconds. Returns the seconds waited."""
    t0 = time.monotonic()
    cpu, _ = usage(roots)
    while time.monotonic() - t0 < limit:
        time.sleep(window)
        now, _ = usage(roots)
        if now - cpu < idle_share * window:
            break
        cpu = now
    return time.monotonic() - t0


# ---- PostgreSQL -------------------------------------------------------------------

class Postgres:
    """A throw-away PostgreSQL (tests/pg_tmp.sh) holding the archive of every server."""

    def __init__(self, base):
        self.dir = os.path.join(base, "pg")
        os.makedirs(self.dir)
        os.chmod(base, 0o755)
        r = subprocess.run([os.path.join(ROOT, "tests", "pg_tmp.sh"), "start", self.dir], capture_output=True,
                           text=True, timeout=120)
        if r.returncode != 0:
            raise RuntimeError("PostgreSQL did not start: " + r.stdout + r.stderr)
        self.port = int(r.stdout.strip().splitlines()[-1])

    def psql(self, db, *args, user="postgres"):
        return subprocess.run(["psql", "-X", "-q", "-h", "127.0.0.1", "-p", str(self.port), "-U", user, "-d", db,
                               "-v", "ON_ERROR_STOP=1", *args], capture_output=True, text=True, timeout=120)

    def fresh_db(self, name):
        self.psql("postgres", "-c", f"DROP DATABASE IF EXISTS {name}")
        r = self.psql("postgres", "-c", f"CREATE DATABASE {name} OWNER meerkat ENCODING 'UTF8' TEMPLATE template0")
        if r.returncode != 0:
            raise RuntimeError(r.stderr)

    def pid(self):
        with open(os.path.join(self.dir, "data", "postmaster.pid")) as f:
            return int(f.readline())

    def stop(self):
        subprocess.run([os.path.join(ROOT, "tests", "pg_tmp.sh"), "destroy", self.dir], capture_output=True,
                       timeout=60)


# ---- servers -----------------------------------------------------------------------

class Server:
    """One server under test. start(mam) returns None or a reason it cannot run."""
    name = "?"
    chat_only = False   # True: only the MAM-off chat figures (a variant of another column)
    mam_only = False    # True: only the MAM-on chat figures (a variant of another column)

    def __init__(self, base, cert, key, pg):
        self.dir = os.path.join(base, self.name.lower())
        os.makedirs(self.dir, exist_ok=True)
        self.cert, self.key, self.pg = cert, key, pg
        self.proc = None
        self.port = None
        self.logf = None

    def installed(self):
        return None

    def version(self):
        return "?"

    def spawn(self, argv, env=None, cwd=None):
        self.logf = open(os.path.join(self.dir, "server.log"), "ab")
        e = dict(os.environ)
        e.update(env or {})
        self.proc = subprocess.Popen(argv, stdout=self.logf, stderr=subprocess.STDOUT, cwd=cwd or self.dir, env=e,
                                     start_new_session=True, preexec_fn=raise_nofile)

    def roots(self):
        return [self.proc.pid] if self.proc else []

    def stop(self):
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        # whatever of the group outlived its leader
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc = None
        self.logf.close()

    def log_tail(self):
        try:
            with open(os.path.join(self.dir, "server.log"), errors="replace") as f:
                return f.read()[-2000:]
        except OSError:
            return ""


def dpkg_version(pkg):
    r = subprocess.run(["dpkg-query", "-W", "-f", "${Status} ${Version}", pkg], capture_output=True, text=True)
    if r.returncode != 0 or "installed" not in r.stdout:
        return None
    return r.stdout.split()[-1]


class Meerkat(Server):
    name = "Meerkat"

    def installed(self):
        if not os.access(os.path.join(BUILD, "meerkat"), os.X_OK):
            return f"not built ({BUILD}/meerkat missing)"
        for role in ("c2s", "router", "mam"):
            if not os.access(os.path.join(BUILD, f"meerkat-{role}"), os.X_OK):
                return f"not built (meerkat-{role} missing)"
        return None

    def version(self):
        r = subprocess.run(["git", "-C", ROOT, "describe", "--always", "--dirty"], capture_output=True, text=True)
        return "git " + (r.stdout.strip() or "?")

    procs = ["c2s.0", "c2s.1", "router.0", "router.1", "mam.0"]

    def extra_config(self, run):
        """YAML lines a variant adds (MeerkatPush: the pusher and its backend)."""
        return []

    def start(self, mam, fresh=True):
        self.port = free_port()
        run = os.path.join(self.dir, "mam" if mam else "nomam")
        if fresh:
            shutil.rmtree(run, ignore_errors=True)
        os.makedirs(run, exist_ok=True)
        procs = self.procs
        lines = [
            "domains: [localhost]",
            f"data_dir: {run}/var",
            "log: {level: warn}",
            f"tls: {{cert: {self.cert}, key: {self.key}, starttls_required: true}}",
            "listeners:",
            f"  c2s: {{host: 127.0.0.1, port: {self.port}}}",
            "  c2s_tls: {host: 127.0.0.1, port: 0}",
            "limits: {shaper_bytes_per_sec: 0, auth_fail_per_ip: 1000000, auth_fail_per_user: 1000000, register_per_ip: 0, max_preauth_per_ip: 0}",
            "modules:",
            "  register: {enabled: true}",
            f"  mam: {{enabled: {'true' if mam else 'false'}}}",
        ]
        if mam and getattr(self, "storage", "pgsql") == "pgsql":
            if fresh:
                self.pg.fresh_db("meerkat_bench")
            lines.append("storage: {driver: pgsql, pgsql: {host: 127.0.0.1, port: %d, dbname: meerkat_bench, "
                         "user: meerkat, sslmode: disable}}" % self.pg.port)
        lines += self.extra_config(run)
        lines.append("processes:")
        for p in procs:
            lines.append(f"  - {{id: {p}, bus: \"tcp://127.0.0.1:{free_port()}\", metrics: \"127.0.0.1:{free_port()}\"}}")
        cfg = os.path.join(run, "meerkat.yaml")
        with open(cfg, "w") as f:
            f.write("\n".join(lines) + "\n")
        self.cfg = cfg
        self.spawn([os.path.join(BUILD, "meerkat"), "start", "-c", cfg], cwd=run)
        if not wait_port(self.port, 20):
            return "did not start: " + self.log_tail()[-500:]
        time.sleep(1)   # every c2s and router up, not only the first listener
        return None


class MeerkatSqlite(Meerkat):
    """Meerkat as `make run` gives it: the archive in the embedded sqlite (WAL, full-text
    search on) in its data_dir, the same processes as the Meerkat column. Only the MAM-on
    chat: with MAM off it is the Meerkat column."""
    name = "Meerkat, embedded sqlite"
    storage = "sqlite"
    mam_only = True

    def __init__(self, *a):
        super().__init__(*a)
        self.dir = os.path.join(os.path.dirname(self.dir), "meerkat-sqlite")
        os.makedirs(self.dir, exist_ok=True)


class MeerkatPush(Meerkat):
    """Meerkat with the event pusher on: an HTTP webhook backend in MongooseIM's form mode
    (an event per chat message with a body, one POST each over keep-alive connections) to
    tests/bench/http_sink, a C receiver on this machine. The sink's CPU is not the
    server's; the pusher's is."""
    name = "Meerkat + HTTP push"
    procs = Meerkat.procs + ["pusher.0"]
    chat_only = True
    pipeline = 1   # the backend's requests in flight per connection (--push-pipeline)

    def __init__(self, *a):
        super().__init__(*a)
        self.dir = os.path.join(os.path.dirname(self.dir), "meerkat-push")
        os.makedirs(self.dir, exist_ok=True)
        self.sink = None

    def installed(self):
        if not os.access(os.path.join(BUILD, "bench", "http_sink"), os.X_OK):
            return f"not built ({BUILD}/bench/http_sink missing)"
        return super().installed() or (None if os.access(os.path.join(BUILD, "meerkat-pusher"), os.X_OK)
                                       else "not built (meerkat-pusher missing)")

    def extra_config(self, run):
        if self.sink is None:
            port = free_port()
            self.sink = subprocess.Popen([os.path.join(BUILD, "bench", "http_sink"), str(port)],
                                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            if not self.sink.stdout.readline().startswith("listening"):
                raise RuntimeError("http_sink did not start")
            self.sink_port = port
        return ["pusher:", "  backends:",
                "    - {name: bench, type: http, url: 'http://127.0.0.1:%d/hook', events: [sent], "
                "max_connections: 16%s}" % (self.sink_port, f", pipeline: {self.pipeline}" if self.pipeline != 1 else "")]

    def stop(self):
        super().stop()
        if self.sink is not None:
            self.sink.kill()
            self.sink.wait()
            self.sink = None


class Prosody(Server):
    name = "Prosody"

    def installed(self):
        if dpkg_version("prosody") is None or not shutil.which("prosody"):
            return "not installed (apt-get install prosody)"
        return None

    def version(self):
        return dpkg_version("prosody") or "?"

    def start(self, mam, fresh=True):
        self.port = free_port()
        data = os.path.join(self.dir, "data")
        os.makedirs(data, exist_ok=True)
        mods = ["roster", "saslauth", "tls", "disco", "ping", "register"]
        extra = ""
        if mam:
            mods.append("mam")
            if fresh:
                self.pg.fresh_db("prosody_bench")
            extra = ('default_archive_policy = true\narchive_expires_after = "never"\n'
                     'storage = { archive = "sql" }\n'
                     'sql = { driver = "PostgreSQL", database = "prosody_bench", username = "meerkat", '
                     f'host = "127.0.0.1", port = {self.pg.port} }}\n')
        cfg = os.path.join(self.dir, "prosody.cfg.lua")
        with open(cfg, "w") as f:
            f.write(f"""-- written by tests/bench/run.py
run_as_root = true
pidfile = "{self.dir}/prosody.pid"
data_path = "{data}"
plugin_paths = {{}}
certificates = "{self.dir}"
network_backend = "epoll"
network_settings = {{ tcp_backlog = 1024 }}
log = {{ warn = "{self.dir}/prosody.log" }}
c2s_ports = {{ {self.port} }}
c2s_interfaces = {{ "127.0.0.1" }}
s2s_ports = {{}}
http_ports = {{}}
https_ports = {{}}
c2s_require_encryption = true
authentication = "internal_hashed"
allow_registration = true
registration_whitelist = {{ "127.0.0.1" }}
modules_enabled = {{ {", ".join('"%s"' % m for m in mods)} }}
modules_disabled = {{ "s2s", "offline" }}
ssl = {{ certificate = "{self.cert}", key = "{self.key}" }}
{extra}
VirtualHost "localhost"
""")
        self.spawn(["prosody", "-F", "--config", cfg])
        if not wait_port(self.port, 20):
            return "did not start: " + self.log_tail()[-500:]
        return None


class Ejabberd(Server):
    name = "ejabberd"

    def installed(self):
        if dpkg_version("ejabberd") is None or not shutil.which("erl"):
            return "not installed (apt-get install ejabberd)"
        return None

    def version(self):
        v = dpkg_version("ejabberd") or "?"
        otp = dpkg_version("erlang-base")
        return f"{v} (Erlang {otp})" if otp else v

    def start(self, mam, fresh=True):
        self.port = free_port()
        spool = os.path.join(self.dir, "spool")
        os.makedirs(spool, exist_ok=True)
        os.makedirs(os.path.join(self.dir, "log"), exist_ok=True)
        mam_yaml = sql_yaml = ""
        if mam:
            if dpkg_version("erlang-p1-pgsql") is None:
                return "no PostgreSQL driver (apt-get install erlang-p1-pgsql)"
            if fresh:
                self.pg.fresh_db("ejabberd_bench")
                r = self.pg.psql("ejabberd_bench", "-f", "/usr/share/ejabberd/sql/pg.sql", user="meerkat")
                if r.returncode != 0:
                    return "cannot load its SQL schema: " + r.stderr[-300:]
            sql_yaml = (f"sql_type: pgsql\nsql_server: 127.0.0.1\nsql_port: {self.pg.port}\n"
                        "sql_database: ejabberd_bench\nsql_username: meerkat\nsql_password: \"\"\nsql_pool_size: 10\n")
            mam_yaml = "  mod_mam: {db_type: sql, default: always}\n"
        cfg = os.path.join(self.dir, "ejabberd.yml")
        with open(cfg, "w") as f:
            f.write(f"""# written by tests/bench/run.py
hosts: [localhost]
loglevel: warning
certfiles: [{self.cert}, {self.key}]
listen:
  - port: {self.port}
    ip: "127.0.0.1"
    module: ejabberd_c2s
    starttls_required: true
    access: c2s
    backlog: 1024
auth_method: internal
auth_password_format: scram
auth_scram_hash: sha
acl:
  loopback: {{ip: [127.0.0.0/8]}}
access_rules:
  c2s: {{allow: all}}
  register: {{allow: all}}
registration_timeout: infinity
{sql_yaml}modules:
  mod_register: {{access: register, ip_access: all, password_strength: 0}}
  mod_roster: {{}}
  mod_disco: {{}}
  mod_ping: {{}}
{mam_yaml}""")
        env = {"EJABBERD_CONFIG_PATH": cfg, "EJABBERD_LOG_PATH": os.path.join(self.dir, "log", "ejabberd.log"),
               "ERL_LIBS": "/usr/lib/x86_64-linux-gnu", "ERL_MAX_PORTS": "65536", "HOME": self.dir,
               "ERL_CRASH_DUMP_BYTES": "0"}
        # No Erlang distribution (no -sname): nothing to connect to, and no epmd left behind.
        self.spawn(["erl", "-noinput", "-noshell", "+K", "true", "+P", "1000000", "-mnesia", "dir", f'"{spool}"',
                    "-s", "ejabberd"], env=env)
        if not wait_port(self.port, 40):
            return "did not start: " + self.log_tail()[-500:]
        return None


# ---- scenarios ------------------------------------------------------------------------

def loadgen(args, port, keys, extra, timeout, on_line=None, cpus=None):
    """Runs the load generator (on cpus, a set, when given); returns its JSON lines
    (dicts). on_line(d) sees each as it comes."""
    argv = [LOADGEN, "--port", str(port), "--keycache", keys, *extra]
    log("  $", " ".join(shlex.quote(a) for a in argv) + (f"   (on CPU {sorted(cpus)})" if cpus else ""))

    def setup():
        raise_nofile()
        if cpus:
            os.sched_setaffinity(0, cpus)
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=setup)
    out = []
    end = time.monotonic() + timeout
    try:
        for line in p.stdout:
            line = line.strip()
            if not line.startswith("{"):
                continue
            d = json.loads(line)
            out.append(d)
            if on_line and on_line(d, p) == "stop":
                p.send_signal(signal.SIGTERM)
            if time.monotonic() > end:
                p.send_signal(signal.SIGTERM)
        p.wait(60)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    err = p.stderr.read()
    if err.strip():
        log("  loadgen stderr:", err.strip()[-600:])
    return out


def pin(roots, cpus):
    """Sets the CPU affinity of every thread of every process under roots."""
    t = proc_table()
    for r in roots:
        for pid in tree(r, t):
            try:
                tids = os.listdir(f"/proc/{pid}/task")
            except OSError:
                continue
            for tid in tids:
                try:
                    os.sched_setaffinity(int(tid), cpus)
                except OSError:
                    pass   # a thread that just ended


def login_storms(srv, args, keys, cpus):
    """args.login_runs storms of full logins; returns the median run (all runs kept in
    "runs"), or None. cpus = (server CPU, generator CPU) pins both for the storms."""
    # The storm lasts seconds on a shared 2-core VM: one run is at the mercy of a
    # neighbour's burst. Several runs, the median one reported, all kept in the JSON.
    if cpus:
        pin(srv.roots(), {cpus[0]})
        wait_quiet(srv.roots())
    runs = []
    try:
        for _ in range(args.login_runs):
            cpu0, _ = usage(srv.roots())
            lines = loadgen(args, srv.port, keys, ["--scenario", "login", "--users", str(args.logins),
                                                   "--concurrency", str(args.login_concurrency)], 600,
                            cpus={cpus[1]} if cpus else None)
            cpu1, _ = usage(srv.roots())
            if lines:
                d = lines[-1]
                d["server_cpu_ms_per_login"] = (cpu1 - cpu0) * 1000 / max(d["logins"], 1)
                runs.append(d)
            wait_quiet(srv.roots())
    finally:
        if cpus:
            pin(srv.roots(), ALL_CPUS)
    if not runs:
        return None
    d = dict(sorted(runs, key=lambda r: r["logins_per_s"])[len(runs) // 2])
    d["runs"] = [{k: r[k] for k in ("logins_per_s", "p99_ms", "server_cpu_ms_per_login", "gen_cpu_s")} for r in runs]
    d["pinned"] = list(cpus) if cpus else None
    log(f"{srv.name}: logins/s of each run{' (pinned)' if cpus else ''}: " +
        ", ".join(f"{r['logins_per_s']:,.0f}" for r in runs))
    return d


def run_server(srv, args, results):
    res = results.setdefault(srv.name, {"version": srv.version()})
    why = srv.installed()
    if why:
        res["skipped"] = why
        log(f"{srv.name}: skipped: {why}")
        return
    nusers = max(args.idle, args.users, args.logins)
    if srv.chat_only:
        run_push_matched(srv, args, res)
        return
    if srv.mam_only:
        if args.no_mam:
            res["skipped"] = "MAM-on runs only, and --no-mam"
            return
        run_chat_mam(srv, args, res)
        return

    # --- MAM off: idle sessions, login storm, chat ---
    why = srv.start(mam=False)
    if why:
        res["skipped"] = why
        log(f"{srv.name}: {why}")
        srv.stop()
        return
    try:
        keys = os.path.join(srv.dir, "keys-nomam")
        t = time.monotonic()
        reg = loadgen(args, srv.port, keys, ["--scenario", "register", "--users", str(nusers), "--concurrency", "100"],
                      1200)
        res["register"] = reg[-1] if reg else None
        log(f"{srv.name}: registered {nusers} accounts in {time.monotonic() - t:.0f} s")
        # A fresh process for the figures: what registration allocated (a VM's heap,
        # an allocator's arenas) must not hide in the idle baseline.
        srv.stop()
        why = srv.start(mam=False, fresh=False)
        if why:
            raise RuntimeError("restart after registration: " + why)
        time.sleep(args.settle)

        cpu0, rss0 = usage(srv.roots())
        idle = {}

        def idle_line(d, p):
            if d.get("scenario") == "idle":
                time.sleep(args.idle_wait)   # idle means idle: every server gets the same quiet time
                idle["cpu"], idle["rss"] = usage(srv.roots())
                return "stop"
            return None
        lines = loadgen(args, srv.port, keys, ["--scenario", "idle", "--users", str(args.idle), "--hold", "600"], 900,
                        idle_line)
        if lines and "rss" in idle:
            d = lines[-1]
            d["rss_before_kib"], d["rss_after_kib"] = rss0, idle["rss"]
            d["kib_per_session"] = (idle["rss"] - rss0) / max(d["sessions"], 1)
            res["idle"] = d
        time.sleep(1)   # let the server notice the closed sessions
        log(f"{srv.name}: quiet {wait_quiet(srv.roots()):.1f} s after the idle sessions closed")

        res["login"] = login_storms(srv, args, keys, None)
        if len(ALL_CPUS) >= 2:
            # The same storms with the server alone on one core and the generator on
            # another, as with a generator on its own machine: logins/s is then the
            # server's, not the sum of server and generator cost on shared cores.
            res["login_pinned"] = login_storms(srv, args, keys, (min(ALL_CPUS), max(ALL_CPUS)))
        time.sleep(1)
        wait_quiet(srv.roots())
        res["chat"] = run_chat(srv, args, keys, None)
    finally:
        srv.stop()

    # --- MAM on (PostgreSQL) ---
    if not args.no_mam:
        run_chat_mam(srv, args, res)


def run_chat_mam(srv, args, res):
    """The chat with every message archived; for Meerkat also the archive's lag per step
    (highest pending rows and age of the oldest, sampled every 100 ms) and how long the
    archive took to commit the rest after the last step."""
    why = srv.start(mam=True)
    if why:
        res["chat_mam"] = {"skipped": why}
        srv.stop()
        return
    lag = None
    try:
        keys = os.path.join(srv.dir, "keys-mam")
        loadgen(args, srv.port, keys, ["--scenario", "register", "--users", str(args.users), "--concurrency", "100"],
                1200)
        if isinstance(srv, Meerkat):
            lag = ArchiveLag(metrics_port(srv.cfg, "mam.0"))
        res["chat_mam"] = run_chat(srv, args, keys, srv.pg if getattr(srv, "storage", "pgsql") == "pgsql" else None,
                                   lag)
        if lag:
            res["chat_mam"]["archive_drained_s"] = lag.drained(120)
    finally:
        if lag:
            lag.stop()
        srv.stop()


def run_push_matched(srv, args, res):
    """The push column against its own push-off twin, run the same way and alternated:
    each of args.push_rounds rounds starts a fresh plain Meerkat (push off) and then srv
    (push on), registers args.users accounts, waits until the cluster is quiet and steps
    the chat rates. The Meerkat column's chat comes after idle sessions and login storms,
    minutes earlier: on a shared machine, comparing with it measured the neighbours' load
    as much as the pusher (+31% at 4,000 msgs/s where the same two setups run back to back
    gave +3-12%). res["chat"] is push on, res["chat_off"] its twin: per rate the round
    with the median server CPU (every round kept in "rounds")."""
    import statistics
    off = Meerkat(os.path.dirname(srv.dir), srv.cert, srv.key, None)
    off.dir = srv.dir + "-off"
    os.makedirs(off.dir, exist_ok=True)
    runs = {"chat_off": [], "chat": []}
    for rnd in range(args.push_rounds):
        for key, s in (("chat_off", off), ("chat", srv)):
            why = s.start(mam=False)
            try:
                if why:
                    res["skipped"] = f"{'push off' if s is off else 'push on'}: {why}"
                    log(f"{srv.name}: {res['skipped']}")
                    return
                keys = os.path.join(s.dir, "keys-nomam")
                loadgen(args, s.port, keys, ["--scenario", "register", "--users", str(args.users), "--concurrency",
                                             "100"], 1200)
                log(f"{srv.name} round {rnd + 1}, push {'off' if s is off else 'on'}: "
                    f"quiet after {wait_quiet(s.roots()):.1f} s")
                runs[key].append(run_chat(s, args, keys, None))
            finally:
                s.stop()
    for key, summaries in runs.items():
        # By rate: a round whose generator stopped early (a step not sustained) has fewer steps.
        steps = []
        for rate in sorted({x["rate"] for sm in summaries for x in sm["steps"]}):
            same = [x for sm in summaries for x in sm["steps"] if x["rate"] == rate]
            mid = statistics.median_low(x["server_cpu_us_per_msg"] for x in same)
            steps.append(next(x for x in same if x["server_cpu_us_per_msg"] == mid))
        summary = dict(summaries[0])
        summary["steps"] = steps
        best = [x for x in steps if x["within_1s"] >= 0.99]
        summary["best_step"] = max(best, key=lambda x: x["rate"]) if best else None
        summary["rounds"] = [sm["steps"] for sm in summaries]
        res[key] = summary


def run_chat(srv, args, keys, pg, lag=None):
    """Steps the offered rate up; returns the summary with per-step figures and server CPU
    (and with lag, an ArchiveLag, the archive's lag per step)."""
    steps = []
    snap = {}

    def roots():
        r = list(srv.roots())
        return r

    def chat_line(d, p):
        if d.get("event") == "step_start":
            if lag:
                lag.take()
            snap["t"] = time.monotonic()
            snap["cpu"] = cpu_precise(roots())
            snap["pg"] = usage([pg.pid()])[0] if pg else 0
        elif d.get("event") == "step":
            cpu = cpu_precise(roots())
            _, rss = usage(roots())
            d["server_cpu_s"] = cpu - snap["cpu"]
            d["server_rss_kib"] = rss
            if pg:
                d["pg_cpu_s"] = usage([pg.pid()])[0] - snap["pg"]
            d["server_cpu_us_per_msg"] = d["server_cpu_s"] * 1e6 / max(d["delivered"], 1)
            if lag:
                d["archive_pending_rows_max"], d["archive_oldest_pending_s_max"] = lag.take()
            steps.append(d)
        return None
    lines = loadgen(args, srv.port, keys, ["--scenario", "chat", "--users", str(args.users), "--rates", args.rates,
                                           "--duration", str(args.step_seconds)], 1200, chat_line)
    summary = next((d for d in lines if d.get("scenario") == "chat"), {})
    summary["steps"] = steps
    best = [s for s in steps if s["within_1s"] >= 0.99]
    summary["best_step"] = max(best, key=lambda s: s["rate"]) if best else None
    return summary


# ---- report -----------------------------------------------------------------------------

def machine():
    model = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as f:
        mem = int(f.readline().split()[1]) // 1024
    return f"{os.cpu_count()} cores ({model}), {mem / 1024:.1f} GiB RAM, Linux {platform.release()}"


def fmt(v, spec="{:,.0f}"):
    if v is None:
        return "-"
    return spec.format(v)


def table(results, order):
    def cell(name, f):
        r = results.get(name, {})
        if "skipped" in r:
            return None
        try:
            return f(r)
        except (KeyError, TypeError):
            return "-"

    rows = [
        ("Version", lambda r: r["version"]),
        ("**Idle TLS sessions** logged in", lambda r: fmt(r["idle"]["sessions"])),
        ("RSS per idle session, KiB (all server processes)", lambda r: fmt(r["idle"]["kib_per_session"], "{:,.1f}")),
        ("Server RSS before → with sessions, MiB", lambda r: "%.0f → %.0f" % (r["idle"]["rss_before_kib"] / 1024,
                                                                            r["idle"]["rss_after_kib"] / 1024)),
        ("Time to log all in, s", lambda r: fmt(r["idle"]["connect_seconds"], "{:.1f}")),
        ("**Login storm** logins/s (TLS + SCRAM-SHA-1 + bind), server and generator sharing the cores",
         lambda r: fmt(r["login"]["logins_per_s"])),
        ("Login p99, ms", lambda r: fmt(r["login"]["p99_ms"], "{:,.0f}")),
        ("logins/s, the server alone on one core, the generator on another",
         lambda r: fmt(r["login_pinned"]["logins_per_s"])),
        ("Login p99 on one core, ms", lambda r: fmt(r["login_pinned"]["p99_ms"], "{:,.0f}")),
        ("Server CPU per login, ms", lambda r: fmt(r["login"]["server_cpu_ms_per_login"], "{:.2f}")),
        # What one core of the server alone would sustain: the storm's rate is also bounded
        # by the generator, which pays a client handshake per login on the same cores.
        ("logins/s per server core (1 / CPU per login)",
         lambda r: fmt(1000 / r["login"]["server_cpu_ms_per_login"] if r["login"]["server_cpu_ms_per_login"] else None)),
        ("generator CPU per login, ms",
         lambda r: fmt(r["login"]["gen_cpu_s"] * 1000 / max(r["login"]["logins"], 1), "{:.2f}")),
    ]
    for key, label in (("chat", "**1-1 chat, MAM off**"),
                       ("chat_mam", "**1-1 chat, MAM on** (archive in PostgreSQL; in the embedded-sqlite column, sqlite)")):
        rows += [
            (f"{label}: max sustained msgs/s (≥ 99% within 1 s)", lambda r, k=key: fmt(r[k]["best_step"]["rate"])
             if r[k].get("best_step") else r[k].get("skipped", "none")),
            ("latency p50 / p99 / p999 at that rate, ms", lambda r, k=key: "%.1f / %.1f / %.1f" % (
                r[k]["best_step"]["p50_ms"], r[k]["best_step"]["p99_ms"], r[k]["best_step"]["p999_ms"])),
            ("server CPU per message, µs (s per 10k msgs)", lambda r, k=key: "%.0f (%.2f)" % (
                r[k]["best_step"]["server_cpu_us_per_msg"], r[k]["best_step"]["server_cpu_us_per_msg"] / 100)),
            ("first step that failed: rate, within 1 s", lambda r, k=key: next(
                ("%s, %.1f%%" % (fmt(s["rate"]), s["within_1s"] * 100) for s in r[k]["steps"] if s["within_1s"] < 0.99),
                "none (top of the steps)")),
            ("generator CPU at that rate, % of a core", lambda r, k=key: "%.0f" % (
                r[k]["best_step"]["gen_cpu_s"] * 100 / r[k]["best_step"]["seconds"])),
        ]
        if key == "chat_mam":
            rows += [
                ("PostgreSQL CPU per message, µs", lambda r: "%.0f" % (
                    r["chat_mam"]["best_step"]["pg_cpu_s"] * 1e6 / max(r["chat_mam"]["best_step"]["delivered"], 1))),
                ("archive lag at that rate: highest rows pending, oldest pending row's age (s)", lambda r: "%s, %.2f" % (
                    fmt(r["chat_mam"]["best_step"]["archive_pending_rows_max"]),
                    r["chat_mam"]["best_step"]["archive_oldest_pending_s_max"])),
                ("archive lag over all steps: highest rows pending, oldest age (s); all committed after the last step in, s",
                 lambda r: "%s, %.2f; %s" % (
                     fmt(max(s["archive_pending_rows_max"] for s in r["chat_mam"]["steps"])),
                     max(s["archive_oldest_pending_s_max"] for s in r["chat_mam"]["steps"]),
                     fmt(r["chat_mam"]["archive_drained_s"], "{:.1f}"))),
            ]
    out = ["| | " + " | ".join(order) + " |", "|---|" + "---|" * len(order)]
    for label, f in rows:
        cells = []
        for name in order:
            c = cell(name, f)
            cells.append(c if c is not None else ("skipped: " + results[name]["skipped"] if label == "Version" else ""))
        out.append(f"| {label} | " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(out)


def push_table(results):
    """Push on versus its push-off twin, per rate (run_push_matched)."""
    r = results.get("Meerkat + HTTP push") or {}
    on, off = (r.get("chat") or {}).get("steps"), (r.get("chat_off") or {}).get("steps")
    if not on or not off:
        return ""
    rounds_on, rounds_off = r["chat"].get("rounds", []), r["chat_off"].get("rounds", [])

    def each(rounds, rate):
        return " / ".join(f"{x['server_cpu_us_per_msg']:.0f}" for sm in rounds for x in sm if x["rate"] == rate)
    out = ["", "| offered msgs/s | CPU per message, push off (each round), us | push on (each round), us | "
               "on vs off (medians) | p99 off / on, ms | within 1 s off / on |", "|---|---|---|---|---|---|"]
    on_by_rate = {x["rate"]: x for x in on}
    for a in off:
        b = on_by_rate.get(a["rate"])
        if b is None:
            continue
        out.append(f"| {fmt(a['rate'])} | {each(rounds_off, a['rate'])} | {each(rounds_on, a['rate'])} | "
                   f"{(b['server_cpu_us_per_msg'] / a['server_cpu_us_per_msg'] - 1) * 100:+.0f}% | "
                   f"{a['p99_ms']:.1f} / {b['p99_ms']:.1f} | {a['within_1s'] * 100:.0f}% / {b['within_1s'] * 100:.0f}% |")
    out.append("")
    out.append("A step under 99% within 1 s was not sustained: its CPU per message is not comparable.")
    return "\n".join(out) + "\n"


def write_report(path, results, order, args, command, started):
    kept = ""
    if os.path.exists(path):
        with open(path) as f:
            text = f.read()
        if PROFILE_MARK in text:
            kept = text.split(PROFILE_MARK, 1)[1]
    ossl = subprocess.run(["openssl", "version"], capture_output=True, text=True).stdout.strip()
    details = []
    for name in order:
        r = results.get(name, {})
        for k in ("chat", "chat_off", "chat_mam"):
            for s in (r.get(k) or {}).get("steps", []):
                details.append(f"| {name}{' (its push-off twin)' if k == 'chat_off' else ''} | "
                               f"{'on' if k == 'chat_mam' else 'off'} | {fmt(s['rate'])} | {fmt(s['sent'])} | "
                               f"{s['within_1s'] * 100:.2f}% | {s['p50_ms']:.1f} | {s['p99_ms']:.1f} | "
                               f"{s['p999_ms']:.1f} | {s['server_cpu_us_per_msg']:.0f} | "
                               f"{s['gen_cpu_s'] * 100 / s['seconds']:.0f}% |")
    text = f"""# Benchmarks

Written by `tests/bench/run.py` (`make bench`) on {started}; do not edit above the
marker line at the end, the next run rewrites it.

- **Command:** `{command}`
- **Machine:** {machine()}; {ossl}
- **Load generator:** `tests/bench/loadgen.c`, one process, libev + OpenSSL, on the same
  machine (it competes with the server for the {os.cpu_count()} cores: its own CPU is shown).
  It decodes the server's certificate key with OpenSSL's built-in EC decoder rather
  than the OpenSSL 3.0 provider decoders (a third of its handshake cost; see
  `--provider-keys` in loadgen.c), the same for every server.
- **Settings, the same for every server:** loopback only; STARTTLS required; TLS 1.3
  with one ECDSA P-256 self-signed certificate; SASL SCRAM-SHA-1 with stored keys
  (never the password; the generator caches its salted passwords so that it does
  not pay a PBKDF2 per login); accounts made by in-band registration (XEP-0077)
  before the figures; no shapers, no rate limits, listen backlog 1024. MAM on =
  every 1-1 message archived for both parties in one local PostgreSQL 15
  (fsync off, as for all three). Meerkat runs 2 c2s + 2 router shards + 1 mam
  shard; ejabberd one Erlang VM (2 schedulers); Prosody one Lua process. Each
  server's own TLS defaults otherwise: Meerkat sends no TLS 1.3 session tickets
  (`tls.session_tickets: 0`, its default), ejabberd and Prosody keep theirs.
- **Scenarios:** idle = {args.idle:,} sessions logged in (TLS + SCRAM + bind +
  presence, {200} logins in flight) and left idle, RSS summed over every process of
  the server from /proc, {getattr(args, 'idle_wait', args.settle)} s after the last login; login storm =
  {args.logins:,} full logins, {args.login_concurrency} in flight, each closed
  after bind, run {getattr(args, 'login_runs', 1)} times, the median run shown, then {getattr(args, 'login_runs', 1)} times more
  with every thread of the server pinned to one CPU and the generator to another
  (as with a generator on its own machine); each scenario starts once
  the server is quiet (under 5% of a core for 1 s); chat = {args.users:,} users in pairs, each message to the peer's bare
  JID, the total offered rate stepped ({args.rates} msgs/s, {args.step_seconds} s
  per step) until fewer than 99% arrive within 1 s; server CPU is the time on a CPU of
  every thread of all its processes over the step (`/proc/<pid>/task/<tid>/schedstat`, ns).
- **Meerkat + HTTP push:** the same Meerkat with a `meerkat-pusher` and one HTTP webhook
  backend in MongooseIM's form mode: every chat message a user sends is an event, one
  POST each over at most 16 keep-alive connections to `tests/bench/http_sink` (C, on this
  machine; its CPU is not counted, the pusher's is). Chat only (MAM off), measured against
  its own push-off twin: {getattr(args, 'push_rounds', 2)} rounds, each a fresh plain
  Meerkat then a fresh Meerkat with push, {args.users:,} accounts registered, quiet again,
  then the chat steps; per step the round with the median CPU. (Meerkat's own column
  chats after idle sessions and login storms, minutes earlier: not the same conditions.)
{push_table(results)}

{table(results, order)}

<details><summary>Every chat step</summary>

| server | MAM | offered msgs/s | sent | within 1 s | p50 ms | p99 ms | p999 ms | server CPU µs/msg | generator CPU |
|---|---|---|---|---|---|---|---|---|---|
{chr(10).join(details)}

</details>

Raw figures: `{os.path.relpath(args.json, ROOT) if args.json.startswith(ROOT) else args.json}`.

{PROFILE_MARK}{kept if kept else chr(10)}"""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smaller run: 2,000 idle, 1,000 logins, 3 s steps")
    ap.add_argument("--servers", default="meerkat,meerkat-sqlite,meerkat-push,ejabberd,prosody")
    ap.add_argument("--idle", type=int, default=10000)
    ap.add_argument("--users", type=int, default=1000)
    ap.add_argument("--logins", type=int, default=2000)
    ap.add_argument("--login-concurrency", type=int, default=100)
    ap.add_argument("--login-runs", type=int, default=3, help="login storms per server; the median one is reported")
    ap.add_argument("--rates", default="250,500,1000,1500,2000,3000,4000,6000,8000,12000,16000,20000,24000,32000,40000,48000,64000")
    ap.add_argument("--step-seconds", type=float, default=5)
    ap.add_argument("--settle", type=float, default=3)
    ap.add_argument("--idle-wait", type=float, default=15, help="seconds the idle sessions stay quiet before RSS is read")
    ap.add_argument("--no-mam", action="store_true", help="skip the MAM-on chat runs")
    ap.add_argument("--push-rounds", type=int, default=2,
                    help="rounds of the push column and its push-off twin, alternated")
    ap.add_argument("--push-pipeline", type=int, default=MeerkatPush.pipeline,
                    help="the push column's backend: requests in flight per connection")
    ap.add_argument("--out", default=os.path.join(ROOT, "docs", "BENCHMARKS.md"))
    ap.add_argument("--json", default=os.path.join(BUILD, "bench", "results.json"))
    ap.add_argument("--report-only", action="store_true", help="rewrite --out from the figures in --json, run nothing")
    args = ap.parse_args()
    if args.quick:
        args.idle, args.logins, args.step_seconds = min(args.idle, 2000), min(args.logins, 1000), 3
    MeerkatPush.pipeline = args.push_pipeline
    if args.report_only:
        with open(args.json) as f:
            saved = json.load(f)
        for k, v in saved.get("args", {}).items():
            setattr(args, k, v)
        write_report(args.out, saved["results"], saved.get("order", list(saved["results"])), args, saved["command"],
                     saved["started"])
        return
    if not os.access(LOADGEN, os.X_OK):
        sys.exit(f"{LOADGEN} is missing: run `make bench` (it builds it)")
    command = "make bench" + (" BENCH_ARGS=" + shlex.quote(" ".join(sys.argv[1:])) if sys.argv[1:] else "")
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    base = tempfile.mkdtemp(prefix="meerkat-bench-")
    os.chmod(base, 0o755)
    cert, key = os.path.join(base, "cert.pem"), os.path.join(base, "key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-keyout", key, "-out", cert, "-days", "30", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost"], check=True, capture_output=True)
    os.chmod(key, 0o644)   # Prosody and a dropped-privilege PostgreSQL both read from here
    classes = {"meerkat": Meerkat, "meerkat-sqlite": MeerkatSqlite, "meerkat-push": MeerkatPush, "ejabberd": Ejabberd, "prosody": Prosody}
    names = [n.strip().lower() for n in args.servers.split(",") if n.strip()]
    pg = None
    results = {}
    order = []
    t0 = time.monotonic()
    try:
        if not args.no_mam:
            pg = Postgres(base)
        for n in names:
            srv = classes[n](base, cert, key, pg)
            order.append(srv.name)
            log(f"=== {srv.name} ===")
            try:
                run_server(srv, args, results)
            except Exception as e:  # one server's failure must not lose the others' figures
                results.setdefault(srv.name, {})["error"] = repr(e)
                log(f"{srv.name}: failed: {e!r}")
            finally:
                srv.stop()
    finally:
        if pg:
            pg.stop()
        shutil.rmtree(base, ignore_errors=True)
    os.makedirs(os.path.dirname(args.json), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump({"command": command, "started": started, "results": results, "order": order,
                   "args": {k: getattr(args, k) for k in ("idle", "users", "logins", "login_concurrency", "login_runs", "rates", "push_rounds",
                                                          "step_seconds", "settle", "idle_wait")}}, f, indent=1)
    write_report(args.out, results, order, args, command, started)
    log(f"done in {time.monotonic() - t0:.0f} s; wrote {args.out} and {args.json}")


if __name__ == "__main__":
    main()
