"""The chaos run's logic with fake data: ledger analysis, measurements, targets, rendering, fault
selection and the fault actions. No containers, no network (`make chaos` is the real run)."""

from __future__ import annotations

import datetime as dt
import io
import json
import re
import socket
import threading
import time
from typing import Any, cast
from urllib.parse import unquote

import pytest

from airflow_ha import chaos, chaos_faults, chaos_invariants, chaos_lab, chaos_probes
from airflow_ha.bench import END as DEPLOY_END
from airflow_ha.bench import Run, render
from airflow_ha.chaos_faults import FAULTS, ChaosError, applicable, select_faults
from airflow_ha.chaos_invariants import Commit, RoleSample, TwoWriters
from airflow_ha.chaos_probes import Watch
from airflow_ha.chaos_report import (
    BASELINE,
    BEGIN,
    END,
    FaultResult,
    LedgerRow,
    RunAccount,
    Targets,
    TaskStart,
    Trigger,
    account_runs,
    failures,
    fill_accounts,
    ledger_gaps,
    phase_of,
    render_section,
    render_table,
    resumed_after,
    retried_tasks,
    run_id,
    runs_triggered_after,
    session_prefix,
    work_done_twice,
)
from airflow_ha.docker_hosts import HostSpec
from airflow_ha.lab import Lab

from helpers import REPO

T0 = dt.datetime(2026, 3, 1, 12, 0, 0, tzinfo=dt.UTC)
SESSION = "20260301T115500"
DAG = "airflow_ha_chaos"


def at(seconds: float) -> dt.datetime:
    return T0 + dt.timedelta(seconds=seconds)


def rid(phase: str, seq: int, kind: str = "load") -> str:
    return run_id(SESSION, phase, kind, seq)


def row(
    run: str,
    task: str = "work",
    map_index: int = 0,
    try_number: int = 1,
    host: str = "lab-worker1",
    t=0.0,
    phase: str = "done",
    attempt: str = "",
):
    return LedgerRow(DAG, run, task, map_index, try_number, host, at(t), phase, attempt)


def execution(run: str, task: str, map_index: int, try_number: int, attempt: str, done: bool = True, **kw):
    """The ledger rows of one execution of a task: its start row, and its done row if it finished."""
    rows = [row(run, task, map_index, try_number, phase="start", attempt=attempt, **kw)]
    return rows + (
        [row(run, task, map_index, try_number, phase="done", attempt=attempt, **kw)] if done else []
    )


def trig(run: str, t: float = 0.0, outcome: str = "created") -> Trigger:
    return Trigger(run, phase_of(run) or BASELINE, at(t), outcome)


LAB = Lab(
    inventory=REPO / "inventories" / "lab",
    image="img",
    network="airflow-ha-lab",
    subnet="172.30.10.0/24",
    hosts=(
        HostSpec("lab-infra1", "172.30.10.11"),
        HostSpec("lab-infra2", "172.30.10.12"),
        HostSpec("lab-infra3", "172.30.10.13"),
        HostSpec("lab-airflow1", "172.30.10.21"),
        HostSpec("lab-airflow2", "172.30.10.22"),
        HostSpec("lab-worker1", "172.30.10.31"),
        HostSpec("lab-worker2", "172.30.10.32"),
    ),
    groups={
        "airflow_metadata_db": ["lab-infra1", "lab-infra2", "lab-infra3"],
        "airflow_etcd": ["lab-infra1", "lab-infra2", "lab-infra3"],
        "airflow_broker": ["lab-infra1", "lab-infra2", "lab-infra3"],
        "airflow_loadbalancer": ["lab-infra1", "lab-infra2"],
        "airflow_webserver": ["lab-airflow1", "lab-airflow2"],
        "airflow_scheduler": ["lab-airflow1", "lab-airflow2"],
        "airflow_worker": ["lab-worker1", "lab-worker2"],
    },
)


# -- run ids ------------------------------------------------------------------------------------------
def test_run_ids_carry_their_phase_and_match_airflows_run_id_pattern():
    run = rid("db-primary", 42)
    assert run == "chaos__20260301T115500__db-primary__load0042"
    assert re.fullmatch(r"[A-Za-z0-9_.~:+-]+", run)
    assert phase_of(run) == "db-primary"
    assert phase_of(rid("worker-network", 3, "probe")) == "worker-network"
    assert phase_of("manual__2026-03-01T12:00:00+00:00") is None
    assert run.startswith(session_prefix(SESSION))


# -- ledger analysis ----------------------------------------------------------------------------------
def test_work_done_and_then_restarted_counts_as_work_done_twice():
    run = rid("worker-crash", 1)
    # try 1 finished its work, its success was never reported, try 2 started the work again
    rows = execution(run, "work", 0, 1, "a1") + execution(run, "work", 0, 2, "a2", done=False)
    assert list(work_done_twice(rows)) == [(DAG, run, "work", 0)]
    assert retried_tasks(rows) == {(DAG, run, "work", 0)}


def test_a_retry_of_a_try_that_never_finished_its_work_is_not_work_done_twice():
    run = rid("worker-crash", 1)
    rows = execution(run, "work", 0, 1, "a1", done=False) + execution(run, "work", 0, 2, "a2")
    rows += execution(run, "begin", -1, 1, "b1")
    assert work_done_twice(rows) == {}
    assert retried_tasks(rows) == {(DAG, run, "work", 0)}
    # a retried insert of the same execution (same attempt id) is one execution
    assert work_done_twice(rows + execution(run, "begin", -1, 1, "b1")) == {}


def test_the_same_try_run_twice_is_work_done_twice():
    run = rid("worker-partition", 3)
    once = execution(run, "work", 1, 1, "x1", host="lab-worker1")
    again = execution(run, "work", 1, 1, "x2", done=False, host="lab-worker2")
    twice = work_done_twice(once + again)
    assert list(twice) == [(DAG, run, "work", 1)]
    assert [r.hostname for r in twice[(DAG, run, "work", 1)]] == ["lab-worker1"] * 2 + ["lab-worker2"]
    # rows from before the start rows (no attempt id): two completions of one try still count
    legacy = [row(run, "end", -1, host="lab-worker1"), row(run, "end", -1, host="lab-worker2")]
    assert list(work_done_twice(legacy)) == [(DAG, run, "end", -1)]


def test_runs_not_successful_at_the_end_are_lost_and_unanswered_triggers_are_not():
    ok, failed, running, missing = (
        rid("db-primary", 1),
        rid("db-primary", 2),
        rid("db-primary", 3),
        rid("db-primary", 4),
    )
    never, late = rid("db-primary", 5), rid("db-primary", 6)
    triggers = [
        trig(ok),
        trig(failed),
        trig(running, outcome="exists"),  # 409 on a retry: an earlier attempt created it
        trig(missing),  # the API said created, the database does not have it
        trig(never, outcome="unanswered"),
        trig(late, outcome="unanswered"),  # no answer, but the run was created
    ]
    states = {ok: "success", failed: "failed", running: "running", late: "success"}
    acct = account_runs(triggers, states)["db-primary"]
    assert sorted(acct.triggered) == sorted([ok, failed, running, missing, late])
    # every trigger the API never answered, even one whose run exists: the API was away too long
    assert acct.unanswered == [never, late]
    assert acct.lost == {failed: "failed", running: "running", missing: "missing"}
    # a health probe the API did not answer is only retried with another probe
    probe = rid("db-primary", 7, "probe")
    assert account_runs([trig(probe, outcome="unanswered")], {})["db-primary"].unanswered == []


def test_runs_only_in_the_database_are_counted_in_the_phase_of_their_id():
    base, probe = rid(BASELINE, 1), rid("api-vip", 1, "probe")
    accounts = account_runs([], {base: "success", probe: "failed"})
    assert accounts[BASELINE].triggered == [base]
    assert accounts["api-vip"].lost == {probe: "failed"}


def test_ledger_gaps_are_successful_runs_missing_start_or_done_rows():
    full, short, old = rid(BASELINE, 1), rid(BASELINE, 2), rid(BASELINE, 3)
    rows = [
        r
        for t, m in (("begin", -1), ("work", 0), ("work", 1), ("end", -1))
        for r in execution(full, t, m, 1, t)
    ]
    rows += execution(short, "begin", -1, 1, "s1") + execution(short, "work", 0, 1, "s2")
    rows += execution(short, "work", 1, 1, "s3", done=False) + execution(
        short, "work", 1, 2, "s4", done=False
    )
    rows += [row(old, t, m) for t, m in (("begin", -1), ("work", 0), ("end", -1))]  # a DAG without start rows
    # short: `end` has neither row, work[1] never finished: 1 start row and 2 done rows missing
    assert ledger_gaps(rows, [full, short, old], {full: 4, short: 4, old: 3}) == {short: 3, old: 3}


# -- measurements -------------------------------------------------------------------------------------
def start(run: str, queued: float | None, started: float | None) -> TaskStart:
    return TaskStart(
        run, "work", 0, 1, at(queued) if queued is not None else None, at(started) if started else None
    )


def test_resumed_after_counts_only_work_a_scheduler_handled_after_the_fault():
    before, after = rid("scheduler-host", 1), rid("scheduler-host", 2)
    injected = at(100)
    starts = [
        start(before, queued=95, started=101),  # queued before: a worker could start it alone
        start(before, queued=None, started=102),
        start(after, queued=None, started=119),  # its run was triggered after the fault
        start(before, queued=110, started=112),  # queued after the fault (another scheduler did it)
    ]
    assert resumed_after(injected, starts, [], {after}) == 12.0
    assert resumed_after(injected, starts[:2], [], {after}) is None
    assert resumed_after(injected, starts[:3], [], {after}) == 19.0


def test_resumed_after_uses_ledger_rows_of_runs_triggered_after_the_fault():
    before, after = rid("db-primary", 1), rid("db-primary", 2)
    ledger = [row(before, t=105), row(after, t=99), row(after, t=140)]
    assert resumed_after(at(100), [], ledger, {after}) == 40.0
    assert resumed_after(at(100), [start(after, None, 130)], ledger, {after}) == 30.0


def test_runs_triggered_after_uses_the_first_attempt():
    triggers = [
        trig(rid("x", 1), t=99.9),
        trig(rid("x", 2), t=100),
        trig(rid("x", 3), t=130, outcome="unanswered"),
    ]
    assert runs_triggered_after(triggers, at(100)) == {rid("x", 2), rid("x", 3)}


# -- targets and rendering ----------------------------------------------------------------------------
def result(
    name: str, resumed: float | None, healthy: float | None, scheduler: bool = False, **kw
) -> FaultResult:
    kw.setdefault("db_writes_s", 0.2)
    kw.setdefault("commits_acked", 600)
    return FaultResult(
        name,
        target_host="lab-airflow1",
        scheduler_fault=scheduler,
        injected_at=T0,
        resumed_s=resumed,
        healthy_s=healthy,
        **kw,
    )


def test_targets_depend_on_the_fault_and_every_miss_has_a_reason():
    targets = Targets()
    ok = [
        FaultResult(BASELINE),
        result("scheduler-kill", 4, 20, True),
        result("db-primary-crash", 15, 90, db_writes_s=14.9),
        result("db-primary-freeze+worker-partition", 29, 90, combined=True),
    ]
    assert failures(ok, targets) == []
    bad = [
        result("scheduler-host-crash", 11, 20, True),
        result("broker-master-crash", None, None, db_writes_s=None),
        result("vip-holder-crash", 10, 181, lost={rid("vip-holder-crash", 3): "failed"}, db_writes_s=15.5),
        result("db-primary-freeze+worker-partition", 31, 90, combined=True),
        FaultResult("worker-crash", error="no target: no worker container is running"),
    ]
    reasons = failures(bad, targets)
    assert reasons == [
        "scheduler-host-crash: scheduling resumed after 11 s, target 10 s",
        "broker-master-crash: scheduling never resumed (target 15 s)",
        "broker-master-crash: DB writes not measured",
        "broker-master-crash: the cluster did not become healthy again",
        "vip-holder-crash: DB writes back after 15.5 s, target 15 s",
        "vip-holder-crash: healthy again after 181 s, target 180 s",
        f"vip-holder-crash: 1 runs lost (target 0): {rid('vip-holder-crash', 3)} (failed)",
        "db-primary-freeze+worker-partition: scheduling resumed after 31 s, target 30 s",
        "worker-crash: no target: no worker container is running",
    ]


def test_work_done_twice_fails_with_the_rows_of_the_task():
    run = rid("worker-partition", 7)
    rows = execution(run, "work", 1, 1, "w1", host="lab-worker1")
    rows += execution(run, "work", 1, 2, "w2", done=False, host="lab-worker2")
    res = result("worker-partition", 3, 40, work_twice=work_done_twice(rows))
    assert failures([res], Targets()) == [
        f"worker-partition: 1 tasks did their work twice (target 0): {run} work[1] start try 1 on "
        "lab-worker1, done try 1 on lab-worker1, start try 2 on lab-worker2"
    ]
    assert failures([res], Targets(duplicates=1)) == []


def test_an_unanswered_trigger_and_a_ledger_gap_are_failures():
    res = result("db-primary-crash", 5, 40, unanswered=2, ledger_gaps={rid("db-primary-crash", 4): 2})
    assert failures([res], Targets()) == [
        "db-primary-crash: 2 triggers got no answer from the API in time",
        f"db-primary-crash: 1 successful runs lack ledger rows: {rid('db-primary-crash', 4)}",
    ]


def test_lost_commits_two_writers_and_unwatched_invariants_are_failures():
    moment = TwoWriters(at(10), at(11.5), ("lab-infra1", "lab-infra2"))
    res = result(
        "db-patroni-freeze",
        5,
        40,
        commits_lost=[17, 18],
        db_two_primaries=[moment],
        broker_two_masters=[moment, moment],
        unwatched=["no Redis samples from lab-infra3"],
        idle_workers=["lab-worker2"],
    )
    assert failures([res], Targets()) == [
        "db-patroni-freeze: 2 of 600 acknowledged commits lost (target 0): seq 17, 18",
        "db-patroni-freeze: 1 moments with two database primaries accepting writes (target 0): "
        "lab-infra1 and lab-infra2 at 12:00:10.000 for 1.5 s",
        "db-patroni-freeze: 2 moments with two Redis masters accepting writes (target 0): "
        "lab-infra1 and lab-infra2 at 12:00:10.000 for 1.5 s, "
        "lab-infra1 and lab-infra2 at 12:00:10.000 for 1.5 s",
        "db-patroni-freeze: invariant not checked: no Redis samples from lab-infra3",
        "db-patroni-freeze: lab-worker2 ran no task after coming back",
    ]


def test_fill_accounts_attributes_runs_and_ledger_rows_to_their_phase():
    base, kill = rid(BASELINE, 1), rid("worker-crash", 2)
    rows = execution(base, "begin", -1, 1, "b")
    rows += execution(kill, "work", 0, 1, "k1", done=False) + execution(kill, "work", 0, 2, "k2")
    accounts = {
        BASELINE: RunAccount(triggered=[base]),
        "worker-crash": RunAccount(triggered=[kill], unanswered=["x"]),
    }
    results = [FaultResult(BASELINE), result("worker-crash", 2, 30)]
    fill_accounts(results, accounts, rows, {base: 1, kill: 4})
    assert (results[0].triggered, results[0].retried, results[0].ledger_gaps) == (1, 0, {})
    assert (results[1].triggered, results[1].unanswered, results[1].retried) == (1, 1, 1)
    assert results[1].ledger_gaps == {kill: 6}
    assert results[1].work_twice == {}


def test_table_has_one_row_per_phase():
    results = [
        FaultResult(BASELINE, triggered=10),
        result("scheduler-kill", 2.4, 12.6, True, triggered=20, unanswered=1, retried=0),
        result("worker-crash", 5, 95, triggered=40, retried=3, commits_lost=[4]),
        result(
            "db-patroni-freeze", 12, 60, db_writes_s=11.26, db_two_primaries=[TwoWriters(T0, T0, ("a", "b"))]
        ),
        FaultResult("db-primary-crash", target_host="lab-infra1", error="injection failed: boom"),
    ]
    table = render_table(results, Targets()).splitlines()
    assert table[0].startswith(
        "| fault | scheduling resumed after | DB writes back after | healthy again after | runs triggered "
    )
    assert table[2] == "| baseline | - | - | - | 10 | 0 | - | 0 | - | 0 |"
    assert table[3] == (
        "| scheduler-kill (lab-airflow1) | 2 s (target 10 s) | 0.2 s (target 15 s) | 13 s (target 180 s) "
        "| 20 (+1 unanswered) | 0 | 0 of 600 | 0 | 0 / 0 | 0 |"
    )
    assert table[4] == (
        "| worker-crash (lab-airflow1) | 5 s (target 15 s) | 0.2 s (target 15 s) | 95 s (target 180 s) "
        "| 40 | 0 | 1 of 600 | 0 | 0 / 0 | 3 |"
    )
    assert "| 11.3 s (target 15 s) |" in table[5]
    assert table[5].endswith("| 1 / 0 | 0 |")
    assert table[6] == (
        "| db-primary-crash (lab-infra1) | not injected | not injected | not injected "
        "| 0 | 0 | - | 0 | - | 0 |"
    )


def test_section_is_written_between_its_markers_and_keeps_the_deploy_section(tmp_path):
    doc = tmp_path / "benchmarks.md"
    doc.write_text("# Benchmarks\n\nintro\n")
    run = Run(40.0, {"h": 0}, [])
    chaos.bench.write_section(doc, render(10.0, run, [run]))
    command = "python -m airflow_ha.chaos --inventory inventories/lab --write docs/benchmarks.md"
    first = render_section(
        [result("scheduler-kill", 2, 10, True)], Targets(), command, T0, 3, {"scheduler-kill": "kill"}
    )
    chaos.write_section(doc, first)
    text = doc.read_text()
    assert "## Chaos\n\n" + BEGIN in text
    assert f"`{command}`" in text
    assert "Measured 2026-03-01 12:00 UTC" in text
    assert "all targets met" in text
    second = render_section([result("scheduler-kill", 45, 10, True)], Targets(), command, T0, 3, {})
    chaos.write_section(doc, second)
    text = doc.read_text()
    assert text.count(BEGIN) == 1
    assert text.count(END) == 1
    assert text.count(DEPLOY_END) == 1
    assert "intro" in text
    assert "| 45 s (target 10 s) |" in text
    assert "- missed: scheduler-kill: scheduling resumed after 45 s, target 10 s" in text


# -- fault selection ----------------------------------------------------------------------------------
def test_every_fault_of_the_brief_is_in_the_catalogue():
    assert [f.name for f in FAULTS] == [
        "scheduler-kill",
        "scheduler-host-crash",
        "scheduler-host-freeze",
        "scheduler-partition",
        "api-server-freeze",
        "api-server-partition",
        "worker-crash",
        "worker-freeze",
        "worker-partition",
        "vip-holder-crash",
        "vip-holder-freeze",
        "vip-holder-partition",
        "keepalived-freeze",
        "db-primary-crash",
        "db-primary-freeze",
        "db-primary-partition",
        "db-sync-standby-freeze",
        "db-patroni-freeze",
        "etcd-leader-freeze",
        "etcd-leader-partition",
        "etcd-process-freeze",
        "broker-master-crash",
        "broker-master-freeze",
        "broker-master-partition",
        "broker-redis-freeze",
        "db-primary-freeze+worker-partition",
        "broker-master-crash+vip-holder-freeze",
    ]
    assert {f.name for f in FAULTS if f.scheduler_fault} == {
        "scheduler-kill",
        "scheduler-host-crash",
        "scheduler-host-freeze",
        "scheduler-partition",
    }
    assert all(f.hold >= 60 for f in FAULTS)
    assert [f.name for f in FAULTS if f.combined] == [
        "db-primary-freeze+worker-partition",
        "broker-master-crash+vip-holder-freeze",
    ]
    assert set(chaos_faults.CI_FAULTS) <= {f.name for f in FAULTS}


def test_faults_are_selected_by_name_in_order_without_repeats():
    assert [f.name for f in select_faults(None)] == [f.name for f in FAULTS]
    assert [f.name for f in select_faults("db-primary-crash, scheduler-kill,db-primary-crash")] == [
        "db-primary-crash",
        "scheduler-kill",
    ]
    assert [f.name for f in select_faults(["worker-partition", "broker-master-crash"])] == [
        "worker-partition",
        "broker-master-crash",
    ]


def test_former_fault_names_still_work():
    assert [f.name for f in select_faults("db-primary,worker-network,api-vip,worker-host")] == [
        "db-primary-crash",
        "worker-partition",
        "vip-holder-crash",
        "worker-crash",
    ]


def test_an_unknown_fault_name_is_a_clear_error():
    with pytest.raises(
        ChaosError, match=r"unknown faults nope, db; known: scheduler-kill, scheduler-host-crash"
    ):
        select_faults("nope,db-primary,db")


def test_the_cli_refuses_an_unknown_fault_before_touching_the_lab(capsys, monkeypatch):
    monkeypatch.setattr(chaos.labmod, "load_lab", lambda *_: pytest.fail("the lab was read"))
    with pytest.raises(SystemExit) as exc:
        chaos.main(["--faults", "scheduler-kil"])
    assert exc.value.code == 2
    assert "unknown fault scheduler-kil; known: scheduler-kill" in capsys.readouterr().err


def test_the_cli_refuses_to_run_without_a_lab(monkeypatch):
    monkeypatch.setattr(chaos.labmod, "load_lab", lambda *_: LAB)
    monkeypatch.setattr(chaos.labmod, "lab_exists", lambda _lab: False)
    with pytest.raises(SystemExit, match=r"no lab is running for .*make lab"):
        chaos.main(["--inventory", "inventories/lab"])


def test_list_faults_needs_no_lab(capsys):
    assert chaos.main(["--list-faults"]) == 0
    out = capsys.readouterr().out
    assert "worker-partition" in out
    assert "broker-master-crash+vip-holder-freeze" in out


def test_faults_without_target_hosts_are_skipped_or_refused():
    lab = Lab(LAB.inventory, "img", "n", "s", LAB.hosts, {**LAB.groups, "airflow_loadbalancer": []})
    faults, notes = applicable(select_faults(None), lab, explicit=False)
    names = [f.name for f in faults]
    assert "vip-holder-crash" not in names
    assert "broker-master-crash+vip-holder-freeze" not in names
    assert "db-primary-freeze+worker-partition" in names
    assert notes[0] == "vip-holder-crash skipped: the inventory has no host in airflow_loadbalancer"
    assert len(notes) == 5
    with pytest.raises(ChaosError, match="fault vip-holder-crash cannot run on this lab"):
        applicable(select_faults("api-vip"), lab, explicit=True)


# -- fault actions (a fake Ops) ------------------------------------------------------------------------
class FakeOps:
    def __init__(self):
        self.lab = LAB
        self.calls: list[tuple[str, ...]] = []
        self.broker = "lab-infra1"

    def log(self, message):
        self.calls.append(("log", message))

    def exec(self, host, *command):
        self.calls.append(("exec", host, *command))
        return "4242\n"

    def host_down(self, host):
        self.calls.append(("down", host))

    def host_up(self, host):
        self.calls.append(("up", host))

    def pause(self, host):
        self.calls.append(("pause", host))

    def unpause(self, host):
        self.calls.append(("unpause", host))

    def disconnect(self, host):
        self.calls.append(("disconnect", host))

    def connect(self, host):
        self.calls.append(("connect", host))

    def active_scheduler_host(self, avoid=()):
        return "lab-airflow1"

    def api_server_host(self, avoid=()):
        return "lab-airflow2"

    def busy_worker(self, avoid=()):
        return "lab-worker2"

    def vip_holder(self, avoid=()):
        if "lab-infra2" in avoid:
            raise ChaosError("the VIP holder lab-infra2 is already a target of this fault")
        return "lab-infra2"

    def db_primary(self, avoid=()):
        return "lab-infra2"

    def db_sync_standby(self, avoid=()):
        return "lab-infra3"

    def broker_master(self, avoid=()):
        if self.broker in avoid:
            self.calls.append(("sentinel failover", self.broker))
            self.broker = next(h for h in LAB.groups["airflow_broker"] if h not in avoid)
        return self.broker

    def etcd_leader(self, avoid=()):
        return "lab-infra3"


@pytest.mark.parametrize(
    ("name", "target", "injected", "recovered"),
    [
        ("scheduler-host-crash", "lab-airflow1", ("down", "lab-airflow1"), ("up", "lab-airflow1")),
        ("scheduler-host-freeze", "lab-airflow1", ("pause", "lab-airflow1"), ("unpause", "lab-airflow1")),
        ("scheduler-partition", "lab-airflow1", ("disconnect", "lab-airflow1"), ("connect", "lab-airflow1")),
        ("api-server-partition", "lab-airflow2", ("disconnect", "lab-airflow2"), ("connect", "lab-airflow2")),
        ("worker-crash", "lab-worker2", ("down", "lab-worker2"), ("up", "lab-worker2")),
        ("worker-freeze", "lab-worker2", ("pause", "lab-worker2"), ("unpause", "lab-worker2")),
        ("worker-partition", "lab-worker2", ("disconnect", "lab-worker2"), ("connect", "lab-worker2")),
        ("vip-holder-crash", "lab-infra2", ("down", "lab-infra2"), ("up", "lab-infra2")),
        ("vip-holder-freeze", "lab-infra2", ("pause", "lab-infra2"), ("unpause", "lab-infra2")),
        ("vip-holder-partition", "lab-infra2", ("disconnect", "lab-infra2"), ("connect", "lab-infra2")),
        ("db-primary-crash", "lab-infra2", ("down", "lab-infra2"), ("up", "lab-infra2")),
        ("db-primary-freeze", "lab-infra2", ("pause", "lab-infra2"), ("unpause", "lab-infra2")),
        ("db-primary-partition", "lab-infra2", ("disconnect", "lab-infra2"), ("connect", "lab-infra2")),
        ("etcd-leader-freeze", "lab-infra3", ("pause", "lab-infra3"), ("unpause", "lab-infra3")),
        ("etcd-leader-partition", "lab-infra3", ("disconnect", "lab-infra3"), ("connect", "lab-infra3")),
        ("broker-master-crash", "lab-infra1", ("down", "lab-infra1"), ("up", "lab-infra1")),
        ("broker-master-freeze", "lab-infra1", ("pause", "lab-infra1"), ("unpause", "lab-infra1")),
        ("broker-master-partition", "lab-infra1", ("disconnect", "lab-infra1"), ("connect", "lab-infra1")),
    ],
)
def test_faults_break_and_restore_the_host_they_picked(name, target, injected, recovered):
    (fault,) = select_faults(name)
    ops = FakeOps()
    [(part, host)] = fault.aim(ops)
    assert host == target
    part.inject(ops, host)
    part.recover(ops, host)
    assert [c for c in ops.calls if c[0] != "log"] == [injected, recovered]


@pytest.mark.parametrize(
    ("name", "host", "unit", "only_main"),
    [
        ("api-server-freeze", "lab-airflow2", "airflow-api-server", False),
        ("keepalived-freeze", "lab-infra2", "keepalived", False),
        ("db-patroni-freeze", "lab-infra2", "patroni", True),
        ("etcd-process-freeze", "lab-infra3", "etcd", False),
        ("broker-redis-freeze", "lab-infra1", "redis-server", False),
    ],
)
def test_service_freezes_stop_the_unit_and_continue_it(name, host, unit, only_main):
    (fault,) = select_faults(name)
    ops = FakeOps()
    [(part, picked)] = fault.aim(ops)
    assert picked == host
    part.inject(ops, host)
    part.recover(ops, host)
    execs = [c for c in ops.calls if c[0] == "exec"]
    assert execs == [
        ("exec", host, "sh", "-c", chaos_faults.freeze_script(unit, "main" if only_main else "all")),
        ("exec", host, "sh", "-c", f"systemctl kill --signal=SIGCONT {unit}"),
    ]
    script = execs[0][-1]
    assert f"systemctl show -p MainPID --value {unit}" in script
    if only_main:  # Patroni only: its PostgreSQL (same unit) must keep running as primary
        assert 'kill -STOP "$pid"' in script
        assert "systemctl kill" not in script
    else:
        assert f"systemctl kill --signal=SIGSTOP {unit}" in script
    assert ("log", f"{host}: SIGCONT to {unit}") in ops.calls


def test_a_combined_fault_hits_two_different_hosts_and_moves_a_role_that_collides():
    (fault,) = select_faults("broker-master-crash+vip-holder-freeze")
    ops = FakeOps()
    ops.broker = "lab-infra2"  # the Redis master is also the VIP holder
    aimed = fault.aim(ops)
    assert [(part.name, host) for part, host in aimed] == [
        ("broker-master-crash", "lab-infra1"),
        ("vip-holder-freeze", "lab-infra2"),
    ]
    assert ("sentinel failover", "lab-infra2") in ops.calls
    (other,) = select_faults("db-primary-freeze+worker-partition")
    assert [(p.name, h) for p, h in other.aim(FakeOps())] == [
        ("db-primary-freeze", "lab-infra2"),
        ("worker-partition", "lab-worker2"),
    ]


def test_a_combined_fault_refuses_one_host_for_both_parts():
    both = chaos_faults.combine(
        chaos_faults.host_fault("db-primary", "freeze"), chaos_faults.host_fault("vip-holder", "crash")
    )
    with pytest.raises(ChaosError, match="VIP holder lab-infra2 is already a target"):
        both.aim(FakeOps())


def test_scheduler_kill_sends_sigkill_to_the_units_main_pid():
    (fault,) = select_faults("scheduler-kill")
    ops = FakeOps()
    [(part, host)] = fault.aim(ops)
    part.inject(ops, host)
    part.recover(ops, host)
    execs = [c for c in ops.calls if c[0] == "exec"]
    assert execs == [("exec", "lab-airflow1", "sh", "-c", chaos_faults.KILL_SCHEDULER)]
    assert "systemctl show -p MainPID --value airflow-scheduler" in chaos_faults.KILL_SCHEDULER
    assert 'kill -9 "$pid"' in chaos_faults.KILL_SCHEDULER
    assert ("log", "lab-airflow1: kill -9 of airflow-scheduler's main process (pid 4242)") in ops.calls


# -- the load generator's triggers ---------------------------------------------------------------------
class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now

    def sleep(self, seconds):
        self.now += seconds


def scripted(*answers):
    calls = []

    def post(run, conf):
        calls.append(run)
        return answers[len(calls) - 1]

    return post, calls


def test_trigger_retries_through_an_api_failover_with_the_same_run_id():
    clock = Clock()
    post, calls = scripted((None, "ConnectionError"), (503, "down"), (409, "exists"))
    out = chaos.trigger_with_retry(
        post, "r1", "api-vip", {}, 60, now=lambda: T0, clock=clock, sleep=clock.sleep
    )
    assert calls == ["r1", "r1", "r1"]
    assert (out.outcome, out.attempts, out.answered, out.first_attempt_at) == ("exists", 3, True, T0)


def test_a_trigger_never_answered_is_recorded_as_such():
    clock = Clock()
    post, calls = scripted(*[(None, "timed out")] * 100)
    out = chaos.trigger_with_retry(
        post, "r2", "db-primary", {}, 10, now=lambda: T0, clock=clock, sleep=clock.sleep
    )
    assert (out.outcome, out.answered, out.error) == ("unanswered", False, "timed out")
    assert len(calls) == 11  # one a second, from 0 s to 10 s


def test_a_rejected_trigger_is_not_retried():
    clock = Clock()
    post, calls = scripted((422, "bad conf"))
    out = chaos.trigger_with_retry(
        post, "r3", BASELINE, {}, 60, now=lambda: T0, clock=clock, sleep=clock.sleep
    )
    assert (out.outcome, out.error, len(calls)) == ("unanswered", "HTTP 422: bad conf", 1)


def test_the_load_keeps_starting_triggers_while_earlier_ones_hang():
    release = threading.Event()
    started: list[str] = []

    def slow_trigger(post, run, phase, conf, give_up_after):
        started.append(run)
        release.wait(5)  # an API that does not answer
        return Trigger(run, phase, T0, "unanswered", 3, "timed out")

    load = chaos.LoadGenerator(
        lambda r, c: (None, ""), SESSION, 0.02, {}, 60, workers=8, trigger=slow_trigger
    )
    load.start()
    deadline = time.monotonic() + 5
    while len(started) < 4 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(started) >= 4, "a hanging trigger held the load back"
    release.set()
    load.stop()
    triggers = load.snapshot()
    assert len(triggers) == len(started)
    assert not any(t.answered for t in triggers)
    # and every one of them is a failure of the phase it was triggered in
    acct = account_runs(triggers, {})
    res = FaultResult(BASELINE)
    fill_accounts([res], acct, [], {})
    assert failures([res], Targets()) == [
        f"baseline: {len(triggers)} triggers got no answer from the API in time"
    ]


def test_the_load_pool_covers_the_give_up_time():
    assert chaos.pool_size(3.0, 60.0) == 24
    assert chaos.pool_size(0.05, 60.0) == 64
    assert chaos.pool_size(30.0, 1.0) == 3


# -- what the cluster answers ---------------------------------------------------------------------------
def test_sql_alchemy_conn_from_airflow_cfg_is_parsed():
    line = "sql_alchemy_conn = postgresql+psycopg2://airflow:p%%40ss%%2Fw@172.30.10.10:5000/airflow\n"
    db = chaos_lab.parse_sql_alchemy_conn(line)
    assert (db.hosts, db.user, db.password, db.dbname) == (
        (("172.30.10.10", 5000),),
        "airflow",
        "p@ss/w",
        "airflow",
    )
    body = db.connection_body()
    assert (body["connection_id"], body["conn_type"], body["host"], body["port"]) == (
        "airflow_ha_ledger",
        "postgres",
        "172.30.10.10",
        5000,
    )
    assert (body["login"], body["password"], body["schema"]) == ("airflow", "p@ss/w", "airflow")
    assert json.loads(body["extra"])["connect_timeout"] == "10"
    libpq = db.libpq()
    assert (libpq["host"], libpq["port"], libpq["password"]) == ("172.30.10.10", "5000", "p@ss/w")


def test_several_database_hosts_become_a_libpq_host_list():
    db = chaos_lab.parse_sql_alchemy_conn(
        "postgresql+psycopg2://airflow:pw@h1:5432,h2:5433/airflow?target_session_attrs=read-write"
    )
    assert db.hosts == (("h1", 5432), ("h2", 5433))
    assert (db.libpq()["host"], db.libpq()["port"]) == ("h1,h2", "5432,5433")
    extra = json.loads(db.connection_body()["extra"])
    assert (extra["port"], extra["target_session_attrs"]) == ("5432,5433", "read-write")
    with pytest.raises(ChaosError, match="not a PostgreSQL URL"):
        chaos_lab.parse_sql_alchemy_conn("sql_alchemy_conn = sqlite:////tmp/airflow.db")


def test_tls_parameters_of_sql_alchemy_conn_reach_every_connection():
    # As airflow_common writes it: verify-full against the CA on the Airflow hosts, a % doubled.
    line = (
        "sql_alchemy_conn = postgresql+psycopg2://airflow:p%%2Fw@172.30.10.10:5433/airflow"
        "?connect_timeout=5&sslmode=verify-full&sslrootcert=/etc/airflow/ca.crt&application_name=a%%20b\n"
    )
    db = chaos_lab.parse_sql_alchemy_conn(line)
    assert db.password == "p/w"
    libpq = db.libpq()
    assert (libpq["sslmode"], libpq["sslrootcert"]) == ("verify-full", "/etc/airflow/ca.crt")
    assert libpq["application_name"] == "a b"
    # The DAG's tasks run on the Airflow hosts: their connection keeps the hosts' CA path.
    extra = json.loads(db.connection_body()["extra"])
    assert (extra["sslmode"], extra["sslrootcert"]) == ("verify-full", "/etc/airflow/ca.crt")
    # The ledger reader runs there too.
    assert '"sslrootcert": "/etc/airflow/ca.crt"' in chaos_lab.ledger_script("read", db, "x")
    # Connections from the controller verify against its own copy of the CA.
    here = db.with_root_cert("/inv/.secrets/pki/ca.crt")
    assert (here.libpq()["sslmode"], here.libpq()["sslrootcert"]) == (
        "verify-full",
        "/inv/.secrets/pki/ca.crt",
    )
    assert chaos_probes.probe_params(here)["sslrootcert"] == "/inv/.secrets/pki/ca.crt"
    assert db.libpq()["sslrootcert"] == "/etc/airflow/ca.crt"
    # No TLS in the URL (or no CA here): nothing is added.
    plain = chaos_lab.parse_sql_alchemy_conn("postgresql://u:pw@h:5432/airflow")
    assert plain.with_root_cert("/inv/ca.crt") == plain
    assert db.with_root_cert(None) == db


def test_ledger_reader_script_and_output():
    db = chaos_lab.parse_sql_alchemy_conn("postgresql://u:pw@h:5432/airflow")
    script = chaos_lab.ledger_script("read", db, session_prefix(SESSION))
    compile(script, "<ledger>", "exec")
    assert "starts_with(run_id, %s)" in script
    out = json.dumps(
        [[DAG, rid("x", 1), "work", 0, 2, "lab-worker1", "2026-03-01T12:00:05.5+00:00", "start", "a"]]
    )
    (parsed,) = chaos_lab.parse_ledger(out)
    assert parsed.key == (DAG, rid("x", 1), "work", 0, 2)
    assert parsed.recorded_at == at(5.5)
    assert (parsed.phase, parsed.attempt) == ("start", "a")


def test_the_ledger_migration_adds_the_phase_column_to_an_existing_table():
    ddl = chaos_lab.LEDGER_DDL
    assert ddl[0].startswith(f"CREATE TABLE IF NOT EXISTS {chaos_lab.LEDGER_TABLE} (")
    assert "phase" not in ddl[0]  # a table from before keeps working: the column is added below
    assert ddl[1] == (
        f"ALTER TABLE {chaos_lab.LEDGER_TABLE} ADD COLUMN IF NOT EXISTS phase text NOT NULL DEFAULT 'done'"
    )
    assert "phase, attempt_id FROM" in chaos_lab.LEDGER_QUERY


def test_dag_and_runner_agree_on_the_ledger():
    dag = (REPO / "dags" / "airflow_ha_chaos.py").read_text()
    assert f'LEDGER_CONN_ID = "{chaos_lab.LEDGER_CONN_ID}"' in dag
    assert f'LEDGER_TABLE = "{chaos_lab.LEDGER_TABLE}"' in dag
    assert f'dag_id="{chaos_lab.DAG_ID}"' in dag
    assert "schedule=None" in dag
    # every task writes its start row before its work and its done row after it
    assert dag.count('_record("start", attempt)') == 3
    assert dag.count('_record("done", attempt)') == 3
    assert "attempt_id = %s::text AND phase = %s::text" in dag
    assert "UNIQUE" not in " ".join(chaos_lab.LEDGER_DDL).upper()
    compile(dag, "airflow_ha_chaos.py", "exec")


def test_task_instances_from_the_api_become_task_starts():
    (ti,) = chaos_lab.task_starts(
        [
            {
                "dag_run_id": "r",
                "task_id": "work",
                "map_index": 1,
                "try_number": 2,
                "queued_when": "2026-03-01T12:00:01Z",
                "start_date": "2026-03-01T12:00:02.250000Z",
                "hostname": "lab-worker1",
            }
        ]
    )
    assert (ti.queued_at, ti.started_at, ti.try_number, ti.hostname) == (at(1), at(2.25), 2, "lab-worker1")


def test_health_answer_problems():
    healthy = {
        "metadatabase": {"status": "healthy"},
        "scheduler": {"status": "healthy", "latest_scheduler_heartbeat": "x"},
        "triggerer": {"status": None},
    }
    assert chaos_lab.health_problems(healthy) == []
    assert chaos_lab.health_problems({**healthy, "dag_processor": {"status": "unhealthy"}}) == [
        "dag_processor unhealthy"
    ]


def test_container_problems():
    nets = {"airflow-ha-lab": {"IPAddress": "172.30.10.31"}}
    assert chaos_lab.network_problem("running", nets, "airflow-ha-lab", "172.30.10.31") is None
    assert chaos_lab.network_problem("exited", nets, "airflow-ha-lab", "172.30.10.31") == "exited"
    assert chaos_lab.network_problem(None, {}, "airflow-ha-lab", "172.30.10.31") == "missing"
    assert chaos_lab.network_problem("running", {}, "airflow-ha-lab", "x") == "not attached to airflow-ha-lab"


def test_worker_picked_from_task_instance_hostnames():
    names = ["lab-worker1", "lab-worker2.airflow-ha-lab", "172.30.10.32", "lab-airflow1", ""]
    assert chaos_lab.busiest(names, LAB, "airflow_worker") == "lab-worker2"
    assert chaos_lab.busiest(["elsewhere"], LAB, "airflow_worker") is None
    assert chaos_lab.lab_host_for("172.30.10.12", LAB) == "lab-infra2"


def test_vip_holder_and_patroni_primary_decisions():
    ip_out = "1: lo    inet 127.0.0.1/8 scope host lo\n2: eth0    inet 172.30.10.10/32 scope global eth0\n"
    assert chaos_lab.holds_address(ip_out, "172.30.10.10")
    assert not chaos_lab.holds_address(ip_out, "172.30.10.1")
    assert chaos_lab.as_ip("172.30.10.10/24") == "172.30.10.10"
    assert chaos_lab.as_ip("{{ lab_vip }}") is None
    assert (
        chaos_lab.choose_primary({"lab-infra1": 503, "lab-infra2": 200, "lab-infra3": None}) == "lab-infra2"
    )
    assert chaos_lab.choose_primary({"lab-infra1": None}) is None
    with pytest.raises(ChaosError, match="no member is primary"):
        chaos_lab.choose_primary({"lab-infra1": 503, "lab-infra2": None})


def test_sentinel_protocol():
    assert chaos_lab.encode_command("SENTINEL", "get-master-addr-by-name", "airflow-broker") == (
        b"*3\r\n$8\r\nSENTINEL\r\n$23\r\nget-master-addr-by-name\r\n$14\r\nairflow-broker\r\n"
    )
    reply = io.BytesIO(b"*2\r\n$12\r\n172.30.10.12\r\n$4\r\n6379\r\n")
    assert chaos_lab.read_reply(reply) == [b"172.30.10.12", b"6379"]
    assert chaos_lab.read_reply(io.BytesIO(b"+OK\r\n")) == "OK"
    assert chaos_lab.read_reply(io.BytesIO(b"*-1\r\n")) is None
    with pytest.raises(ChaosError, match="WRONGPASS"):
        chaos_lab.read_reply(io.BytesIO(b"-WRONGPASS invalid username-password pair\r\n"))


# -- the whole run against a fake cluster --------------------------------------------------------------
class FakeResponse:
    def __init__(self, status_code: int, body=None):
        self.status_code = status_code
        self.text = json.dumps(body or {})


class FakeApi:
    """Just enough of AirflowApi: runs succeed at once unless their id is in `fail`."""

    base_url = "http://api"
    timeout = 5.0

    def __init__(self, fail: set[str] | None = None):
        self.runs: dict[str, str] = {}
        self.tis: list[dict] = []
        self.fail = fail or set()
        self.session = self

    def login(self, wait=0):
        pass

    def wait_for_dag(self, dag_id, wait=0):
        return {"dag_id": dag_id}

    def unpause(self, dag_id):
        pass

    def request(self, method, path, **kwargs):
        return None

    def post(self, url, json=None, timeout=None):
        if url.endswith("/connections"):
            return FakeResponse(201)
        run = json["dag_run_id"]
        if run in self.runs:
            return FakeResponse(409)
        self.runs[run] = "failed" if any(run.endswith(f) for f in self.fail) else "success"
        now = dt.datetime.now(dt.UTC).isoformat()
        host = f"lab-worker{len(self.runs) % 2 + 1}"
        for task, index in [("begin", -1), ("work", 0), ("end", -1)]:
            self.tis.append(
                {"dag_run_id": run, "task_id": task, "map_index": index, "try_number": 1, "queued_when": now}
                | {"start_date": now, "hostname": host}
            )
        return FakeResponse(200, {"dag_run_id": run})

    def get(self, path, **params):
        if path.endswith("/taskInstances"):
            since = dt.datetime.fromisoformat(params["start_date_gte"])
            found = [t for t in self.tis if dt.datetime.fromisoformat(t["start_date"]) >= since]
            return {"task_instances": found[params["offset"] : params["offset"] + params["limit"]]}
        if path.endswith("/dagRuns"):
            runs = [{"dag_run_id": r, "state": s} for r, s in self.runs.items()]
            return {
                "dag_runs": runs[params["offset"] : params["offset"] + params["limit"]],
                "total_entries": len(runs),
            }
        return {"state": self.runs[unquote(path.rsplit("/", 1)[-1])]}


class FakeLabOps(FakeOps):
    def __init__(self, api: FakeApi, twice: str = ""):
        super().__init__()
        self.api = api
        self.twice = twice

    def api_problems(self):
        return []

    def replication_problems(self):
        return []

    def container_problems(self):
        return []

    def role_problems(self):
        return []

    def db_address(self):
        return chaos_lab.parse_sql_alchemy_conn("postgresql://airflow:pw@172.30.10.10:5433/airflow")

    def ensure_ledger_table(self, db):
        self.calls.append(("ledger table",))

    def read_ledger(self, db, prefix):
        """A start and a done row per task instance; for the run ending in `twice`, `end` is started
        again by a try 2 after try 1 finished its work."""
        rows = []
        for i, ti in enumerate(list(self.api.tis)):
            when = dt.datetime.fromisoformat(ti["start_date"])
            key = (DAG, ti["dag_run_id"], ti["task_id"], ti["map_index"], 1, ti["hostname"], when)
            rows += [LedgerRow(*key, "start", f"a{i}"), LedgerRow(*key, "done", f"a{i}")]
            if self.twice and ti["dag_run_id"].endswith(self.twice) and ti["task_id"] == "end":
                rows.append(LedgerRow(DAG, ti["dag_run_id"], "end", -1, 2, "lab-worker2", when, "start", "b"))
        return rows


class FakeProbe:
    """Commits acknowledged every 50 ms over the watch's window."""

    def start(self):
        self.t0 = dt.datetime.now(dt.UTC)

    def stop(self):
        self.t1 = dt.datetime.now(dt.UTC)

    def commits(self):
        step = dt.timedelta(seconds=0.05)
        count = max(1, int((self.t1 - self.t0) / step))
        return [Commit(i + 1, self.t0 + i * step, self.t0 + i * step) for i in range(count)]


class FakeSampler:
    def __init__(self, member: str, found: list[RoleSample]):
        self.member = member
        self.found = found

    def start(self):
        pass

    def stop(self):
        pass

    def samples(self):
        return self.found


class FakeWatcher:
    """Watches of a healthy cluster, unless told that two primaries accepted writes (`two`: `db` or
    `broker`) or that the database lost some acknowledged commits (`lose`)."""

    def __init__(self, two: str = "", lose: tuple[int, ...] = ()):
        self.two = two
        self.lose = set(lose)
        self.sessions: list[str] = []

    def prepare(self):
        pass

    def watch(self, session):
        self.sessions.append(session)
        base = dt.datetime.now(dt.UTC)
        probe = FakeProbe()

        def member(tier, name, accepts):
            return FakeSampler(
                name, [RoleSample(name, base + dt.timedelta(seconds=k / 2), accepts) for k in range(4)]
            )

        samplers = {
            tier: [
                member(tier, h, h == "lab-infra1" or (h == "lab-infra2" and self.two == tier)) for h in hosts
            ]
            for tier, hosts in (
                ("db", LAB.groups["airflow_metadata_db"]),
                ("broker", LAB.groups["airflow_broker"]),
            )
        }

        def read_back():
            return {c.seq for c in probe.commits()} - self.lose

        return Watch(probe, samplers, read_back)


def fake_run(faults: str, api: FakeApi, ops: FakeLabOps, watcher: FakeWatcher | None = None):
    settings = chaos.Settings(
        interval=0.05, warmup=0.2, hold=0.2, settle=0.1, parts=1, final_wait=5, lead_in=0.05
    )
    # The fakes stand in for LabOps, AirflowApi and the watcher by duck typing.
    real_api = cast(chaos.AirflowApi, api)
    runner = chaos.Runner(cast(chaos.LabOps, ops), real_api, real_api, settings, watcher or FakeWatcher())
    return runner.run(select_faults(faults))


def test_a_run_against_a_fake_cluster_meets_every_target():
    api = FakeApi()
    ops = FakeLabOps(api)
    watcher = FakeWatcher()
    results = fake_run(
        "scheduler-kill,worker-partition,db-primary-freeze+worker-partition", api, ops, watcher
    )
    assert [r.name for r in results] == [
        BASELINE,
        "scheduler-kill",
        "worker-partition",
        "db-primary-freeze+worker-partition",
    ]
    assert [r.target_host for r in results] == ["", "lab-airflow1", "lab-worker2", "lab-infra2+lab-worker2"]
    assert ("disconnect", "lab-worker2") in ops.calls
    assert ("connect", "lab-worker2") in ops.calls
    assert ("pause", "lab-infra2") in ops.calls
    # a combined fault's parts are undone last first
    assert [c for c in ops.calls if c[0] in ("pause", "unpause", "disconnect", "connect")][-4:] == [
        ("pause", "lab-infra2"),
        ("disconnect", "lab-worker2"),
        ("connect", "lab-worker2"),
        ("unpause", "lab-infra2"),
    ]
    for res in results:
        assert res.triggered > 0, res.name
        assert (res.lost, res.work_twice, res.ledger_gaps, res.unanswered) == ({}, {}, {}, 0), res.name
    for res in results[1:]:
        assert res.resumed_s is not None
        assert 0 <= res.resumed_s < 5
        assert res.healthy_s is not None
        assert 0 <= res.healthy_s < 5
        assert res.db_writes_s is not None
        assert res.db_writes_s < 1
        assert res.commits_acked > 0
        assert (res.commits_lost, res.db_two_primaries, res.broker_two_masters) == ([], [], [])
        assert (res.unwatched, res.idle_workers) == ([], [])
    assert failures(results, Targets()) == []
    assert all(phase_of(r) is not None for r in api.runs)
    assert ("ledger table",) in ops.calls
    assert [s.split("-", 1)[1] for s in watcher.sessions] == [r.name for r in results[1:]]


def test_a_run_against_a_fake_cluster_reports_lost_runs_and_work_done_twice():
    api = FakeApi(fail={"load0003"})
    ops = FakeLabOps(api, twice="load0002")
    results = fake_run("db-primary-crash", api, ops)
    reasons = failures(results, Targets())
    lost = [r for r in reasons if "runs lost" in r]
    twice = [r for r in reasons if "did their work twice" in r]
    assert len(lost) == 1
    assert "load0003 (failed)" in lost[0]
    assert len(twice) == 1
    assert "end[-1] start try 1 on lab-worker" in twice[0]
    assert "start try 2 on lab-worker2" in twice[0]


def test_two_primaries_accepting_writes_at_once_fail_the_run():
    api = FakeApi()
    results = fake_run("db-patroni-freeze", api, FakeLabOps(api), FakeWatcher(two="db"))
    reasons = failures(results, Targets())
    assert len(reasons) == 1
    assert reasons[0].startswith(
        "db-patroni-freeze: 1 moments with two database primaries accepting writes (target 0): "
        "lab-infra1 and lab-infra2 at "
    )
    results = fake_run("broker-master-freeze", api, FakeLabOps(api), FakeWatcher(two="broker"))
    assert [r for r in failures(results, Targets()) if "two Redis masters" in r]


def test_an_acknowledged_commit_missing_afterwards_fails_the_run():
    api = FakeApi()
    results = fake_run("db-primary-partition", api, FakeLabOps(api), FakeWatcher(lose=(2, 3)))
    (res,) = results[1:]
    assert res.commits_lost == [2, 3]
    assert failures(results, Targets()) == [
        f"db-primary-partition: 2 of {res.commits_acked} acknowledged commits lost (target 0): seq 2, 3"
    ]


# -- the invariants: who accepts writes -----------------------------------------------------------------
EPOCH = T0.timestamp()


def test_a_database_member_accepts_writes_only_as_a_primary_with_its_sync_standby():
    def sample(out: str):
        return chaos_invariants.parse_db_sample("lab-infra1", f"{EPOCH}|{out}\n")

    primary = sample(f"{EPOCH + 0.25}|f|f|1")
    assert primary is not None
    assert (primary.accepts, primary.at, primary.detail) == (
        True,
        at(0.25),
        "primary, 1 sync standbys streaming",
    )
    assert sample(f"{EPOCH}|f|t|0").accepts  # no synchronous standby wanted
    waiting = sample(f"{EPOCH}|f|f|0")  # commits would hang waiting for a standby
    assert not waiting.accepts
    assert not sample(f"{EPOCH}|t|f|0").accepts  # a replica
    down = sample("psql: error: connection to server on socket failed ")
    assert (down.accepts, down.at) == (False, T0)
    assert "psql: error" in down.detail
    assert chaos_invariants.parse_db_sample("lab-infra1", "bash: warning\n") is None


def test_a_redis_node_accepts_writes_as_a_master_with_enough_good_replicas():
    def sample(info: str, conf: str = "min-replicas-to-write 1 "):
        return chaos_invariants.parse_redis_sample("lab-infra1", f"{EPOCH}|# Replication {info} |{conf}\n")

    assert sample("role:master connected_slaves:2 min_slaves_good_slaves:2").accepts
    assert not sample("role:master connected_slaves:0 min_slaves_good_slaves:0").accepts
    assert sample("role:master connected_slaves:0", "min-replicas-to-write 0 ").accepts
    assert not sample("role:slave master_host:172.30.10.12 master_link_status:up").accepts
    frozen = sample("", "")  # the frozen redis-server answered nothing within the timeout
    assert (frozen.accepts, frozen.detail) == (False, "# Replication")
    silent = chaos_invariants.parse_redis_sample("lab-infra1", f"{EPOCH}||\n")
    assert silent is not None
    assert (silent.accepts, silent.detail) == (False, "no answer")
    assert chaos_invariants.parse_info("role:master\r\nconnected_slaves:1\r\n") == {
        "role": "master",
        "connected_slaves": "1",
    }


def accepting(member: str, *seconds: float, accepts: bool = True) -> list[RoleSample]:
    return [RoleSample(member, at(t), accepts) for t in seconds]


def test_two_members_accepting_writes_at_the_same_time_are_found_and_merged_into_moments():
    samples = (
        accepting("lab-infra1", 0, 0.5, 1.0, 1.5, 2.0, 2.5)  # the old primary, still accepting
        + accepting("lab-infra2", 1.2, 1.7, 2.2, 2.7, 3.2)  # promoted at 1.2 s
        + accepting("lab-infra3", 0.1, 0.6, accepts=False)
        + accepting("lab-infra1", 20.0, 20.5, 21.0)  # another moment, later
        + accepting("lab-infra3", 20.3, 20.8)
    )
    moments = chaos_invariants.two_writers(samples, merge=2.0)
    assert [(m.members, m.start, m.end) for m in moments] == [
        (("lab-infra1", "lab-infra2"), at(1.2), at(2.5)),
        (("lab-infra1", "lab-infra3"), at(20.3), at(20.8)),
    ]


def test_a_clean_failover_has_no_moment_with_two_writers():
    samples = accepting("lab-infra1", 0, 0.5, 1.0) + accepting("lab-infra2", 9.5, 10.0, 10.5)
    # the frozen primary says nothing while frozen, then comes back as a replica
    samples += accepting("lab-infra1", 30.0, 30.5, accepts=False)
    assert chaos_invariants.two_writers(samples) == []
    # a member whose own samples are close together is never in conflict with itself
    assert chaos_invariants.two_writers(accepting("lab-infra1", 0, 0.1, 0.2)) == []


def test_a_quick_hand_over_between_two_samples_is_no_conflict_but_a_stale_primary_is():
    old = accepting("lab-infra1", 0, 0.5, 1.0) + accepting("lab-infra1", 1.5, 2.0, accepts=False)
    new = accepting("lab-infra2", 1.1, 1.6, 2.1)  # first accepting sample 0.1 s after the old one's last
    assert chaos_invariants.two_writers(old + new) == []
    stale = accepting("lab-infra1", 0, 0.5, 1.0, 1.5, 2.0)  # still accepting after lab-infra2 started
    moments = chaos_invariants.two_writers(stale + new)
    found = [(m.members, m.start, m.end) for m in moments]
    assert found == [(("lab-infra1", "lab-infra2"), at(1.1), at(2.0))]


# -- the invariants: acknowledged commits ----------------------------------------------------------------
def commits(*acks: float | None, start: float = 0.0) -> list[Commit]:
    return [
        Commit(i + 1, at(start + i * 0.1), at(a) if a is not None else None, "" if a is not None else "boom")
        for i, a in enumerate(acks)
    ]


def test_an_acknowledged_commit_missing_on_read_back_is_lost_and_an_unacknowledged_one_is_not():
    found = commits(0.1, None, 0.3, 0.4)
    assert chaos_invariants.lost_commits(found, {1, 4}) == [3]
    assert chaos_invariants.lost_commits(found, {1, 3, 4}) == []


def test_db_writes_back_after_is_the_longest_time_without_an_acknowledged_commit():
    found = commits(1.0, 2.0, None, None, 14.5, 15.0)
    assert chaos_invariants.longest_ack_gap(found, at(0), at(16)) == 12.5
    assert chaos_invariants.longest_ack_gap(commits(None, None), at(0), at(16)) == 16.0
    assert chaos_invariants.longest_ack_gap(commits(1.0), at(0), at(20)) == 19.0
    assert chaos_invariants.commit_errors(found) == ["boom"]


# -- the invariants: hosts back in their roles -----------------------------------------------------------
def test_units_schedulers_and_sentinels_back_in_their_roles():
    assert chaos_invariants.unit_problems({"lab-infra1": {"patroni": "active", "etcd": "inactive"}}) == [
        "lab-infra1: etcd inactive"
    ]
    states = {
        "lab-airflow1": {"airflow-scheduler": "active", "airflow-ha-failover": "inactive"},
        "lab-airflow2": {"airflow-scheduler": "inactive", "airflow-ha-failover": "active"},  # a standby
        "lab-airflow3": {"airflow-scheduler": "failed", "airflow-ha-failover": "inactive"},
    }
    assert chaos_invariants.scheduler_problems(states) == ["lab-airflow3: airflow-scheduler failed"]
    assert chaos_invariants.sentinel_problems({"a": "172.30.10.11", "b": "172.30.10.11"}) == []
    assert chaos_invariants.sentinel_problems({"a": "172.30.10.11", "b": "172.30.10.12", "c": None}) == [
        "Sentinel on c does not name a master",
        "Sentinels disagree on the master: 172.30.10.11, 172.30.10.12",
    ]


def test_load_balancers_back_as_keepalived_backup_with_one_vip_holder():
    vip = "172.30.10.10"
    problems = chaos_invariants.loadbalancer_problems
    assert (
        problems(
            {"lab-infra1": True, "lab-infra2": False}, {"lab-infra1": "MASTER", "lab-infra2": "BACKUP"}, vip
        )
        == []
    )
    assert problems(
        {"lab-infra1": True, "lab-infra2": True}, {"lab-infra1": "MASTER", "lab-infra2": "MASTER"}, vip
    ) == [f"several load balancers hold the VIP {vip}: lab-infra1, lab-infra2"]
    assert problems(
        {"lab-infra1": False, "lab-infra2": False}, {"lab-infra1": "FAULT", "lab-infra2": None}, vip
    ) == [
        f"no load balancer holds the VIP {vip}",
        "lab-infra1: keepalived FAULT, not BACKUP",
        "lab-infra2: keepalived state unknown, not BACKUP",
    ]
    assert problems({"lab-infra1": None}, {"lab-infra1": None}, None) == []
    journal = (
        "(VI_1) Entering BACKUP STATE (init)\n(VI_1) Entering MASTER STATE\n(VI_1) Entering BACKUP STATE\n"
    )
    assert chaos_invariants.vrrp_state(journal) == "BACKUP"
    assert chaos_invariants.vrrp_state("") is None


def test_the_etcd_leader_and_agreement_from_the_members_status():
    def status(member: str, leader: str):
        return {"header": {"member_id": member}, "leader": leader}

    statuses = {
        "lab-infra1": status("11", "22"),
        "lab-infra2": status("22", "22"),
        "lab-infra3": status("33", "22"),
    }
    assert chaos_invariants.etcd_leader(statuses) == "lab-infra2"
    assert chaos_invariants.etcd_problems(statuses) == []
    split = {**statuses, "lab-infra3": status("33", "33"), "lab-infra1": None}
    assert chaos_invariants.etcd_leader(split) is None
    assert chaos_invariants.etcd_problems(split) == [
        "etcd on lab-infra1 does not answer",
        "etcd members do not agree on a leader",
    ]
    assert chaos_lab.member_id(statuses["lab-infra1"]) == "11"


def test_a_host_report_is_one_exec_and_parses_back():
    script = chaos_lab.host_report_script(["haproxy", "keepalived"], keepalived=True)
    assert script.startswith("systemctl is-active haproxy keepalived; echo --; ip -o addr show; echo --; ")
    assert "journalctl -u keepalived" in script
    out = (
        "active\nfailed\n--\n2: eth0    inet 172.30.10.10/32 scope global eth0\n"
        "--\n(VI_1) Entering MASTER STATE\n"
    )
    report = chaos_lab.parse_host_report(out, ["haproxy", "keepalived"])
    assert report.units == {"haproxy": "active", "keepalived": "failed"}
    assert chaos_lab.holds_address(report.addresses, "172.30.10.10")
    assert report.vrrp == "MASTER"
    assert chaos_lab.parse_host_report("", ["etcd"]).units == {"etcd": ""}


def test_a_worker_back_from_a_fault_must_run_tasks_again():
    def resolve(name):
        return chaos_lab.lab_host_for(name, LAB, "airflow_worker")

    assert chaos_invariants.hosts_without_work(["lab-worker2"], ["lab-worker2.airflow-ha-lab"], resolve) == []
    assert chaos_invariants.hosts_without_work(["lab-worker2"], ["lab-worker1", ""], resolve) == [
        "lab-worker2"
    ]


# -- the probes --------------------------------------------------------------------------------------------
class ScriptedCommitter:
    def __init__(self, failing: set[int]):
        self.failing = failing
        self.seen: list[int] = []
        self.closed = False

    def commit(self, seq):
        self.seen.append(seq)
        return "server closed the connection unexpectedly" if seq in self.failing else None

    def close(self):
        self.closed = True


def test_the_commit_probe_records_which_commits_were_acknowledged():
    committer = ScriptedCommitter({3, 4})
    probe = chaos_probes.CommitProbe(committer, interval=0.001)
    probe.start()
    deadline = time.monotonic() + 5
    while len(probe.commits()) < 6 and time.monotonic() < deadline:
        time.sleep(0.005)
    probe.stop()
    found = probe.commits()[:6]
    assert [c.seq for c in found] == [1, 2, 3, 4, 5, 6]
    assert [c.acked for c in found] == [True, True, False, False, True, True]
    assert found[2].error == "server closed the connection unexpectedly"
    assert committer.closed


class FakePgResult:
    def __init__(self, status, message=b""):
        self.status = status
        self.message = message

    def get_error_message(self):
        return self.message


class FakePgConn:
    """psycopg's low-level PGconn, answering from a script; a real socket to wait on."""

    def __init__(self, results, busy_forever=False):
        self.results = list(results)
        self.busy_forever = busy_forever
        self.sock, self.peer = socket.socketpair()
        self.calls: list[str] = []

    @property
    def socket(self):
        return self.sock.fileno()

    def send_query_params(self, command, params):
        self.calls.append("send")
        assert command.startswith(b"INSERT INTO airflow_ha_chaos_commits")

    def flush(self):
        return 0

    def is_busy(self):
        return self.busy_forever

    def consume_input(self):
        self.calls.append("consume")

    def get_result(self):
        return self.results.pop(0) if self.results else None

    def finish(self):
        self.calls.append("finish")
        self.sock.close()
        self.peer.close()

    def cancel(self):
        pytest.fail("the probe cancelled a query")

    def get_cancel(self):
        pytest.fail("the probe cancelled a query")


class FakePgConnection:
    def __init__(self, pgconn):
        self.pgconn = pgconn


def committer_with(pgconn: FakePgConn, guard: float = 0.2) -> chaos_probes.PgCommitter:
    committer = chaos_probes.PgCommitter({}, "s1", guard=guard)
    committer._conn = cast(Any, FakePgConnection(pgconn))
    return committer


def test_a_commit_is_acknowledged_only_after_the_server_is_ready_again():
    from psycopg import pq

    ok = FakePgConn([FakePgResult(pq.ExecStatus.COMMAND_OK)])
    assert committer_with(ok).commit(1) is None
    # CommandComplete arrived, then the implicit commit failed at Sync: not acknowledged
    failed = FakePgConn(
        [
            FakePgResult(pq.ExecStatus.COMMAND_OK),
            FakePgResult(pq.ExecStatus.FATAL_ERROR, b"FATAL: terminating"),
        ]
    )
    assert committer_with(failed).commit(2) == "FATAL: terminating"


def test_a_commit_without_an_answer_is_abandoned_by_closing_never_by_cancelling():
    hung = FakePgConn([], busy_forever=True)  # waiting for the synchronous standby
    committer = committer_with(hung, guard=0.2)
    started = time.monotonic()
    error = committer.commit(7)
    assert 0.2 <= time.monotonic() - started < 2
    assert error == "no answer within 0.2 s: connection closed, the commit not cancelled"
    assert hung.calls == ["send", "finish"]
    assert committer._conn is None  # the next commit opens a new connection


def test_the_probe_never_sets_a_statement_timeout():
    db = chaos_lab.parse_sql_alchemy_conn(
        "postgresql://airflow:pw@172.30.10.10:5433/airflow?options=-c%20statement_timeout%3D2000%20-c%20x%3D1"
    )
    params = chaos_probes.probe_params(db)
    assert params["connect_timeout"] == "2"
    assert "statement_timeout" not in params["options"]
    assert (params["host"], params["port"], params["user"]) == ("172.30.10.10", "5433", "airflow")
    assert "statement_timeout" not in chaos_probes.COMMITS_DDL + chaos_probes.COMMIT_SQL


def fake_tool(directory, name: str, body: str):
    path = directory / name
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)


def test_the_database_sampler_loop_prints_samples_and_ends_when_its_stdin_closes(tmp_path):
    # stands in for `psql ... -c "$CHAOS_QUERY"` in the container
    fake_tool(tmp_path, "psql", f'case "$*" in *pg_is_in_recovery*) echo "{EPOCH}|f|f|1";; esac\n')
    script = chaos_probes.db_sampler_script(every=0.05, max_seconds=30)
    argv = chaos_probes.db_sampler_command("lab-infra1", script)
    query = chaos_invariants.DB_SAMPLE_QUERY
    assert argv[:7] == ["docker", "exec", "-i", "-u", "postgres", "-e", f"CHAOS_QUERY={query}"]
    sampler = chaos_probes.MemberSampler(
        "lab-infra1",
        ["bash", "-c", script],
        chaos_invariants.parse_db_sample,
        env={"PATH": f"{tmp_path}:/usr/bin:/bin", "CHAOS_QUERY": query},
    )
    sampler.start()
    deadline = time.monotonic() + 5
    while len(sampler.samples()) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    proc = sampler._proc
    sampler.stop()
    found = sampler.samples()
    assert len(found) >= 2
    assert all(s.accepts and s.at == T0 and s.member == "lab-infra1" for s in found)
    assert proc is not None
    assert proc.poll() is not None  # the loop in the "container" ended on EOF
    assert not sampler.is_alive()


def test_the_redis_sampler_loop_reads_the_password_from_the_environment(tmp_path):
    fake_tool(
        tmp_path,
        "redis-cli",
        '[ "$REDISCLI_AUTH" = s3cret ] || { echo "NOAUTH Authentication required."; exit 0; }\n'
        'case "$*" in *INFO*) printf "# Replication\\r\\nrole:master\\r\\nmin_slaves_good_slaves:1\\r\\n";;\n'
        '*CONFIG*) printf "min-replicas-to-write\\r\\n1\\r\\n";; esac\n',
    )
    script = chaos_probes.redis_sampler_script(every=0.05, max_seconds=30)
    argv = chaos_probes.redis_sampler_command("lab-infra1", script)
    assert "s3cret" not in " ".join(argv)
    assert argv[3:5] == ["-e", "REDISCLI_AUTH"]
    env = {"PATH": f"{tmp_path}:/usr/bin:/bin", "REDISCLI_AUTH": "s3cret"}
    sampler = chaos_probes.MemberSampler(
        "lab-infra1", ["bash", "-c", script], chaos_invariants.parse_redis_sample, env
    )
    sampler.start()
    deadline = time.monotonic() + 5
    while not sampler.samples() and time.monotonic() < deadline:
        time.sleep(0.02)
    sampler.stop()
    first = sampler.samples()[0]
    assert (first.accepts, first.detail) == (True, "master, min-replicas-to-write 1, 1 good replicas")


def test_a_sampler_whose_exec_ends_starts_it_again():
    spawned = []

    class Ended:
        stdin = None

        def __init__(self):
            self.stdout = io.StringIO(f"{EPOCH}|{EPOCH}|t|f|0\n")

        def poll(self):
            return 1

        def wait(self, timeout=None):
            return 1

        def kill(self):
            pass

    def spawn(argv, env):
        spawned.append(argv)
        return Ended()

    sampler = chaos_probes.MemberSampler(
        "lab-infra2", ["x"], chaos_invariants.parse_db_sample, spawn=spawn, restart_after=0.01
    )
    sampler.start()
    deadline = time.monotonic() + 5
    while len(spawned) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    sampler.stop()
    assert len(spawned) >= 3
    assert not any(s.accepts for s in sampler.samples())


def test_without_speed_only_the_invariants_and_recovery_itself_fail():
    """The end-to-end test's verdict: slow recovery is a benchmark figure, a lost run or no recovery
    at all is a failure."""
    targets = Targets()
    slow = [result("db-primary-freeze", 25, 200, db_writes_s=24.0)]
    assert len(failures(slow, targets)) == 3
    assert failures(slow, targets, speed=False) == []
    lost = {rid("db-primary-freeze", 1): "failed"}
    broken = [result("db-primary-freeze", None, None, db_writes_s=24.0, lost=lost)]
    assert failures(broken, targets, speed=False) == [
        "db-primary-freeze: scheduling never resumed (target 15 s)",
        "db-primary-freeze: the cluster did not become healthy again",
        "db-primary-freeze: 1 runs lost (target 0): " + rid("db-primary-freeze", 1) + " (failed)",
    ]


def test_a_libpq_error_message_is_text_whether_psycopg_gives_str_or_bytes():
    from airflow_ha.chaos_probes import error_text

    assert error_text("ERROR:  cannot execute INSERT in a read-only transaction\n") == (
        "ERROR:  cannot execute INSERT in a read-only transaction"
    )
    assert error_text(b"ERROR:  boom\n") == "ERROR:  boom"
    assert error_text(None) == ""
