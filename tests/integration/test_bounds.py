"""tests/integration/test_bounds.py - memory a client can make the server hold is bounded (issue 11 item 7): a c2s connection's unread output."""
import os
import socket
import time

import pytest

from harness import BUILD, Cluster, http_get, wait_until
from rawxmpp import Raw

OUT_LIMIT = 262144


@pytest.fixture(scope="module")
def cl(tmp_path_factory):
    c = Cluster(tmp_path_factory.mktemp("bounds"), c2s=1, router=1, mam=0, pusher=0, gd=0,
                extra=f"limits: {{max_output_bytes: {OUT_LIMIT}}}\nmodules: {{mam: {{enabled: false}}}}").start()
    for u in ("reader", "writer"):
        c.ctl("register", f"{u}@localhost", f"{u}-pw")
    yield c
    c.stop()


def metric(c, proc, name):
    body = http_get(c.metrics_port(proc), "/metrics")[1]
    for line in body.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    return None


def sanitized():
    """True for a sanitizer build, whose allocator keeps freed memory (quarantine): RSS says nothing then."""
    with open(os.path.join(BUILD, "meerkat-c2s"), "rb") as f:
        return b"__asan_init" in f.read()


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def drained_to_eof(sock, timeout):
    """Reads and drops everything until the server's end; True when it came in time."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        sock.settimeout(max(0.05, end - time.monotonic()))
        try:
            if not sock.recv(1 << 20):
                return True
        except socket.timeout:
            continue
        except OSError:     # a reset or a TLS record cut short: the server closed it too
            return True
    return False


def test_client_that_never_reads_is_cut_off_at_the_output_limit(cl):
    pid = cl.child_pid("c2s.0")
    sleeper = Raw(cl.c2s_port, timeout=10)
    jid = sleeper.login("reader", "reader-pw", "sleepy")
    writer = Raw(cl.c2s_port, timeout=10)
    writer.login("writer", "writer-pw", "w")
    before = rss_kib(pid)
    pad = "x" * 8000
    # Up to 64 MB for a client that reads nothing: far past the limit and what the
    # kernel's socket buffers hold (a few MB on loopback). The c2s must not keep it.
    total = 0
    i = 0
    while total < 64 << 20 and metric(cl, "c2s.0", "meerkat_c2s_output_overflows_total") in (None, 0.0):
        batch = "".join(f"<message to='{jid}' id='m{i + k}' type='chat'><body>{pad}</body></message>"
                        for k in range(50))
        writer.send(batch)
        total += len(batch)
        i += 50
    assert wait_until(lambda: metric(cl, "c2s.0", "meerkat_c2s_output_overflows_total") == 1.0, 20)
    # The stream ends with <resource-constraint/>: queued behind the unread output, which
    # the client does not read within the closing linger, so the connection is then closed.
    assert wait_until(lambda: 'meerkat_c2s_stream_errors_total{role="c2s",id="c2s.0",'
                      'condition="resource-constraint"} 1' in http_get(cl.metrics_port("c2s.0"), "/metrics")[1], 10)
    assert drained_to_eof(sleeper.sock, 15)
    grown = rss_kib(pid) - before
    assert sanitized() or grown < 8 * 1024, f"c2s RSS grew by {grown} KiB"
    # The writer's session is untouched.
    writer.send("<iq type='get' id='alive'><ping xmlns='urn:xmpp:ping'/></iq>")
    writer.recv_until("id='alive'|id=\"alive\"")
