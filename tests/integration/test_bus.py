# tests/integration/test_bus.py - two bus_peer processes exchange 100,000 envelopes over the reliable channel while the receiver is killed and restarted.
import os
import signal
import socket
import subprocess
import time
from collections import Counter

COUNT = 100_000
BUILD = os.environ.get('MEERKAT_BUILD', 'build')
BUS_PEER = os.path.join(BUILD, 'tools', 'bus_peer')


def free_ports(n):
    """Ports the kernel hands out for 127.0.0.1:0, all held open until all are chosen."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(('127.0.0.1', 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def count_lines(path):
    try:
        with open(path, 'rb') as f:
            return f.read().count(b'\n')
    except FileNotFoundError:
        return 0


def wait_for(pred, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.005)
    raise AssertionError('timed out waiting for ' + what)


class Receiver:
    def __init__(self, tmp_path, inbox, sender, state):
        self.args = [BUS_PEER, 'recv', '--self', 'r', '--inbox', inbox,
                     '--peer', 's=' + sender, '--state', str(state)]
        self.tmp_path = tmp_path
        self.runs = 0
        self.proc = None
        self.log = None

    def start(self):
        self.runs += 1
        self.log = self.tmp_path / ('recv%d.log' % self.runs)
        with open(self.log, 'wb') as err:
            self.proc = subprocess.Popen(self.args, stdout=subprocess.DEVNULL, stderr=err)
        # It logs recv_restored once the state is read and the inbox bound.
        wait_for(lambda: b'recv_restored' in self.log.read_bytes() or self.proc.poll() is not None,
                 10, 'the receiver to start')
        assert self.proc.poll() is None, self.log.read_text()

    def kill9(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(5)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise
        return self.proc.returncode


def test_100k_envelopes_survive_receiver_restarts(tmp_path):
    assert os.access(BUS_PEER, os.X_OK), BUS_PEER + ' is not built (make tools)'
    p_send, p_recv = free_ports(2)
    send_ep = 'tcp://127.0.0.1:%d' % p_send
    recv_ep = 'tcp://127.0.0.1:%d' % p_recv
    state = tmp_path / 'applied.txt'

    recv = Receiver(tmp_path, recv_ep, send_ep, state)
    recv.start()
    send_log = tmp_path / 'send.log'
    with open(send_log, 'wb') as err:
        sender = subprocess.Popen(
            [BUS_PEER, 'send', '--self', 's', '--inbox', send_ep, '--peer', 'r=' + recv_ep,
             '--count', str(COUNT), '--timeout', '25'],
            stdout=subprocess.PIPE, stderr=err)
    try:
        killed_at = []
        for target in (COUNT // 3, 2 * COUNT // 3):
            wait_for(lambda: count_lines(state) >= target or sender.poll() is not None,
                     20, '%d applied messages' % target)
            recv.kill9()
            killed_at.append(count_lines(state))
            time.sleep(0.2)     # let the sender queue against a dead peer for a while
            recv.start()

        out, _ = sender.communicate(timeout=30)
        assert sender.returncode == 0, send_log.read_text()
        assert out.decode().strip() == 'sent=%d acked=%d' % (COUNT, COUNT)
    finally:
        if sender.poll() is None:
            sender.kill()
            sender.wait()
        rc = recv.stop()
    assert rc == 0, recv.log.read_text()

    # Both kills hit a run in progress.
    assert 0 < killed_at[0] < COUNT, killed_at
    assert killed_at[0] <= killed_at[1], killed_at

    data = state.read_text()
    assert data.endswith('\n')
    seen = Counter(int(line.split()[2]) for line in data.splitlines())
    missing = [n for n in range(1, COUNT + 1) if n not in seen]
    twice = sorted(n for n, c in seen.items() if c != 1)
    assert not missing, 'lost %d, first %s' % (len(missing), missing[:10])
    assert not twice, 'applied more than once: %d, first %s' % (len(twice), twice[:10])
    assert len(seen) == COUNT
