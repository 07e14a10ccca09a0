"""tests/integration/test_k8s.py - deploy/k8s: each overlay rendered with `kubectl kustomize`
(offline), validated against the Kubernetes API schemas (tests/k8s/validate.mjs: npm
kubernetes-models), checked for consistency (selectors, Services, PDBs, HPA, the config's process
list against the workloads), and every pod run as a node would run it - its mounts made from the
rendered ConfigMap and Secrets, its init container, its args with $(POD_INDEX) - in a network
namespace of its own (tests/k8s/pod_run.py): the probes' paths answer on the probes' port, the
container ports are exactly the ports the process listens on, and SIGTERM ends it within its
grace period."""
import base64
import json
import os
import re
import shutil
import subprocess
import sys

import pytest
import yaml

sys.path.insert(0, os.path.dirname(__file__))
from harness import BUILD, ROOT  # noqa: E402

K8S = os.path.join(ROOT, "deploy", "k8s")
TOOLS = os.path.join(ROOT, "tests", "k8s")
OVERLAYS = ("dc-a", "dc-b")
WORKLOADS = ("Deployment", "StatefulSet")


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    """{overlay: (text, [objects])} for a copy of deploy/k8s given fresh secrets by make-secrets.py."""
    d = str(tmp_path_factory.mktemp("k8s") / "k8s")
    shutil.copytree(K8S, d, ignore=shutil.ignore_patterns("secrets"))
    r = subprocess.run([sys.executable, os.path.join(d, "make-secrets.py"), "--dir", d], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    out = {}
    for o in OVERLAYS:
        r = subprocess.run(["kubectl", "kustomize", os.path.join(d, "overlays", o)], capture_output=True, text=True,
                           timeout=60)
        assert r.returncode == 0, r.stderr
        out[o] = (r.stdout, [x for x in yaml.safe_load_all(r.stdout) if x])
    return out


@pytest.fixture(scope="module")
def validated(rendered, tmp_path_factory):
    """validate.mjs's report on both overlays and on a broken object, in one run of node:
    {file name: (summary line, lines about that file)}."""
    assert os.path.isdir(os.path.join(TOOLS, "node_modules", "kubernetes-models")), \
        "tests/k8s/node_modules missing: run deploy/install-deps.sh (npm ci in tests/k8s)"
    d = tmp_path_factory.mktemp("validate")
    files = []
    for o in OVERLAYS:
        (d / f"{o}.yaml").write_text(rendered[o][0])
        files.append(str(d / f"{o}.yaml"))
    # A StatefulSet without a selector and with a string port: the gate must refuse it.
    sts = json.loads(json.dumps(find(rendered["dc-a"][1], "StatefulSet", "meerkat-router")))
    del sts["spec"]["selector"]
    sts["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "7200"
    (d / "broken.yaml").write_text(yaml.safe_dump(sts))
    files.append(str(d / "broken.yaml"))
    r = subprocess.run(["node", os.path.join(TOOLS, "validate.mjs"), *files], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 1, r.stdout + r.stderr   # the broken one
    out, lines = {}, []
    for line in r.stdout.splitlines():
        for f in files:
            if line.startswith(f + ": "):
                out[os.path.basename(f)] = (line[len(f) + 2:], lines)
                lines = []
                break
        else:
            lines.append(line)
    return out


def by_kind(objs, kind):
    return [o for o in objs if o["kind"] == kind]


def find(objs, kind, name):
    hits = [o for o in objs if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(hits) == 1, f"{kind}/{name}: {len(hits)} objects"
    return hits[0]


def config_of(objs):
    cms = by_kind(objs, "ConfigMap")
    assert len(cms) == 1
    return yaml.safe_load(cms[0]["data"]["meerkat.yaml"]), cms[0]


def selects(selector, labels):
    return all(labels.get(k) == v for k, v in selector.items())


def role_of(workload):
    return workload["spec"]["template"]["spec"]["containers"][0]["args"][0].removeprefix("meerkat-")


def ports_of(container):
    return {p["name"]: p["containerPort"] for p in container.get("ports", [])}


def prestop_seconds(container):
    cmd = container["lifecycle"]["preStop"]["exec"]["command"]
    assert cmd[0] == "sleep" and len(cmd) == 2
    return int(cmd[1])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_validates_against_the_schemas(rendered, validated, overlay):
    _, objs = rendered[overlay]
    summary, lines = validated[f"{overlay}.yaml"]
    assert summary == f"{len(objs)} passed, 0 failed", "\n".join(lines)
    kinds = sorted({o["kind"] for o in objs})
    assert kinds == ["ConfigMap", "Deployment", "HorizontalPodAutoscaler", "Namespace", "PodDisruptionBudget",
                     "PodMonitor", "Secret", "Service", "StatefulSet"], kinds


def test_validator_refuses_a_broken_object(validated):
    """The schema gate can fail: a StatefulSet without a selector and with a string port."""
    summary, lines = validated["broken.yaml"]
    assert summary == "0 passed, 1 failed", lines
    assert "required property selector" in lines[0] or "required property 'selector'" in lines[0], lines
    assert "must be integer" in lines[0], lines


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_objects_agree_with_each_other_and_the_config(rendered, overlay):
    _, objs = rendered[overlay]
    cfg, cm = config_of(objs)
    procs = cfg["processes"]
    names = {(o["kind"], o["metadata"]["name"]) for o in objs}
    workloads = [o for o in objs if o["kind"] in WORKLOADS]
    assert sorted(role_of(w) for w in workloads) == ["c2s", "gd", "mam", "pusher", "router"]
    for w in workloads:
        spec, tmpl = w["spec"], w["spec"]["template"]
        role = role_of(w)
        assert selects(spec["selector"]["matchLabels"], tmpl["metadata"]["labels"]), w["metadata"]["name"]
        # Only this workload's pods match its selector.
        others = [x for x in workloads if x is not w and selects(spec["selector"]["matchLabels"],
                                                                  x["spec"]["template"]["metadata"]["labels"])]
        assert not others
        ids = [p for p in procs if p["id"].split(".")[0] == role]
        c = tmpl["spec"]["containers"][0]
        ports = ports_of(c)
        args = c["args"]
        assert args[args.index("-c") + 1] == "/etc/meerkat/config/meerkat.yaml"
        assert any(m["mountPath"] == "/etc/meerkat/config" and
                   next(v for v in tmpl["spec"]["volumes"] if v["name"] == m["name"])["configMap"]["name"] ==
                   cm["metadata"]["name"] for m in c["volumeMounts"])
        bind = args[args.index("--bus-bind") + 1]
        assert bind == f"tcp://0.0.0.0:{ports['bus']}"
        pid = args[args.index("--id") + 1]
        if w["kind"] == "StatefulSet":
            # The id follows the ordinal: pod <name>-<n> is <role>.<n>, its bus its stable DNS name.
            assert pid == f"{role}.$(POD_INDEX)"
            assert c["env"][0] == {"name": "POD_INDEX", "valueFrom": {"fieldRef": {
                "fieldPath": "metadata.labels['apps.kubernetes.io/pod-index']"}}}
            svc = find(objs, "Service", spec["serviceName"])
            assert svc["spec"]["clusterIP"] == "None" and svc["spec"]["publishNotReadyAddresses"] is True
            want = [f"tcp://{w['metadata']['name']}-{i}.{spec['serviceName']}:{ports['bus']}" for i in range(len(ids))]
            assert [p["bus"] for p in ids] == want
            if role == "c2s":
                hpa = find(objs, "HorizontalPodAutoscaler", w["metadata"]["name"])
                ref = hpa["spec"]["scaleTargetRef"]
                assert (ref["kind"], ref["name"]) == ("StatefulSet", w["metadata"]["name"])
                assert hpa["spec"]["maxReplicas"] == len(ids)
                assert 1 <= hpa["spec"]["minReplicas"] <= spec["replicas"] <= len(ids)
                assert hpa["spec"]["metrics"][0]["pods"]["metric"]["name"] == "meerkat_c2s_sessions"
            else:
                assert spec["replicas"] == len(ids)
        else:
            assert spec["replicas"] == 1 and spec["strategy"]["type"] == "Recreate"
            assert [p["id"] for p in ids] == [pid]
            svc = [s for s in by_kind(objs, "Service") if s["spec"].get("clusterIP") == "None"
                   and selects(s["spec"]["selector"], tmpl["metadata"]["labels"])]
            assert len(svc) == 1
            assert ids[0]["bus"] == f"tcp://{svc[0]['metadata']['name']}:{ports['bus']}"
        for p in ids:
            assert p["metrics"] == f"0.0.0.0:{ports['metrics']}"
        # Probes on the metrics port: liveness (and startup) /healthz, readiness /readyz.
        assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
        assert c["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
        assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
        # SIGTERM comes after preStop; the process has grace_sec, and the kill waits for both.
        grace = tmpl["spec"]["terminationGracePeriodSeconds"]
        assert grace >= prestop_seconds(c) + cfg["grace_sec"] + 2, (w["metadata"]["name"], grace)
        assert c["resources"]["requests"]["memory"] and c["resources"]["limits"]["memory"]
        for v in tmpl["spec"]["volumes"]:
            if "configMap" in v:
                assert ("ConfigMap", v["configMap"]["name"]) in names
            if "secret" in v:
                assert ("Secret", v["secret"]["secretName"]) in names
        if role == "c2s":
            assert ports["xmpp"] == cfg["listeners"]["c2s"]["port"]
            assert ports["xmpps"] == cfg["listeners"]["c2s_tls"]["port"]
        if role == "gd":
            assert cfg["gd"]["link"]["bind"] == f"tcp://0.0.0.0:{ports['gd-link']}"
    # Every Service selects pods of one workload, on ports those pods name.
    for s in by_kind(objs, "Service"):
        ws = [w for w in workloads if selects(s["spec"]["selector"], w["spec"]["template"]["metadata"]["labels"])]
        assert len(ws) == 1, s["metadata"]["name"]
        cports = ports_of(ws[0]["spec"]["template"]["spec"]["containers"][0])
        for p in s["spec"]["ports"]:
            assert cports[p["targetPort"]] == p["port"], (s["metadata"]["name"], p)
    for b in by_kind(objs, "PodDisruptionBudget"):
        ws = [w for w in workloads if selects(b["spec"]["selector"]["matchLabels"],
                                              w["spec"]["template"]["metadata"]["labels"])]
        assert len(ws) == 1 and b["spec"]["maxUnavailable"] == 1, b["metadata"]["name"]
    assert len(by_kind(objs, "PodDisruptionBudget")) == len(workloads)
    pm = find(objs, "PodMonitor", "meerkat")
    for w in workloads:
        assert selects(pm["spec"]["selector"]["matchLabels"], w["spec"]["template"]["metadata"]["labels"])
    assert pm["spec"]["podMetricsEndpoints"][0]["port"] == "metrics"
    assert all(o["metadata"].get("namespace") == "meerkat" for o in objs if o["kind"] != "Namespace")


def sanitized():
    with open(os.path.join(BUILD, "meerkat-c2s"), "rb") as f:
        return b"__asan_init" in f.read()


def expand(s, env):
    return re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: env.get(m.group(1), m.group(0)), s)


def run_pod(tmp, objs, workload, ordinal):
    """Runs workload's pod number ordinal (init containers, then the container) with its volumes
    made under tmp; returns pod_run.py's report and the container."""
    spec = workload["spec"]["template"]["spec"]
    c = spec["containers"][0]
    vols = {v["name"]: v for v in spec["volumes"]}
    paths = {}
    for cont in spec["initContainers"] + [c]:
        for m in cont["volumeMounts"]:
            host = os.path.join(tmp, "vol", m["name"])
            paths[m["mountPath"]] = host
            if os.path.isdir(host):
                continue
            os.makedirs(host)
            v = vols[m["name"]]
            if "configMap" in v:
                cm = find(objs, "ConfigMap", v["configMap"]["name"])
                for k, text in cm["data"].items():
                    with open(os.path.join(host, k), "w") as f:
                        f.write(text)
            elif "secret" in v:
                sec = find(objs, "Secret", v["secret"]["secretName"])
                for k, b64 in sec["data"].items():
                    fn = os.path.join(host, k)
                    with open(fn, "wb") as f:
                        f.write(base64.b64decode(b64))
                    os.chmod(fn, v["secret"]["defaultMode"])
    order = sorted(paths, key=len, reverse=True)

    def local(s):
        for mp in order:
            s = s.replace(mp, paths[mp])
        return s

    # The config names the mount paths: point them at the directories made here.
    for mp, host in paths.items():
        if mp == "/etc/meerkat/config":
            fn = os.path.join(host, "meerkat.yaml")
            with open(fn) as f:
                text = f.read()
            with open(fn, "w") as f:
                f.write(local(text))
    env = {"PATH": f"{BUILD}:/usr/sbin:/usr/bin:/sbin:/bin", "POD_INDEX": str(ordinal),
           "ASAN_OPTIONS": os.environ.get("ASAN_OPTIONS", "detect_leaks=0:abort_on_error=1")}
    for e in c.get("env", []):
        assert e["name"] == "POD_INDEX"
    init = [{"argv": [local(expand(a, env)) for a in ic["command"]], "env": env} for ic in spec["initContainers"]]
    argv = [local(expand(a, env)) for a in c["args"]]
    podspec = {"init": init, "main": {"argv": argv, "env": env}, "metrics_port": ports_of(c)["metrics"],
               "timeout": 20, "log": os.path.join(tmp, "pod.log")}
    fn = os.path.join(tmp, "spec.json")
    with open(fn, "w") as f:
        json.dump(podspec, f)
    r = subprocess.run(["unshare", "--net", sys.executable, os.path.join(TOOLS, "pod_run.py"), fn],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip(), r.stdout + r.stderr
    return json.loads(r.stdout), c


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_binaries_serve_what_the_manifests_say(rendered, overlay, tmp_path):
    """Each workload's pod (ordinal 1 for the StatefulSets, so the id really follows the ordinal)
    started from the rendered manifests: /healthz 200 on the metrics port, /readyz answered
    (503 is fine here: no database or Redis in the namespace), /metrics labelled with the
    expected id, the TCP ports it listens on exactly its containerPorts, and a SIGTERM stop
    within terminationGracePeriodSeconds less the preStop sleep."""
    _, objs = rendered[overlay]
    cfg, _ = config_of(objs)
    for w in [o for o in objs if o["kind"] in WORKLOADS]:
        role = role_of(w)
        ordinal = 1 if w["kind"] == "StatefulSet" and w["spec"]["replicas"] > 1 else 0
        tmp = str(tmp_path / f"{role}")
        os.makedirs(tmp)
        rep, c = run_pod(tmp, objs, w, ordinal)
        name = f"{overlay} {w['metadata']['name']}-{ordinal}"
        assert [i["rc"] for i in rep["init"]] == [0], (name, rep["init"])
        key = os.path.join(tmp, "vol", "keys", "bus_curve.key")
        assert os.stat(key).st_mode & 0o777 == 0o600
        assert rep["healthz"] == 200, (name, rep.get("log_tail"))
        assert rep["readyz"] in (200, 503), (name, rep["readyz"])
        assert rep["metrics"] == 200
        assert f'meerkat_process_start_time_seconds{{role="{role}",id="{role}.{ordinal}"}}' in rep["metrics_body"]
        assert rep["listening"] == sorted(ports_of(c).values()), (name, rep["listening"], ports_of(c))
        # The idle process fits inside its memory request (the requests come from
        # tests/bench/rss_per_role.py; a sanitizer build is 2-3 times larger: not compared).
        if not sanitized():
            req = c["resources"]["requests"]["memory"]
            assert req.endswith("Mi") and rep["rss_kib"] / 1024 < int(req[:-2]), (name, rep["rss_kib"], req)
        assert rep["rc"] == 0, (name, rep["rc"], rep["log_tail"])
        budget = w["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] - prestop_seconds(c)
        assert rep["stop_seconds"] < min(budget, cfg["grace_sec"] + 1), (name, rep["stop_seconds"])
