"""tests/integration/test_compose.py - the container image and deploy/compose/two-dc.yml, for real:
the Debian base made by deploy/docker/base.sh, the images built, both data centers up in Docker
(each process its own container), slixmpp clients chatting across them through the published
client ports, MAM finding the chat, Prometheus (its own container) having scraped every process,
a router killed and restarted by its restart policy with chat resuming, SIGTERM reaching a process
through tini, and `down -v` leaving no container, network or volume behind.

dockerd is started here when none answers (and stopped at the end), without iptables and IP
forwarding (nothing on the host changes; the builds use the host network), as
/work/shared/reference/containers-on-this-machine.md shows. The base image and the image layers stay
in /var/lib/docker, so a second run builds from cache. Each run uses its own compose project, a
10.N.0.0/16 for the networks that no host route uses, and free ports on 127.0.0.1."""
import json
import os
import random
import shutil
import subprocess
import sys
import time
import urllib.parse
import urllib.request
import uuid

import pytest

sys.path.insert(0, os.path.dirname(__file__))
from harness import ROOT, free_port, wait_until  # noqa: E402
from xmpp import Client, mam_bodies  # noqa: E402

COMPOSE_FILE = os.path.join(ROOT, "deploy", "compose", "two-dc.yml")
ONE_DC_FILE = os.path.join(ROOT, "deploy", "compose", "docker-compose.yml")
IMAGE = "local/meerkat:latest"
DOMAIN = "localhost"
PROCS = [(dc, p) for dc in ("dc-a", "dc-b")
         for p in ("c2s.0", "router.0", "router.1", "mam.0", "pusher.0", "gd.0")]


def run(argv, timeout=120, check=True, env=None):
    r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    return r


def docker_ok():
    return subprocess.run(["docker", "info"], capture_output=True, timeout=30).returncode == 0


class Dockerd:
    """The Docker daemon: the running one, or one started here (stopped by stop())."""

    def __init__(self, tmpdir):
        self.proc = None
        if docker_ok():
            return
        if shutil.which("dockerd") is None:
            raise RuntimeError("dockerd is not installed (deploy/install-deps.sh installs docker.io)")
        self.log = open(os.path.join(tmpdir, "dockerd.log"), "w")
        self.proc = subprocess.Popen(["dockerd", "--storage-driver=overlay2", "--iptables=false", "--ip-forward=false",
                                      "--ip-masq=false", "--bridge=none"],
                                     stdout=self.log, stderr=subprocess.STDOUT)
        if not wait_until(docker_ok, 60, 0.25):
            self.stop()
            raise RuntimeError(f"dockerd did not start: see {self.log.name}")

    def stop(self):
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None


def pick_net():
    used = run(["ip", "-br", "addr"]).stdout + run(["ip", "route"]).stdout
    for _ in range(100):
        n = random.randint(20, 99)     # gd_bed.py takes 10.100-250
        if f"10.{n}." not in used:
            return f"10.{n}"
    raise RuntimeError("no free 10.N.0.0/16 for the compose networks")


class Stack:
    def __init__(self, tmpdir, file=COMPOSE_FILE):
        self.dir = tmpdir
        self.file = file
        self.project = "mkt" + uuid.uuid4().hex[:8]
        self.port = {k: free_port() for k in ("a", "a_tls", "b", "b_tls", "prom")}
        self.env = dict(os.environ, MEERKAT_NET=pick_net(), MEERKAT_A_PORT=str(self.port["a"]),
                        MEERKAT_A_TLS_PORT=str(self.port["a_tls"]), MEERKAT_B_PORT=str(self.port["b"]),
                        MEERKAT_B_TLS_PORT=str(self.port["b_tls"]), MEERKAT_PROM_PORT=str(self.port["prom"]),
                        MEERKAT_PORT_1=str(self.port["a"]), MEERKAT_TLS_PORT_1=str(self.port["a_tls"]),
                        MEERKAT_PORT_2=str(self.port["b"]), MEERKAT_TLS_PORT_2=str(self.port["b_tls"]))
        self.times = {}
        self.ids = {}
        self.up = False

    def compose(self, *args, timeout=120, check=True):
        return run(["docker-compose", "-p", self.project, "-f", self.file, *args], timeout=timeout, check=check,
                   env=self.env)

    def timed(self, name, fn):
        t = time.monotonic()
        out = fn()
        self.times[name] = time.monotonic() - t
        return out

    def container(self, service):
        """The container of service (its id stays the same across restarts)."""
        if service not in self.ids:
            out = run(["docker", "ps", "-a", "--filter", f"label=com.docker.compose.project={self.project}",
                       "--format", '{{.Label "com.docker.compose.service"}} {{.ID}}']).stdout
            self.ids = dict(line.split() for line in out.splitlines())
        assert service in self.ids, f"no container for {service}"
        return self.ids[service]

    def inspect(self, service):
        return json.loads(run(["docker", "inspect", self.container(service)]).stdout)[0]

    def health(self, service):
        st = self.inspect(service)["State"]
        return st.get("Health", {}).get("Status", st["Status"])

    def ctl(self, service, *args):
        return self.compose("exec", "-T", service, "meerkat", "ctl", *args)

    def prom(self, query):
        url = f"http://127.0.0.1:{self.port['prom']}/api/v1/query?" + urllib.parse.urlencode({"query": query})
        with urllib.request.urlopen(url, timeout=5) as r:
            body = json.load(r)
        assert body["status"] == "success", body
        return body["data"]["result"]

    def logs(self):
        return self.compose("logs", "--no-color", "--tail", "40", check=False, timeout=60).stdout

    def down(self):
        self.compose("down", "-v", "--remove-orphans", "-t", "10", timeout=300, check=False)
        self.up = False


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    tmp = str(tmp_path_factory.mktemp("compose"))
    d = Dockerd(tmp)
    s = Stack(tmp)
    try:
        s.timed("base", lambda: run([os.path.join(ROOT, "deploy", "docker", "base.sh")], timeout=900))
        # one build per image (the Meerkat services share local/meerkat, the Redis ones theirs)
        s.timed("build", lambda: s.compose("build", "init", "postgres", "redis-a", "prometheus", timeout=1800))
        s.up = True
        t0 = time.monotonic()
        s.timed("up", lambda: s.compose("up", "-d", timeout=600))
        ok = wait_until(lambda: s.health("c2s-a") == "healthy" and s.health("c2s-b") == "healthy", 120, 0.5)
        assert ok, "the c2s containers did not become healthy:\n" + s.logs()
        s.times["up_to_ready"] = time.monotonic() - t0
        yield s
    finally:
        if s.up:
            s.down()
        print("\ncompose timings (s): " + ", ".join(f"{k}={v:.1f}" for k, v in s.times.items()))
        d.stop()


def chat(to, mid, body):
    return f"<message to='{to}' type='chat' id='{mid}'><body>{body}</body></message>"


def login(port, user, resource, attempts=20):
    """A client of user at 127.0.0.1:port (retried while a restarted process is coming back)."""
    for i in range(attempts):
        try:
            return Client(port, f"{user}@{DOMAIN}/{resource}", f"{user}-pw", timeout=20)
        except (ConnectionError, TimeoutError, OSError):
            if i == attempts - 1:
                raise
            time.sleep(0.5)


def test_image(stack):
    """One image for every role: non-root, tini as PID 1, a health check on /healthz, every role
    binary present and the `meerkat` wrapper that finds the container's configuration."""
    img = json.loads(run(["docker", "image", "inspect", IMAGE]).stdout)[0]
    cfg = img["Config"]
    assert cfg["User"] == "meerkat"
    assert cfg["Entrypoint"] == ["/usr/bin/tini", "--"]
    assert cfg["Healthcheck"]["Test"] == ["CMD", "/usr/local/bin/meerkat-healthcheck"]
    print(f"\nimage {IMAGE}: {img['Size'] / 1e6:.1f} MB")
    # the processes run as uid 10001, under tini
    top = run(["docker", "top", stack.container("router-a1"), "-eo", "uid,pid,comm"]).stdout
    assert "tini" in top and "meerkat-router" in top, top
    assert all(line.split()[0] == "10001" for line in top.splitlines()[1:]), top
    # every container of a Meerkat process is healthy (its /healthz answered)
    for svc in ("router-a1", "router-a2", "mam-a", "pusher-a", "gd-a", "c2s-a",
                "router-b1", "router-b2", "mam-b", "pusher-b", "gd-b", "c2s-b"):
        assert stack.health(svc) == "healthy", svc
    # `meerkat ctl health` inside a container reaches every process of its data center: each
    # answers /healthz and says it is ready
    h = stack.ctl("c2s-b", "health").stdout
    rows = {line.split()[0]: line.split()[3:] for line in h.splitlines()[1:-1]}
    assert rows == {p: ["up", "ready"] for _, p in PROCS[:6]}, h
    assert "all 6 processes up" in h, h


def test_chat_across_dcs_and_mam(stack):
    """Accounts made with `meerkat ctl register` in DC-A; alice (DC-A's published port) and bob
    (DC-B's) chat both ways; each finds the conversation in the archive."""
    stack.ctl("c2s-a", "register", f"alice@{DOMAIN}", "alice-pw")
    stack.ctl("c2s-a", "register", f"bob@{DOMAIN}", "bob-pw")
    alice = login(stack.port["a"], "alice", "a")
    bob = login(stack.port["b"], "bob", "b")
    try:
        alice.send(chat(bob.jid, "x1", "hello from dc-a"))
        m = bob.wait("message", id="x1", timeout=20)
        assert m.get("from") == alice.jid
        bob.send(chat(alice.jid, "x2", "hello from dc-b"))
        alice.wait("message", id="x2", timeout=20)
        want = ["hello from dc-a", "hello from dc-b"]
        assert wait_until(lambda: mam_bodies(alice, f"bob@{DOMAIN}") == want, 20, 0.5)
        assert wait_until(lambda: mam_bodies(bob, f"alice@{DOMAIN}") == want, 20, 0.5)
    finally:
        alice.close()
        bob.close()
    # the chat crossed the gd link: one forward by each data center's gd
    def forwarded():
        res = stack.prom('meerkat_gd_forwards_total{result="forwarded"}')
        return {r["metric"]["dc"]: float(r["value"][1]) for r in res}
    assert wait_until(lambda: all(forwarded().get(dc, 0) >= 1 for dc in ("dc-a", "dc-b")), 30, 1.0), forwarded()


def test_prometheus_scraped_every_process(stack):
    """Prometheus (its own container, on both DC networks) has scraped all 12 processes."""
    def all_up():
        res = stack.prom('up{job="meerkat"} == 1')
        return {(r["metric"]["dc"], r["metric"]["proc"]) for r in res} == set(PROCS)
    assert wait_until(all_up, 60, 1.0), stack.prom('up{job="meerkat"}')
    res = stack.prom("count by (dc, proc) (meerkat_process_resident_memory_bytes)")
    assert {(r["metric"]["dc"], r["metric"]["proc"]) for r in res} == set(PROCS)


def test_router_killed_is_restarted_and_chat_resumes(stack):
    """`docker-compose kill -s SIGQUIT` (the process dies as on a crash) of the DC-A router shard
    that holds alice's session: its restart policy brings it back, the c2s re-registers the
    session, and chat flows again both ways. (A plain `docker kill`, SIGKILL, is an operator's
    stop to Docker: it disables the restart policy until the next start, by design.)"""
    alice = login(stack.port["a"], "alice", "k")
    bob = login(stack.port["b"], "bob", "k")
    try:
        alice.send(chat(bob.jid, "k0", "before"))
        bob.wait("message", id="k0", timeout=20)
        # alice's bare JID has one shard in DC-A: the router whose table holds her (Prometheus's view)
        sessions = {}

        def shard_known():
            for svc, pid in (("router-a1", "router.0"), ("router-a2", "router.1")):
                res = stack.prom(f'meerkat_router_sessions{{dc="dc-a",proc="{pid}"}}')
                sessions[svc] = float(res[0]["value"][1]) if res else 0.0
            return sum(sessions.values()) >= 1
        assert wait_until(shard_known, 30, 1.0), sessions
        victim = max(sessions, key=sessions.get)
        before = stack.inspect(victim)
        t0 = time.monotonic()
        stack.compose("kill", "-s", "SIGQUIT", victim)

        def back():
            st = stack.inspect(victim)
            return (st["RestartCount"] > before["RestartCount"] and st["State"]["Running"]
                    and st["State"].get("Health", {}).get("Status") == "healthy")
        assert wait_until(back, 90, 0.5), stack.logs()
        stack.times["router_restart"] = time.monotonic() - t0

        def resumes():
            mid = "k" + uuid.uuid4().hex[:6]
            alice.send(chat(bob.jid, mid, "after"))
            try:
                bob.wait("message", id=mid, timeout=3)
                return True
            except TimeoutError:
                return False
        assert wait_until(resumes, 60, 0.5)
        bob.send(chat(alice.jid, "k2", "and back"))
        alice.wait("message", id="k2", timeout=20)
    finally:
        alice.close()
        bob.close()


def test_sigterm_reaches_the_process(stack):
    """`docker-compose stop` sends SIGTERM; tini forwards it and the process stops gracefully:
    exit status 0 and its own "stopped" line (without the forwarding Docker would SIGKILL it
    after the 10 s: status 137)."""
    stack.compose("stop", "-t", "10", "pusher-b")
    st = stack.inspect("pusher-b")["State"]
    assert st["Status"] == "exited" and st["ExitCode"] == 0, st
    log = stack.compose("logs", "--no-color", "--tail", "5", "pusher-b").stdout
    assert "event=stopped" in log, log


def assert_nothing_left(project):
    label = f"label=com.docker.compose.project={project}"
    assert run(["docker", "ps", "-aq", "--filter", label]).stdout.strip() == ""
    assert run(["docker", "network", "ls", "-q", "--filter", label]).stdout.strip() == ""
    assert run(["docker", "volume", "ls", "-q", "--filter", label]).stdout.strip() == ""


def test_down_leaves_nothing(stack):
    stack.down()
    assert_nothing_left(stack.project)


def test_one_dc_file(stack, tmp_path):
    """deploy/compose/docker-compose.yml (after the two-DC stack is down; same images): up, the two
    c2s healthy, users of c2s-1 and c2s-2 chat, Prometheus scraped all 6 processes, down -v leaves
    nothing."""
    one = Stack(str(tmp_path), ONE_DC_FILE)
    one.up = True
    try:
        t0 = time.monotonic()
        one.compose("up", "-d", timeout=600)
        ok = wait_until(lambda: one.health("c2s-1") == "healthy" and one.health("c2s-2") == "healthy", 120, 0.5)
        assert ok, "the c2s containers did not become healthy:\n" + one.logs()
        stack.times["one_dc_up_to_ready"] = time.monotonic() - t0
        one.ctl("c2s-1", "register", f"carol@{DOMAIN}", "carol-pw")
        one.ctl("c2s-2", "register", f"dave@{DOMAIN}", "dave-pw")
        carol = login(one.port["a"], "carol", "1")
        dave = login(one.port["b"], "dave", "2")
        try:
            carol.send(chat(dave.jid, "o1", "one dc"))
            assert dave.wait("message", id="o1", timeout=20).get("from") == carol.jid
            dave.send(chat(carol.jid, "o2", "two c2s"))
            carol.wait("message", id="o2", timeout=20)
        except (AssertionError, TimeoutError) as e:
            raise AssertionError(f"{e}\n{one.logs()}") from e
        finally:
            carol.close()
            dave.close()
        want = {("dc", p) for p in ("c2s.0", "c2s.1", "router.0", "router.1", "mam.0", "pusher.0")}
        assert wait_until(lambda: {(r["metric"]["dc"], r["metric"]["proc"])
                                   for r in one.prom('up{job="meerkat"} == 1')} == want, 60, 1.0)
    finally:
        one.down()
    assert_nothing_left(one.project)
