"""tests/integration/test_tls_tickets.py - tls.session_tickets: none by default, resumption when turned on."""
import socket

import pytest

from harness import Cluster
from rawxmpp import tls_context

STREAM = ("<?xml version='1.0'?><stream:stream to='localhost' xmlns='jabber:client' "
          "xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>")


def direct_tls(port, ctx, session=None):
    """A direct-TLS connection that has read the stream features (and so any ticket
    the server sent after its handshake). Returns the TLS socket."""
    s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=5), server_hostname="localhost",
                        session=session)
    s.sendall(STREAM.encode())
    got = b""
    while b"</stream:features>" not in got:
        chunk = s.recv(65536)
        assert chunk, got
        got += chunk
    return s


@pytest.fixture(scope="module", params=[None, 2], ids=["default", "two"])
def tickets(request, tmp_path_factory):
    extra = "" if request.param is None else f"tls: {{session_tickets: {request.param}}}"
    c = Cluster(tmp_path_factory.mktemp("tickets"), c2s=1, router=1, mam=1, pusher=0, gd=0, extra=extra).start()
    yield request.param, c
    c.stop()


def test_tickets_follow_the_config(tickets):
    n, cl = tickets
    ctx = tls_context()
    first = direct_tls(cl.c2s_tls_port, ctx)
    assert first.version() == "TLSv1.3"
    sess = first.session
    first.close()
    if n is None:
        # No ticket: nothing to resume with, the next handshake is a full one.
        assert not sess.has_ticket
        again = direct_tls(cl.c2s_tls_port, ctx)
        assert not again.session_reused
        again.close()
        return
    assert sess.has_ticket
    again = direct_tls(cl.c2s_tls_port, ctx, session=sess)
    assert again.session_reused
    again.close()
