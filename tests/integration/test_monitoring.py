"""tests/integration/test_monitoring.py - monitoring (issue 14): the alert rules
(deploy/prometheus/meerkat-rules.yml) under `promtool check rules` and `promtool test rules`;
a real Prometheus (Debian's, loopback, ports chosen here) scraping every process of a running
cluster with every role (2 c2s, 2 routers, mam, pusher with a backend, gd with Redis and a peer
data center that is not there) and `promtool check metrics` on each /metrics; the Grafana
dashboard (deploy/grafana/meerkat.json): its structure, every query through promtool and through
the live Prometheus, every metric it names exported; and `meerkat ctl top`."""
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request

import pytest
import yaml

sys.path.insert(0, os.path.dirname(__file__))
from gd_bed import curve_keypair  # noqa: E402
from harness import BUILD, ROOT, Cluster, free_port, http_get, wait_until  # noqa: E402
from test_gd_basic import redis_server  # noqa: E402
from xmpp import Client  # noqa: E402

RULES = os.path.join(ROOT, "deploy", "prometheus", "meerkat-rules.yml")
RULES_TEST = os.path.join(ROOT, "deploy", "prometheus", "meerkat-rules.test.yml")
DASHBOARD = os.path.join(ROOT, "deploy", "grafana", "meerkat.json")
NAME = re.compile(r"\bmeerkat_[a-z0-9_]+\b")


class Prometheus:
    """Debian's prometheus on 127.0.0.1:<free port>, scraping targets every second, with the rules."""

    def __init__(self, d, targets):
        self.dir = d
        self.port = free_port()
        cfg = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [RULES],
            "scrape_configs": [{"job_name": "meerkat", "static_configs": [
                {"targets": [f"127.0.0.1:{p}" for p in targets], "labels": {"dc": "dc-a"}}]}],
        }
        self.config = os.path.join(d, "prometheus.yml")
        with open(self.config, "w") as f:
            yaml.safe_dump(cfg, f)
        r = subprocess.run(["promtool", "check", "config", self.config], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stdout + r.stderr
        self.log = open(os.path.join(d, "prometheus.log"), "wb")
        self.proc = subprocess.Popen(["prometheus", f"--config.file={self.config}",
                                      f"--storage.tsdb.path={os.path.join(d, 'data')}",
                                      f"--web.listen-address=127.0.0.1:{self.port}"],
                                     stdout=self.log, stderr=subprocess.STDOUT)
        assert wait_until(lambda: http_get(self.port, "/-/ready")[0] == 200, 30), self.read_log()

    def api(self, path, **params):
        url = f"http://127.0.0.1:{self.port}/api/v1/{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        try:
            with urllib.request.urlopen(url, timeout=10) as r:
                return json.loads(r.read())
        except urllib.error.HTTPError as e:
            return json.loads(e.read())

    def query(self, expr):
        return self.api("query", query=expr)

    def read_log(self):
        with open(os.path.join(self.dir, "prometheus.log"), errors="replace") as f:
            return f.read()[-3000:]

    def stop(self):
        self.proc.terminate()
        self.proc.wait(30)
        self.log.close()


class Mon:
    def __init__(self, tmp):
        self.dir = str(tmp)
        self.redis_port = free_port()
        self.redis = redis_server(os.path.join(self.dir, "redis"), self.redis_port)
        peer_pub, _ = curve_keypair()
        extra = "\n".join([
            "pusher:",
            "  backends:",
            f"    - {{name: hook, type: http, url: \"http://127.0.0.1:{free_port()}/events\", max_retries: 0}}",
            "    - {name: apps, type: xep0357}",
            "gd:",
            "  enabled: true",
            "  dc: dc-a",
            f"  link: {{bind: \"tcp://127.0.0.1:{free_port()}\"}}",
            f"  keys: {{secret_file: {self.dir}/gd_curve.key}}",
            # A peer data center that never comes: its link stays down (meerkat_gd_link_up 0).
            f"  peers: [{{dc: dc-b, public_key: \"{peer_pub}\", endpoint: \"tcp://127.0.0.1:{free_port()}\"}}]",
            f"  redis: {{primary: \"127.0.0.1:{self.redis_port}\", prefix: \"mon{os.getpid()}:\"}}",
        ])
        self.cluster = Cluster(self.dir, c2s=2, router=2, mam=1, pusher=1, gd=1, extra=extra).start()
        self.prom = None
        self.clients = []

    def close(self):
        try:
            for c in self.clients:
                c.close()
            if self.prom:
                self.prom.stop()
            self.cluster.stop()
        finally:
            self.redis.terminate()
            self.redis.wait(10)


def scrape(port):
    status, body = http_get(port, "/metrics", timeout=5)
    assert status == 200
    return body


def exported(bodies):
    """Every metric name the processes expose: the families (# TYPE), with a histogram's series names."""
    names = set()
    for body in bodies:
        for m in re.finditer(r"^# TYPE (\S+) (\S+)$", body, re.M):
            names.add(m.group(1))
            if m.group(2) == "histogram":
                names.update(m.group(1) + s for s in ("_bucket", "_sum", "_count"))
    return names


def metric_sum(body, name, **labels):
    total = 0.0
    for line in body.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


@pytest.fixture(scope="module")
def mon(tmp_path_factory):
    m = Mon(tmp_path_factory.mktemp("mon"))
    try:
        c = m.cluster
        for u in ("alice", "bob"):
            c.ctl("register", f"{u}@localhost", f"{u}-pw")
        m.alice = Client(c.c2s_port, "alice@localhost/mon", "alice-pw")
        m.clients.append(m.alice)
        m.bob = Client(c.c2s_port, "bob@localhost/mon", "bob-pw")
        m.clients.append(m.bob)
        m.alice.send("<message to='bob@localhost/mon' type='chat' id='m1'><body>hi</body></message>")
        m.bob.wait("message", id="m1")
        m.prom = Prometheus(m.dir, [p["metrics"] for p in c.procs])
        yield m
    finally:
        m.close()


# --- alert rules ------------------------------------------------------------------------------

def test_rules_pass_promtool_check_and_unit_tests():
    r = subprocess.run(["promtool", "check", "rules", RULES], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    with open(RULES) as f:
        n = sum(len(g["rules"]) for g in yaml.safe_load(f)["groups"])
    assert f"SUCCESS: {n} rules found" in r.stdout, r.stdout
    r = subprocess.run(["promtool", "test", "rules", RULES_TEST], capture_output=True, text=True, timeout=120,
                       cwd=os.path.dirname(RULES_TEST))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS" in r.stdout
    # Every alert has a unit test.
    with open(RULES) as f:
        alerts = {r["alert"] for g in yaml.safe_load(f)["groups"] for r in g["rules"]}
    with open(RULES_TEST) as f:
        tested = {t["alertname"] for g in yaml.safe_load(f)["tests"] for t in g["alert_rule_test"]}
    assert alerts == tested, alerts ^ tested


def test_rule_unit_tests_can_fail(tmp_path):
    """A wrong expectation (the link to dc-c instead of dc-b) fails `promtool test rules`."""
    with open(RULES_TEST) as f:
        text = f.read()
    bad = text.replace("{severity: critical, role: gd, id: gd.0, peer: dc-b}",
                       "{severity: critical, role: gd, id: gd.0, peer: dc-c}")
    assert bad != text
    p = tmp_path / "bad.test.yml"
    p.write_text(bad.replace("rule_files: [meerkat-rules.yml]", f"rule_files: [{RULES}]"))
    r = subprocess.run(["promtool", "test", "rules", str(p)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "MeerkatGdLinkDown" in r.stdout + r.stderr


# --- a real Prometheus --------------------------------------------------------------------------

def test_prometheus_scrapes_every_process(mon):
    c, prom = mon.cluster, mon.prom

    def all_up():
        t = prom.api("targets")["data"]["activeTargets"]
        return len(t) == len(c.procs) and all(x["health"] == "up" for x in t)
    assert wait_until(all_up, 60, 0.25), (prom.api("targets"), prom.read_log())
    r = prom.query('count(up{job="meerkat"} == 1)')
    assert r["status"] == "success" and r["data"]["result"][0]["value"][1] == str(len(c.procs))
    for p in c.procs:
        body = scrape(p["metrics"])
        r = subprocess.run(["promtool", "check", "metrics"], input=body, capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, (p["id"], r.stdout + r.stderr)
    # What Prometheus stored is what the processes say: two sessions over the c2s and the routers.
    ok = wait_until(lambda: prom.query("sum(meerkat_c2s_sessions)")["data"]["result"] and
                    prom.query("sum(meerkat_c2s_sessions)")["data"]["result"][0]["value"][1] == "2", 15)
    assert ok, prom.query("meerkat_c2s_sessions")
    assert prom.query("sum(meerkat_router_sessions)")["data"]["result"][0]["value"][1] == "2"


def test_prometheus_loads_the_rules_and_their_metrics_exist(mon):
    prom = mon.prom
    groups = prom.api("rules")["data"]["groups"]
    with open(RULES) as f:
        want = yaml.safe_load(f)["groups"]
    assert sorted(g["name"] for g in groups) == sorted(g["name"] for g in want)
    names = exported(scrape(p["metrics"]) for p in mon.cluster.procs)
    for g in want:
        for r in g["rules"]:
            used = set(NAME.findall(r["expr"]))
            assert used or r["expr"].startswith("up{"), r["alert"]   # up: Prometheus's own
            assert used <= names, (r["alert"], used - names)
    # The link to the absent dc-b is down: the GD alert's expression matches the real series.
    ok = wait_until(lambda: prom.query("meerkat_gd_link_up == 0")["data"]["result"], 15)
    assert ok and [x["metric"]["peer"] for x in ok] == ["dc-b"]
    # Redis round trips are measured: gd wrote the two sessions, each one observation.
    body = scrape(mon.cluster.metrics_port("gd.0"))
    assert wait_until(lambda: metric_sum(scrape(mon.cluster.metrics_port("gd.0")),
                                         "meerkat_gd_redis_seconds_count", op="write") >= 2, 15), body
    ok = wait_until(lambda: all(g["health"] == "ok" for grp in prom.api("rules")["data"]["groups"]
                                for g in grp["rules"]), 15)
    assert ok, prom.api("rules")


# --- the Grafana dashboard ----------------------------------------------------------------------

def dashboard():
    with open(DASHBOARD) as f:
        return json.load(f)


def targets(d):
    return [(p, t) for p in d["panels"] if p["type"] != "row" for t in p["targets"]]


def grafana_to_promql(expr):
    """A query as Grafana sends it: its $__rate_interval replaced (4 x the 15 s scrape interval)."""
    return expr.replace("$__rate_interval", "1m")


def test_dashboard_structure():
    d = dashboard()
    assert d["uid"] == "meerkat-overview" and d["title"] == "Meerkat" and isinstance(d["schemaVersion"], int)
    ds = [v for v in d["templating"]["list"] if v["type"] == "datasource"]
    assert [v["name"] for v in ds] == ["datasource"] and ds[0]["query"] == "prometheus"
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids))
    rows = [p["title"].split(":")[0] for p in d["panels"] if p["type"] == "row"]
    assert rows == ["c2s", "router", "mam", "pusher", "gd", "resources"]
    cells = set()
    for p in d["panels"]:
        g = p["gridPos"]
        assert all(isinstance(g[k], int) for k in ("h", "w", "x", "y")) and g["x"] + g["w"] <= 24
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"panel {p['title']} overlaps another"
                cells.add((x, y))
        if p["type"] == "row":
            continue
        assert p["type"] == "timeseries" and p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        refs = [t["refId"] for t in p["targets"]]
        assert refs and len(refs) == len(set(refs)), p["title"]
        assert all(t["expr"].strip() for t in p["targets"])
    titles = " | ".join(p["title"] for p in d["panels"])
    # What issue 14 asks of each tier.
    for want in ("Sessions", "Stanzas/s", "Routing time", "Archive commit latency", "Push outcomes",
                 "Cross-DC messages/s", "Link queue", "CPU", "Resident memory", "Event loop lag"):
        assert want in titles, want


def test_dashboard_queries_pass_promtool(tmp_path):
    d = dashboard()
    rules = [{"record": f"meerkat_dashboard:panel{p['id']}:{t['refId'].lower()}", "expr": grafana_to_promql(t["expr"])}
             for p, t in targets(d)]
    f = tmp_path / "dashboard-rules.yml"
    f.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    r = subprocess.run(["promtool", "check", "rules", str(f)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"SUCCESS: {len(rules)} rules found" in r.stdout
    # The check can fail: one broken query is refused.
    rules[0]["expr"] = "sum(rate(meerkat_c2s_stanzas_in_total[1m])"
    f.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    r = subprocess.run(["promtool", "check", "rules", str(f)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 1


def test_dashboard_metrics_are_exported_and_queries_run(mon):
    d = dashboard()
    names = exported(scrape(p["metrics"]) for p in mon.cluster.procs)
    used = set()
    for p, t in targets(d):
        n = set(NAME.findall(t["expr"]))
        assert n, (p["title"], t["expr"])
        assert n <= names, (p["title"], n - names)
        used |= n
    # Every tier's own families appear on the dashboard.
    for prefix in ("meerkat_c2s_", "meerkat_router_", "meerkat_mam_", "meerkat_push_", "meerkat_gd_",
                   "meerkat_process_", "meerkat_loop_lag_"):
        assert any(u.startswith(prefix) for u in used), prefix
    for p, t in targets(d):
        r = mon.prom.query(grafana_to_promql(t["expr"]))
        assert r["status"] == "success", (p["title"], t["expr"], r)
    # A few answer with data right away on this cluster.
    for expr in ("sum(meerkat_c2s_sessions)", "sum by (id) (meerkat_process_resident_memory_bytes)",
                 "min by (peer) (meerkat_gd_link_up)"):
        assert expr in [t["expr"] for _, t in targets(d)]
        assert mon.prom.query(expr)["data"]["result"], expr


# --- meerkat ctl top ----------------------------------------------------------------------------

def top(cluster, *args, timeout=60):
    return subprocess.run([os.path.join(BUILD, "meerkat"), "ctl", "-c", cluster.config, "top", *args],
                          capture_output=True, text=True, timeout=timeout)


def parse_top(out):
    lines = out.strip().splitlines()
    assert lines[0].split() == ["PROCESS", "ROLE", "STATUS", "SESSIONS", "MSGS/S", "QUEUE", "CPU%", "RSS_MB",
                                "LAG_P99_MS"], lines[0]
    rows = {}
    for line in lines[1:-1]:
        f = line.split()
        rows[f[0]] = dict(zip(["role", "status", "sessions", "msgs", "queue", "cpu", "rss", "lag"], f[1:]))
    return rows, lines[-1]


LAG_BOUNDS_MS = {"0.10", "0.25", "0.50", "1.00", "2.50", "5.00", "10.00", "25.00", "50.00", "100.00", "250.00",
                 "500.00", "1000.00", "2500.00", "5000.00", "inf"}


def rss_mb(pid):
    with open(f"/proc/{pid}/status") as f:
        kb = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
    return kb / 1024


def test_ctl_top_once(mon):
    """One frame: every process up; sessions as the processes count them (2 clients, on the c2s,
    the routers and in gd's table); messages per second where a chat runs; RSS as /proc says."""
    c = mon.cluster
    assert wait_until(lambda: metric_sum(scrape(c.metrics_port("gd.0")), "meerkat_gd_sessions") == 2, 15)
    stop = threading.Event()
    sent = [0]

    def chat():
        while not stop.is_set():
            sent[0] += 1
            mon.alice.send(f"<message to='bob@localhost/mon' type='chat' id='t{sent[0]}'><body>x</body></message>")
            time.sleep(0.02)
    th = threading.Thread(target=chat)
    th.start()
    try:
        r = top(c, "--once", "--interval", "1")
    finally:
        stop.set()
        th.join()
    assert r.returncode == 0, r.stdout + r.stderr
    rows, total = parse_top(r.stdout)
    assert sorted(rows) == sorted(p["id"] for p in c.procs)
    assert all(x["status"] == "up" for x in rows.values()), rows
    c2s = [rows[i] for i in rows if i.startswith("c2s.")]
    routers = [rows[i] for i in rows if i.startswith("router.")]
    assert sum(int(x["sessions"]) for x in c2s) == 2
    assert sum(int(x["sessions"]) for x in routers) == 2
    assert rows["gd.0"]["sessions"] == "2"
    assert rows["mam.0"]["sessions"] == "-" and rows["pusher.0"]["sessions"] == "-"
    # About 50 stanzas/s from alice: the c2s and the routers see them; the archive writes them.
    assert sum(float(x["msgs"]) for x in c2s) > 10, rows
    assert sum(float(x["msgs"]) for x in routers) > 10, rows
    assert float(rows["mam.0"]["msgs"]) > 10, rows
    for p in c.procs:
        pid = c.child_pid(p["id"])
        assert abs(float(rows[p["id"]]["rss"]) - rss_mb(pid)) <= max(2.0, 0.3 * rss_mb(pid)), (p["id"], rows)
        # The loop lag's p99 over the interval (50 samples a second): one of the histogram's bounds.
        assert rows[p["id"]]["lag"] in LAG_BOUNDS_MS, (p["id"], rows[p["id"]])
    assert total.startswith(f"{len(c.procs)} processes, 0 down; 2 client sessions;"), total
    for i in range(1, sent[0] + 1):   # everything sent arrived (the load was real chat)
        mon.bob.wait("message", id=f"t{i}")


def test_ctl_top_live_frames(mon):
    """Without --once it keeps printing frames (separated by a blank line when not on a terminal)."""
    p = subprocess.Popen([os.path.join(BUILD, "meerkat"), "ctl", "-c", mon.cluster.config, "top", "--interval", "0.2"],
                         stdout=subprocess.PIPE, text=True)
    try:
        headers = 0
        while headers < 3:
            line = p.stdout.readline()
            assert line, "top ended"
            headers += line.startswith("PROCESS ")
    finally:
        p.terminate()
        p.wait(10)
    assert headers == 3


def test_ctl_top_bad_arguments(mon):
    for args, msg in ((["--interval", "0"], "--interval 0 is not"), (["--interval", "x"], "--interval x is not"),
                      (["extra"], "unexpected argument extra"), (["--bogus"], "usage: meerkat ctl")):
        r = top(mon.cluster, *args)
        assert r.returncode == 2 and msg in r.stderr, (args, r.stderr)


def test_ctl_top_shows_a_hung_process_down(mon):
    """A stopped (SIGSTOP) mam answers nothing: its row says down and the exit status is 1.
    (Last in this file: Prometheus sees it down too.)"""
    c = mon.cluster
    pid = c.child_pid("mam.0")
    os.kill(pid, signal.SIGSTOP)
    try:
        r = top(c, "--once", "--interval", "0.2")
    finally:
        os.kill(pid, signal.SIGCONT)
    assert r.returncode == 1, r.stdout + r.stderr
    rows, total = parse_top(r.stdout)
    assert rows["mam.0"]["status"] == "down"
    assert all(x["status"] == "up" for i, x in rows.items() if i != "mam.0")
    assert f"{len(c.procs)} processes, 1 down;" in total
    assert wait_until(lambda: c.healthy("mam.0"), 10)
