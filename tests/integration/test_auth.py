"""tests/integration/test_auth.py - SASL exchanges against a slow store: a lookup answers only the exchange that asked."""
import subprocess

import pytest

from harness import cluster_on, wait_until
from rawxmpp import NS_SASL, Raw


@pytest.fixture(scope="module")
def pgcl(tmp_path_factory):
    """One c2s on a real PostgreSQL, whose tables a test can lock."""
    with cluster_on("pgsql", tmp_path_factory.mktemp("auth-pg"), c2s=1, router=1, mam=1, pusher=0, gd=0) as c:
        c.ctl("register", "mallory@localhost", "mallory-pw")
        c.ctl("register", "victim@localhost", "victim-pw")
        yield c


class TableLock:
    """A psql session holding (or queued for) ACCESS EXCLUSIVE on a table until release()."""

    def __init__(self, pg, name, table="users"):
        self.pg, self.name = pg, name
        argv, env = pg.psql_args(name)
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, text=True, env=env)
        self.proc.stdin.write(f"BEGIN;\nLOCK TABLE {table} IN ACCESS EXCLUSIVE MODE;\n")
        self.proc.stdin.flush()

    def _state(self, granted):
        return int(self.pg.query(
            "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
            f"WHERE a.application_name = '{self.name}' AND l.locktype = 'relation' "
            f"AND l.mode = 'AccessExclusiveLock' AND l.granted = {'true' if granted else 'false'}"))

    def granted(self):
        return self._state(True) == 1

    def waiting(self):
        return self._state(False) == 1

    def release(self):
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write("COMMIT;\n")
                self.proc.stdin.close()
            except BrokenPipeError:
                pass
            self.proc.wait(30)


def lookups_waiting(pg):
    """Credential lookups of the cluster blocked on a lock."""
    return int(pg.query("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'meerkat' "
                        "AND wait_event_type = 'Lock' AND query LIKE 'SELECT%FROM users WHERE username%'"))


def test_stale_lookup_cannot_finish_another_users_exchange(pgcl):
    # Mallory knows her own password and wants in as victim: she starts SCRAM as
    # herself, her lookup is held up, she aborts and starts again as victim. Her
    # lookup's row (her salt and keys) must not land in victim's exchange, where her
    # own password would then prove "victim".
    pg = pgcl.pg
    r = Raw(pgcl.c2s_port, timeout=20)
    r.open_stream()
    r.starttls()
    r.open_stream()
    first = TableLock(pg, "lock-first")
    second = None
    try:
        assert wait_until(first.granted, 10)
        r.scram_start("mallory")
        assert wait_until(lambda: lookups_waiting(pg) == 1, 10)
        # Queued behind mallory's lookup: once the first lock goes, her lookup runs,
        # then this lock is granted and victim's lookup (queued behind it) waits.
        second = TableLock(pg, "lock-second")
        assert wait_until(second.waiting, 10)
        r.send(f"<abort xmlns='{NS_SASL}'/>")
        assert "<aborted/>" in r.recv_until("</failure>")
        victim = r.scram_start("victim")
        assert wait_until(lambda: lookups_waiting(pg) == 2, 10)
        first.release()
        assert wait_until(second.granted, 10)
        # Mallory's row is now back at the c2s (her query ended before the second lock
        # was granted): it either answers victim's exchange (the bug) or is dropped.
        assert wait_until(lambda: "</challenge>" in r.poll() or "auth_stale_answer" in pgcl.read_log(), 10)
        if "</challenge>" not in r.buf:
            second.release()
        answer = r.scram_finish(victim, "mallory-pw")
        assert "<success" not in answer, "mallory's password logged in as victim: " + answer
        assert "<not-authorized/>" in answer, answer
        second.release()
        # The connection is still usable: victim's own password works.
        assert "<success" in r.auth_scram("victim", "victim-pw")
    finally:
        first.release()
        if second is not None:
            second.release()
        r.close()
