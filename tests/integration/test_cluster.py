"""tests/integration/test_cluster.py - the launcher: every role up, restarts, clean stop, metrics format."""
import os
import shutil
import signal
import subprocess
import time

from harness import Cluster, http_get, pid_alive, wait_until, BUILD


def test_every_role_answers_health_and_ctl_health(cluster):
    for p in cluster.procs:
        status, body = http_get(p["metrics"], "/healthz")
        assert status == 200 and body == "ok\n", p
        assert wait_until(lambda: http_get(p["metrics"], "/readyz")[0] == 200, 5), p
    r = cluster.ctl("health")
    assert "all 5 processes up" in r.stdout
    for role in ("c2s", "router", "mam", "pusher", "gd"):
        assert f"{role}.0" in r.stdout


def test_peers_exchange_hello(cluster):
    # Every process says hello to every other: each sees 4 peers.
    def all_seen():
        for p in cluster.procs:
            _, text = http_get(p["metrics"], "/metrics")
            line = [l for l in text.splitlines() if l.startswith("meerkat_bus_peers_seen")]
            if not line or float(line[0].split()[-1]) < 4:
                return False
        return True
    assert wait_until(all_seen, 10)


def test_metrics_are_valid_prometheus(cluster):
    promtool = shutil.which("promtool")
    assert promtool, "promtool comes with Debian's prometheus package (deploy/install-deps.sh)"
    for p in cluster.procs:
        status, text = http_get(p["metrics"], "/metrics")
        assert status == 200
        assert 'role="' in text and f'id="{p["id"]}"' in text
        r = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True)
        assert r.returncode == 0, r.stdout + r.stderr


def test_kill_9_child_is_restarted_within_3s(cluster):
    for p in cluster.procs:
        pid = cluster.child_pid(p["id"])
        assert pid, p
        os.kill(pid, signal.SIGKILL)
        t0 = time.monotonic()
        assert wait_until(lambda: cluster.child_pid(p["id"]) not in (None, pid) and cluster.healthy(p["id"]), 3.0), p
        assert time.monotonic() - t0 <= 3.0
    assert "child_restart_scheduled" in cluster.read_log()


def test_sigterm_leaves_no_process(tmp_path):
    c = Cluster(tmp_path).start()
    pids = [c.child_pid(p["id"]) for p in c.procs]
    assert all(pids)
    rc = c.stop()
    assert rc == 0
    for pid in pids:
        assert not pid_alive(pid)


def test_supervisor_killed_leaves_no_orphans(tmp_path):
    c = Cluster(tmp_path).start()
    pids = [c.child_pid(p["id"]) for p in c.procs]
    c.proc.kill()
    c.proc.wait()
    for pid in pids:
        assert wait_until(lambda: not pid_alive(pid), 8), pid
    c.proc = None
    c.log.close()


def test_bad_config_is_refused_with_file_and_line(tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("domains: [localhost]\nlisteners:\n  c2s: {port: notaport}\n")
    r = subprocess.run([os.path.join(BUILD, "meerkat"), "start", "-c", str(cfg)], capture_output=True, text=True,
                       timeout=10)
    assert r.returncode != 0
    assert f"{cfg}:3:" in r.stderr


def test_crash_loop_is_logged(tmp_path):
    # A process that cannot start (its inbox address is taken) dies again and again.
    import socket
    c = Cluster(tmp_path)
    blocker = socket.socket()
    blocker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 0)
    gd = next(p for p in c.procs if p["id"] == "gd.0")
    blocker.bind(("127.0.0.1", gd["bus"]))
    blocker.listen()
    try:
        c.log = open(c.log_path, "ab")
        c.proc = subprocess.Popen([os.path.join(BUILD, "meerkat"), "start", "-c", c.config],
                                  stdout=c.log, stderr=subprocess.STDOUT, cwd=c.dir)
        assert wait_until(lambda: "crash_loop" in c.read_log(), 40, 0.2), c.read_log()[-2000:]
    finally:
        c.stop()
        blocker.close()


def test_graceful_stop_tells_clients_system_shutdown(tmp_path):
    from rawxmpp import Raw, stream_error
    c = Cluster(tmp_path).start()
    c.ctl("register", "stopper@localhost", "pw")
    r = Raw(c.c2s_port)
    r.login("stopper", "pw", "s")
    t0 = time.monotonic()
    assert c.stop() == 0
    assert stream_error(r.recv_until("</stream:stream>")) == "system-shutdown"
    assert time.monotonic() - t0 < 6


def test_relative_paths_follow_the_config_file(tmp_path):
    # The example config's data_dir is ./var: it means beside the config file, for the
    # cluster started from one directory and for `meerkat ctl` run from another.
    from rawxmpp import Raw
    conf_dir, start_dir, ctl_dir = tmp_path / "srv", tmp_path / "start", tmp_path / "ctl"
    for d in (conf_dir, start_dir, ctl_dir):
        d.mkdir()
    c = Cluster(conf_dir, c2s=1, router=1, mam=1, pusher=0, gd=0, data_dir="./var")
    c.cwd = str(start_dir)
    c.start()
    try:
        c.cwd = str(ctl_dir)
        c.ctl("register", "wanderer@localhost", "pw")
        r = Raw(c.c2s_port)
        r.login("wanderer", "pw", "w")
        r.close()
        assert (conf_dir / "var" / "meerkat.db").exists()
        assert (conf_dir / "var" / "tls" / "cert.pem").exists()
        assert os.listdir(start_dir) == [] and os.listdir(ctl_dir) == []
    finally:
        c.stop()
