"""`make chaos`: faults injected one at a time into the running lab under a steady load, proving that no
DAG run is lost, no task's work runs twice, no acknowledged commit is lost and there are never two
primaries.

The load generator triggers the `airflow_ha_chaos` DAG every few seconds through the API, several
triggers in flight at once (each retried through API failovers; one never answered is a failure).
Each fault (see airflow_ha.chaos_faults: crash, freeze, partition of a host, a frozen service, two
hosts at once) is injected, held while the load runs, undone; then the cluster must be whole again
(API health, every container running at its address, replicas caught up, every service active and
back in its role, a fresh probe run succeeding) before the next. While a fault lasts a probe commits
a counter through the Airflow database address every 100 ms and every database member and Redis node
is sampled about twice a second (airflow_ha.chaos_probes). At the end every run must reach
`success`, the ledger the tasks write must show no work done twice, every acknowledged commit must be
read back, and no two members may have accepted writes at once. Per fault it measures how long until
scheduling resumed, until DB writes came back and until the cluster was whole again, and writes the
table into docs/benchmarks.md with --write.

`run_chaos()` runs the same from Python (the end-to-end test's short pass: CI_FAULTS).

Needs a lab from `make lab` with the DAG synced (dags/ is part of site.yml). Exit status: 0 when
every target is met, 1 when one is missed (the reasons are printed), 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
import shlex
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote

import requests
from requests.adapters import HTTPAdapter

from airflow_ha import bench
from airflow_ha import lab as labmod
from airflow_ha.api import AirflowApi, ApiError
from airflow_ha.chaos_faults import (
    CI_FAULTS,
    FAULTS,
    AnyFault,
    ChaosError,
    Fault,
    applicable,
    select_faults,
)
from airflow_ha.chaos_invariants import (
    commit_errors,
    hosts_without_work,
    longest_ack_gap,
    lost_commits,
    two_writers,
)
from airflow_ha.chaos_lab import (
    DAG_ID,
    DbAddress,
    LabOps,
    ensure_connection,
    inventory_hostvars,
    lab_host_for,
    load_secrets,
)
from airflow_ha.chaos_lab import task_starts as parse_task_starts
from airflow_ha.chaos_probes import Watch, ensure_commit_table, lab_watch, utcnow
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
from airflow_ha.lab import Lab

PROBE_CONF: dict[str, Any] = {"parts": 1, "sleep_min": 0, "sleep_max": 0.5, "probe": True}
FINISHED = ("success", "failed")


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


def pool_size(interval: float, give_up_after: float, request_timeout: float = 5.0, cap: int = 64) -> int:
    """Threads enough that a new trigger can start every `interval` s while earlier ones still retry
    for up to `give_up_after` s (plus one request's timeout)."""
    return max(2, min(cap, math.ceil((give_up_after + request_timeout) / max(interval, 0.01)) + 2))


class LoadGenerator(threading.Thread):
    """Starts one trigger every `interval` seconds, tagged with the phase the runner is in, whatever
    the earlier triggers are doing: each runs (and retries) in a thread pool, so a slow or missing
    answer does not hold the load back."""

    def __init__(
        self,
        post: Poster,
        session: str,
        interval: float,
        conf: dict[str, Any],
        give_up_after: float,
        workers: int | None = None,
        trigger: Callable[..., Trigger] = trigger_with_retry,
    ) -> None:
        super().__init__(name="chaos-load", daemon=True)
        self.post = post
        self.session = session
        self.interval = interval
        self.conf = conf
        self.give_up_after = give_up_after
        self.trigger = trigger
        self.phase = BASELINE
        self.triggers: list[Trigger] = []
        self.pool = ThreadPoolExecutor(
            max_workers=workers or pool_size(interval, give_up_after), thread_name_prefix="chaos-trigger"
        )
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
            self.pool.submit(self._one, run_id(self.session, self.phase, "load", seq), self.phase)
            next_at = max(next_at + self.interval, time.monotonic())

    def _one(self, run: str, phase: str) -> None:
        trig = self.trigger(self.post, run, phase, self.conf, self.give_up_after)
        if not trig.answered:
            log(f"trigger {trig.run_id} got no answer after {trig.attempts} attempts: {trig.error}")
        with self._lock:
            self.triggers.append(trig)

    def stop(self) -> None:
        """Stop starting triggers; wait for those in flight (each gives up after give_up_after)."""
        self._stop_event.set()
        if self.is_alive():
            self.join(timeout=self.interval + 5)
        self.pool.shutdown(wait=True)

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
    lead_in: float = 3.0  # seconds the probe and samplers run before the fault is injected
    probe_interval: float = 0.1  # the commit probe's period
    commit_guard: float = 5.0  # a probe commit not answered by then: connection closed, not acknowledged
    sample_every: float = 0.5  # each database member and Redis node asked this often
    targets: Targets = field(default_factory=Targets)

    @property
    def load_conf(self) -> dict[str, Any]:
        return {"parts": self.parts, "sleep_min": self.sleep_min, "sleep_max": self.sleep_max}


def ci_settings(hold: float = 60.0) -> Settings:
    """The end-to-end test's short pass: every fault held `hold` s, shorter warm-up and settling, and
    a lighter load (a run of three short tasks every 5 s) that the lab's two workers on a 2-core CI
    machine clear between faults, so the pass does not end waiting for a backlog."""
    return Settings(hold=hold, warmup=20.0, settle=10.0, interval=5.0, parts=1, sleep_min=1.0, sleep_max=2.0)


class Watcher(Protocol):
    """Makes the Watch (commit probe and samplers) of each fault; `prepare` runs once first."""

    def prepare(self) -> None: ...
    def watch(self, session: str) -> Watch: ...


@dataclass
class LabWatcher:
    ops: LabOps
    db: DbAddress
    settings: Settings

    def prepare(self) -> None:
        ensure_commit_table(self.db)

    def watch(self, session: str) -> Watch:
        groups = self.ops.lab.groups
        return lab_watch(
            self.db,
            session,
            groups.get("airflow_metadata_db", []),
            groups.get("airflow_broker", []),
            self.ops.broker_admin_password(),
            probe_interval=self.settings.probe_interval,
            broker_user=self.ops.broker_admin_user,
            commit_guard=self.settings.commit_guard,
            sample_every=self.settings.sample_every,
            max_seconds=int(self.settings.healthy_timeout + (self.settings.hold or 120) + 600),
            redis_port=self.ops.redis_port,
            redis_ca=self.ops.redis_host_ca,
        )


INJECT_ERRORS = (ChaosError, DockerError, subprocess.TimeoutExpired, ApiError, requests.RequestException)


class Runner:
    def __init__(
        self,
        ops: LabOps,
        api: AirflowApi,
        load_api: AirflowApi,
        settings: Settings,
        watcher: Watcher | None = None,
    ) -> None:
        self.ops = ops
        self.api = api
        self.load_api = load_api
        self.settings = settings
        self.watcher = watcher
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
        self.returned_workers: dict[str, tuple[list[str], dt.datetime]] = {}
        self.db: DbAddress | None = None

    # -- health -------------------------------------------------------------------------------------
    def problems(self) -> list[str]:
        """Why the cluster is not whole; cheap checks first (the others need every host up)."""
        found = self.ops.api_problems() + self.ops.container_problems()
        if found:
            return found
        return self.ops.replication_problems() + self.ops.role_problems()

    def wait_healthy(self, phase: str, timeout: float) -> dt.datetime | None:
        """When the cluster is whole: API health all healthy, every container running at its address,
        every database and broker replica caught up, every host back in its role, and a probe run
        triggered now succeeds. None if that does not happen within `timeout`."""
        deadline = time.monotonic() + timeout
        probe: str | None = None
        last = ""
        while time.monotonic() < deadline:
            problems = self.problems()
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

    # -- the invariants watched during one fault ----------------------------------------------------
    def judge(self, res: FaultResult, watch: Watch) -> None:
        """Fill in what the probe and samplers saw: DB writes back after, acknowledged commits lost,
        moments with two writers, and what could not be watched."""
        commits = watch.commits()
        start, end = watch.started_at, watch.stopped_at
        if commits and start and end:
            res.db_writes_s = longest_ack_gap(commits, start, end)
        res.commits_acked = sum(1 for c in commits if c.acked)
        res.commit_errors = commit_errors(commits)
        if not commits:
            res.unwatched.append("the commit probe made no attempt")
        else:
            try:
                res.commits_lost = lost_commits(commits, self._read_back(watch))
            except ChaosError as exc:
                res.unwatched.append(str(exc))
        for tier, what in (("db", "database"), ("broker", "Redis")):
            per_member = watch.samples(tier)
            silent = sorted(m for m, found in per_member.items() if not found)
            if silent:
                res.unwatched.append(f"no {what} samples from {', '.join(silent)}")
            moments = two_writers([x for found in per_member.values() for x in found])
            if tier == "db":
                res.db_two_primaries = moments
            else:
                res.broker_two_masters = moments
        log(
            f"{res.name}: DB writes back after "
            + (f"{res.db_writes_s:.1f} s" if res.db_writes_s is not None else "-")
            + f", {len(res.commits_lost)} of {res.commits_acked} acknowledged commits lost, moments "
            f"with two primaries: {len(res.db_two_primaries)} DB, {len(res.broker_two_masters)} broker"
        )

    def _read_back(self, watch: Watch, attempts: int = 5) -> set[int]:
        for attempt in range(1, attempts + 1):
            try:
                return watch.read_back()
            except ChaosError:
                if attempt == attempts:
                    raise
                time.sleep(3)
        raise AssertionError("unreachable")

    # -- one fault ----------------------------------------------------------------------------------
    def run_fault(self, fault: AnyFault) -> FaultResult:
        res = FaultResult(
            fault.name, fault.description, scheduler_fault=fault.scheduler_fault, combined=fault.combined
        )
        self.load.phase = fault.name
        try:
            aimed = fault.aim(self.ops)
        except INJECT_ERRORS as exc:
            res.error = f"no target: {exc}"
            log(f"{fault.name}: {res.error}")
            return res
        res.target_host = "+".join(host for _, host in aimed)
        hold = self.settings.hold if self.settings.hold is not None else fault.hold
        assert self.watcher is not None, "prepare() makes the watcher"
        watch = self.watcher.watch(f"{self.session}-{fault.name}")
        watch.start()
        try:
            self._break_and_heal(fault, res, aimed, watch, hold)
        finally:
            watch.stop()  # (already stopped when the fault ran to its end)
        return res

    def _break_and_heal(
        self, fault: AnyFault, res: FaultResult, aimed: Sequence[tuple[Fault, str]], watch: Watch, hold: float
    ) -> None:
        time.sleep(self.settings.lead_in)
        log(f"{fault.name}: injecting on {res.target_host}, holding {hold:.0f} s")
        touched: list[tuple[Fault, str]] = []
        try:
            for part, host in aimed:
                touched.append((part, host))
                part.inject(self.ops, host)
            res.injected_at = utcnow()
            time.sleep(hold)
        except INJECT_ERRORS as exc:
            res.error = f"injection failed: {exc}"
            log(f"{fault.name}: {res.error}")
        finally:
            res.recovered_at = self._recover(res, touched)
        if res.injected_at is None:
            return
        healthy = self.wait_healthy(fault.name, self.settings.healthy_timeout)
        watch.stop()
        res.healthy_s = (healthy - res.recovered_at).total_seconds() if healthy else None
        self.judge(res, watch)
        self.starts[fault.name] = self.task_starts_since(res.injected_at)
        workers = [h for part, h in aimed if "airflow_worker" in part.groups]
        if workers:
            self.returned_workers[fault.name] = (workers, res.recovered_at)
        log(
            f"{fault.name}: "
            + (f"healthy again {res.healthy_s:.0f} s after recovery" if healthy else "never healthy again")
        )

    def _recover(self, res: FaultResult, touched: Sequence[tuple[Fault, str]]) -> dt.datetime:
        """Undo every part that was (or may have been) injected, last first; the moment it began."""
        recovery = utcnow()
        for part, host in reversed(touched):
            log(f"{res.name}: recovering {host} ({part.name})")
            try:
                part.recover(self.ops, host)
            except INJECT_ERRORS as exc:
                res.error = (res.error + "; " if res.error else "") + f"recovery of {host} failed: {exc}"
                log(f"{res.name}: recovery of {host} failed: {exc}")
        return recovery

    def idle_workers(self, results: Sequence[FaultResult]) -> None:
        """Workers a fault hit must run tasks again after it: each must appear as the host of a task
        instance that started after its recovery (the load keeps running until the end)."""
        for res in results:
            if res.name not in self.returned_workers:
                continue
            hosts, since = self.returned_workers[res.name]
            names = [s.hostname for s in self.task_starts_since(since)]
            res.idle_workers = hosts_without_work(
                hosts, names, lambda n: lab_host_for(n, self.ops.lab, "airflow_worker")
            )

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
        if self.watcher is None:
            # The probe connects from here, so with the controller's copy of the cluster CA.
            self.watcher = LabWatcher(self.ops, self.ops.controller_db(self.db), self.settings)
        self.watcher.prepare()

    def run(self, faults: Sequence[AnyFault]) -> list[FaultResult]:
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
        self.idle_workers(results)
        return results


# ---------------------------------------------------------------------------------------------------
# From Python (the end-to-end test)
# ---------------------------------------------------------------------------------------------------
@dataclass
class ChaosOutcome:
    results: list[FaultResult]
    failures: list[str]  # empty when every target was met and every invariant held
    notes: list[str]
    invariant_failures: list[str] = field(default_factory=list)  # the invariants alone, no speed targets

    def table(self, targets: Targets | None = None) -> str:
        return render_table(self.results, targets or Targets())


def connect_lab(
    lab: Lab, inventory: Path | None = None, host_down: str = "kill", **ops_options: Any
) -> tuple[LabOps, AirflowApi, AirflowApi]:
    """LabOps and two API clients (the runner's, and the load's with a short timeout and a connection
    pool as large as the load's thread pool)."""
    secrets = load_secrets(lab.secrets_file)
    api = AirflowApi(lab.api_url, "admin", secrets["admin_password"], verify=lab.api_verify)
    load_api = AirflowApi(lab.api_url, "admin", secrets["admin_password"], timeout=5.0, verify=lab.api_verify)
    load_api.session.mount(f"{lab.api_scheme}://", HTTPAdapter(pool_connections=4, pool_maxsize=64))
    ops = LabOps(
        lab=lab,
        api=api,
        secrets=secrets,
        hostvars=inventory_hostvars(inventory or lab.inventory),
        down_mode=host_down,
        **ops_options,
    )
    return ops, api, load_api


def run_chaos(
    lab: Lab,
    faults: Sequence[str] = CI_FAULTS,
    settings: Settings | None = None,
    *,
    inventory: Path | None = None,
    host_down: str = "kill",
) -> ChaosOutcome:
    """Run the named faults against an already deployed lab under load and check every invariant.

    For a test: `outcome = run_chaos(lab, CI_FAULTS, ci_settings())`, then `assert not
    outcome.failures, "\n".join(outcome.failures)`. Raises ChaosError when the lab is not ready
    (not healthy before the first fault, the DAG missing)."""
    settings = settings or Settings()
    chosen, _ = applicable(select_faults(list(faults)), lab, explicit=True)
    ops, api, load_api = connect_lab(lab, inventory, host_down)
    results = Runner(ops, api, load_api, settings).run(chosen)
    return ChaosOutcome(
        results,
        failures(results, settings.targets),
        warnings(results),
        failures(results, settings.targets, speed=False),
    )


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
        "--trigger-give-up", type=float, default=60.0, help="a trigger unanswered by then fails (60)"
    )
    p.add_argument(
        "--target-resume-scheduler", type=float, default=10.0, help="scheduler faults (10 s: active_active)"
    )
    p.add_argument("--target-resume", type=float, default=15.0, help="any other single fault (15 s)")
    p.add_argument("--target-resume-combined", type=float, default=30.0, help="combined faults (30 s)")
    p.add_argument(
        "--target-db-writes", type=float, default=15.0, help="longest time without a commit, any fault (15 s)"
    )
    p.add_argument("--target-healthy", type=float, default=180.0, help="healthy again after recovery (180 s)")
    p.add_argument("--max-lost", type=int, default=0, help="runs lost allowed per fault (0)")
    p.add_argument(
        "--max-duplicates", type=int, default=0, help="tasks allowed to do their work twice per fault (0)"
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
        trigger_give_up=args.trigger_give_up,
        targets=Targets(
            resume_scheduler=args.target_resume_scheduler,
            resume_other=args.target_resume,
            resume_combined=args.target_resume_combined,
            db_writes=args.target_db_writes,
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
        width = max(len(f.name) for f in FAULTS)
        for fault in FAULTS:
            print(f"{fault.name:{width}} hold {fault.hold:3.0f} s  {fault.description}")
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
    ops, api, load_api = connect_lab(
        lab,
        args.inventory,
        args.host_down,
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
