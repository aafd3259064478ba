"""The chaos run's logic with fake data: ledger analysis, measurements, targets, rendering, fault
selection and the fault actions. No containers, no network (`make chaos` is the real run)."""

from __future__ import annotations

import datetime as dt
import io
import json
import re
from typing import cast

import pytest

from airflow_ha import chaos, chaos_faults, chaos_lab
from airflow_ha.bench import END as DEPLOY_END
from airflow_ha.bench import Run, render
from airflow_ha.chaos_faults import FAULTS, ChaosError, applicable, select_faults
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
    duplicate_completions,
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
    run: str, task: str = "work", map_index: int = 0, try_number: int = 1, host: str = "lab-worker1", t=0.0
):
    return LedgerRow(DAG, run, task, map_index, try_number, host, at(t))


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
        HostSpec("lab-airflow1", "172.30.10.21"),
        HostSpec("lab-airflow2", "172.30.10.22"),
        HostSpec("lab-worker1", "172.30.10.31"),
        HostSpec("lab-worker2", "172.30.10.32"),
    ),
    groups={
        "airflow_metadata_db": ["lab-infra1", "lab-infra2"],
        "airflow_broker": ["lab-infra1", "lab-infra2"],
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
def test_a_try_written_twice_is_a_duplicate_and_a_retry_is_not():
    run = rid("worker-host", 1)
    rows = [
        row(run, "begin", -1),
        row(run, "work", 0, try_number=1, host="lab-worker1"),
        row(run, "work", 0, try_number=2, host="lab-worker2"),  # retried after its worker died
        row(run, "work", 1, try_number=1, host="lab-worker1"),
        row(run, "work", 1, try_number=1, host="lab-worker2"),  # the same try completed twice
    ]
    dups = duplicate_completions(rows)
    assert list(dups) == [(DAG, run, "work", 1, 1)]
    assert [r.hostname for r in dups[(DAG, run, "work", 1, 1)]] == ["lab-worker1", "lab-worker2"]
    assert retried_tasks(rows) == {(DAG, run, "work", 0)}
    # The first try died with its worker and wrote nothing: the lone completion on try 2 is a retry.
    assert retried_tasks([row(run, "end", -1, try_number=2)]) == {(DAG, run, "end", -1)}


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
    assert acct.unanswered == [never]
    assert acct.lost == {failed: "failed", running: "running", missing: "missing"}


def test_runs_only_in_the_database_are_counted_in_the_phase_of_their_id():
    base, probe = rid(BASELINE, 1), rid("api-vip", 1, "probe")
    accounts = account_runs([], {base: "success", probe: "failed"})
    assert accounts[BASELINE].triggered == [base]
    assert accounts["api-vip"].lost == {probe: "failed"}


def test_ledger_gaps_are_successful_runs_missing_completions():
    full, short = rid(BASELINE, 1), rid(BASELINE, 2)
    rows = [row(full, t, m) for t, m in (("begin", -1), ("work", 0), ("work", 1), ("end", -1))]
    rows += [row(short, "begin", -1), row(short, "work", 0), row(short, "work", 0, try_number=2)]
    assert ledger_gaps(rows, [full, short], {full: 4, short: 4}) == {short: 2}


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
    ok = [FaultResult(BASELINE), result("scheduler-kill", 4, 20, True), result("db-primary", 55, 90)]
    assert failures(ok, targets) == []
    bad = [
        result("scheduler-host", 31, 20, True),
        result("broker-master", None, None),
        result("api-vip", 10, 181, lost={rid("api-vip", 3): "failed"}),
        FaultResult("worker-host", error="no target: no worker container is running"),
    ]
    reasons = failures(bad, targets)
    assert reasons == [
        "scheduler-host: scheduling resumed after 31 s, target 30 s",
        "broker-master: scheduling never resumed (target 60 s)",
        "broker-master: the cluster did not become healthy again",
        "api-vip: healthy again after 181 s, target 180 s",
        f"api-vip: 1 runs lost (target 0): {rid('api-vip', 3)} (failed)",
        "worker-host: no target: no worker container is running",
    ]


def test_duplicates_fail_with_the_hosts_that_completed_the_try():
    run = rid("worker-network", 7)
    twice = [row(run, "work", 1, host="lab-worker1"), row(run, "work", 1, host="lab-worker2")]
    res = result("worker-network", 3, 40, duplicates=duplicate_completions(twice))
    assert failures([res], Targets()) == [
        f"worker-network: 1 tasks completed twice (target 0): {run} work[1] try 1 on lab-worker1, lab-worker2"
    ]
    assert failures([res], Targets(duplicates=1)) == []


def test_fill_accounts_attributes_runs_and_ledger_rows_to_their_phase():
    base, kill = rid(BASELINE, 1), rid("worker-host", 2)
    rows = [row(base, "begin", -1), row(kill, "work", 0), row(kill, "work", 0, try_number=2)]
    accounts = {
        BASELINE: RunAccount(triggered=[base]),
        "worker-host": RunAccount(triggered=[kill], unanswered=["x"]),
    }
    results = [FaultResult(BASELINE), result("worker-host", 2, 30)]
    fill_accounts(results, accounts, rows, {base: 1, kill: 4})
    assert (results[0].triggered, results[0].retried, results[0].ledger_gaps) == (1, 0, {})
    assert (results[1].triggered, results[1].unanswered, results[1].retried) == (1, 1, 1)
    assert results[1].ledger_gaps == {kill: 3}


def test_table_has_one_row_per_phase():
    results = [
        FaultResult(BASELINE, triggered=10),
        result("scheduler-kill", 2.4, 12.6, True, triggered=20, unanswered=1, retried=0),
        result("worker-host", 5, 95, triggered=40, retried=3),
        FaultResult("db-primary", target_host="lab-infra1", error="injection failed: boom"),
    ]
    table = render_table(results, Targets()).splitlines()
    assert table[0].startswith(
        "| fault | scheduling resumed after | healthy again after | runs triggered | runs lost "
    )
    assert table[2] == "| baseline | - | - | 10 | 0 | 0 | 0 |"
    assert table[3] == (
        "| scheduler-kill (lab-airflow1) | 2 s (target 30 s) | 13 s (target 180 s) "
        "| 20 (+1 unanswered) | 0 | 0 | 0 |"
    )
    assert (
        table[4]
        == "| worker-host (lab-airflow1) | 5 s (target 60 s) | 95 s (target 180 s) | 40 | 0 | 0 | 3 |"
    )
    assert table[5] == "| db-primary (lab-infra1) | not injected | not injected | 0 | 0 | 0 | 0 |"


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
    assert "| 45 s (target 30 s) |" in text
    assert "- missed: scheduler-kill: scheduling resumed after 45 s, target 30 s" in text


# -- fault selection ----------------------------------------------------------------------------------
def test_every_fault_of_the_brief_is_in_the_catalogue():
    assert [f.name for f in FAULTS] == [
        "scheduler-kill",
        "scheduler-host",
        "worker-host",
        "api-vip",
        "db-primary",
        "broker-master",
        "worker-network",
    ]
    assert {f.name for f in FAULTS if f.scheduler_fault} == {"scheduler-kill", "scheduler-host"}


def test_faults_are_selected_by_name_in_order_without_repeats():
    assert [f.name for f in select_faults(None)] == [f.name for f in FAULTS]
    assert [f.name for f in select_faults("db-primary, scheduler-kill,db-primary")] == [
        "db-primary",
        "scheduler-kill",
    ]


def test_an_unknown_fault_name_is_a_clear_error():
    with pytest.raises(ChaosError, match=r"unknown faults nope, db; known: scheduler-kill, scheduler-host"):
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
    assert "worker-network" in capsys.readouterr().out


def test_faults_without_target_hosts_are_skipped_or_refused():
    lab = Lab(LAB.inventory, "img", "n", "s", LAB.hosts, {**LAB.groups, "airflow_loadbalancer": []})
    faults, notes = applicable(select_faults(None), lab, explicit=False)
    assert "api-vip" not in [f.name for f in faults]
    assert notes == ["api-vip skipped: the inventory has no host in airflow_loadbalancer"]
    with pytest.raises(ChaosError, match="fault api-vip cannot run on this lab"):
        applicable(select_faults("api-vip"), lab, explicit=True)


# -- fault actions (a fake Ops) ------------------------------------------------------------------------
class FakeOps:
    def __init__(self):
        self.lab = LAB
        self.calls: list[tuple[str, ...]] = []

    def log(self, message):
        self.calls.append(("log", message))

    def exec(self, host, *command):
        self.calls.append(("exec", host, *command))
        return "4242\n"

    def host_down(self, host):
        self.calls.append(("down", host))

    def host_up(self, host):
        self.calls.append(("up", host))

    def disconnect(self, host):
        self.calls.append(("disconnect", host))

    def connect(self, host):
        self.calls.append(("connect", host))

    def active_scheduler_host(self):
        return "lab-airflow2"

    def busy_worker(self):
        return "lab-worker2"

    def vip_holder(self):
        return "lab-infra2"

    def db_primary(self):
        return "lab-infra2"

    def broker_master(self):
        return "lab-infra1"


@pytest.mark.parametrize(
    ("name", "target", "injected", "recovered"),
    [
        ("scheduler-host", "lab-airflow2", ("down", "lab-airflow2"), ("up", "lab-airflow2")),
        ("worker-host", "lab-worker2", ("down", "lab-worker2"), ("up", "lab-worker2")),
        ("api-vip", "lab-infra2", ("down", "lab-infra2"), ("up", "lab-infra2")),
        ("db-primary", "lab-infra2", ("down", "lab-infra2"), ("up", "lab-infra2")),
        ("broker-master", "lab-infra1", ("down", "lab-infra1"), ("up", "lab-infra1")),
        ("worker-network", "lab-worker2", ("disconnect", "lab-worker2"), ("connect", "lab-worker2")),
    ],
)
def test_faults_break_and_restore_the_host_they_picked(name, target, injected, recovered):
    fault = select_faults(name)[0]
    ops = FakeOps()
    host = fault.pick(ops)
    assert host == target
    fault.inject(ops, host)
    fault.recover(ops, host)
    assert [c for c in ops.calls if c[0] != "log"] == [injected, recovered]


def test_scheduler_kill_sends_sigkill_to_the_units_main_pid():
    fault = select_faults("scheduler-kill")[0]
    ops = FakeOps()
    fault.inject(ops, fault.pick(ops))
    fault.recover(ops, "lab-airflow2")
    execs = [c for c in ops.calls if c[0] == "exec"]
    assert execs == [("exec", "lab-airflow2", "sh", "-c", chaos_faults.KILL_SCHEDULER)]
    assert "systemctl show -p MainPID --value airflow-scheduler" in chaos_faults.KILL_SCHEDULER
    assert 'kill -9 "$pid"' in chaos_faults.KILL_SCHEDULER
    assert ("log", "lab-airflow2: kill -9 of airflow-scheduler's main process (pid 4242)") in ops.calls


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


def test_ledger_reader_script_and_output():
    db = chaos_lab.parse_sql_alchemy_conn("postgresql://u:pw@h:5432/airflow")
    script = chaos_lab.ledger_script("read", db, session_prefix(SESSION))
    compile(script, "<ledger>", "exec")
    assert "starts_with(run_id, %s)" in script
    out = json.dumps([[DAG, rid("x", 1), "work", 0, 2, "lab-worker1", "2026-03-01T12:00:05.5+00:00"]])
    (parsed,) = chaos_lab.parse_ledger(out)
    assert parsed.key == (DAG, rid("x", 1), "work", 0, 2)
    assert parsed.recorded_at == at(5.5)


def test_dag_and_runner_agree_on_the_ledger():
    dag = (REPO / "dags" / "airflow_ha_chaos.py").read_text()
    assert f'LEDGER_CONN_ID = "{chaos_lab.LEDGER_CONN_ID}"' in dag
    assert f'LEDGER_TABLE = "{chaos_lab.LEDGER_TABLE}"' in dag
    assert f'dag_id="{chaos_lab.DAG_ID}"' in dag
    assert "schedule=None" in dag
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
        for task, index in [("begin", -1), ("work", 0), ("end", -1)]:
            self.tis.append(
                {"dag_run_id": run, "task_id": task, "map_index": index, "try_number": 1, "queued_when": now}
                | {"start_date": now, "hostname": "lab-worker1"}
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
        return {"state": self.runs[path.rsplit("/", 1)[-1]]}


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

    def db_address(self):
        return chaos_lab.parse_sql_alchemy_conn("postgresql://airflow:pw@172.30.10.10:5432/airflow")

    def ensure_ledger_table(self, db):
        self.calls.append(("ledger table",))

    def read_ledger(self, db, prefix):
        rows = []
        for ti in self.api.tis:
            when = dt.datetime.fromisoformat(ti["start_date"])
            rows.append(
                LedgerRow(DAG, ti["dag_run_id"], ti["task_id"], ti["map_index"], 1, "lab-worker1", when)
            )
            if self.twice and ti["dag_run_id"].endswith(self.twice) and ti["task_id"] == "end":
                rows.append(LedgerRow(DAG, ti["dag_run_id"], "end", -1, 1, "lab-worker2", when))
        return rows


def fake_run(faults: str, api: FakeApi, ops: FakeLabOps):
    settings = chaos.Settings(interval=0.05, warmup=0.2, hold=0.2, settle=0.1, parts=1, final_wait=5)
    # The fakes stand in for LabOps and AirflowApi by duck typing.
    real_api = cast(chaos.AirflowApi, api)
    return chaos.Runner(cast(chaos.LabOps, ops), real_api, real_api, settings).run(select_faults(faults))


def test_a_run_against_a_fake_cluster_meets_every_target():
    api = FakeApi()
    ops = FakeLabOps(api)
    results = fake_run("scheduler-kill,worker-network", api, ops)
    assert [r.name for r in results] == [BASELINE, "scheduler-kill", "worker-network"]
    assert [r.target_host for r in results] == ["", "lab-airflow2", "lab-worker2"]
    assert ("disconnect", "lab-worker2") in ops.calls
    assert ("connect", "lab-worker2") in ops.calls
    for res in results:
        assert res.triggered > 0, res.name
        assert (res.lost, res.duplicates, res.ledger_gaps) == ({}, {}, {}), res.name
    for res in results[1:]:
        assert res.resumed_s is not None
        assert 0 <= res.resumed_s < 5
        assert res.healthy_s is not None
        assert 0 <= res.healthy_s < 5
    assert failures(results, Targets()) == []
    assert all(phase_of(r) is not None for r in api.runs)
    assert ("ledger table",) in ops.calls


def test_a_run_against_a_fake_cluster_reports_lost_runs_and_duplicates():
    api = FakeApi(fail={"load0003"})
    ops = FakeLabOps(api, twice="load0002")
    results = fake_run("db-primary", api, ops)
    reasons = failures(results, Targets())
    lost = [r for r in reasons if "runs lost" in r]
    twice = [r for r in reasons if "completed twice" in r]
    assert len(lost) == 1
    assert "load0003 (failed)" in lost[0]
    assert len(twice) == 1
    assert "end[-1] try 1 on lab-worker1, lab-worker2" in twice[0]
