"""The chaos run's invariants, with no I/O: who accepts writes (never two PostgreSQL primaries, never two
Redis masters), which acknowledged commits the database lost, how long writes stopped, and whether a
host came back in its role.

Everything works on plain records (samples, commit attempts, unit states) so the unit tests can feed
it fake data; `airflow_ha.chaos_probes` and `airflow_ha.chaos_lab` collect the real ones.
"""

from __future__ import annotations

import datetime as dt
import itertools
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

# ---------------------------------------------------------------------------------------------------
# Who accepts writes
# ---------------------------------------------------------------------------------------------------
# One PostgreSQL sample: the server's clock, whether it is in recovery, whether it waits for no
# synchronous standby, and how many synchronous standbys stream from it.
DB_SAMPLE_QUERY = (
    "SELECT extract(epoch FROM clock_timestamp()), pg_is_in_recovery(), "
    "current_setting('synchronous_standby_names') = '', "
    "(SELECT count(*) FROM pg_stat_replication "
    "WHERE sync_state IN ('sync', 'quorum') AND state = 'streaming')"
)


@dataclass(frozen=True)
class RoleSample:
    """What one member (a database or Redis host) said about itself at one moment."""

    member: str
    at: dt.datetime
    accepts: bool  # it would acknowledge a client's write now
    detail: str = ""


def _epoch(value: str) -> dt.datetime:
    return dt.datetime.fromtimestamp(float(value), dt.UTC)


def db_accepts_writes(in_recovery: bool, no_sync_standby_wanted: bool, sync_streaming: int) -> bool:
    """A PostgreSQL member acknowledges commits when it is not in recovery and either waits for no
    synchronous standby or has one streaming from it (else every commit hangs in the wait)."""
    return not in_recovery and (no_sync_standby_wanted or sync_streaming > 0)


def parse_db_sample(member: str, line: str) -> RoleSample | None:
    """A sampler line `<local epoch>|<psql -At output of DB_SAMPLE_QUERY, or an error>`; None for a
    line that is no sample. A member whose psql failed is a sample that does not accept writes."""
    local, sep, rest = line.strip().partition("|")
    try:
        fallback = _epoch(local)
    except ValueError:
        return None
    if not sep:
        return RoleSample(member, fallback, False, "no answer")
    fields = rest.strip().split("|")
    if len(fields) == 4 and fields[1] in ("t", "f") and fields[2] in ("t", "f"):
        try:
            at, streaming = _epoch(fields[0]), int(fields[3])
        except ValueError:
            return RoleSample(member, fallback, False, rest.strip()[:120])
        in_recovery, free = fields[1] == "t", fields[2] == "t"
        role = "replica" if in_recovery else "primary"
        detail = role if in_recovery else f"{role}, {streaming} sync standbys streaming"
        return RoleSample(member, at, db_accepts_writes(in_recovery, free, streaming), detail)
    return RoleSample(member, fallback, False, rest.strip()[:120] or "no answer")


def parse_info(text: str) -> dict[str, str]:
    """`INFO` output (its lines possibly joined by spaces) as a dict."""
    out: dict[str, str] = {}
    for token in text.replace("\r", " ").replace("\n", " ").split():
        key, sep, value = token.partition(":")
        if sep and not key.startswith("#"):
            out[key] = value
    return out


def redis_accepts_writes(info: Mapping[str, str], min_replicas_to_write: int) -> bool:
    """A Redis node takes Celery's writes when it is a master and, with min-replicas-to-write set,
    enough good replicas are attached."""
    if info.get("role") != "master":
        return False
    if min_replicas_to_write <= 0:
        return True
    try:
        good = int(info.get("min_slaves_good_slaves", "0"))
    except ValueError:
        return False
    return good >= min_replicas_to_write


def parse_redis_sample(member: str, line: str) -> RoleSample | None:
    """A sampler line `<local epoch>|<INFO replication>|<CONFIG GET min-replicas-to-write>` (each
    command's lines joined by spaces); None for a line that is no sample."""
    parts = line.strip().split("|")
    try:
        at = _epoch(parts[0])
    except ValueError:
        return None
    info = parse_info(parts[1]) if len(parts) > 1 else {}
    config = parts[2].split() if len(parts) > 2 else []
    if "role" not in info:
        return RoleSample(
            member, at, False, (parts[1].strip() if len(parts) > 1 else "")[:120] or "no answer"
        )
    try:
        wanted = int(config[config.index("min-replicas-to-write") + 1])
    except (ValueError, IndexError):
        wanted = 0
    accepts = redis_accepts_writes(info, wanted)
    detail = f"{info['role']}, min-replicas-to-write {wanted}"
    if info["role"] == "master" and wanted:
        detail += f", {info.get('min_slaves_good_slaves', '0')} good replicas"
    return RoleSample(member, at, accepts, detail)


@dataclass(frozen=True)
class TwoWriters:
    """A stretch of time in which two or more members accepted writes at once."""

    start: dt.datetime
    end: dt.datetime
    members: tuple[str, ...]

    def describe(self) -> str:
        span = (self.end - self.start).total_seconds()
        return f"{' and '.join(self.members)} at {self.start:%H:%M:%S.%f}"[:-3] + f" for {span:.1f} s"


def accepting_runs(
    samples: Iterable[RoleSample], max_gap: float = 1.5
) -> list[tuple[str, dt.datetime, dt.datetime]]:
    """Each member's stretches of accepting writes: (member, first, last accepting sample) for every
    run of consecutive accepting samples of that member, a run ending at a sample that does not
    accept or at a silence longer than `max_gap` seconds (a frozen or cut-off member says nothing).
    A run of one sample is a moment."""
    by_member: dict[str, list[RoleSample]] = {}
    for sample in samples:
        by_member.setdefault(sample.member, []).append(sample)
    runs: list[tuple[str, dt.datetime, dt.datetime]] = []
    silence = dt.timedelta(seconds=max_gap)
    for member, own in by_member.items():
        start: dt.datetime | None = None
        last: dt.datetime | None = None
        for sample in sorted(own, key=lambda s: s.at):
            if start is not None and last is not None and (not sample.accepts or sample.at - last > silence):
                runs.append((member, start, last))
                start = last = None
            if sample.accepts:
                start = sample.at if start is None else start
                last = sample.at
        if start is not None and last is not None:
            runs.append((member, start, last))
    return runs


def two_writers(samples: Iterable[RoleSample], merge: float = 2.0) -> list[TwoWriters]:
    """The stretches of time in which two members accepted writes at once.

    A member accepts writes from its first to its last sample of a run of consecutive accepting
    samples (the sampled time, taken on the member). Two members' runs that overlap in time are a
    conflict. Comparing runs rather than nearby samples keeps a clean hand-over (the old primary's
    last accepting sample before the new one's first) from counting, however close the two are,
    while a stale primary that keeps accepting after another member started is caught at the
    sampling period's resolution. A member with no sample (frozen, cut off, down) accepts nothing.
    Conflicts less than `merge` seconds apart are one moment.
    """
    runs = sorted(accepting_runs(samples), key=lambda r: r[1])
    hits: list[tuple[dt.datetime, dt.datetime, frozenset[str]]] = []
    for i, (member, _start, end) in enumerate(runs):
        for other, other_start, other_end in runs[i + 1 :]:
            if other_start > end:
                break
            if other != member:
                hits.append((other_start, min(end, other_end), frozenset((member, other))))
    hits.sort(key=lambda h: h[0])
    moments: list[TwoWriters] = []
    gap = dt.timedelta(seconds=merge)
    for start, end, members in hits:
        if moments and start - moments[-1].end <= gap:
            last = moments[-1]
            moments[-1] = TwoWriters(last.start, max(last.end, end), tuple(sorted({*last.members, *members})))
        else:
            moments.append(TwoWriters(start, end, tuple(sorted(members))))
    return moments


# ---------------------------------------------------------------------------------------------------
# Acknowledged commits
# ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Commit:
    """One write of the commit probe. Acknowledged only when COMMIT returned success to the client;
    a write that raised, or that the probe abandoned after its guard time, is not."""

    seq: int
    sent_at: dt.datetime
    acked_at: dt.datetime | None
    error: str = ""

    @property
    def acked(self) -> bool:
        return self.acked_at is not None


def lost_commits(commits: Iterable[Commit], found: Iterable[int]) -> list[int]:
    """The acknowledged writes the database no longer has."""
    present = set(found)
    return sorted(c.seq for c in commits if c.acked and c.seq not in present)


def longest_ack_gap(commits: Iterable[Commit], start: dt.datetime, end: dt.datetime) -> float:
    """The longest time without an acknowledged write between `start` and `end` (the probe's window):
    how long the database took writes back after a fault."""
    moments = sorted(c.acked_at for c in commits if c.acked_at is not None and start <= c.acked_at <= end)
    edges = [start, *moments, end]
    return max((b - a).total_seconds() for a, b in itertools.pairwise(edges))


def commit_errors(commits: Iterable[Commit], limit: int = 3) -> list[str]:
    """The first distinct errors the probe met, for the log."""
    seen: list[str] = []
    for commit in commits:
        if commit.error and commit.error not in seen:
            seen.append(commit.error)
            if len(seen) == limit:
                break
    return seen


# ---------------------------------------------------------------------------------------------------
# Hosts back in their roles
# ---------------------------------------------------------------------------------------------------
def unit_problems(states: Mapping[str, Mapping[str, str]]) -> list[str]:
    """Units that should run and do not: host -> unit -> `systemctl is-active` answer."""
    return [
        f"{host}: {unit} {state or 'unknown'}"
        for host, units in sorted(states.items())
        for unit, state in units.items()
        if state != "active"
    ]


def scheduler_problems(states: Mapping[str, Mapping[str, str]]) -> list[str]:
    """Every scheduler host runs its scheduler, or (active_standby) at least its failover
    controller, which starts the scheduler when the lease comes to it."""
    problems = []
    for host, units in sorted(states.items()):
        if units.get("airflow-scheduler") != "active" and units.get("airflow-ha-failover") != "active":
            problems.append(f"{host}: airflow-scheduler {units.get('airflow-scheduler') or 'unknown'}")
    return problems


def sentinel_problems(answers: Mapping[str, str | None]) -> list[str]:
    """Every Sentinel answers and all name the same master."""
    silent = sorted(h for h, master in answers.items() if not master)
    named = sorted({m for m in answers.values() if m})
    problems = [f"Sentinel on {h} does not name a master" for h in silent]
    if len(named) > 1:
        problems.append(f"Sentinels disagree on the master: {', '.join(named)}")
    return problems


def loadbalancer_problems(
    holds_vip: Mapping[str, bool | None], vrrp_states: Mapping[str, str | None], vip: str | None
) -> list[str]:
    """With a VIP: exactly one load balancer holds it and every other one is a keepalived BACKUP
    (its last `Entering ... STATE`). None in holds_vip: the host could not be asked."""
    if not vip:
        return []
    holders = sorted(h for h, held in holds_vip.items() if held)
    problems = [
        f"{h}: not reachable to check the VIP" for h, held in sorted(holds_vip.items()) if held is None
    ]
    if not holders:
        problems.append(f"no load balancer holds the VIP {vip}")
    elif len(holders) > 1:
        problems.append(f"several load balancers hold the VIP {vip}: {', '.join(holders)}")
    for host, state in sorted(vrrp_states.items()):
        if host in holders or holds_vip.get(host) is None:
            continue
        if state != "BACKUP":
            problems.append(f"{host}: keepalived {state or 'state unknown'}, not BACKUP")
    return problems


def vrrp_state(journal: str) -> str | None:
    """keepalived's current VRRP state from its log: the last `Entering <STATE> STATE`."""
    found = None
    for line in journal.splitlines():
        if "Entering " in line and " STATE" in line:
            word = line.split("Entering ", 1)[1].split(" ", 1)[0]
            if word.isupper():
                found = word
    return found


def etcd_leader(statuses: Mapping[str, Mapping[str, object] | None]) -> str | None:
    """From each member's /v3/maintenance/status answer: the member the answering members name as
    their raft leader (compared by member id), or None."""
    ids = {}
    leaders = set()
    for host, status in statuses.items():
        if not status:
            continue
        header = status.get("header")
        if isinstance(header, Mapping):
            ids[str(header.get("member_id"))] = host
        if status.get("leader") not in (None, "0", 0):
            leaders.add(str(status.get("leader")))
    if len(leaders) != 1:
        return None
    return ids.get(next(iter(leaders)))


def etcd_problems(statuses: Mapping[str, Mapping[str, object] | None]) -> list[str]:
    """Every etcd member answers and all agree on one leader."""
    problems = [f"etcd on {h} does not answer" for h, s in sorted(statuses.items()) if not s]
    answered = {h: s for h, s in statuses.items() if s}
    named = {str(s.get("leader")) for s in answered.values()}
    if answered and (len(named) != 1 or etcd_leader(answered) is None):
        problems.append("etcd members do not agree on a leader")
    return problems


def hosts_without_work(
    hosts: Sequence[str], hostnames_after: Iterable[str], resolve: Callable[[str], str | None]
) -> list[str]:
    """Workers brought back by a fault that ran no task afterwards. `hostnames_after` are the
    hostnames of task instances that started after their recovery; `resolve` maps such a hostname
    to its lab host."""
    ran = {resolve(name) for name in hostnames_after}
    return [h for h in hosts if h not in ran]
