"""The leadership lease and the member reports, kept in the Airflow metadata PostgreSQL database.

Tables (created idempotently, under an advisory lock so that hosts starting together do not race):

``airflow_ha_lease`` - one row per lease name::

    name text PRIMARY KEY        holder text (NULL = free)     epoch bigint (fencing token)
    acquired_at, renewed_at, expires_at timestamptz (database clock)
    last_holder text             released_at timestamptz
    paused bool, paused_by text, paused_at timestamptz, pause_reason text
    step_down_epoch bigint, step_down_requested_by text, step_down_requested_at timestamptz

``airflow_ha_member`` - one row per (lease name, host), upserted by every controller every loop::

    lease_name, host (PRIMARY KEY)  role text  healthy bool  detail text  epoch bigint
    pid int  version text  started_at timestamptz  reported_at timestamptz

The lease is taken and renewed by ONE statement (:data:`ACQUIRE_SQL`): an ``INSERT ... ON CONFLICT
DO UPDATE ... WHERE`` that only succeeds when the caller already holds the lease, or when it may
take over (it is ready, failover is not paused) and the lease is free or expired. Expiry is computed
and compared with the database clock (``now()``, the statement's start time), never a host clock;
the statement returns the remaining lease time as the database sees it. ``epoch`` increases by one
on every change of holder (a release sets the holder to NULL, so even the same host taking the lease
back gets a new epoch), which makes it usable as a fencing token.

Semantics of the flags:

- ``paused``: nobody may take the lease over; the current holder (if any) keeps renewing it, and
  its controller leaves the guarded units alone (no health restarts, no step-down) so operators can
  do maintenance. Losing the database still fences. A paused lease without a holder stays free.
- ``step_down_epoch``: a step-down request for the holder of that epoch; the holder's controller
  stops its units and releases the lease within one loop. Requests are refused while paused, and
  pausing clears a pending request.

All timestamps shown by ``status`` are differences computed by the database (``now() - x``).

Who can write the lease: the controller connects as ``scheduler_failover_db_user``, a database role
of its own (``airflow_ha_failover``, created by the metadata_db role), whose DSN puts the schema it
owns (``airflow_ha``) first on the search_path, so the unqualified table names below resolve there.
Airflow's own database user, whose password DAG code on the dag-processor and triggerer hosts can
read in ``airflow.cfg``, has no right on that schema: it cannot take, pause, release or step down the
lease, nor forge member rows. Tables an older release created in ``public`` as Airflow's user are
moved into the schema by the metadata_db role (docs/security.md, "Which host holds which secret",
says what happens while old controllers still run).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

if TYPE_CHECKING:
    import psycopg

log = logging.getLogger(__name__)

LEASE_TABLE = "airflow_ha_lease"
MEMBER_TABLE = "airflow_ha_member"
T = TypeVar("T")


class LeaseStoreError(Exception):
    """A database operation failed (unreachable, timed out, rejected)."""


# ---------------------------------------------------------------------------------------------
# Data


@dataclass(frozen=True)
class LeaseState:
    """What one acquire/renew statement saw.

    ``held`` is True only when THIS statement made or kept the caller the holder; the other fields
    then describe the renewed lease. When ``held`` is False they describe the lease as last
    committed before the statement (it may be a moment stale).
    """

    holder: str | None
    epoch: int
    remaining: float  # seconds until expiry, database clock (negative: expired)
    paused: bool
    step_down_epoch: int | None
    held: bool
    last_holder: str | None = None

    @property
    def step_down_requested(self) -> bool:
        return self.held and self.step_down_epoch is not None and self.step_down_epoch == self.epoch

    @property
    def live_holder(self) -> str | None:
        """The holder if the lease has not expired, else None."""
        return self.holder if self.holder is not None and self.remaining > 0 else None


@dataclass(frozen=True)
class MemberReport:
    """One controller's heartbeat row."""

    host: str
    role: str
    healthy: bool
    detail: str
    epoch: int | None
    pid: int
    version: str
    uptime: float


@dataclass(frozen=True)
class LeaseInfo:
    """The lease row as ``status`` shows it; ages are database-clock differences in seconds."""

    name: str
    holder: str | None
    epoch: int
    remaining: float
    renewed_ago: float | None
    held_for: float | None
    last_holder: str | None
    released_ago: float | None
    paused: bool
    paused_by: str | None
    paused_ago: float | None
    pause_reason: str | None
    step_down_epoch: int | None
    step_down_requested_by: str | None

    @property
    def live_holder(self) -> str | None:
        return self.holder if self.holder is not None and self.remaining > 0 else None

    @property
    def step_down_pending(self) -> bool:
        return self.holder is not None and self.step_down_epoch == self.epoch


@dataclass(frozen=True)
class MemberInfo:
    host: str
    role: str
    healthy: bool
    detail: str
    epoch: int | None
    pid: int | None
    version: str | None
    reported_ago: float
    uptime: float | None


class LeaseBackend(Protocol):
    """What the controller needs from the lease store (the real one or a test fake)."""

    def acquire(self, holder: str, ttl: float, may_take: bool) -> LeaseState: ...

    def release(self, holder: str, epoch: int) -> bool: ...

    def heartbeat(self, report: MemberReport, fresh_within: float) -> int: ...

    def abandon(self) -> None: ...

    def close(self) -> None: ...


# ---------------------------------------------------------------------------------------------
# SQL

SCHEMA_LOCK_KEY = 0x41484146  # arbitrary, constant: "AHAF"

SCHEMA_SQL = (
    f"""
CREATE TABLE IF NOT EXISTS {LEASE_TABLE} (
    name                   text PRIMARY KEY,
    holder                 text,
    epoch                  bigint NOT NULL DEFAULT 0,
    acquired_at            timestamptz,
    renewed_at             timestamptz,
    expires_at             timestamptz NOT NULL DEFAULT now(),
    last_holder            text,
    released_at            timestamptz,
    paused                 boolean NOT NULL DEFAULT false,
    paused_by              text,
    paused_at              timestamptz,
    pause_reason           text,
    step_down_epoch        bigint,
    step_down_requested_by text,
    step_down_requested_at timestamptz
)""",
    f"""
CREATE TABLE IF NOT EXISTS {MEMBER_TABLE} (
    lease_name  text NOT NULL,
    host        text NOT NULL,
    role        text NOT NULL,
    healthy     boolean NOT NULL DEFAULT false,
    detail      text NOT NULL DEFAULT '',
    epoch       bigint,
    pid         integer,
    version     text,
    started_at  timestamptz,
    reported_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (lease_name, host)
)""",
)

ENSURE_ROW_SQL = f"INSERT INTO {LEASE_TABLE} (name) VALUES (%(name)s) ON CONFLICT (name) DO NOTHING"

# The one atomic take-or-renew statement. `now()` is the statement's start on the database clock:
# it is later than the moment the client sent the statement, so expires_at >= send time + ttl.
# The INSERT only inserts a missing row when the caller may take over; otherwise an existing row
# turns it into the conditional UPDATE. `attempt` returns a row only when the caller holds the lease
# after the statement; otherwise the second branch reports the lease as committed before it.
ACQUIRE_SQL = f"""
WITH attempt AS (
    INSERT INTO {LEASE_TABLE} AS l
        (name, holder, epoch, acquired_at, renewed_at, expires_at)
    SELECT %(name)s, %(me)s, 1, now(), now(), now() + make_interval(secs => %(ttl)s)
    WHERE %(may_take)s OR EXISTS (SELECT 1 FROM {LEASE_TABLE} WHERE name = %(name)s)
    ON CONFLICT (name) DO UPDATE SET
        holder = EXCLUDED.holder,
        epoch = CASE WHEN l.holder = EXCLUDED.holder THEN l.epoch ELSE l.epoch + 1 END,
        acquired_at = CASE WHEN l.holder = EXCLUDED.holder THEN l.acquired_at ELSE now() END,
        renewed_at = now(),
        expires_at = EXCLUDED.expires_at,
        last_holder = CASE WHEN l.holder = EXCLUDED.holder THEN l.last_holder
                           ELSE coalesce(l.holder, l.last_holder) END,
        step_down_epoch = CASE WHEN l.holder = EXCLUDED.holder THEN l.step_down_epoch ELSE NULL END
    WHERE l.holder = EXCLUDED.holder
       OR (%(may_take)s AND NOT l.paused AND (l.holder IS NULL OR l.expires_at <= now()))
    RETURNING l.holder, l.epoch, l.paused, l.step_down_epoch,
              extract(epoch FROM l.expires_at - now()) AS remaining, l.last_holder
)
SELECT holder, epoch, paused, step_down_epoch, remaining, last_holder, true AS held FROM attempt
UNION ALL
SELECT holder, epoch, paused, step_down_epoch, extract(epoch FROM expires_at - now()), last_holder, false
FROM {LEASE_TABLE}
WHERE name = %(name)s AND NOT EXISTS (SELECT 1 FROM attempt)
"""

RELEASE_SQL = f"""
UPDATE {LEASE_TABLE}
SET holder = NULL, last_holder = holder, released_at = now(), renewed_at = now(), expires_at = now(),
    step_down_epoch = NULL
WHERE name = %(name)s AND holder = %(me)s AND epoch = %(epoch)s
RETURNING epoch
"""

HEARTBEAT_SQL = f"""
WITH report AS (
    INSERT INTO {MEMBER_TABLE} AS m
        (lease_name, host, role, healthy, detail, epoch, pid, version, started_at, reported_at)
    VALUES (%(name)s, %(host)s, %(role)s, %(healthy)s, %(detail)s, %(epoch)s, %(pid)s, %(version)s,
            now() - make_interval(secs => %(uptime)s), now())
    ON CONFLICT (lease_name, host) DO UPDATE SET
        role = EXCLUDED.role, healthy = EXCLUDED.healthy, detail = EXCLUDED.detail,
        epoch = EXCLUDED.epoch, pid = EXCLUDED.pid, version = EXCLUDED.version,
        started_at = EXCLUDED.started_at, reported_at = now()
    RETURNING 1
)
SELECT count(*) FROM {MEMBER_TABLE}
WHERE lease_name = %(name)s AND host <> %(host)s AND role = 'standby' AND healthy
  AND reported_at > now() - make_interval(secs => %(fresh)s)
"""

READ_SQL = f"""
SELECT name, holder, epoch, extract(epoch FROM expires_at - now()),
       extract(epoch FROM now() - renewed_at), extract(epoch FROM now() - acquired_at),
       last_holder, extract(epoch FROM now() - released_at),
       paused, paused_by, extract(epoch FROM now() - paused_at), pause_reason,
       step_down_epoch, step_down_requested_by
FROM {LEASE_TABLE} WHERE name = %(name)s
"""

MEMBERS_SQL = f"""
SELECT host, role, healthy, detail, epoch, pid, version,
       extract(epoch FROM now() - reported_at), extract(epoch FROM now() - started_at)
FROM {MEMBER_TABLE} WHERE lease_name = %(name)s ORDER BY host
"""

SET_PAUSED_SQL = f"""
UPDATE {LEASE_TABLE}
SET paused = %(paused)s,
    paused_by = CASE WHEN %(paused)s THEN %(by)s END,
    paused_at = CASE WHEN %(paused)s THEN now() END,
    pause_reason = CASE WHEN %(paused)s THEN %(reason)s END,
    step_down_epoch = CASE WHEN %(paused)s THEN NULL ELSE step_down_epoch END
WHERE name = %(name)s
RETURNING holder, epoch
"""

STEP_DOWN_SQL = f"""
UPDATE {LEASE_TABLE}
SET step_down_epoch = epoch, step_down_requested_by = %(by)s, step_down_requested_at = now()
WHERE name = %(name)s AND holder IS NOT NULL AND expires_at > now() AND NOT paused
RETURNING holder, epoch
"""

TABLES_EXIST_SQL = (
    f"SELECT to_regclass('{LEASE_TABLE}') IS NOT NULL AND to_regclass('{MEMBER_TABLE}') IS NOT NULL"
)


def _f(value: Decimal | float | None) -> float | None:
    return None if value is None else float(value)


# ---------------------------------------------------------------------------------------------
# The store


class LeaseStore:
    """The lease and member tables through psycopg, one autocommit connection at a time.

    Thread-safe in the one way the controller needs: a call may be abandoned on another thread
    (it hangs on a dead network) while the next call proceeds. Each call checks the cached
    connection out; :meth:`abandon` bumps a generation counter so a connection coming back from an
    abandoned call is closed instead of being reused.
    """

    def __init__(
        self,
        conninfo: str,
        lease_name: str,
        *,
        node_name: str = "",
        connect_timeout: int = 2,
        statement_timeout: float = 1.0,
        tcp_user_timeout: float = 10.0,
    ) -> None:
        self.conninfo = conninfo
        self.lease_name = lease_name
        self.node_name = node_name
        self.connect_timeout = connect_timeout
        self.statement_timeout = statement_timeout
        self.tcp_user_timeout = tcp_user_timeout
        self._lock = threading.Lock()
        self._conn: psycopg.Connection[Any] | None = None
        self._generation = 0
        self._schema_ready = False

    # -- connections -------------------------------------------------------------------------

    def _connect(self) -> psycopg.Connection[Any]:
        import psycopg

        conn = psycopg.connect(
            self.conninfo,
            autocommit=True,
            connect_timeout=self.connect_timeout,
            application_name=f"airflow-ha-failover:{self.node_name}"[:63],
            keepalives=1,
            keepalives_idle=2,
            keepalives_interval=1,
            keepalives_count=3,
            tcp_user_timeout=int(self.tcp_user_timeout * 1000),
        )
        ms = str(max(1, int(self.statement_timeout * 1000)))
        conn.execute(
            "SELECT set_config('statement_timeout', %(ms)s, false),"
            " set_config('lock_timeout', %(ms)s, false),"
            " set_config('idle_in_transaction_session_timeout', '10000', false),"
            " set_config('client_min_messages', 'warning', false)",
            {"ms": ms},
        )
        return conn

    def _checkout(self) -> tuple[psycopg.Connection[Any], int, bool]:
        with self._lock:
            conn, self._conn = self._conn, None
            gen = self._generation
        if conn is not None and not conn.closed and not conn.broken:
            return conn, gen, True
        if conn is not None:
            conn.close()
        return self._connect(), gen, False

    def _checkin(self, conn: psycopg.Connection[Any], gen: int) -> None:
        keep = False
        with self._lock:
            if gen == self._generation and self._conn is None and not conn.closed and not conn.broken:
                self._conn = conn
                keep = True
        if not keep:
            conn.close()

    def _run(self, what: str, fn: Callable[[psycopg.Connection[Any]], T]) -> T:
        """Run ``fn`` on a connection; retry once on a fresh connection if a reused one is dead."""
        import psycopg

        for attempt in (1, 2):
            try:
                conn, gen, reused = self._checkout()
            except psycopg.Error as exc:
                raise LeaseStoreError(f"{what}: cannot connect: {_one_line(exc)}") from exc
            try:
                if not self._schema_ready:
                    self._ensure_schema(conn)
                result = fn(conn)
            except psycopg.errors.UndefinedTable as exc:
                self._schema_ready = False
                self._checkin(conn, gen)
                raise LeaseStoreError(f"{what}: {_one_line(exc)}") from exc
            except psycopg.Error as exc:
                broken = conn.broken or conn.closed
                self._checkin(conn, gen)
                if broken and reused and attempt == 1:
                    log.debug("%s: reused connection is dead (%s); reconnecting", what, _one_line(exc))
                    continue
                raise LeaseStoreError(f"{what}: {_one_line(exc)}") from exc
            except BaseException:
                conn.close()
                raise
            self._checkin(conn, gen)
            return result
        raise AssertionError("unreachable")  # pragma: no cover

    def abandon(self) -> None:
        """Forget the current connection: an abandoned call may still be using it."""
        with self._lock:
            self._generation += 1
            conn, self._conn = self._conn, None
        if conn is not None:
            threading.Thread(target=conn.close, daemon=True, name="airflow-ha-close").start()

    def close(self) -> None:
        with self._lock:
            self._generation += 1
            conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    # -- schema ------------------------------------------------------------------------------

    def _ensure_schema(self, conn: psycopg.Connection[Any]) -> None:
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK_KEY,))
            for stmt in SCHEMA_SQL:
                conn.execute(stmt)
            conn.execute(ENSURE_ROW_SQL, {"name": self.lease_name})
        self._schema_ready = True

    def ensure_schema(self) -> None:
        """Create the tables and the lease row if missing (idempotent)."""
        self._schema_ready = False
        self._run("create schema", lambda conn: None)

    def tables_exist(self) -> bool:
        """True if both tables exist (does not create them)."""
        import psycopg

        try:
            conn, gen, _ = self._checkout()
        except psycopg.Error as exc:
            raise LeaseStoreError(f"cannot connect: {_one_line(exc)}") from exc
        try:
            row = conn.execute(TABLES_EXIST_SQL).fetchone()
        except psycopg.Error as exc:
            self._checkin(conn, gen)
            raise LeaseStoreError(_one_line(exc)) from exc
        self._checkin(conn, gen)
        return bool(row and row[0])

    # -- the lease ---------------------------------------------------------------------------

    def acquire(self, holder: str, ttl: float, may_take: bool) -> LeaseState:
        """Renew the lease if ``holder`` has it, else take it if allowed and free/expired."""
        params = {"name": self.lease_name, "me": holder, "ttl": float(ttl), "may_take": bool(may_take)}

        def go(conn: psycopg.Connection[Any]) -> LeaseState:
            row = conn.execute(ACQUIRE_SQL, params).fetchone()
            if row is None:  # the row is missing and we may not create it
                return LeaseState(None, 0, 0.0, False, None, held=False)
            h, epoch, paused, sde, remaining, last, held = row
            return LeaseState(h, int(epoch), float(remaining), bool(paused), sde, bool(held), last)

        return self._run("acquire lease", go)

    def release(self, holder: str, epoch: int) -> bool:
        """Give the lease up if ``holder`` still has it at ``epoch``; True if it did."""
        params = {"name": self.lease_name, "me": holder, "epoch": epoch}
        return self._run(
            "release lease", lambda conn: conn.execute(RELEASE_SQL, params).fetchone() is not None
        )

    def heartbeat(self, report: MemberReport, fresh_within: float) -> int:
        """Upsert this host's member row; return how many OTHER hosts are ready standbys."""
        params = {
            "name": self.lease_name,
            "host": report.host,
            "role": report.role,
            "healthy": report.healthy,
            "detail": report.detail[:500],
            "epoch": report.epoch,
            "pid": report.pid,
            "version": report.version,
            "uptime": float(report.uptime),
            "fresh": float(fresh_within),
        }

        def go(conn: psycopg.Connection[Any]) -> int:
            row = conn.execute(HEARTBEAT_SQL, params).fetchone()
            return int(row[0]) if row else 0

        return self._run("report member", go)

    # -- operator commands -------------------------------------------------------------------

    def read(self) -> LeaseInfo | None:
        def go(conn: psycopg.Connection[Any]) -> LeaseInfo | None:
            row = conn.execute(READ_SQL, {"name": self.lease_name}).fetchone()
            if row is None:
                return None
            return LeaseInfo(
                name=row[0],
                holder=row[1],
                epoch=int(row[2]),
                remaining=float(row[3]),
                renewed_ago=_f(row[4]),
                held_for=_f(row[5]),
                last_holder=row[6],
                released_ago=_f(row[7]),
                paused=bool(row[8]),
                paused_by=row[9],
                paused_ago=_f(row[10]),
                pause_reason=row[11],
                step_down_epoch=row[12],
                step_down_requested_by=row[13],
            )

        return self._run("read lease", go)

    def members(self) -> list[MemberInfo]:
        def go(conn: psycopg.Connection[Any]) -> list[MemberInfo]:
            rows = conn.execute(MEMBERS_SQL, {"name": self.lease_name}).fetchall()
            return [
                MemberInfo(r[0], r[1], bool(r[2]), r[3], r[4], r[5], r[6], float(r[7]), _f(r[8]))
                for r in rows
            ]

        return self._run("read members", go)

    def set_paused(self, paused: bool, by: str, reason: str = "") -> tuple[str | None, int]:
        params = {"name": self.lease_name, "paused": paused, "by": by, "reason": reason or None}

        def go(conn: psycopg.Connection[Any]) -> tuple[str | None, int]:
            row = conn.execute(SET_PAUSED_SQL, params).fetchone()
            if row is None:  # pragma: no cover - the row is created with the schema
                raise LeaseStoreError(f"lease {self.lease_name!r} does not exist")
            return row[0], int(row[1])

        return self._run("pause" if paused else "resume", go)

    def request_step_down(self, by: str) -> tuple[str, int] | None:
        """Ask the live holder to step down; None if there is no live holder or failover is paused."""

        def go(conn: psycopg.Connection[Any]) -> tuple[str, int] | None:
            row = conn.execute(STEP_DOWN_SQL, {"name": self.lease_name, "by": by}).fetchone()
            return None if row is None else (row[0], int(row[1]))

        return self._run("request step-down", go)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
