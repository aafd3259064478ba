"""The chaos run's bookkeeping, with no I/O: run ids, the ledger analysis, the measurements, the
target and invariant checks and the table that goes into docs/benchmarks.md.

Everything here works on plain records (triggers, ledger rows, task-instance start times, final run
states) so the unit tests can feed it fake data; `airflow_ha.chaos` collects the real ones.
"""

from __future__ import annotations

import datetime as dt
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from airflow_ha.chaos_invariants import TwoWriters

BEGIN = "<!-- bench:chaos:begin -->"
END = "<!-- bench:chaos:end -->"
HEADING = "Chaos"
BASELINE = "baseline"
RUN_ID_PREFIX = "chaos"
# A run id: chaos__<session>__<phase>__<kind><seq>, e.g. chaos__20260101T120000__db-primary__load0042.
# Only characters of Airflow's default [core] allowed_run_id_pattern (^[A-Za-z0-9_.~:+-]+$).
_RUN_ID = re.compile(r"^chaos__(?P<session>[0-9A-Za-z]+)__(?P<phase>[a-z0-9+-]+)__(?P<kind>load|probe)\d+$")

TaskKey = tuple[str, str, str, int]  # dag_id, run_id, task_id, map_index
TryKey = tuple[str, str, str, int, int]  # ... and try_number


def run_id(session: str, phase: str, kind: str, seq: int) -> str:
    return f"{RUN_ID_PREFIX}__{session}__{phase}__{kind}{seq:04d}"


def session_prefix(session: str) -> str:
    return f"{RUN_ID_PREFIX}__{session}__"


def phase_of(run: str) -> str | None:
    """The phase (fault name or `baseline`) a run id was triggered in; None for a foreign run id."""
    match = _RUN_ID.match(run)
    return match["phase"] if match else None


def kind_of(run: str) -> str | None:
    """`load` (the load generator) or `probe` (a health probe); None for a foreign run id."""
    match = _RUN_ID.match(run)
    return match["kind"] if match else None


@dataclass(frozen=True)
class Trigger:
    """One run the load generator (or a health probe) asked for."""

    run_id: str
    phase: str
    first_attempt_at: dt.datetime
    outcome: (
        str  # "created" (HTTP 200), "exists" (HTTP 409 on a retry: an earlier try created it), "unanswered"
    )
    attempts: int = 1
    error: str = ""

    @property
    def answered(self) -> bool:
        return self.outcome in ("created", "exists")


@dataclass(frozen=True)
class LedgerRow:
    """One row a task wrote into the ledger table: `start` before its work, `done` after it. The
    attempt id is one per execution of the task (both rows of an execution share it)."""

    dag_id: str
    run_id: str
    task_id: str
    map_index: int
    try_number: int
    hostname: str
    recorded_at: dt.datetime
    phase: str = "done"
    attempt: str = ""

    @property
    def key(self) -> TryKey:
        return (self.dag_id, self.run_id, self.task_id, self.map_index, self.try_number)

    @property
    def task_key(self) -> TaskKey:
        return (self.dag_id, self.run_id, self.task_id, self.map_index)


@dataclass(frozen=True)
class TaskStart:
    """A task instance as the API reports it: when it was queued and when it started."""

    run_id: str
    task_id: str
    map_index: int
    try_number: int
    queued_at: dt.datetime | None
    started_at: dt.datetime | None
    hostname: str = ""


@dataclass
class RunAccount:
    """What became of the runs triggered in one phase."""

    triggered: list[str] = field(default_factory=list)
    unanswered: list[str] = field(default_factory=list)
    lost: dict[str, str] = field(default_factory=dict)  # run id -> its final state, or "missing"


def account_runs(triggers: Iterable[Trigger], final_states: Mapping[str, str]) -> dict[str, RunAccount]:
    """Per phase: the runs triggered, the triggers never answered, and the runs lost.

    A run is triggered when the API answered (created, or 409 on a retry) or when it exists in the
    database at the end (a trigger whose answer was lost). Such a run is lost unless its final state
    is `success`; one the API acknowledged that is not in the database at all is lost as `missing`.
    A trigger never answered whose run does not exist is not a lost run. Every load trigger the API
    never answered within its give-up time is listed as unanswered (a failure of its own); a health
    probe's is not (the runner triggers another).
    """
    accounts: dict[str, RunAccount] = defaultdict(RunAccount)
    seen: set[str] = set()
    for trig in triggers:
        if trig.run_id in seen:
            continue
        seen.add(trig.run_id)
        acct = accounts[trig.phase]
        state = final_states.get(trig.run_id)
        if not trig.answered and kind_of(trig.run_id) != "probe":
            acct.unanswered.append(trig.run_id)
        if not trig.answered and state is None:
            continue
        acct.triggered.append(trig.run_id)
        if state != "success":
            acct.lost[trig.run_id] = state or "missing"
    for run, state in final_states.items():
        if run in seen:
            continue
        phase = phase_of(run) or BASELINE
        acct = accounts[phase]
        acct.triggered.append(run)
        if state != "success":
            acct.lost[run] = state
    return dict(accounts)


def work_done_twice(rows: Iterable[LedgerRow]) -> dict[TaskKey, list[LedgerRow]]:
    """Tasks whose work ran twice: an execution finished its work (a `done` row) and another execution
    of the same try or of a later try started (a `start` row). A later try only runs when the
    finished one's success was never reported, so its work is done again. A try that died before
    finishing (no `done` row) and was retried is not counted. Returns the rows of each such task.
    Rows without an attempt id (a ledger from before the start rows) are one execution per row."""
    by_task: dict[TaskKey, list[LedgerRow]] = defaultdict(list)
    for row in rows:
        by_task[row.task_key].append(row)
    twice: dict[TaskKey, list[LedgerRow]] = {}
    for key, found in by_task.items():
        done = {(r.attempt or f"row{i}", r.try_number) for i, r in enumerate(found) if r.phase == "done"}
        runs = {(r.attempt or f"row{i}", r.try_number) for i, r in enumerate(found)}
        if any(other != first and other[1] >= first[1] for first in done for other in runs):
            twice[key] = found
    return twice


def retried_tasks(rows: Iterable[LedgerRow]) -> set[TaskKey]:
    """Tasks that ran on a try after the first: retried, which is expected after a worker died (its
    try timed out and a new try ran), and is not work done twice unless the earlier try finished."""
    return {row.task_key for row in rows if row.try_number > 1}


def ledger_gaps(
    rows: Iterable[LedgerRow], succeeded: Iterable[str], expected_tasks: Mapping[str, int]
) -> dict[str, int]:
    """Successful runs with fewer distinct tasks in the ledger than they have tasks, counted for the
    `start` rows and the `done` rows apart (a row the database forgot, e.g. over a failover, or a DAG
    file older than the start rows): run id -> rows missing."""
    seen: dict[tuple[str, str], set[tuple[str, int]]] = defaultdict(set)
    for row in rows:
        seen[(row.run_id, row.phase)].add((row.task_id, row.map_index))
    gaps = {}
    for run in succeeded:
        want = expected_tasks.get(run)
        if want is None:
            continue
        missing = sum(max(0, want - len(seen[(run, phase)])) for phase in ("start", "done"))
        if missing:
            gaps[run] = missing
    return gaps


def resumed_after(
    injected_at: dt.datetime,
    starts: Iterable[TaskStart],
    ledger: Iterable[LedgerRow],
    runs_triggered_after: set[str],
) -> float | None:
    """Seconds from the fault's injection to the first proof that scheduling works again, or None.

    Proof is a task that started after the injection and that a scheduler must have handled after
    it: queued after the injection, or belonging to a run triggered after it. (A task queued before
    the fault may start on a worker with no scheduler alive, so its start proves nothing.) A ledger
    row written after the injection by a run triggered after it counts too, so a task whose start
    time a later try overwrote is still seen.
    """
    proofs = [
        s.started_at
        for s in starts
        if s.started_at is not None
        and s.started_at >= injected_at
        and ((s.queued_at is not None and s.queued_at >= injected_at) or s.run_id in runs_triggered_after)
    ]
    proofs += [
        r.recorded_at for r in ledger if r.recorded_at >= injected_at and r.run_id in runs_triggered_after
    ]
    if not proofs:
        return None
    return (min(proofs) - injected_at).total_seconds()


def runs_triggered_after(triggers: Iterable[Trigger], moment: dt.datetime) -> set[str]:
    """Runs whose first trigger attempt was sent after the moment: they cannot exist before it."""
    return {t.run_id for t in triggers if t.first_attempt_at >= moment}


@dataclass(frozen=True)
class Targets:
    resume_scheduler: float = 10.0  # scheduler faults: the other scheduler keeps going (active-active)
    resume_other: float = 15.0  # any other single fault
    resume_combined: float = 30.0  # two hosts of different tiers at once
    db_writes: float = 15.0  # the longest time without an acknowledged commit, for every fault
    healthy: float = 180.0
    lost: int = 0
    duplicates: int = 0  # tasks whose work ran twice
    lost_commits: int = 0
    two_primaries: int = 0  # moments with two writers, for the database and for the broker

    def resume_for(self, fault: FaultResult) -> float:
        if fault.combined:
            return self.resume_combined
        return self.resume_scheduler if fault.scheduler_fault else self.resume_other


@dataclass
class FaultResult:
    """One phase of the run: a fault (or the baseline) and what was measured."""

    name: str
    description: str = ""
    target_host: str = ""  # hosts of a combined fault joined by "+"
    scheduler_fault: bool = False
    combined: bool = False
    injected_at: dt.datetime | None = None
    recovered_at: dt.datetime | None = None
    resumed_s: float | None = None
    healthy_s: float | None = None
    error: str = ""  # the fault could not be injected or recovered
    triggered: int = 0
    unanswered: int = 0  # load triggers the API never answered within their give-up time
    lost: dict[str, str] = field(default_factory=dict)
    work_twice: dict[TaskKey, list[LedgerRow]] = field(default_factory=dict)
    retried: int = 0
    ledger_gaps: dict[str, int] = field(default_factory=dict)
    # The invariants watched while the fault lasted (None / empty: not watched, e.g. the baseline).
    db_writes_s: float | None = None  # longest time without an acknowledged commit
    commits_acked: int = 0
    commits_lost: list[int] = field(default_factory=list)
    commit_errors: list[str] = field(default_factory=list)  # the probe's first distinct errors
    db_two_primaries: list[TwoWriters] = field(default_factory=list)
    broker_two_masters: list[TwoWriters] = field(default_factory=list)
    unwatched: list[str] = field(default_factory=list)  # why an invariant could not be checked
    idle_workers: list[str] = field(default_factory=list)  # workers back from the fault that ran nothing

    @property
    def is_fault(self) -> bool:
        return self.name != BASELINE

    @property
    def watched(self) -> bool:
        return self.is_fault and self.injected_at is not None


def fill_accounts(
    results: Sequence[FaultResult],
    accounts: Mapping[str, RunAccount],
    rows: Sequence[LedgerRow],
    expected_tasks: Mapping[str, int],
) -> None:
    """Attach to each phase its runs, lost runs, work done twice, retries and ledger gaps."""
    by_phase: dict[str, list[LedgerRow]] = defaultdict(list)
    for row in rows:
        by_phase[phase_of(row.run_id) or BASELINE].append(row)
    for res in results:
        acct = accounts.get(res.name, RunAccount())
        res.triggered = len(acct.triggered)
        res.unanswered = len(acct.unanswered)
        res.lost = dict(acct.lost)
        phase_rows = by_phase.get(res.name, [])
        res.work_twice = work_done_twice(phase_rows)
        res.retried = len(retried_tasks(phase_rows))
        succeeded = [r for r in acct.triggered if r not in acct.lost]
        res.ledger_gaps = ledger_gaps(phase_rows, succeeded, expected_tasks)


def _sample(items: Sequence[str], limit: int = 5) -> str:
    more = f" and {len(items) - limit} more" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


def _recovery_reasons(res: FaultResult, targets: Targets, speed: bool = True) -> list[str]:
    """Whether the cluster recovered at all and, with `speed`, within the targets."""
    reasons = []
    want = targets.resume_for(res)
    if res.resumed_s is None:
        reasons.append(f"{res.name}: scheduling never resumed (target {want:.0f} s)")
    elif speed and res.resumed_s > want:
        reasons.append(f"{res.name}: scheduling resumed after {res.resumed_s:.0f} s, target {want:.0f} s")
    if res.db_writes_s is None:
        reasons.append(f"{res.name}: DB writes not measured")
    elif speed and res.db_writes_s > targets.db_writes:
        reasons.append(
            f"{res.name}: DB writes back after {res.db_writes_s:.1f} s, target {targets.db_writes:.0f} s"
        )
    if res.healthy_s is None:
        reasons.append(f"{res.name}: the cluster did not become healthy again")
    elif speed and res.healthy_s > targets.healthy:
        reasons.append(
            f"{res.name}: healthy again after {res.healthy_s:.0f} s, target {targets.healthy:.0f} s"
        )
    return reasons


def _invariant_reasons(res: FaultResult, targets: Targets) -> list[str]:
    reasons = []
    if len(res.commits_lost) > targets.lost_commits:
        seqs = [str(s) for s in res.commits_lost]
        reasons.append(
            f"{res.name}: {len(res.commits_lost)} of {res.commits_acked} acknowledged commits lost "
            f"(target {targets.lost_commits}): seq {_sample(seqs)}"
        )
    for tier, moments in (
        ("database primaries", res.db_two_primaries),
        ("Redis masters", res.broker_two_masters),
    ):
        if len(moments) > targets.two_primaries:
            reasons.append(
                f"{res.name}: {len(moments)} moments with two {tier} accepting writes "
                f"(target {targets.two_primaries}): {_sample([m.describe() for m in moments], 3)}"
            )
    reasons += [f"{res.name}: invariant not checked: {why}" for why in res.unwatched]
    if res.idle_workers:
        reasons.append(f"{res.name}: {', '.join(res.idle_workers)} ran no task after coming back")
    return reasons


def failures(results: Sequence[FaultResult], targets: Targets, speed: bool = True) -> list[str]:
    """Why the run failed, one reason per line; empty when every target was met and every invariant
    held. Without `speed`, only the invariants and whether the cluster recovered at all: how fast it
    did is a benchmark's figure (`make chaos`), not a test's verdict."""
    reasons: list[str] = []
    for res in results:
        if res.error:
            reasons.append(f"{res.name}: {res.error}")
        if res.watched:
            reasons += _recovery_reasons(res, targets, speed)
            reasons += _invariant_reasons(res, targets)
        if res.unanswered:
            reasons.append(f"{res.name}: {res.unanswered} triggers got no answer from the API in time")
        if len(res.lost) > targets.lost:
            sample = _sample([f"{run} ({state})" for run, state in sorted(res.lost.items())])
            reasons.append(f"{res.name}: {len(res.lost)} runs lost (target {targets.lost}): {sample}")
        if len(res.work_twice) > targets.duplicates:
            sample = "; ".join(
                f"{key[1]} {key[2]}[{key[3]}] "
                + ", ".join(f"{r.phase} try {r.try_number} on {r.hostname}" for r in rows)
                for key, rows in sorted(res.work_twice.items())[:5]
            )
            reasons.append(
                f"{res.name}: {len(res.work_twice)} tasks did their work twice "
                f"(target {targets.duplicates}): {sample}"
            )
        if res.ledger_gaps:
            reasons.append(
                f"{res.name}: {len(res.ledger_gaps)} successful runs lack ledger rows: "
                f"{_sample(sorted(res.ledger_gaps))}"
            )
    return reasons


def warnings(results: Sequence[FaultResult]) -> list[str]:
    """Worth knowing, not a failure: what the commit probe met while the database was away."""
    return [
        f"{res.name}: the commit probe met: {'; '.join(res.commit_errors)}"
        for res in results
        if res.commit_errors
    ]


def _seconds(value: float | None, target: float | None = None, digits: int = 0) -> str:
    if value is None:
        return "never" if target is not None else "-"
    text = f"{value:.{digits}f} s"
    return f"{text} (target {target:.0f} s)" if target is not None else text


def render_table(results: Sequence[FaultResult], targets: Targets) -> str:
    """The markdown table: one row per phase."""
    lines = [
        "| fault | scheduling resumed after | DB writes back after | healthy again after | runs triggered "
        "| runs lost | acknowledged commits lost | work done twice "
        "| moments with two primaries (DB / broker) | tasks retried |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for res in results:
        commits = two = "-"
        if res.watched:
            resumed = _seconds(res.resumed_s, targets.resume_for(res))
            writes = _seconds(res.db_writes_s, targets.db_writes, 1) if res.db_writes_s is not None else "-"
            healthy = _seconds(res.healthy_s, targets.healthy)
            commits = f"{len(res.commits_lost)} of {res.commits_acked}"
            two = f"{len(res.db_two_primaries)} / {len(res.broker_two_masters)}"
        elif res.is_fault:
            resumed = writes = healthy = "not injected"
        else:
            resumed = writes = healthy = "-"
        name = res.name if not res.target_host else f"{res.name} ({res.target_host})"
        triggered = str(res.triggered) + (f" (+{res.unanswered} unanswered)" if res.unanswered else "")
        lines.append(
            f"| {name} | {resumed} | {writes} | {healthy} | {triggered} | {len(res.lost)} | {commits} "
            f"| {len(res.work_twice)} | {two} | {res.retried} |"
        )
    return "\n".join(lines)


def render_section(
    results: Sequence[FaultResult],
    targets: Targets,
    command: str,
    when: dt.datetime,
    interval: float,
    descriptions: Mapping[str, str],
    host_down: str = "kill",
) -> str:
    """The block between the chaos markers in docs/benchmarks.md."""
    reasons = failures(results, targets)
    notes = warnings(results)
    verdict = "all targets met" if not reasons else f"{len(reasons)} targets missed"
    lines = [
        BEGIN,
        f"Measured {when.astimezone(dt.UTC):%Y-%m-%d %H:%M} UTC by `{command}`.",
        "",
        f"Load: one `airflow_ha_chaos` run triggered every {interval:g} s through the API, several in",
        "flight at once. Faults are injected one at a time and undone; the cluster must then be whole",
        "again (API health, every container running at its address, every database and broker replica",
        "caught up, every service active, the Sentinels and etcd members agreeing, one VIP holder and the",
        "other load balancers keepalived BACKUP, a fresh run succeeding) before the next fault. A host",
        f"goes down by `docker {host_down}`. Result: {verdict}.",
        "",
        render_table(results, targets),
        "",
        "Scheduling resumed after: from the injection to the first task started that a scheduler handled",
        "after it. DB writes back after: the longest time without an acknowledged commit of a probe",
        "writing through the Airflow database address every 100 ms while the fault lasted (never",
        "cancelling a commit). Acknowledged commits lost: probe commits acknowledged but missing when",
        "read back afterwards. Work done twice: a task's work finished and then ran again (a later try",
        "started), from the ledger the tasks write before and after their work. Moments with two",
        "primaries: every database member (and Redis node) sampled about twice a second; two accepting",
        "writes at once (primary with its synchronous standby streaming; master with enough replicas).",
        "Healthy again after: from the moment the fault was undone. Runs triggered include the health",
        "probes; every load trigger must be answered. Targets: scheduling resumed "
        f"{targets.resume_other:.0f} s ({targets.resume_scheduler:.0f} s for scheduler faults, "
        f"{targets.resume_combined:.0f} s for combined ones), DB writes back {targets.db_writes:.0f} s, "
        f"runs lost {targets.lost}, commits lost {targets.lost_commits}, work done twice "
        f"{targets.duplicates}, moments with two primaries {targets.two_primaries}.",
        "",
    ]
    lines += [f"- `{name}`: {text}" for name, text in descriptions.items()]
    if reasons or notes:
        lines += ["", *(f"- missed: {r}" for r in reasons), *(f"- note: {n}" for n in notes)]
    lines.append(END)
    return "\n".join(lines)
