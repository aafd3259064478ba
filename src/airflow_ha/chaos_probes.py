"""What watches the invariants while a fault lasts: a commit probe writing through the Airflow
database address every 100 ms, and one sampler per database member and Redis node asking it about
twice a second whether it accepts writes.

The samplers are one long-lived `docker exec` per member running a small shell loop that prints a
line per sample (a `docker exec` per sample would cost a good part of the lab's two cores). That
works while the member is cut off the network; a frozen member prints nothing, which counts as not
accepting writes; a crashed one ends the exec, which is started again until the host is back.
The analysis of what they collect is in `airflow_ha.chaos_invariants`.
"""

from __future__ import annotations

import datetime as dt
import os
import select
import shlex
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import IO, TYPE_CHECKING, Any, Protocol

from airflow_ha.chaos_faults import ChaosError
from airflow_ha.chaos_invariants import (
    DB_SAMPLE_QUERY,
    Commit,
    RoleSample,
    parse_db_sample,
    parse_redis_sample,
)
from airflow_ha.chaos_lab import DbAddress

if TYPE_CHECKING:
    import psycopg

COMMITS_TABLE = "airflow_ha_chaos_commits"
COMMITS_DDL = (
    f"CREATE TABLE IF NOT EXISTS {COMMITS_TABLE} (session text NOT NULL, seq bigint NOT NULL, "
    "committed_at timestamptz NOT NULL DEFAULT clock_timestamp(), PRIMARY KEY (session, seq))"
)
COMMIT_SQL = f"INSERT INTO {COMMITS_TABLE} (session, seq) VALUES ($1::text, $2::bigint)"
READ_BACK_SQL = f"SELECT seq FROM {COMMITS_TABLE} WHERE session = %s"


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{exc.__class__.__name__}: {text[0] if text else ''}"[:200]


# ---------------------------------------------------------------------------------------------------
# The commit probe
# ---------------------------------------------------------------------------------------------------


def error_text(message: str | bytes | None) -> str:
    """A libpq error message as text: psycopg 3.3's PGresult gives str, older ones bytes."""
    if isinstance(message, bytes):
        message = message.decode(errors="replace")
    return (message or "").strip()


class Committer(Protocol):
    """Writes one probe row: None once the database acknowledged the commit, else why not."""

    def commit(self, seq: int) -> str | None: ...
    def close(self) -> None: ...


def probe_params(db: DbAddress, connect_timeout: int = 2) -> dict[str, str]:
    """libpq settings for the probe: a short connect timeout, TCP keepalives, and no
    statement_timeout (a server-side cancel is a cancel too)."""
    params = {**db.libpq(), "connect_timeout": str(connect_timeout)}
    options = params.get("options", "")
    if "statement_timeout" in options:
        params["options"] = " ".join(o for o in options.split() if "statement_timeout" not in o)
    return params


def conninfo(params: Mapping[str, str]) -> str:
    from psycopg.conninfo import make_conninfo

    return make_conninfo("", **params)


class PgCommitter:
    """One INSERT per call in an implicit transaction, through psycopg 3's libpq connection.

    The guard never cancels: cancelling a commit that waits for the synchronous standby makes
    PostgreSQL keep the commit and report success with only a warning, an acknowledged commit no
    standby has. When the answer does not come within `guard` seconds the connection is closed
    (PQfinish: a Terminate message, no CancelRequest) and the commit counts as not acknowledged.
    A commit is acknowledged only once the server said ReadyForQuery after a successful INSERT
    (with the extended protocol the implicit commit happens at Sync, after CommandComplete).
    """

    def __init__(self, params: Mapping[str, str], session: str, guard: float = 5.0) -> None:
        self.params = dict(params)
        self.session = session
        self.guard = guard
        self._conn: psycopg.Connection[Any] | None = None

    def commit(self, seq: int) -> str | None:
        import psycopg

        if self._conn is None:
            try:
                self._conn = psycopg.connect(conninfo(self.params), autocommit=True)
            except psycopg.Error as exc:
                return f"connect: {_first_line(exc)}"
        pgconn = self._conn.pgconn
        try:
            pgconn.send_query_params(COMMIT_SQL.encode(), [self.session.encode(), str(seq).encode()])
            return self._await(pgconn, time.monotonic() + self.guard)
        except (psycopg.Error, OSError, ValueError) as exc:
            self.close()
            return _first_line(exc)

    def _await(self, pgconn: Any, deadline: float) -> str | None:
        from psycopg import pq

        while pgconn.flush() == 1:
            if not self._wait(pgconn.socket, deadline, write=True):
                return self._abandon()
        ok, error = False, ""
        while True:
            if pgconn.is_busy():
                if not self._wait(pgconn.socket, deadline):
                    return self._abandon()
                pgconn.consume_input()
                continue
            result = pgconn.get_result()
            if result is None:
                break
            if result.status == pq.ExecStatus.COMMAND_OK:
                ok = True
            else:
                error = error_text(result.get_error_message()) or str(result.status)
        if error or not ok:
            return error or "no result"
        return None

    def _wait(self, fd: int, deadline: float, write: bool = False) -> bool:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        ready = select.select([], [fd], [], remaining) if write else select.select([fd], [], [], remaining)
        return bool(ready[1] if write else ready[0])

    def _abandon(self) -> str:
        self.close()
        return f"no answer within {self.guard:g} s: connection closed, the commit not cancelled"

    def close(self) -> None:
        """PQfinish directly (psycopg's close() might one day cancel an active query first)."""
        if self._conn is not None:
            self._conn.pgconn.finish()
            self._conn = None


def ensure_commit_table(db: DbAddress) -> None:
    import psycopg

    with psycopg.connect(conninfo(probe_params(db, 10)), autocommit=True) as conn:
        conn.execute(COMMITS_DDL)


def read_back(db: DbAddress, session: str) -> set[int]:
    """Every probe row of the session the database has now."""
    import psycopg

    try:
        with psycopg.connect(conninfo(probe_params(db, 10))) as conn:
            rows = conn.execute(READ_BACK_SQL, (session,)).fetchall()
    except psycopg.Error as exc:
        raise ChaosError(f"the probe's commits could not be read back: {_first_line(exc)}") from exc
    return {int(r[0]) for r in rows}


class CommitProbe(threading.Thread):
    """Commits a counter every `interval` seconds through a Committer and records each attempt."""

    def __init__(
        self,
        committer: Committer,
        interval: float = 0.1,
        now: Callable[[], dt.datetime] = utcnow,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(name="chaos-commit-probe", daemon=True)
        self.committer = committer
        self.interval = interval
        self.now = now
        self.clock = clock
        self._commits: list[Commit] = []
        self._lock = threading.Lock()
        self._stop_event = threading.Event()

    def run(self) -> None:
        seq = 0
        next_at = self.clock()
        try:
            while not self._stop_event.is_set():
                delay = next_at - self.clock()
                if delay > 0 and self._stop_event.wait(delay):
                    break
                seq += 1
                sent = self.now()
                error = self.committer.commit(seq)
                commit = Commit(seq, sent, self.now() if error is None else None, error or "")
                with self._lock:
                    self._commits.append(commit)
                next_at = max(next_at + self.interval, self.clock())
        finally:
            self.committer.close()

    def stop(self) -> None:
        self._stop_event.set()
        if self.is_alive():
            self.join(timeout=30)

    def commits(self) -> list[Commit]:
        with self._lock:
            return list(self._commits)


# ---------------------------------------------------------------------------------------------------
# Who accepts writes: one sampler per member
# ---------------------------------------------------------------------------------------------------
# A loop that prints one sample line every EVERY seconds for at most MAX seconds, and ends as soon as
# its stdin closes (the runner is done). `read -t` is the sleep; it returns > 128 on its timeout.
_LOOP = """end=$(( $(date +%s) + {max_seconds} ))
while [ "$(date +%s)" -lt "$end" ]; do
  t=$(date +%s.%N)
{body}
  read -r -t {every} _; [ $? -gt 128 ] || exit 0
done
"""


def db_sampler_script(port: int = 5432, every: float = 0.5, max_seconds: int = 3600) -> str:
    """bash printing `<epoch>|<psql -At output of DB_SAMPLE_QUERY (in $CHAOS_QUERY)>` per sample; it
    runs as the postgres OS user (see db_sampler_command) and reaches PostgreSQL over the local
    socket."""
    body = (
        "  out=$(PGCONNECT_TIMEOUT=2 timeout 3 psql -XAtq -h /var/run/postgresql "
        f'-p {port} -d postgres -c "$CHAOS_QUERY" 2>&1 | tr "\\n" " ")\n'
        '  printf "%s|%s\\n" "$t" "$out"'
    )
    return _LOOP.format(max_seconds=max_seconds, body=body, every=every)


def redis_sampler_script(
    port: int = 6379, every: float = 0.5, max_seconds: int = 3600, user: str = "", ca_file: str = ""
) -> str:
    """bash printing `<epoch>|<INFO replication>|<CONFIG GET min-replicas-to-write>` per sample (each
    answer's lines joined by spaces); as the ACL user `user` (the broker role's admin user: INFO and
    CONFIG are @dangerous) when given; the password comes in REDISCLI_AUTH, never in argv. Over TLS
    verified against `ca_file` (a path on the broker host) when given."""
    cli = (
        "redis-cli"
        + (f" --tls --cacert {shlex.quote(ca_file)}" if ca_file else "")
        + f" -p {port}"
        + (f" --user {shlex.quote(user)}" if user else "")
    )
    body = (
        f'  info=$(timeout 2 {cli} INFO replication 2>&1 | tr -d "\\r" | tr "\\n" " ")\n'
        f"  conf=$(timeout 2 {cli} CONFIG GET min-replicas-to-write 2>&1 "
        '| tr -d "\\r" | tr "\\n" " ")\n'
        '  printf "%s|%s|%s\\n" "$t" "$info" "$conf"'
    )
    return _LOOP.format(max_seconds=max_seconds, body=body, every=every)


def db_sampler_command(host: str, script: str) -> list[str]:
    """The loop as the postgres OS user (`docker exec -u postgres`, like `runuser -u postgres` once
    for the whole loop instead of a PAM session per sample)."""
    return [
        "docker",
        "exec",
        "-i",
        "-u",
        "postgres",
        "-e",
        f"CHAOS_QUERY={DB_SAMPLE_QUERY}",
        host,
        "bash",
        "-c",
        script,
    ]


def redis_sampler_command(host: str, script: str) -> list[str]:
    # `-e REDISCLI_AUTH` without a value: docker takes it from its own environment (not argv).
    return ["docker", "exec", "-i", "-e", "REDISCLI_AUTH", host, "bash", "-c", script]


class Process(Protocol):
    stdin: IO[str] | None
    stdout: IO[str] | None

    def poll(self) -> int | None: ...
    def wait(self, timeout: float | None = None) -> int: ...
    def kill(self) -> None: ...


Spawn = Callable[[list[str], Mapping[str, str]], Process]


def spawn_process(argv: list[str], env: Mapping[str, str]) -> Process:
    return subprocess.Popen(
        argv,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={**os.environ, **env},
    )


class MemberSampler(threading.Thread):
    """Keeps one sampler exec running into a member and parses its lines into RoleSamples."""

    def __init__(
        self,
        member: str,
        argv: list[str],
        parse: Callable[[str, str], RoleSample | None],
        env: Mapping[str, str] | None = None,
        spawn: Spawn = spawn_process,
        restart_after: float = 1.0,
    ) -> None:
        super().__init__(name=f"chaos-sampler-{member}", daemon=True)
        self.member = member
        self.argv = argv
        self.parse = parse
        self.env = dict(env or {})
        self.spawn = spawn
        self.restart_after = restart_after
        self._samples: list[RoleSample] = []
        self._lock = threading.Lock()
        self._stop_event = threading.Event()
        self._proc: Process | None = None

    def run(self) -> None:
        while not self._stop_event.is_set():
            try:
                proc = self.spawn(self.argv, self.env)
            except OSError:
                self._stop_event.wait(self.restart_after)
                continue
            self._proc = proc
            assert proc.stdout is not None
            for line in proc.stdout:
                sample = self.parse(self.member, line)
                if sample is not None:
                    with self._lock:
                        self._samples.append(sample)
            proc.wait()
            self._stop_event.wait(self.restart_after)

    def stop(self) -> None:
        self._stop_event.set()
        proc = self._proc
        if proc is not None and proc.poll() is None:
            try:
                if proc.stdin is not None:
                    proc.stdin.close()  # the loop in the container ends on EOF
                proc.wait(timeout=3)
            except (OSError, subprocess.TimeoutExpired):
                proc.kill()  # a frozen container: its loop ends at its deadline
        self.join(timeout=10)

    def samples(self) -> list[RoleSample]:
        with self._lock:
            return list(self._samples)


# ---------------------------------------------------------------------------------------------------
# Everything watched during one fault
# ---------------------------------------------------------------------------------------------------
class Probe(Protocol):
    def start(self) -> None: ...
    def stop(self) -> None: ...
    def commits(self) -> list[Commit]: ...


class Sampler(Protocol):
    member: str

    def start(self) -> None: ...
    def stop(self) -> None: ...
    def samples(self) -> list[RoleSample]: ...


class Watch:
    """The commit probe and the samplers of one fault, started and stopped together."""

    def __init__(
        self,
        probe: Probe | None,
        samplers: Mapping[str, Sequence[Sampler]],
        read_back: Callable[[], set[int]],
        now: Callable[[], dt.datetime] = utcnow,
    ) -> None:
        self.probe = probe
        self.samplers = {tier: list(found) for tier, found in samplers.items()}
        self.read_back = read_back
        self.now = now
        self.started_at: dt.datetime | None = None
        self.stopped_at: dt.datetime | None = None

    def start(self) -> None:
        self.started_at = self.now()
        if self.probe is not None:
            self.probe.start()
        for found in self.samplers.values():
            for sampler in found:
                sampler.start()

    def stop(self) -> None:
        if self.stopped_at is not None:
            return
        if self.probe is not None:
            self.probe.stop()
        for found in self.samplers.values():
            for sampler in found:
                sampler.stop()
        self.stopped_at = self.now()

    def commits(self) -> list[Commit]:
        return self.probe.commits() if self.probe is not None else []

    def samples(self, tier: str) -> dict[str, list[RoleSample]]:
        """Per member of the tier (`db`, `broker`), its samples."""
        return {s.member: s.samples() for s in self.samplers.get(tier, [])}


def lab_watch(
    db: DbAddress,
    session: str,
    db_members: Sequence[str],
    broker_members: Sequence[str],
    broker_password: str,
    probe_interval: float = 0.1,
    broker_user: str = "",
    commit_guard: float = 5.0,
    sample_every: float = 0.5,
    max_seconds: int = 3600,
    pg_port: int = 5432,
    redis_port: int = 6379,
    redis_ca: str = "",
) -> Watch:
    """The real Watch of one fault on the lab (`redis_ca`: the CA file on the broker hosts, for
    redis-cli over TLS; empty: plain TCP)."""
    probe = CommitProbe(PgCommitter(probe_params(db), session, commit_guard), probe_interval)
    db_script = db_sampler_script(pg_port, sample_every, max_seconds)
    redis_script = redis_sampler_script(redis_port, sample_every, max_seconds, broker_user, redis_ca)
    samplers: dict[str, list[Sampler]] = {
        "db": [MemberSampler(h, db_sampler_command(h, db_script), parse_db_sample) for h in db_members],
        "broker": [
            MemberSampler(
                h,
                redis_sampler_command(h, redis_script),
                parse_redis_sample,
                env={"REDISCLI_AUTH": broker_password},
            )
            for h in broker_members
        ],
    }
    return Watch(probe, samplers, lambda: read_back(db, session))


def describe_command(argv: Sequence[str]) -> str:
    """A sampler command for the log, without its script."""
    return shlex.join([a if "\n" not in a else "<script>" for a in argv])
