"""tests/integration/test_gd_dc.py - global distribution end to end: two data centers (gd_bed.Bed),
clients in each, the checklist of issue 13 (MongooseIM's GD suite plus ours)."""
import os
import subprocess
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))
from harness import BUILD  # noqa: E402


# --- configuration -------------------------------------------------------------------------
GD_PROC = "  - {id: gd.0, bus: \"tcp://127.0.0.1:17003\", metrics: \"127.0.0.1:17103\"}\n"
PROCS = ("processes:\n"
         "  - {id: c2s.0, bus: \"tcp://127.0.0.1:17001\", metrics: \"127.0.0.1:17101\"}\n"
         "  - {id: router.0, bus: \"tcp://127.0.0.1:17002\", metrics: \"127.0.0.1:17102\"}\n" + GD_PROC)


@pytest.mark.parametrize("gd,expect", [
    ("gd:\n  enabled: true\n  dc: dc-a\n  link: {bind: \"tcp://127.0.0.1:7900\"}\n"
     "  peers: [{dc: dc-a, public_key: \"rq:rM>}U?@Lns47E1%kR.o@n%FcmmsL/@{H8]yf7\"}]\n",
     "is this data center"),
    ("gd:\n  enabled: true\n  link: {bind: \"tcp://127.0.0.1:7900\"}\n", "dc (this data center's name) is required"),
    ("gd:\n  enabled: true\n  dc: dc-a\n  link: {bind: \"tcp://127.0.0.1:7900\"}\n  ttl_sec: 10\n  refresh_sec: 10\n",
     "refresh_sec (10) must be less than ttl_sec (10)"),
    ("gd:\n  enabled: true\n  dc: dc-a\n  link: {bind: \"tcp://0.0.0.0:7900\"}\n", "wildcard"),
    ("gd:\n  enabled: true\n  dc: dc-a\n  link: {bind: \"tcp://127.0.0.1:7900\"}\n"
     "  peers: [{dc: dc-b, public_key: \"not a key\"}]\n", "gd.peers[0]"),
    ("gd:\n  enabled: true\n  dc: dc-a\n  link: {bind: \"tcp://127.0.0.1:7900\"}\n", "no gd process"),
], ids=["peer-is-self", "no-dc", "refresh-not-below-ttl", "wildcard-bind", "bad-peer-key", "no-gd-process"])
def test_wrong_config_refuses_to_start(tmp_path, gd, expect):
    """A bad gd section stops `meerkat start` at once, with the file, the line and the reason."""
    cfg = tmp_path / "meerkat.yaml"
    procs = PROCS if expect != "no gd process" else PROCS.replace(GD_PROC, "")
    cfg.write_text("domains: [localhost]\n"
                   f"data_dir: {tmp_path}/var\n"
                   + procs + gd)
    r = subprocess.run([os.path.join(BUILD, "meerkat"), "start", "-c", str(cfg)], capture_output=True, text=True,
                       timeout=20, cwd=tmp_path)
    assert r.returncode != 0
    out = r.stdout + r.stderr
    assert "meerkat.yaml:" in out and expect in out, out
