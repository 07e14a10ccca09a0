"""tests/integration/harness.py - starts real Meerkat clusters (and PostgreSQL) on loopback for the tests."""
import contextlib
import os
import random
import re
import signal
import socket
import subprocess
import time
import urllib.request

BUILD = os.environ.get("MEERKAT_BUILD", os.path.join(os.path.dirname(__file__), "..", "..", "build"))
ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


_handed_out = set()


def _ephemeral_range():
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            lo, hi = (int(x) for x in f.read().split())
        return lo, hi
    except (OSError, ValueError):
        return 32768, 60999


def free_port():
    """A TCP port on 127.0.0.1 nobody uses right now, outside the kernel's ephemeral range.

    A port the kernel hands out for bind(0) is also one it hands out as the local port of
    outgoing connections: between this call and the server's bind, a connection of the
    cluster itself (ZeroMQ, PostgreSQL, the health probes) may take it and the process
    then fails with EADDRINUSE. Ports below the ephemeral range are never taken that way."""
    lo, hi = _ephemeral_range()
    top, bottom = (lo - 1, 10000) if lo > 12000 else (65535, hi + 1)
    for _ in range(1000):
        port = random.randint(bottom, top)
        if port in _handed_out:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(port, path, timeout=1.0):
    """(status, body) of GET http://127.0.0.1:port/path, or (None, '') when nothing answers."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except OSError:
        return None, ""


def make_test_ca(d, ca_name="meerkat test CA"):
    """A throwaway CA and a server certificate for 127.0.0.1 signed by it, made in folder
    d: (CA file, certificate file, key file)."""
    def run(*args):
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True)
    run("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", "ca.key",
        "-out", "ca.pem", "-days", "2", "-subj", f"/CN={ca_name}")
    run("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", "server.key",
        "-out", "server.csr", "-subj", "/CN=127.0.0.1")
    with open(os.path.join(d, "san.ext"), "w") as f:
        f.write("subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n")
    run("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
        "-out", "server.pem", "-days", "2", "-extfile", "san.ext")
    return os.path.join(d, "ca.pem"), os.path.join(d, "server.pem"), os.path.join(d, "server.key")


def _h64(data, seed):
    """common/util.c mk_hash64 (FNV-1a + splitmix64)."""
    m = (1 << 64) - 1
    h = 0xcbf29ce484222325 ^ seed
    for byte in data:
        h ^= byte
        h = (h * 0x100000001b3) & m
    h ^= h >> 30
    h = (h * 0xbf58476d1ce4e5b9) & m
    h ^= h >> 27
    h = (h * 0x94d049bb133111eb) & m
    h ^= h >> 31
    return h


def shard_of(bare, procs):
    """The process of procs (ids, e.g. the routers) that owns a bare JID: cfg_shard's
    rendezvous hashing."""
    return max(procs, key=lambda p: _h64(bare.encode(), _h64(p.encode(), 0)))


def wait_until(pred, timeout=10.0, step=0.05):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        v = pred()
        if v:
            return v
        time.sleep(step)
    return pred()


def children_of(pid):
    """Pids whose parent is pid (from /proc)."""
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            if int(fields[1]) == pid:
                out.append(int(d))
        except (OSError, IndexError, ValueError):
            pass
    return out


def pid_alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
        return state != "Z"
    except OSError:
        return False


class Cluster:
    """A Meerkat cluster started with `meerkat start -c <generated config>` in tmpdir."""

    def __init__(self, tmpdir, c2s=1, router=1, mam=1, pusher=1, gd=1, storage=None, extra="", data_dir=None):
        self.dir = str(tmpdir)
        self.cwd = self.dir          # working directory of `meerkat start` and `meerkat ctl`
        self.c2s_port = free_port()
        self.c2s_tls_port = free_port()
        self.procs = []
        for role, n in (("c2s", c2s), ("router", router), ("mam", mam), ("pusher", pusher), ("gd", gd)):
            for i in range(n):
                self.procs.append({"id": f"{role}.{i}", "bus": free_port(), "metrics": free_port()})
        self.config = os.path.join(self.dir, "meerkat.yaml")
        lines = [
            "domains: [localhost]",
            f"data_dir: {data_dir or self.dir + '/var'}",
            "log: {level: debug}",
            "listeners:",
            f"  c2s: {{host: 127.0.0.1, port: {self.c2s_port}}}",
            f"  c2s_tls: {{host: 127.0.0.1, port: {self.c2s_tls_port}}}",
            "grace_sec: 3",
        ]
        if storage:
            lines.append(storage)
        lines.append("processes:")
        for p in self.procs:
            lines.append(f"  - {{id: {p['id']}, bus: \"tcp://127.0.0.1:{p['bus']}\", metrics: \"127.0.0.1:{p['metrics']}\"}}")
        if extra:
            lines.append(extra)
        with open(self.config, "w") as f:
            f.write("\n".join(lines) + "\n")
        self.log_path = os.path.join(self.dir, "meerkat.log")
        self.proc = None

    def add_listener(self, name, extra=""):
        """Adds listener name (component, c2s_ws, ...) on a free loopback port to the config
        written by __init__ (before start); extra is more of its YAML map (", key: value").
        Returns the port."""
        port = free_port()
        with open(self.config) as f:
            text = f.read()
        text = text.replace("listeners:\n", f"listeners:\n  {name}: {{host: 127.0.0.1, port: {port}{extra}}}\n", 1)
        with open(self.config, "w") as f:
            f.write(text)
        return port

    def start(self, timeout=15.0):
        self.log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([os.path.join(BUILD, "meerkat"), "start", "-c", self.config],
                                     stdout=self.log, stderr=subprocess.STDOUT, cwd=self.cwd)
        ok = wait_until(self.all_healthy, timeout)
        if not ok:
            raise RuntimeError("cluster did not come up:\n" + self.read_log()[-4000:])
        return self

    def metrics_port(self, pid_id):
        return next(p["metrics"] for p in self.procs if p["id"] == pid_id)

    def healthy(self, proc_id):
        return http_get(self.metrics_port(proc_id), "/healthz")[0] == 200

    def all_healthy(self):
        return all(self.healthy(p["id"]) for p in self.procs)

    def child_pid(self, proc_id):
        """The pid of the running process proc_id (a child of the supervisor)."""
        for pid in children_of(self.proc.pid):
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    args = f.read().split(b"\0")
            except OSError:
                continue
            if proc_id.encode() in args and pid_alive(pid):
                return pid
        return None

    def ctl(self, *args, check=True):
        r = subprocess.run([os.path.join(BUILD, "meerkat"), "ctl", "-c", self.config, *args],
                           capture_output=True, text=True, cwd=self.cwd, timeout=30)
        if check and r.returncode != 0:
            raise RuntimeError(f"meerkat ctl {' '.join(args)} failed ({r.returncode}): {r.stdout}{r.stderr}")
        return r

    def read_log(self):
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def stop(self, timeout=15.0):
        if self.proc is None:
            return 0
        kids = children_of(self.proc.pid)
        self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = self.proc.wait()
        for k in kids:
            wait_until(lambda: not pid_alive(k), 5)
        self.proc = None
        self.log.close()
        self.check_sanitizers()
        return rc

    def check_sanitizers(self):
        """A sanitizer report in any process's output fails the test, even when the
        supervisor restarted the process and the test itself went on fine."""
        text = self.read_log()
        for marker in ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:"):
            if marker in text:
                i = text.index(marker)
                raise AssertionError("sanitizer report in the cluster log:\n" + text[max(0, i - 200):i + 3000])


class Postgres:
    """A real PostgreSQL server in a temporary directory (tests/pg_tmp.sh), on loopback."""

    def __init__(self):
        import tempfile
        # Not under pytest's tmp_path: as root the server runs as the postgres user,
        # which cannot enter root's private pytest directories.
        self.dir = tempfile.mkdtemp(prefix="meerkat-pg-")
        os.chmod(self.dir, 0o755)
        r = subprocess.run([os.path.join(ROOT, "tests", "pg_tmp.sh"), "start", self.dir], capture_output=True,
                           text=True, timeout=120)
        if r.returncode != 0:
            raise RuntimeError("PostgreSQL did not start: " + r.stdout + r.stderr)
        self.port = int(r.stdout.strip().splitlines()[-1])

    def storage_yaml(self):
        return ("storage: {driver: pgsql, pgsql: {host: 127.0.0.1, port: %d, dbname: meerkat, user: meerkat, "
                "sslmode: disable}}" % self.port)

    def psql_args(self, appname=None):
        """argv and environment of a psql session as the meerkat role (tuples only, no
        alignment), named appname in pg_stat_activity."""
        env = dict(os.environ)
        if appname:
            env["PGAPPNAME"] = appname
        return (["psql", "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-p", str(self.port),
                 "-U", "meerkat", "-d", "meerkat"], env)

    def query(self, sql):
        """The text output of sql, run in a session of its own."""
        argv, env = self.psql_args("meerkat-test")
        r = subprocess.run(argv + ["-c", sql], capture_output=True, text=True, env=env, timeout=30)
        if r.returncode != 0:
            raise RuntimeError(f"psql failed: {r.stderr}")
        return r.stdout.strip()

    def stop(self):
        subprocess.run([os.path.join(ROOT, "tests", "pg_tmp.sh"), "destroy", self.dir], capture_output=True,
                       timeout=60)


class TableLock:
    """A psql session holding (or queued for) ACCESS EXCLUSIVE on a table until release()."""

    def __init__(self, pg, name, table="users"):
        self.pg, self.name = pg, name
        argv, env = pg.psql_args(name)
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, text=True, env=env)
        self.proc.stdin.write(f"BEGIN;\nLOCK TABLE {table} IN ACCESS EXCLUSIVE MODE;\n")
        self.proc.stdin.flush()

    def _state(self, granted):
        return int(self.pg.query(
            "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
            f"WHERE a.application_name = '{self.name}' AND l.locktype = 'relation' "
            f"AND l.mode = 'AccessExclusiveLock' AND l.granted = {'true' if granted else 'false'}"))

    def granted(self):
        return self._state(True) == 1

    def waiting(self):
        return self._state(False) == 1

    def release(self):
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write("COMMIT;\n")
                self.proc.stdin.close()
            except BrokenPipeError:
                pass
            self.proc.wait(30)


@contextlib.contextmanager
def cluster_on(driver, tmpdir, c2s=2, router=2, mam=1, **kw):
    """A started cluster on "sqlite" or "pgsql" (a PostgreSQL of its own); both stopped on
    the way out, whatever happened, so no server outlives the test module."""
    pg = Postgres() if driver == "pgsql" else None
    c = None
    try:
        c = Cluster(tmpdir, c2s=c2s, router=router, mam=mam, storage=pg.storage_yaml() if pg else None, **kw)
        c.pg = pg
        c.start()
        yield c
    finally:
        try:
            if c is not None:
                c.stop()
        finally:
            if pg:
                pg.stop()


def metric(cl, proc, name, **labels):
    """The sum of a metric's samples with those labels in proc's /metrics."""
    _, text = http_get(cl.metrics_port(proc), "/metrics")
    total = 0.0
    for m in re.finditer(rf"^{name}(\{{[^}}]*\}})? (\S+)$", text, re.M):
        if all(f'{k}="{v}"' in (m.group(1) or "") for k, v in labels.items()):
            total += float(m.group(2))
    return total


def resume(pid):
    """SIGCONT to a process a test stopped, which may be gone already (killed and reaped)."""
    try:
        os.kill(pid, signal.SIGCONT)
    except ProcessLookupError:
        pass


def kill9_and_wait(cl, proc):
    """kill -9 of proc, then waits until its supervisor has it running and healthy again."""
    old = cl.child_pid(proc)
    os.kill(old, signal.SIGKILL)
    assert wait_until(lambda: (cl.child_pid(proc) or old) != old and cl.healthy(proc), 30), f"{proc} did not come back"
