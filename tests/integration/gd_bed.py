"""tests/integration/gd_bed.py - two data centers on this machine for the global-distribution tests.

Layout (made by the test, as root; everything removed at the end, whatever happened):

    root namespace: the test process, PostgreSQL (shared by both data centers), slixmpp clients
      |  veth 10.N.1.1/30 <-> 10.N.1.2/30          veth 10.N.2.1/30 <-> 10.N.2.2/30  |
    netns DC-A: c2s router mam gd, Redis primary  ==== veth 10.N.0.1/30 <-> 10.N.0.2/30 ====  netns DC-B: c2s router mam gd, Redis replica

The A-B veth is the inter-DC network: the gd link, Redis replication and DC-B's writes to the
primary cross it and nothing else. Each data center reaches the root namespace (its clients and
PostgreSQL) over a veth of its own; the root namespace does not forward, and neither data center
has a route to the other's root-side subnet, so A and B meet only on the A-B veth.

Delay and cuts of the gd link go through LinkProxy (this kernel has no netem): a TCP proxy of the
test's own whose sockets live inside a data center's namespace (made there with setns), between a
gd's outgoing link socket and the other data center's link inbox, so its traffic still crosses the
A-B veth. A cut of the whole inter-DC network is `Bed.link_down()` (ip link set down on the veth).
"""
import base64
import contextlib
import ctypes
import os
import random
import secrets
import selectors
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time

from harness import BUILD, Cluster, Postgres, ROOT, free_port, http_get, wait_until

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def sh(*argv, check=True):
    r = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({r.returncode}): {r.stdout}{r.stderr}")
    return r


def in_netns(ns, fn):
    """fn() run in a thread that has entered network namespace ns; its result (a socket made
    there stays in ns for good, whichever thread uses it later)."""
    out = {}

    def work():
        try:
            fd = os.open(f"/var/run/netns/{ns}", os.O_RDONLY)
            try:
                if _libc.setns(fd, CLONE_NEWNET) != 0:
                    e = ctypes.get_errno()
                    raise OSError(e, f"setns {ns}: {os.strerror(e)}")
            finally:
                os.close(fd)
            out["v"] = fn()
        except BaseException as e:  # handed to the caller
            out["e"] = e

    t = threading.Thread(target=work, name=f"setns-{ns}")
    t.start()
    t.join()
    if "e" in out:
        raise out["e"]
    return out["v"]


# --- CURVE keys (the gd link's key file: a comment line and the Z85 secret) ---------------
_Z85 = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.-:+=^!/*?&<>()[]{}@%$#"


def z85(data):
    assert len(data) % 4 == 0
    out = []
    for i in range(0, len(data), 4):
        v = int.from_bytes(data[i:i + 4], "big")
        chunk = []
        for _ in range(5):
            chunk.append(_Z85[v % 85])
            v //= 85
        out.extend(reversed(chunk))
    return "".join(out)


def curve_keypair():
    """(public, secret) Z85 strings of a fresh Curve25519 pair, as zmq_curve_keypair makes."""
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
    from cryptography.hazmat.primitives import serialization
    k = X25519PrivateKey.generate()
    raw = serialization.Encoding.Raw
    sec = k.private_bytes(raw, serialization.PrivateFormat.Raw, serialization.NoEncryption())
    pub = k.public_key().public_bytes(raw, serialization.PublicFormat.Raw)
    return z85(pub), z85(sec)


def write_key_file(path, secret):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(f"# meerkat CURVE secret key (test bed)\n{secret}\n")
    os.chmod(path, 0o600)


# --- a delaying / cutting TCP proxy ------------------------------------------------------
class LinkProxy:
    """Listens on listen_host:port inside namespace ns and forwards every connection to
    target (host, port) with a socket also made in ns. delay is added one way, to each chunk,
    in both directions (so 0.010 adds 20 ms of round trip); order is kept. cut() resets every
    connection and refuses new ones until heal()."""

    def __init__(self, ns, listen_host, target, delay=0.0):
        self.ns = ns
        self.target = target
        self.delay = delay
        self.cutting = False
        self.lock = threading.Lock()
        self.conns = []          # [(a, b)] open pairs
        self.accepted = 0        # connections taken
        self.active = 0          # connections open now (both directions still flowing)
        self.bytes = 0
        self.late = []           # with a delay: how late each chunk left (s; the proxy's own lag)

        def mk():
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((listen_host, 0))
            s.listen(64)
            return s
        self.lsock = in_netns(ns, mk)
        self.port = self.lsock.getsockname()[1]
        self.endpoint = f"tcp://{listen_host}:{self.port}"
        self.closed = False
        threading.Thread(target=self._accept_loop, daemon=True, name=f"proxy-{self.port}").start()

    def _accept_loop(self):
        while not self.closed:
            try:
                a, _ = self.lsock.accept()
            except OSError:
                return
            if self.cutting:
                self._reset(a)
                continue
            try:
                b = in_netns(self.ns, lambda: socket.create_connection(self.target, timeout=5))
            except OSError:
                self._reset(a)
                continue
            for s in (a, b):
                s.settimeout(None)
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._start(a, b)

    def _start(self, a, b):
        """Pumps both directions of one connection pair; the pair is closed (and no longer
        active) once both directions have ended. Its own method, so each pair's closure holds
        its own sockets and counter (a loop-local closure would see the next pair's)."""
        with self.lock:
            self.conns.append((a, b))
            self.accepted += 1
            self.active += 1
        left = [2]

        def pump(src, dst):
            self._pump(src, dst)
            with self.lock:
                left[0] -= 1
                if left[0] == 0:
                    self.active -= 1
                    for s in (a, b):
                        try:
                            s.close()
                        except OSError:
                            pass
        for src, dst in ((a, b), (b, a)):
            threading.Thread(target=pump, args=(src, dst), daemon=True).start()

    @staticmethod
    def _reset(s):
        """Closes s with a RST. shutdown(SHUT_RD) first: it wakes a thread blocked in recv on s
        (close alone does not), and sends nothing."""
        try:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
            s.shutdown(socket.SHUT_RD)
        except OSError:
            pass
        try:
            s.close()
        except OSError:
            pass

    def _pump(self, src, dst):
        import collections
        q = collections.deque()
        cv = threading.Condition()
        done = [False]

        def writer():
            while True:
                with cv:
                    while not q and not done[0]:
                        cv.wait()
                    if not q:
                        break
                    due, data = q.popleft()
                wait = due - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
                try:
                    dst.sendall(data)
                except OSError:
                    break
                if self.delay > 0 and len(self.late) < 1000000:
                    self.late.append(time.monotonic() - due)
            try:
                dst.shutdown(socket.SHUT_WR)
            except OSError:
                pass
        w = threading.Thread(target=writer, daemon=True)
        w.start()
        try:
            self._read(src, q, cv, done)
        finally:
            w.join()

    def _read(self, src, q, cv, done):
        while True:
            try:
                data = src.recv(65536)
            except OSError:
                data = b""
            with cv:
                if not data:
                    done[0] = True
                    cv.notify()
                    break
                self.bytes += len(data)
                q.append((time.monotonic() + self.delay, data))
                cv.notify()

    def cut(self):
        """Resets every open connection and refuses new ones (until heal)."""
        self.cutting = True
        with self.lock:
            conns, self.conns = self.conns, []
        for a, b in conns:
            self._reset(a)
            self._reset(b)

    def heal(self):
        self.cutting = False

    def close(self):
        self.closed = True
        self.cut()
        try:
            self.lsock.close()
        except OSError:
            pass


class DelayProxy:
    """tests/bench/delay_proxy (C, one libev loop) in namespace ns: the same forwarding and
    one-way delay per chunk as LinkProxy, for the benchmark, where the Python proxy's own
    scheduling lag (its threads take turns on the GIL) would be measured as the delay's. No
    cut(): the tests that cut the link use LinkProxy."""

    def __init__(self, ns, listen_host, target, delay):
        # Real-time priority (SCHED_FIFO): a chunk leaves when it is due, not when the chat's own
        # processes let the proxy run (it stands for the network, which takes no CPU from them;
        # unprioritized its p99 lag was 3-3.7 ms beside the pinned data centers).
        self.proc = subprocess.Popen(["ip", "netns", "exec", ns, "chrt", "-f", "10",
                                      os.path.join(BUILD, "bench", "delay_proxy"),
                                      listen_host, target[0], str(target[1]), f"{delay * 1000:g}"],
                                     stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline().split()
        if len(line) != 2 or line[0] != "listening":
            self.proc.kill()
            raise RuntimeError(f"delay_proxy did not start: {line}")
        self.port = int(line[1])
        self.endpoint = f"tcp://{listen_host}:{self.port}"
        self.delay_ms = self.current_ms = float(f"{delay * 1000:g}")

    def take_late(self):
        """How late chunks left past their due time since the last call, in ms:
        {"p50", "p99", "p99.9", "max"} (None when no chunk passed)."""
        self.proc.send_signal(signal.SIGUSR1)
        f = dict(kv.split("=") for kv in self.proc.stdout.readline().split()[1:])
        if int(f["chunks"]) == 0:
            return None
        return {k: int(f[v]) / 1000 for k, v in (("p50", "p50"), ("p99", "p99"), ("p99.9", "p999"), ("max", "max"))}

    def set_delayed(self, on):
        """The configured delay (on) or none through the same proxy (SIGUSR2 switches)."""
        want = self.delay_ms if on else 0.0
        if self.current_ms != want:
            self.proc.send_signal(signal.SIGUSR2)
            line = self.proc.stdout.readline().split()
            if len(line) != 2 or line[0] != "delay_ms" or float(line[1]) != want:
                raise RuntimeError(f"delay_proxy did not switch to {want} ms: {line}")
            self.current_ms = want

    def close(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(5)


# --- one data center's Meerkat cluster ----------------------------------------------------
class DcCluster(Cluster):
    """harness.Cluster run inside network namespace ns: listeners and metrics on the address
    the root namespace reaches it at (host), the bus on the namespace's own loopback."""

    def __init__(self, tmpdir, ns, host, storage, gd_yaml="", c2s=1, router=1, mam=1, pusher=0, gd=1,
                 log_level="debug", extra_yaml="", cpus=None):
        os.makedirs(tmpdir, exist_ok=True)
        super().__init__(tmpdir, c2s=c2s, router=router, mam=mam, pusher=pusher, gd=gd, storage=storage)
        self.storage = storage
        self.log_level = log_level
        self.extra_yaml = extra_yaml
        self.ns = ns
        self.host = host
        self.gd_yaml = gd_yaml
        self.cpus = cpus          # a set of CPUs every process of this data center runs on, or None
        self.write_config()

    def write_config(self, gd_yaml=None):
        if gd_yaml is not None:
            self.gd_yaml = gd_yaml
        lines = [
            "domains: [localhost]",
            f"data_dir: {self.dir}/var",
            f"log: {{level: {self.log_level}}}",
            "listeners:",
            f"  c2s: {{host: {self.host}, port: {self.c2s_port}}}",
            f"  c2s_tls: {{host: {self.host}, port: {self.c2s_tls_port}}}",
            "grace_sec: 3",
            self.storage,
            "processes:",
        ]
        for p in self.procs:
            lines.append(f"  - {{id: {p['id']}, bus: \"tcp://127.0.0.1:{p['bus']}\", "
                         f"metrics: \"{self.host}:{p['metrics']}\"}}")
        if self.extra_yaml:
            lines.append(self.extra_yaml)
        if self.gd_yaml:
            lines.append(self.gd_yaml)
        with open(self.config, "w") as f:
            f.write("\n".join(lines) + "\n")

    def argv(self, *args):
        return ["ip", "netns", "exec", self.ns, os.path.join(BUILD, "meerkat"), *args]

    def start(self, timeout=20.0):
        self.log = open(self.log_path, "ab")
        # ip netns exec execs meerkat in place: self.proc.pid is the supervisor's pid.
        cpus = self.cpus
        self.proc = subprocess.Popen(self.argv("start", "-c", self.config), stdout=self.log,
                                     stderr=subprocess.STDOUT, cwd=self.cwd,
                                     preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None)
        ok = wait_until(lambda: self.proc.poll() is not None or self.all_healthy(), timeout)
        if not ok or self.proc.poll() is not None:
            rc = self.proc.poll()
            if rc is not None:
                self.proc = None
                self.log.close()
            raise RuntimeError(f"cluster in {self.ns} did not come up (rc {rc}):\n" + self.read_log()[-4000:])
        return self

    def healthy(self, proc_id):
        return http_get_host(self.host, self.metrics_port(proc_id), "/healthz")[0] == 200

    def metrics(self, proc_id):
        return http_get_host(self.host, self.metrics_port(proc_id), "/metrics")[1]

    def ctl(self, *args, check=True):
        r = subprocess.run(self.argv("ctl", "-c", self.config, *args), capture_output=True, text=True,
                           cwd=self.cwd, timeout=30)
        if check and r.returncode != 0:
            raise RuntimeError(f"meerkat ctl {' '.join(args)} failed ({r.returncode}): {r.stdout}{r.stderr}")
        return r


def http_get_host(host, port, path, timeout=1.0):
    import urllib.error
    import urllib.request
    try:
        with urllib.request.urlopen(f"http://{host}:{port}{path}", timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except OSError:
        return None, ""


def metric_sum(text, name, **labels):
    """Sum of the samples of metric name whose labels include labels (Prometheus text)."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name) or line.startswith("#"):
            continue
        head = line.rsplit(" ", 1)[0]
        if head.split("{", 1)[0] != name:
            continue
        if all(f'{k}="{v}"' in head for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


# --- the bed -------------------------------------------------------------------------------
class Bed:
    """Two data centers, "dc-a" and "dc-b" (see the module's comment). Use as a context
    manager, or call up() and down() (down removes everything, also after a failed up)."""

    def __init__(self, tmpdir, gd=False, c2s=1, router=1, mam=1, gd_extra=None, proxy=True, log_level="debug",
                 learn_endpoints=False, extra_yaml="", cpus=None, delay_proxy=None):
        self.dir = str(tmpdir)
        self.tag = secrets.token_hex(3)
        self.net = self._pick_net()
        self.ns = {"a": f"mkgd-{self.tag}-a", "b": f"mkgd-{self.tag}-b"}
        self.dev = {"ab": f"mk{self.tag}ab", "ba": f"mk{self.tag}ba",
                    "ra": f"mk{self.tag}ra", "ar": f"mk{self.tag}ar",
                    "rb": f"mk{self.tag}rb", "br": f"mk{self.tag}br"}
        n = self.net
        self.ip = {"a": f"10.{n}.0.1", "b": f"10.{n}.0.2",              # on the inter-DC veth
                   "root_a": f"10.{n}.1.1", "a_root": f"10.{n}.1.2",  # root <-> DC-A
                   "root_b": f"10.{n}.2.1", "b_root": f"10.{n}.2.2"}  # root <-> DC-B
        self.gd = gd
        self.sizes = dict(c2s=c2s, router=router, mam=mam, log_level=log_level, extra_yaml=extra_yaml)
        self.gd_extra = gd_extra or {}
        self.want_proxy = proxy
        # seconds one way: the links go through DelayProxy (C) with that delay instead of LinkProxy
        self.delay_proxy = delay_proxy
        self.learn_endpoints = learn_endpoints   # peers' link endpoints from Redis, not the config
        # {"a": {cpu...}, "b": {...}}: each data center's processes and Redis kept on its own
        # CPUs (as if each had its own machine); None: anywhere
        self.cpus = cpus or {}
        self.pg = None
        self.redis = {}
        self.dc = {}
        self.proxies = {}
        self.keys = {}

    @staticmethod
    def _pick_net():
        used = sh("ip", "-br", "addr").stdout + sh("ip", "route").stdout
        for _ in range(100):
            n = random.randint(100, 250)
            if f"10.{n}." not in used:
                return n
        raise RuntimeError("no free 10.N.0.0/16 for the test bed")

    def __enter__(self):
        try:
            self.up()
        except BaseException:
            self.down()
            raise
        return self

    def __exit__(self, *exc):
        self.down()

    # --- network ---------------------------------------------------------------------------
    def nsx(self, dc, *argv, check=True):
        return sh("ip", "netns", "exec", self.ns[dc], *argv, check=check)

    def _net_up(self):
        a, b, d, ip = self.ns["a"], self.ns["b"], self.dev, self.ip
        for ns in (a, b):
            sh("ip", "netns", "add", ns)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        sh("ip", "link", "add", d["ab"], "netns", a, "type", "veth", "peer", "name", d["ba"], "netns", b)
        sh("ip", "link", "add", d["ra"], "type", "veth", "peer", "name", d["ar"], "netns", a)
        sh("ip", "link", "add", d["rb"], "type", "veth", "peer", "name", d["br"], "netns", b)
        sh("ip", "-n", a, "addr", "add", ip["a"] + "/30", "dev", d["ab"])
        sh("ip", "-n", b, "addr", "add", ip["b"] + "/30", "dev", d["ba"])
        sh("ip", "-n", a, "addr", "add", ip["a_root"] + "/30", "dev", d["ar"])
        sh("ip", "-n", b, "addr", "add", ip["b_root"] + "/30", "dev", d["br"])
        sh("ip", "addr", "add", ip["root_a"] + "/30", "dev", d["ra"])
        sh("ip", "addr", "add", ip["root_b"] + "/30", "dev", d["rb"])
        for ns, dev in ((a, d["ab"]), (b, d["ba"]), (a, d["ar"]), (b, d["br"])):
            sh("ip", "-n", ns, "link", "set", dev, "up")
        for dev in (d["ra"], d["rb"]):
            sh("ip", "link", "set", dev, "up")

    def link_down(self):
        """Cuts the inter-DC network: the A-B veth goes down (both ends)."""
        sh("ip", "-n", self.ns["a"], "link", "set", self.dev["ab"], "down")

    def link_up(self):
        sh("ip", "-n", self.ns["a"], "link", "set", self.dev["ab"], "up")
        wait_until(lambda: "LOWER_UP" in sh("ip", "-n", self.ns["b"], "link", "show", self.dev["ba"]).stdout, 5)

    def can_connect(self, dc, host, port, timeout=2.0):
        """None when a TCP connection from namespace dc to host:port succeeds, else the error
        (an OSError's errno name or 'timeout')."""
        def attempt():
            s = socket.socket()
            s.settimeout(timeout)
            try:
                s.connect((host, port))
                return None
            except socket.timeout:
                return "timeout"
            except OSError as e:
                return __import__("errno").errorcode.get(e.errno, str(e.errno))
            finally:
                s.close()
        return in_netns(self.ns[dc], attempt)

    # --- PostgreSQL, shared, in the root namespace ---------------------------------------------
    def _pg_up(self):
        self.pg = Postgres()
        data = os.path.join(self.pg.dir, "data")
        conf = (f"listen_addresses = '127.0.0.1,{self.ip['root_a']},{self.ip['root_b']}'\n"
                "max_connections = 100\n")
        hba = f"host all all 10.{self.net}.0.0/16 trust\n"
        sh("runuser", "-u", "postgres", "--", "sh", "-c",
           f"printf '%s' \"$1\" >> {data}/postgresql.conf; printf '%s' \"$2\" >> {data}/pg_hba.conf", "_", conf, hba)
        sh(os.path.join(ROOT, "tests", "pg_tmp.sh"), "stop", self.pg.dir)
        sh(os.path.join(ROOT, "tests", "pg_tmp.sh"), "start", self.pg.dir)

    def storage_yaml(self, dc):
        host = self.ip["root_" + dc]
        return ("storage: {driver: pgsql, pgsql: {host: %s, port: %d, dbname: meerkat, user: meerkat, "
                "sslmode: disable}}" % (host, self.pg.port))

    # --- Redis: primary in DC-A, replica in DC-B ---------------------------------------------------
    def _redis_up(self):
        for dc in ("a", "b"):
            d = os.path.join(self.dir, f"redis-{dc}")
            os.makedirs(d, exist_ok=True)
            port = free_port()
            argv = ["ip", "netns", "exec", self.ns[dc], "redis-server", "--port", str(port),
                    "--bind", "127.0.0.1", self.ip[dc], self.ip[dc + "_root"], "--protected-mode", "no",
                    "--save", "", "--appendonly", "no", "--repl-timeout", "5", "--repl-ping-replica-period", "1", "--dir", d, "--logfile", os.path.join(d, "redis.log")]
            if dc == "b":
                argv += ["--replicaof", self.ip["a"], str(self.redis["a"]["port"])]
            cpus = self.cpus.get(dc)
            p = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                 preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None)
            self.redis[dc] = {"port": port, "proc": p, "dir": d}
            if not wait_until(lambda: self.redis_cli(dc, "PING", check=False).stdout.strip() == "PONG", 10):
                raise RuntimeError(f"redis in dc-{dc} did not start")
        if not wait_until(lambda: "master_link_status:up" in self.redis_cli("b", "INFO", "replication").stdout, 15):
            raise RuntimeError("the dc-b replica did not sync with the dc-a primary")

    def redis_cli(self, dc, *args, check=True):
        """redis-cli against DC dc's Redis (from the root namespace, over its veth)."""
        return sh("redis-cli", "-h", self.ip[dc + "_root"], "-p", str(self.redis[dc]["port"]), *args, check=check)

    # --- gd configuration ---------------------------------------------------------------------------
    def gd_yaml(self, dc, **over):
        """The gd: section of data center dc (a or b); keyword arguments replace keys of the
        defaults below (a value None drops the key)."""
        other = "b" if dc == "a" else "a"
        # the proxy in namespace x dials the other data center's link inbox
        peer_ep = self.proxies[dc].endpoint if dc in self.proxies else \
            f"tcp://{self.ip[other]}:{self.link_port[other]}"
        own_ep = self.proxies[other].endpoint if other in self.proxies else None
        r = self.redis
        bind = f"tcp://{self.ip[dc]}:{self.link_port[dc]}"
        if self.learn_endpoints:
            # Each gd advertises, in Redis, the endpoint the other data center dials it at
            # (the proxy over there); the peers list has no endpoint: learned from Redis.
            link = f"{{bind: \"{bind}\", advertise: \"{own_ep or bind}\"}}"
            peer = f"[{{dc: dc-{other}, public_key: \"{self.keys[other][0]}\"}}]"
        else:
            link = f"{{bind: \"{bind}\"}}"
            peer = f"[{{dc: dc-{other}, public_key: \"{self.keys[other][0]}\", endpoint: \"{peer_ep}\"}}]"
        v = {
            "enabled": "true",
            "dc": f"dc-{dc}",
            "link": link,
            "keys": f"{{secret_file: {self.key_file[dc]}}}",
            "peers": peer,
            "redis": (f"{{primary: \"{self.ip['a']}:{r['a']['port']}\", "
                      f"replica: \"127.0.0.1:{r[dc]['port']}\"}}"),
            "ttl_sec": "10",
            "refresh_sec": "3",
        }
        v.update(self.gd_extra)
        v.update(over)
        return "gd:\n" + "".join(f"  {k}: {x}\n" for k, x in v.items() if x is not None)

    # --- up / down -------------------------------------------------------------------------------------
    def up(self):
        self._net_up()
        self._pg_up()
        self._redis_up()
        self.link_port = {dc: free_port() for dc in ("a", "b")}
        self.key_file = {}
        for dc in ("a", "b"):
            self.keys[dc] = curve_keypair()
            os.makedirs(os.path.join(self.dir, f"dc-{dc}"), exist_ok=True)
            self.key_file[dc] = os.path.join(self.dir, f"dc-{dc}", "gd_curve.key")
            write_key_file(self.key_file[dc], self.keys[dc][1])
        if self.gd and self.want_proxy:
            # gd-b dials dc-a's inbox through a proxy in DC-B, and gd-a dc-b's through one in DC-A.
            for dc, other in (("a", "b"), ("b", "a")):
                target = (self.ip[other], self.link_port[other])
                self.proxies[dc] = (DelayProxy(self.ns[dc], "127.0.0.1", target, self.delay_proxy)
                                    if self.delay_proxy is not None else LinkProxy(self.ns[dc], "127.0.0.1", target))
        for dc in ("a", "b"):
            c = DcCluster(os.path.join(self.dir, f"dc-{dc}"), self.ns[dc], self.ip[dc + "_root"],
                          self.storage_yaml(dc), gd_yaml=self.gd_yaml(dc) if self.gd else "", cpus=self.cpus.get(dc),
                          **self.sizes)
            self.dc[dc] = c
        for dc in ("a", "b"):
            self.dc[dc].start()
        return self

    def down(self):
        errors = []
        for c in self.dc.values():
            try:
                c.stop()
            except Exception as e:  # noqa: BLE001 - keep cleaning, report at the end
                errors.append(e)
        for p in self.proxies.values():
            p.close()
        for r in self.redis.values():
            r["proc"].terminate()
            try:
                r["proc"].wait(10)
            except subprocess.TimeoutExpired:
                r["proc"].kill()
                r["proc"].wait()
        if self.pg:
            self.pg.stop()
            self.pg = None
        for ns in self.ns.values():
            sh("ip", "netns", "del", ns, check=False)
        # veths whose root end outlived a namespace (deleting a namespace removes its ends,
        # and with them their peers; this only matters after a half-made bed)
        for dev in (self.dev["ra"], self.dev["rb"]):
            sh("ip", "link", "del", dev, check=False)
        if errors:
            raise errors[0]

    # --- clients ----------------------------------------------------------------------------------
    def client(self, dc, user, resource="r", password=None, **kw):
        import xmpp
        c = self.dc[dc]
        return xmpp.Client(c.c2s_port, f"{user}@localhost/{resource}", password or f"{user}-pw",
                           host=c.host, **kw)

    def register(self, *users):
        for u in users:
            self.dc["a"].ctl("register", f"{u}@localhost", f"{u}-pw")
