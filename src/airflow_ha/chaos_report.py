"""The chaos run's bookkeeping, with no I/O: run ids, the ledger analysis, the measurements, the
target checks and the table that goes into docs/benchmarks.md.

Everything here works on plain records (triggers, ledger rows, task-instance start times, final run
states) so the unit tests can feed it fake data; `airflow_ha.chaos` collects the real ones.
"""

from __future__ import annotations

import datetime as dt
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

BEGIN = "<!-- bench:chaos:begin -->"
END = "<!-- bench:chaos:end -->"
HEADING = "Chaos"
BASELINE = "baseline"
RUN_ID_PREFIX = "chaos"
# A run id: chaos__<session>__<phase>__<kind><seq>, e.g. chaos__20260101T120000__db-primary__load0042.
# Only characters of Airflow's default [core] allowed_run_id_pattern (^[A-Za-z0-9_.~:+-]+$).
_RUN_ID = re.compile(r"^chaos__(?P<session>[0-9A-Za-z]+)__(?P<phase>[a-z0-9-]+)__(?P<kind>load|probe)\d+$")

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
    """One completion a task wrote into the ledger table."""

    dag_id: str
    run_id: str
    task_id: str
    map_index: int
    try_number: int
    hostname: str
    recorded_at: dt.datetime

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
    A trigger never answered whose run does not exist is not a lost run, only an unanswered trigger.
    """
    accounts: dict[str, RunAccount] = defaultdict(RunAccount)
    seen: set[str] = set()
    for trig in triggers:
        if trig.run_id in seen:
            continue
        seen.add(trig.run_id)
        acct = accounts[trig.phase]
        state = final_states.get(trig.run_id)
        if not trig.answered and state is None:
            acct.unanswered.append(trig.run_id)
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


def duplicate_completions(rows: Iterable[LedgerRow]) -> dict[TryKey, list[LedgerRow]]:
    """Ledger keys (dag, run, task, map index, try) written more than once: a try completed twice."""
    by_key: dict[TryKey, list[LedgerRow]] = defaultdict(list)
    for row in rows:
        by_key[row.key].append(row)
    return {key: found for key, found in by_key.items() if len(found) > 1}


def retried_tasks(rows: Iterable[LedgerRow]) -> set[TaskKey]:
    """Tasks that completed on a try after the first: retried, which is expected after a worker
    died (its try timed out and a new try ran), and is not a duplicate. A try killed with its
    worker writes no row, so one completion under try 2 is a retry too."""
    return {row.task_key for row in rows if row.try_number > 1}


def ledger_gaps(
    rows: Iterable[LedgerRow], succeeded: Iterable[str], expected_tasks: Mapping[str, int]
) -> dict[str, int]:
    """Successful runs with fewer distinct completed tasks in the ledger than they have tasks
    (a completion the database forgot, e.g. over a failover): run id -> tasks missing."""
    done: dict[str, set[tuple[str, int]]] = defaultdict(set)
    for row in rows:
        done[row.run_id].add((row.task_id, row.map_index))
    gaps = {}
    for run in succeeded:
        want = expected_tasks.get(run)
        if want is not None and len(done[run]) < want:
            gaps[run] = want - len(done[run])
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
    resume_scheduler: float = 30.0  # faults where the other scheduler keeps going (active-active)
    resume_other: float = 60.0
    healthy: float = 180.0
    lost: int = 0
    duplicates: int = 0

    def resume_for(self, fault: FaultResult) -> float:
        return self.resume_scheduler if fault.scheduler_fault else self.resume_other


@dataclass
class FaultResult:
    """One phase of the run: a fault (or the baseline) and what was measured."""

    name: str
    description: str = ""
    target_host: str = ""
    scheduler_fault: bool = False
    injected_at: dt.datetime | None = None
    recovered_at: dt.datetime | None = None
    resumed_s: float | None = None
    healthy_s: float | None = None
    error: str = ""  # the fault could not be injected or recovered
    triggered: int = 0
    unanswered: int = 0
    lost: dict[str, str] = field(default_factory=dict)
    duplicates: dict[TryKey, list[LedgerRow]] = field(default_factory=dict)
    retried: int = 0
    ledger_gaps: dict[str, int] = field(default_factory=dict)

    @property
    def is_fault(self) -> bool:
        return self.name != BASELINE


def fill_accounts(
    results: Sequence[FaultResult],
    accounts: Mapping[str, RunAccount],
    rows: Sequence[LedgerRow],
    expected_tasks: Mapping[str, int],
) -> None:
    """Attach to each phase its runs, lost runs, duplicates, retries and ledger gaps."""
    by_phase: dict[str, list[LedgerRow]] = defaultdict(list)
    for row in rows:
        by_phase[phase_of(row.run_id) or BASELINE].append(row)
    for res in results:
        acct = accounts.get(res.name, RunAccount())
        res.triggered = len(acct.triggered)
        res.unanswered = len(acct.unanswered)
        res.lost = dict(acct.lost)
        phase_rows = by_phase.get(res.name, [])
        res.duplicates = duplicate_completions(phase_rows)
        res.retried = len(retried_tasks(phase_rows))
        succeeded = [r for r in acct.triggered if r not in acct.lost]
        res.ledger_gaps = ledger_gaps(phase_rows, succeeded, expected_tasks)


def failures(results: Sequence[FaultResult], targets: Targets) -> list[str]:
    """Why the run failed, one reason per line; empty when every target was met."""
    reasons: list[str] = []
    for res in results:
        if res.error:
            reasons.append(f"{res.name}: {res.error}")
        if res.is_fault and res.injected_at is not None:
            want = targets.resume_for(res)
            if res.resumed_s is None:
                reasons.append(f"{res.name}: scheduling never resumed (target {want:.0f} s)")
            elif res.resumed_s > want:
                reasons.append(
                    f"{res.name}: scheduling resumed after {res.resumed_s:.0f} s, target {want:.0f} s"
                )
            if res.healthy_s is None:
                reasons.append(f"{res.name}: the cluster did not become healthy again")
            elif res.healthy_s > targets.healthy:
                reasons.append(
                    f"{res.name}: healthy again after {res.healthy_s:.0f} s, target {targets.healthy:.0f} s"
                )
        if len(res.lost) > targets.lost:
            sample = ", ".join(f"{run} ({state})" for run, state in sorted(res.lost.items())[:5])
            more = f" and {len(res.lost) - 5} more" if len(res.lost) > 5 else ""
            reasons.append(f"{res.name}: {len(res.lost)} runs lost (target {targets.lost}): {sample}{more}")
        if len(res.duplicates) > targets.duplicates:
            sample = "; ".join(
                f"{key[1]} {key[2]}[{key[3]}] try {key[4]} on {', '.join(r.hostname for r in rows)}"
                for key, rows in sorted(res.duplicates.items())[:5]
            )
            reasons.append(
                f"{res.name}: {len(res.duplicates)} tasks completed twice "
                f"(target {targets.duplicates}): {sample}"
            )
    return reasons


def warnings(results: Sequence[FaultResult]) -> list[str]:
    """Worth knowing, not a failure: unanswered triggers, successful runs with ledger gaps."""
    notes = []
    for res in results:
        if res.unanswered:
            notes.append(f"{res.name}: {res.unanswered} triggers got no answer from the API (not runs lost)")
        if res.ledger_gaps:
            sample = ", ".join(sorted(res.ledger_gaps)[:5])
            notes.append(
                f"{res.name}: {len(res.ledger_gaps)} successful runs lack ledger rows "
                f"for some tasks: {sample}"
            )
    return notes


def _seconds(value: float | None, target: float | None = None) -> str:
    if value is None:
        return "never" if target is not None else "-"
    text = f"{value:.0f} s"
    return f"{text} (target {target:.0f} s)" if target is not None else text


def render_table(results: Sequence[FaultResult], targets: Targets) -> str:
    """The markdown table: one row per phase."""
    lines = [
        "| fault | scheduling resumed after | healthy again after | runs triggered | runs lost "
        "| tasks completed twice | tasks retried |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for res in results:
        if res.is_fault and res.injected_at is not None:
            resumed = _seconds(res.resumed_s, targets.resume_for(res))
            healthy = _seconds(res.healthy_s, targets.healthy)
        elif res.is_fault:
            resumed = healthy = "not injected"
        else:
            resumed = healthy = "-"
        name = res.name if not res.target_host else f"{res.name} ({res.target_host})"
        triggered = str(res.triggered) + (f" (+{res.unanswered} unanswered)" if res.unanswered else "")
        lines.append(
            f"| {name} | {resumed} | {healthy} | {triggered} | {len(res.lost)} | {len(res.duplicates)} "
            f"| {res.retried} |"
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
        f"Load: one `airflow_ha_chaos` run triggered every {interval:g} s through the API. Faults are",
        "injected one at a time and undone; the cluster must then be healthy again (API health, every",
        "container running at its address, every database and broker replica caught up, a fresh run",
        "succeeding) before the next fault. A host goes",
        f"down by `docker {host_down}`. Result: {verdict}.",
        "",
        render_table(results, targets),
        "",
        "Scheduling resumed after: from the injection to the first task started that a scheduler handled",
        "after it. Healthy again after: from the moment the fault was undone. Runs triggered include the",
        "health probes; retried tasks (completed on a try after the first) are expected after a worker",
        "is lost (a new try, not the same try twice). Targets: runs lost "
        f"{targets.lost}, tasks completed twice {targets.duplicates}.",
        "",
    ]
    lines += [f"- `{name}`: {text}" for name, text in descriptions.items()]
    if reasons or notes:
        lines += ["", *(f"- missed: {r}" for r in reasons), *(f"- note: {n}" for n in notes)]
    lines.append(END)
    return "\n".join(lines)
