"""`make chaos`: faults injected one at a time into the running lab under a steady load, proving that no
DAG run is lost and no task try completes twice.

A thread triggers the `airflow_ha_chaos` DAG every few seconds through the API (retrying through API
failovers). Each fault is injected, held while the load runs, undone; then the cluster must be
healthy again (API health, every lab container running at its address, a fresh probe run
succeeding) before the next. At the end every run must reach `success`, and the ledger table the
tasks write must hold no try twice. Per fault it measures how long until scheduling resumed and
until the cluster was healthy again, and writes the table into docs/benchmarks.md with --write.

Needs a lab from `make lab` with the DAG synced (dags/ is part of site.yml). Exit status: 0 when
every target is met, 1 when one is missed (the reasons are printed), 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import datetime as dt
import shlex
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import requests

from airflow_ha import bench
from airflow_ha import lab as labmod
from airflow_ha.api import AirflowApi, ApiError
from airflow_ha.chaos_faults import FAULTS, ChaosError, Fault, applicable, select_faults
from airflow_ha.chaos_lab import (
    DAG_ID,
    DbAddress,
    LabOps,
    ensure_connection,
    inventory_hostvars,
    load_secrets,
)
from airflow_ha.chaos_lab import task_starts as parse_task_starts
from airflow_ha.chaos_report import (
    BASELINE,
    BEGIN,
    END,
    HEADING,
    FaultResult,
    Targets,
    TaskStart,
    Trigger,
    account_runs,
    failures,
    fill_accounts,
    render_section,
    render_table,
    resumed_after,
    run_id,
    runs_triggered_after,
    session_prefix,
    warnings,
)
from airflow_ha.docker_hosts import DockerError

PROBE_CONF: dict[str, Any] = {"parts": 1, "sleep_min": 0, "sleep_max": 0.5, "probe": True}
FINISHED = ("success", "failed")


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def log(message: str) -> None:
    print(f"[chaos] {message}", flush=True)


# ---------------------------------------------------------------------------------------------------
# Triggering
# ---------------------------------------------------------------------------------------------------
Poster = Callable[[str, dict[str, Any]], tuple[int | None, str]]


def trigger_with_retry(
    post: Poster,
    run: str,
    phase: str,
    conf: dict[str, Any],
    give_up_after: float,
    now: Callable[[], dt.datetime] = utcnow,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    retry_every: float = 1.0,
) -> Trigger:
    """Ask for one run with a fixed run id until the API answers or `give_up_after` seconds pass.

    The fixed id makes retrying safe: if an earlier attempt created the run but its answer was lost,
    the retry gets 409 and the run counts as triggered. `post` returns (HTTP status or None when
    there was no answer, text). 400 and 422 (a bad request) are not retried.
    """
    first = now()
    deadline = clock() + give_up_after
    attempts = 0
    while True:
        attempts += 1
        code, text = post(run, conf)
        if code in (200, 201):
            return Trigger(run, phase, first, "created", attempts)
        if code == 409:
            return Trigger(run, phase, first, "exists", attempts)
        error = f"HTTP {code}: {text[:200]}" if code is not None else text[:200]
        if code in (400, 422) or clock() + retry_every > deadline:
            return Trigger(run, phase, first, "unanswered", attempts, error)
        sleep(retry_every)


def api_poster(api: AirflowApi, dag_id: str = DAG_ID) -> Poster:
    """POST a run with its id; log in again on 401 (a restarted api-server keeps the JWT secret, but a
    token may expire on a long run)."""

    def post(run: str, conf: dict[str, Any]) -> tuple[int | None, str]:
        body = {"dag_run_id": run, "logical_date": None, "conf": conf}
        try:
            resp = api.session.post(
                f"{api.base_url}/api/v2/dags/{dag_id}/dagRuns", json=body, timeout=api.timeout
            )
        except requests.RequestException as exc:
            return None, f"{exc.__class__.__name__}: {exc}"
        if resp.status_code == 401:
            try:
                api.login(wait=10)
            except ApiError as exc:
                return None, str(exc)
        return resp.status_code, resp.text

    return post


class LoadGenerator(threading.Thread):
    """Triggers one run every `interval` seconds, tagged with the phase the runner is in."""

    def __init__(
        self, post: Poster, session: str, interval: float, conf: dict[str, Any], give_up_after: float
    ) -> None:
        super().__init__(name="chaos-load", daemon=True)
        self.post = post
        self.session = session
        self.interval = interval
        self.conf = conf
        self.give_up_after = give_up_after
        self.phase = BASELINE
        self.triggers: list[Trigger] = []
        self._lock = threading.Lock()
        self._stop_event = threading.Event()

    def run(self) -> None:
        seq = 0
        next_at = time.monotonic()
        while not self._stop_event.is_set():
            delay = next_at - time.monotonic()
            if delay > 0 and self._stop_event.wait(delay):
                break
            seq += 1
            phase = self.phase
            trig = trigger_with_retry(
                self.post, run_id(self.session, phase, "load", seq), phase, self.conf, self.give_up_after
            )
            if not trig.answered:
                log(f"trigger {trig.run_id} got no answer after {trig.attempts} attempts: {trig.error}")
            with self._lock:
                self.triggers.append(trig)
            next_at = max(next_at + self.interval, time.monotonic())

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=self.give_up_after + 30)

    def snapshot(self) -> list[Trigger]:
        with self._lock:
            return list(self.triggers)


# ---------------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------------
@dataclass
class Settings:
    interval: float = 3.0
    warmup: float = 30.0
    hold: float | None = None  # None: each fault's own hold
    settle: float = 15.0
    healthy_timeout: float = 600.0
    final_wait: float = 600.0
    trigger_give_up: float = 60.0
    parts: int = 2
    sleep_min: float = 2.0
    sleep_max: float = 4.0
    targets: Targets = field(default_factory=Targets)

    @property
    def load_conf(self) -> dict[str, Any]:
        return {"parts": self.parts, "sleep_min": self.sleep_min, "sleep_max": self.sleep_max}


class Runner:
    def __init__(self, ops: LabOps, api: AirflowApi, load_api: AirflowApi, settings: Settings) -> None:
        self.ops = ops
        self.api = api
        self.load_api = load_api
        self.settings = settings
        self.session = utcnow().strftime("%Y%m%dT%H%M%S")
        self.started_at = utcnow()
        self.load = LoadGenerator(
            api_poster(load_api),
            self.session,
            settings.interval,
            settings.load_conf,
            settings.trigger_give_up,
        )
        self.probes: list[Trigger] = []
        self.expected_tasks: dict[str, int] = {}
        self.starts: dict[str, list[TaskStart]] = {}
        self.db: DbAddress | None = None

    # -- health -------------------------------------------------------------------------------------
    def wait_healthy(self, phase: str, timeout: float) -> dt.datetime | None:
        """When the cluster is healthy: API health all healthy, every container running at its address,
        every database and broker replica caught up, and a probe run triggered now succeeds. None if
        that does not happen within `timeout`."""
        deadline = time.monotonic() + timeout
        probe: str | None = None
        last = ""
        while time.monotonic() < deadline:
            problems = (
                self.ops.api_problems() + self.ops.container_problems() + self.ops.replication_problems()
            )
            if problems:
                text = "; ".join(problems)
                if text != last:
                    log(f"not healthy yet: {text}")
                    last = text
                time.sleep(3)
                continue
            if probe is None:
                probe = run_id(self.session, phase, "probe", len(self.probes) + 1)
                trig = trigger_with_retry(api_poster(self.api), probe, phase, PROBE_CONF, 30)
                self.probes.append(trig)
                self.expected_tasks[probe] = PROBE_CONF["parts"] + 2
                if not trig.answered:
                    log(f"probe {probe} not triggered: {trig.error}")
                    probe = None
                    time.sleep(3)
                    continue
            state = self._run_state(probe)
            if state == "success":
                return utcnow()
            if state == "failed":
                log(f"probe {probe} failed; triggering another")
                probe = None
            time.sleep(2)
        return None

    def _run_state(self, run: str) -> str | None:
        try:
            return self.api.get(f"/api/v2/dags/{DAG_ID}/dagRuns/{quote(run, safe='')}")["state"]
        except (ApiError, requests.RequestException):
            return None

    # -- measurements -------------------------------------------------------------------------------
    def task_starts_since(self, moment: dt.datetime, pages: int = 10) -> list[TaskStart]:
        """The chaos DAG's task instances that started after `moment`, earliest first."""
        found: list[TaskStart] = []
        path = f"/api/v2/dags/{DAG_ID}/dagRuns/~/taskInstances"
        for page in range(pages):
            try:
                answer = self.api.get(
                    path,
                    start_date_gte=moment.isoformat(),
                    order_by="start_date",
                    limit=100,
                    offset=page * 100,
                )
            except (ApiError, requests.RequestException) as exc:
                log(f"task instances not readable: {exc}")
                break
            batch = parse_task_starts(answer["task_instances"])
            found += [s for s in batch if s.run_id.startswith(session_prefix(self.session))]
            if len(batch) < 100:
                break
        return found

    def final_states(self) -> dict[str, str]:
        """Every run of this session in the database and its state."""
        states: dict[str, str] = {}
        offset = 0
        while True:
            answer = self.api.get(
                f"/api/v2/dags/{DAG_ID}/dagRuns",
                run_after_gte=(self.started_at - dt.timedelta(minutes=5)).isoformat(),
                order_by="id",
                limit=100,
                offset=offset,
            )
            for run in answer["dag_runs"]:
                if run["dag_run_id"].startswith(session_prefix(self.session)):
                    states[run["dag_run_id"]] = run["state"]
            offset += len(answer["dag_runs"])
            if not answer["dag_runs"] or offset >= answer["total_entries"]:
                return states

    def wait_for_runs(self, timeout: float) -> dict[str, str]:
        deadline = time.monotonic() + timeout
        while True:
            try:
                states = self.final_states()
            except (ApiError, requests.RequestException) as exc:
                log(f"runs not readable yet: {exc}")
                states = None
            if states is not None:
                pending = [r for r, s in states.items() if s not in FINISHED]
                if not pending:
                    return states
                if time.monotonic() > deadline:
                    log(f"{len(pending)} runs still unfinished after {timeout:.0f} s")
                    return states
                log(f"waiting for {len(pending)} runs to finish")
            elif time.monotonic() > deadline:
                raise ChaosError(f"the runs' states could not be read within {timeout:.0f} s")
            time.sleep(10)

    # -- one fault ----------------------------------------------------------------------------------
    def run_fault(self, fault: Fault) -> FaultResult:
        res = FaultResult(fault.name, fault.description, scheduler_fault=fault.scheduler_fault)
        self.load.phase = fault.name
        try:
            host = fault.pick(self.ops)
        except (ChaosError, DockerError, ApiError, requests.RequestException) as exc:
            res.error = f"no target: {exc}"
            log(f"{fault.name}: {res.error}")
            return res
        res.target_host = host
        hold = self.settings.hold if self.settings.hold is not None else fault.hold
        log(f"{fault.name}: injecting on {host}, holding {hold:.0f} s")
        try:
            fault.inject(self.ops, host)
            res.injected_at = utcnow()
            time.sleep(hold)
        except (ChaosError, DockerError, subprocess.TimeoutExpired) as exc:
            res.error = f"injection failed: {exc}"
            log(f"{fault.name}: {res.error}")
        finally:
            recovery = utcnow()
            log(f"{fault.name}: recovering {host}")
            try:
                fault.recover(self.ops, host)
            except (ChaosError, DockerError, subprocess.TimeoutExpired) as exc:
                res.error = (res.error + "; " if res.error else "") + f"recovery failed: {exc}"
                log(f"{fault.name}: recovery failed: {exc}")
            res.recovered_at = recovery
        if res.injected_at is None:
            return res
        healthy = self.wait_healthy(fault.name, self.settings.healthy_timeout)
        res.healthy_s = (healthy - recovery).total_seconds() if healthy else None
        self.starts[fault.name] = self.task_starts_since(res.injected_at)
        log(
            f"{fault.name}: "
            + (f"healthy again {res.healthy_s:.0f} s after recovery" if healthy else "never healthy again")
        )
        return res

    # -- everything ---------------------------------------------------------------------------------
    def prepare(self) -> None:
        problems = self.ops.container_problems()
        if problems:
            raise ChaosError(f"the lab is not fully up ({'; '.join(problems)}): run `make lab`")
        self.api.login(wait=60)
        self.load_api.login(wait=60)
        try:
            self.api.wait_for_dag(DAG_ID, wait=120)
        except ApiError as exc:
            raise ChaosError(
                f"the DAG {DAG_ID} is not in the lab ({exc}); sync the DAGs: ansible-playbook -i "
                f"{self.ops.lab.inventory} site.yml --tags airflow_common_dags"
            ) from exc
        self.api.unpause(DAG_ID)
        self.db = self.ops.db_address()
        log(f"ledger connection {ensure_connection(self.api, self.db)} ({self.db.hosts[0][0]})")
        self.ops.ensure_ledger_table(self.db)

    def run(self, faults: list[Fault]) -> list[FaultResult]:
        self.prepare()
        log("checking that the cluster is healthy before the first fault")
        if self.wait_healthy(BASELINE, self.settings.healthy_timeout) is None:
            raise ChaosError("the cluster is not healthy before the first fault (see above)")
        results = [FaultResult(BASELINE, "steady load, no fault")]
        self.load.start()
        try:
            every, warmup = self.settings.interval, self.settings.warmup
            log(f"steady load: one run every {every:g} s; warming up {warmup:.0f} s")
            time.sleep(self.settings.warmup)
            for index, fault in enumerate(faults):
                res = self.run_fault(fault)
                results.append(res)
                if res.injected_at is not None and res.healthy_s is None:
                    for skipped in faults[index + 1 :]:
                        results.append(
                            FaultResult(skipped.name, skipped.description, error="not run: cluster unhealthy")
                        )
                    break
                time.sleep(self.settings.settle)
        finally:
            self.load.stop()
        for trig in self.load.snapshot():
            self.expected_tasks[trig.run_id] = self.settings.parts + 2
        log(f"load stopped; waiting up to {self.settings.final_wait:.0f} s for every run to finish")
        states = self.wait_for_runs(self.settings.final_wait)
        assert self.db is not None
        rows = self.ops.read_ledger(self.db, session_prefix(self.session))
        triggers = self.load.snapshot() + self.probes
        for res in results:
            if res.injected_at is not None:
                after = runs_triggered_after(triggers, res.injected_at)
                res.resumed_s = resumed_after(res.injected_at, self.starts.get(res.name, []), rows, after)
        fill_accounts(results, account_runs(triggers, states), rows, self.expected_tasks)
        return results


# ---------------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------------
def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m airflow_ha.chaos", description=__doc__.splitlines()[0])
    p.add_argument("--inventory", type=Path, default=labmod.REPO / "inventories" / "lab")
    p.add_argument("--write", type=Path, help="markdown file to update (docs/benchmarks.md)")
    p.add_argument(
        "--faults", help=f"comma-separated, in this order (default: all): {','.join(f.name for f in FAULTS)}"
    )
    p.add_argument("--list-faults", action="store_true", help="print the faults and exit")
    p.add_argument("--interval", type=float, default=3.0, help="seconds between load triggers (3)")
    p.add_argument("--warmup", type=float, default=30.0, help="seconds of load before the first fault (30)")
    p.add_argument("--hold", type=float, help="seconds every fault stays in place (default: per fault)")
    p.add_argument("--settle", type=float, default=15.0, help="seconds of load between faults (15)")
    p.add_argument("--healthy-timeout", type=float, default=600.0, help="give up on a fault's recovery (600)")
    p.add_argument("--final-wait", type=float, default=600.0, help="seconds for every run to finish (600)")
    p.add_argument(
        "--host-down",
        choices=["kill", "stop"],
        default="kill",
        help="how a host goes down: kill (SIGKILL to the container, a power loss; default) or stop "
        "(docker stop: systemd shuts the services down, SIGKILL after 10 s)",
    )
    p.add_argument(
        "--target-resume-scheduler", type=float, default=10.0, help="scheduler faults (10 s: active_active)"
    )
    p.add_argument("--target-resume", type=float, default=60.0, help="other faults (60 s)")
    p.add_argument("--target-healthy", type=float, default=180.0, help="healthy again after recovery (180 s)")
    p.add_argument("--max-lost", type=int, default=0, help="runs lost allowed per fault (0)")
    p.add_argument(
        "--max-duplicates", type=int, default=0, help="tries completed twice allowed per fault (0)"
    )
    p.add_argument("--airflow-home", default="/opt/airflow")
    p.add_argument("--patroni-port", type=int, default=8008)
    p.add_argument("--sentinel-port", type=int, default=26379)
    p.add_argument("--sentinel-master", default="airflow-broker")
    return p


def settings_from(args: argparse.Namespace) -> Settings:
    return Settings(
        interval=args.interval,
        warmup=args.warmup,
        hold=args.hold,
        settle=args.settle,
        healthy_timeout=args.healthy_timeout,
        final_wait=args.final_wait,
        targets=Targets(
            resume_scheduler=args.target_resume_scheduler,
            resume_other=args.target_resume,
            healthy=args.target_healthy,
            lost=args.max_lost,
            duplicates=args.max_duplicates,
        ),
    )


def write_section(path: Path, section: str) -> None:
    bench.write_section(path, section, begin=BEGIN, end=END, heading=HEADING)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    p = parser()
    args = p.parse_args(argv)
    if args.list_faults:
        for fault in FAULTS:
            print(f"{fault.name:16} hold {fault.hold:3.0f} s  {fault.description}")
        return 0
    try:
        faults = select_faults(args.faults)
    except ChaosError as exc:
        p.error(str(exc))
    settings = settings_from(args)
    lab = labmod.load_lab(args.inventory)
    if not labmod.lab_exists(lab):
        raise SystemExit(f"no lab is running for {args.inventory}: start it with `make lab` first")
    try:
        faults, notes = applicable(faults, lab, explicit=bool(args.faults))
    except ChaosError as exc:
        raise SystemExit(str(exc)) from exc
    for note in notes:
        log(note)
    secrets = load_secrets(lab.secrets_file)
    api = AirflowApi(lab.api_url, "admin", secrets["admin_password"])
    load_api = AirflowApi(lab.api_url, "admin", secrets["admin_password"], timeout=5.0)
    ops = LabOps(
        lab=lab,
        api=api,
        secrets=secrets,
        hostvars=inventory_hostvars(args.inventory),
        down_mode=args.host_down,
        airflow_home=args.airflow_home,
        patroni_port=args.patroni_port,
        sentinel_port=args.sentinel_port,
        sentinel_master_name=args.sentinel_master,
    )
    runner = Runner(ops, api, load_api, settings)
    try:
        results = runner.run(faults)
    except (ChaosError, ApiError, DockerError) as exc:
        raise SystemExit(f"chaos: {exc}") from exc
    except KeyboardInterrupt:
        log("interrupted; the fault in place (if any) was undone")
        return 130
    command = "python -m airflow_ha.chaos " + shlex.join(argv)
    section = render_section(
        results,
        settings.targets,
        command.strip(),
        utcnow(),
        settings.interval,
        {
            f.name: f"{f.description} (held {f.hold if settings.hold is None else settings.hold:.0f} s)"
            for f in faults
        },
        host_down=args.host_down,
    )
    print()
    print(render_table(results, settings.targets))
    for note in warnings(results):
        print(f"note: {note}")
    reasons = failures(results, settings.targets)
    for reason in reasons:
        print(f"MISSED: {reason}")
    print("all targets met" if not reasons else f"{len(reasons)} targets missed")
    if args.write:
        write_section(args.write, section)
        log(f"wrote the table into {args.write}")
    return 1 if reasons else 0


if __name__ == "__main__":
    sys.exit(main())
