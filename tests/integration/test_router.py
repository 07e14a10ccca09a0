"""tests/integration/test_router.py - meerkat-router and meerkat-mam (offline) driven over the bus by tests/tools/bus_inject as a fake c2s."""
import os
import sqlite3
import subprocess
import time

import pytest

from harness import BUILD, free_port, http_get, wait_until

INJECT = os.path.join(BUILD, "tools", "bus_inject")


class Shard:
    """router.0 and mam.0 started directly; c2s.0 is the test's bus_inject."""

    def __init__(self, tmpdir, extra=""):
        self.dir = str(tmpdir)
        self.ports = {pid: (free_port(), free_port()) for pid in ("c2s.0", "router.0", "mam.0")}
        self.config = os.path.join(self.dir, "meerkat.yaml")
        lines = ["domains: [localhost]", f"data_dir: {self.dir}/var", "log: {level: debug}", "grace_sec: 3"]
        if extra:
            lines.append(extra)
        lines.append("processes:")
        for pid, (bus, met) in self.ports.items():
            lines.append(f'  - {{id: {pid}, bus: "tcp://127.0.0.1:{bus}", metrics: "127.0.0.1:{met}"}}')
        with open(self.config, "w") as f:
            f.write("\n".join(lines) + "\n")
        os.makedirs(os.path.join(self.dir, "var"), exist_ok=True)
        self.procs = {}

    def start(self, pid):
        log = open(os.path.join(self.dir, pid + ".log"), "ab")
        role = pid.split(".")[0]
        self.procs[pid] = subprocess.Popen([os.path.join(BUILD, "meerkat-" + role), "-c", self.config, "--id", pid],
                                           stdout=log, stderr=subprocess.STDOUT, cwd=self.dir)
        assert wait_until(lambda: http_get(self.ports[pid][1], "/readyz")[0] == 200, 10)

    def stop(self, pid):
        p = self.procs.pop(pid)
        p.terminate()
        p.wait(10)

    def inject(self, script, wait_ms=400):
        lines = ["hello router.0", "wait 150"] + [l.strip() for l in script.strip().splitlines()] + [f"wait {wait_ms}"]
        r = subprocess.run([INJECT, "-c", self.config, "--id", "c2s.0"], input="\n".join(lines) + "\n",
                           capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, r.stdout + r.stderr
        return [l for l in r.stdout.splitlines() if " hello " not in l]

    def metric(self, pid, name):
        body = http_get(self.ports[pid][1], "/metrics")[1]
        total = 0.0
        for line in body.splitlines():
            if line.startswith(name + "{") or line.startswith(name + " "):
                total += float(line.rsplit(" ", 1)[1])
        return total


@pytest.fixture
def shard(tmp_path):
    assert os.path.exists(INJECT), "make all builds tests/tools/bus_inject"
    s = Shard(tmp_path, extra="limits: {offline_max: 2, max_sessions_per_user: 3}")
    s.start("router.0")
    s.start("mam.0")
    yield s
    for pid in list(s.procs):
        s.stop(pid)


def test_delivery_priorities_conflict_kick_list(shard):
    out = shard.inject("""
        open router.0 alice@localhost/a 1 5 1
        open router.0 alice@localhost/b 2 5 1
        open router.0 alice@localhost/c 3 -1 1
        wait 100
        route router.0 message bob@localhost/x alice@localhost chat 1 <message type='chat'><body>hi</body></message>
        route router.0 presence bob@localhost/x alice@localhost - 0 <presence/>
        route router.0 iq bob@localhost/x alice@localhost/c get 0 <iq type='get'/>
        open router.0 alice@localhost/a 9 0 1
        open router.0 alice@localhost/d 10 0 1
        kick router.0 alice@localhost/c kicked
        wait 100
        list router.0 tcp://127.0.0.1:1 -
    """)
    assert any("deliver ids=1,2 kind=0" in l for l in out), out
    assert any("deliver ids=1,2,3 kind=1" in l for l in out), out
    assert any("deliver ids=3 kind=2" in l for l in out), out
    assert any("session_close jid=alice@localhost/a c2s=c2s.0 session=1 reason=conflict" in l for l in out), out
    # a (re-logged in, now the newest), b, c, then d: over the limit of 3, the oldest (b) goes
    assert any("session=2 reason=policy-violation" in l for l in out), out
    assert any("session=3 reason=kicked" in l for l in out), out
    assert any(l.startswith("recv router.0 session_list") and "done=1" in l for l in out), out
    assert shard.metric("router.0", "meerkat_router_sessions") == 2


def test_errors_come_back(shard):
    out = shard.inject("""
        open router.0 bob@localhost/x 50 0 1
        wait 100
        route router.0 message bob@localhost/x nobody@remote.org chat 1 <message/>
        route router.0 iq bob@localhost/x alice@localhost/gone set 0 <iq/>
        route router.0 message bob@localhost/x alice@localhost/gone groupchat 1 <message/>
        route router.0 message bob@localhost/x alice@localhost/gone error 1 <message/>
    """)
    errs = [l for l in out if "deliver ids=50" in l and "type=error" in l]
    assert len(errs) == 3, out
    assert "remote-server-not-found" in errs[0]
    assert all("service-unavailable" in e for e in errs[1:])
    assert shard.metric("router.0", "meerkat_router_dropped_total") >= 1


def test_garbage_is_ignored(shard):
    out = shard.inject("""
        raw router.0 deadbeef00ff
        raw router.0 08011203632e30
        route router.0 message - - - 1 -
        open router.0 - 1 0 1
        open router.0 nobody 1 0 1
        close router.0 - 1
        kick router.0 - kicked
    """)
    assert http_get(shard.ports["router.0"][1], "/healthz")[0] == 200
    assert shard.metric("router.0", "meerkat_router_sessions") == 0


def test_c2s_restart_purges(shard):
    shard.inject("open router.0 carol@localhost/a 1 0 1")
    assert wait_until(lambda: shard.metric("router.0", "meerkat_router_sessions") == 1, 5)
    shard.inject("")   # a new bus_inject says hello as a restarted c2s.0
    assert wait_until(lambda: shard.metric("router.0", "meerkat_router_sessions") == 0, 5)


def test_offline_store_order_and_limit(shard):
    db = os.path.join(shard.dir, "var", "meerkat.db")
    con = sqlite3.connect(db)
    con.execute("INSERT INTO users (username, domain, sha1_salt, sha1_iter, sha1_stored, sha1_server, sha256_salt, "
                "sha256_iter, sha256_stored, sha256_server) VALUES ('zed','localhost','x',1,'x','x','x',1,'x','x')")
    con.commit()
    out = shard.inject("""
        open router.0 bob@localhost/x 50 0 1
        wait 100
        route router.0 message bob@localhost/x zed@localhost chat 1 <message from='bob@localhost/x' to='zed@localhost' type='chat' id='m1'><body>one</body></message>
        route router.0 message bob@localhost/x zed@localhost/gone chat 1 <message from='bob@localhost/x' to='zed@localhost/gone' type='chat' id='m2'><body>two</body></message>
        route router.0 message bob@localhost/x zed@localhost chat 1 <message from='bob@localhost/x' to='zed@localhost' type='chat' id='m3'><body>three</body></message>
        route router.0 message bob@localhost/x zed@localhost chat 0 <message from='bob@localhost/x' to='zed@localhost' type='chat'><active xmlns='http://jabber.org/protocol/chatstates'/></message>
        route router.0 message bob@localhost/x ghost@localhost chat 1 <message from='bob@localhost/x' to='ghost@localhost' type='chat' id='g1'><body>?</body></message>
    """, wait_ms=800)
    rows = con.execute("SELECT id, from_jid, xml FROM offline WHERE username='zed' ORDER BY id").fetchall()
    assert [r[1] for r in rows] == ["bob@localhost/x", "bob@localhost/x"]
    assert "id=\"m1\"" in rows[0][2] or "id='m1'" in rows[0][2]
    assert "m2" in rows[1][2]
    assert "urn:xmpp:delay" in rows[0][2] and "stamp=" in rows[0][2]
    errs = [l for l in out if "deliver ids=50" in l and "type=error" in l]
    # m3: offline_max reached -> wait/resource-constraint; g1: no such user -> service-unavailable
    assert any("resource-constraint" in e and "m3" in e for e in errs), out
    assert any("service-unavailable" in e and "g1" in e for e in errs), out
    assert shard.metric("router.0", "meerkat_router_offline_total") == 4
