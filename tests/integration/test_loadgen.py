"""tests/integration/test_loadgen.py - the benchmark load generator against a real cluster:
registration, full logins (with either certificate-key decoder), chat with latencies."""
import json
import os
import subprocess

import pytest

from harness import BUILD, Cluster

LOADGEN = os.path.join(BUILD, "bench", "loadgen")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = Cluster(tmp_path_factory.mktemp("loadgen"), c2s=2, router=1, mam=1, pusher=0, gd=0,
                extra="modules:\n  register: {enabled: true}\n"
                      "limits: {register_per_ip: 0}").start()   # the scenario registers its users in-band
    yield c
    c.stop()


def run(cluster, keys, *args):
    r = subprocess.run([LOADGEN, "--port", str(cluster.c2s_port), "--keycache", str(keys), "--timeout", "60", *args],
                       capture_output=True, text=True, timeout=90)
    assert "runtime error" not in r.stderr and "Sanitizer" not in r.stderr, r.stderr
    lines = [json.loads(x) for x in r.stdout.splitlines() if x.startswith("{")]
    assert lines, r.stderr
    return r.returncode, lines


def test_register_login_chat(cluster, tmp_path):
    keys = tmp_path / "keys"
    rc, lines = run(cluster, keys, "--scenario", "register", "--users", "20", "--concurrency", "5")
    assert rc == 0 and lines[-1]["failed"] == 0, lines
    for extra in ([], ["--provider-keys"]):
        rc, lines = run(cluster, keys, "--scenario", "login", "--users", "20", "--concurrency", "5", *extra)
        d = lines[-1]
        assert rc == 0 and d["logins"] == 20 and d["failed"] == 0, d
        assert 0 < d["p50_ms"] <= d["p99_ms"] <= d["max_ms"]
    rc, lines = run(cluster, keys, "--scenario", "chat", "--users", "10", "--rates", "100", "--duration", "1",
                    "--drain", "2")
    step = next(d for d in lines if d.get("event") == "step")
    # every message arrives and is timed (how fast is the benchmark's business, not a test's)
    assert rc == 0 and step["sent"] > 0 and step["delivered"] == step["sent"], step
    assert 0 < step["within_1s"] <= 1 and 0 <= step["p50_ms"] <= step["p99_ms"], step


def test_wrong_password_fails_every_login(cluster, tmp_path):
    keys = tmp_path / "keys"
    rc, lines = run(cluster, keys, "--scenario", "register", "--users", "3", "--first", "100")
    assert rc == 0 and lines[-1]["failed"] == 0, lines
    rc, lines = run(cluster, keys, "--scenario", "login", "--users", "3", "--first", "100", "--password", "wrong")
    d = lines[-1]
    assert rc != 0 and d["logins"] == 0 and d["failed"] == 3, d
