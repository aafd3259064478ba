"""`make bench` (failover part): how long each HA tier takes to fail over in the lab.

For each tier, several times: find the host that currently serves (PostgreSQL primary, Redis
master, VIP holder), check that the tier answers through its single address, kill the host
(`docker kill`, like a power loss), and time until the tier answers again the way Airflow uses it:

- database: a write (INSERT, autocommit) through the address in airflow.cfg (HAProxy on the VIP);
- broker: a SET on the master that the Sentinels name (what Celery's Sentinel transport does);
- api: `GET /api/v2/monitor/health` at the VIP answers 200.

Then the host is started again and the benchmark waits until it is back in its role (a Patroni
replica on the leader's timeline with no lag while the cluster has a synchronous standby, a Redis
replica with its link up, an HAProxy answering at its own address) before
the next repetition, so every repetition starts from a whole cluster. The table (median and worst)
goes into docs/benchmarks.md with the command that made it.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shlex
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from airflow_ha import bench
from airflow_ha import lab as labmod
from airflow_ha.api import AirflowApi, ApiError
from airflow_ha.chaos_faults import ChaosError
from airflow_ha.chaos_lab import (
    ControlTls,
    DbAddress,
    LabOps,
    http_status,
    inventory_hostvars,
    load_secrets,
    patroni_member_caught_up,
    redis_call,
    redis_replica_linked,
)

BEGIN = "<!-- bench:failover:begin -->"
END = "<!-- bench:failover:end -->"
BENCH_TABLE = "airflow_ha_bench_failover"


@dataclass(frozen=True)
class Tier:
    """One tier's failover: whom to kill, how to see it serve again, how to see the host back."""

    name: str
    fault: str  # what happens to the victim, for the table
    recovered_when: str  # what "answers again" means, for the table
    target: float  # seconds
    victim: Callable[[], str]
    serving: Callable[[], bool]
    rejoined: Callable[[str], bool]


@dataclass
class Sample:
    victim: str
    recovered: float | None  # seconds from the kill until the tier answered; None: not in time
    rejoined: float | None  # seconds from the restart until the host was back in its role


@dataclass
class Result:
    tier: Tier
    samples: list[Sample] = field(default_factory=list)

    def recovered(self) -> list[float]:
        return [s.recovered for s in self.samples if s.recovered is not None]

    def missed(self) -> list[str]:
        """Why this tier misses its target, if it does."""
        reasons = []
        lost = [s.victim for s in self.samples if s.recovered is None]
        if lost:
            reasons.append(f"{self.tier.name}: no recovery in time after killing {', '.join(lost)}")
        slow = [t for t in self.recovered() if t > self.tier.target]
        if slow:
            reasons.append(
                f"{self.tier.name}: {len(slow)} of {len(self.samples)} repetitions over the "
                f"{self.tier.target:.0f} s target (worst {max(slow):.1f} s)"
            )
        return reasons


class Ops(Protocol):
    """What a measurement needs from the lab (LabOps provides it; tests pass a fake)."""

    def host_down(self, host: str) -> None: ...
    def host_up(self, host: str) -> None: ...
    def log(self, message: str) -> None: ...


def wait_until(
    check: Callable[[], bool],
    timeout: float,
    poll: float,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> float | None:
    """Seconds until `check()` is true (checked every `poll` s), or None after `timeout`."""
    start = clock()
    while True:
        if check():
            return clock() - start
        if clock() - start > timeout:
            return None
        sleep(poll)


def measure(
    tier: Tier,
    ops: Ops,
    timeout: float = 120.0,
    rejoin_timeout: float = 300.0,
    poll: float = 0.25,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> Sample:
    """Kill the tier's serving host once; time the recovery; bring the host back into its role."""
    victim = tier.victim()
    if wait_until(tier.serving, 60, 1.0, clock, sleep) is None:
        raise ChaosError(f"{tier.name}: does not answer before the fault; the cluster is not healthy")
    start = clock()
    ops.host_down(victim)
    recovered = wait_until(tier.serving, timeout, poll, clock, sleep)
    ops.log(
        f"{tier.name}: {victim} killed; "
        + (f"answering again after {recovered:.1f} s" if recovered is not None else "no recovery")
    )
    # Keep the host down a moment past the recovery, as a real outage would.
    while clock() - start < (recovered or 0) + 2:
        sleep(0.5)
    ops.host_up(victim)
    rejoined = wait_until(lambda: tier.rejoined(victim), rejoin_timeout, 1.0, clock, sleep)
    ops.log(
        f"{tier.name}: {victim} "
        + (f"back in its role {rejoined:.0f} s after its start" if rejoined is not None else "did not rejoin")
    )
    if rejoined is None:
        raise ChaosError(f"{tier.name}: {victim} did not rejoin within {rejoin_timeout:.0f} s")
    return Sample(victim, recovered, rejoined)


def run(tiers: Sequence[Tier], ops: Ops, repetitions: int, **kwargs: Any) -> list[Result]:
    results = []
    for tier in tiers:
        result = Result(tier)
        for rep in range(1, repetitions + 1):
            ops.log(f"{tier.name}: repetition {rep} of {repetitions}")
            result.samples.append(measure(tier, ops, **kwargs))
        results.append(result)
    return results


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} s"


def render_table(results: Sequence[Result]) -> str:
    lines = [
        "| tier | fault | answers again when | target | median | worst | repetitions "
        "| host back in its role (median) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for res in results:
        times = res.recovered()
        failed = len(res.samples) - len(times)
        rejoin = [s.rejoined for s in res.samples if s.rejoined is not None]
        lines.append(
            f"| {res.tier.name} | {res.tier.fault} | {res.tier.recovered_when} | {res.tier.target:.0f} s "
            f"| {_fmt(statistics.median(times) if times else None)} | {_fmt(max(times) if times else None)} "
            f"| {len(res.samples)}{f' ({failed} without recovery)' if failed else ''} "
            f"| {_fmt(statistics.median(rejoin) if rejoin else None)} |"
        )
    return "\n".join(lines)


def render_section(
    results: Sequence[Result],
    command: str,
    when: dt.datetime,
    cores: int | None,
    outages: Sequence[OutageTrial] = (),
) -> str:
    reasons = [r for res in results for r in res.missed()]
    lines = [
        BEGIN,
        f"Measured {when:%Y-%m-%d %H:%M} UTC on {cores} cores with `{command}` against the lab of",
        "`inventories/lab` (idle: no DAG runs), each host killed with `docker kill`:",
        "",
        render_table(results),
        "",
        "All targets met." if not reasons else "Missed: " + "; ".join(reasons),
    ]
    if outages:
        lines += [
            "",
            "How long running tasks survive without the API: the sample DAG's 8 tasks sleep past the",
            "outage while every api-server is stopped (`systemctl stop airflow-api-server`):",
            "",
            render_outages(outages),
        ]
    return "\n".join([*lines, END])


# ---------------------------------------------------------------------------------------------------
# The lab's tiers
# ---------------------------------------------------------------------------------------------------
def _db_write(db: DbAddress) -> bool:
    import psycopg

    params: dict[str, Any] = {**db.libpq(), "connect_timeout": "2", "options": "-c statement_timeout=2000"}
    try:
        with psycopg.connect(**params, autocommit=True) as conn:
            conn.execute(f"CREATE TABLE IF NOT EXISTS {BENCH_TABLE} (at timestamptz DEFAULT now())")
            conn.execute(f"INSERT INTO {BENCH_TABLE} DEFAULT VALUES")
        return True
    except psycopg.Error:
        return False


def _patroni_rejoined(ops: LabOps, host: str) -> bool:
    """The returned host reports itself caught up in its own Patroni's view of the cluster."""
    cluster = ops.patroni_cluster([host], timeout=2.0)
    return cluster is not None and patroni_member_caught_up(cluster, host)


def _http_ok(url: str, timeout: float = 1.0, lab: labmod.Lab | None = None) -> bool:
    """GET `url` answers 200; with `lab`, an HTTPS URL is verified against the lab's cluster CA."""
    tls = ControlTls(str(lab.ca_file)) if lab is not None and lab.tls else None
    return http_status(url, timeout, tls) == 200


def _broker_writable(ops: LabOps, password: str, port: int) -> bool:
    """SET a key on the master most Sentinels name, as Celery's user (what Celery's Sentinel
    transport does)."""
    master = ops.sentinel_majority_master()
    if master is None:
        return False
    try:
        reply = redis_call(
            master,
            port,
            password,
            "SET",
            "airflow-ha:bench",
            str(time.time()),
            timeout=1.0,
            username=ops.broker_celery_user,
            ca_file=ops.redis_ca,
        )
    except (OSError, ChaosError):
        return False
    return reply == "OK"


def lab_tiers(ops: LabOps, names: Sequence[str], redis_port: int = 6379, api_port: int = 8080) -> list[Tier]:
    secrets = ops.secrets
    db = ops.controller_db(ops.db_address())
    vip = ops.vip()
    available = {
        "database": Tier(
            name="database",
            fault="PostgreSQL primary's host killed",
            recovered_when="an INSERT through the Airflow DB address (HAProxy on the VIP) commits",
            target=20,
            victim=ops.db_primary,
            serving=lambda: _db_write(db),
            rejoined=lambda h: _patroni_rejoined(ops, h),
        ),
        "broker": Tier(
            name="broker",
            fault="Redis master's host killed",
            recovered_when="a SET on the master the Sentinels name succeeds",
            target=10,
            victim=ops.broker_master,
            serving=lambda: _broker_writable(
                ops, str(secrets.get("broker_celery_password") or ""), redis_port
            ),
            rejoined=lambda h: redis_replica_linked(
                ops.lab.address(h),
                ops.broker_admin_password(),
                redis_port,
                username=ops.broker_admin_user,
                ca_file=ops.redis_ca,
            ),
        ),
        "api": Tier(
            name="api",
            fault="VIP holder's host killed",
            recovered_when=f"GET /api/v2/monitor/health at the VIP ({vip}) answers 200",
            target=5,
            victim=ops.vip_holder,
            serving=lambda: _http_ok(f"{ops.lab.api_url}/api/v2/monitor/health", lab=ops.lab),
            rejoined=lambda h: _http_ok(
                f"{ops.lab.api_scheme}://{ops.lab.address(h)}:{api_port}/api/v2/monitor/health", 2.0, ops.lab
            ),
        ),
    }
    unknown = [n for n in names if n not in available]
    if unknown:
        raise ChaosError(f"unknown tier(s) {', '.join(unknown)}; known: {', '.join(available)}")
    if "api" in names and not vip:
        raise ChaosError("the lab has no VIP (loadbalancer_vip); the api tier needs one")
    return [available[n] for n in names]


# ---------------------------------------------------------------------------------------------------
# How long running tasks survive without any api-server
# ---------------------------------------------------------------------------------------------------
SAMPLE_DAG = "airflow_ha_sample"


@dataclass
class OutageTrial:
    outage: float  # seconds every api-server was stopped
    tasks: int  # task instances of the run
    survived: int  # of them, succeeded on their first try
    run_state: str


def outage_trial(
    api: AirflowApi,
    ops: LabOps,
    outage: float,
    margin: float = 40.0,
    sleep: Callable[[float], None] = time.sleep,
) -> OutageTrial:
    """Run the sample DAG with tasks sleeping `outage + margin` s; once they run, stop every
    api-server for `outage` s; count the tasks that still succeed on their first try."""
    webservers = ops.lab.groups.get("airflow_webserver", [])
    api.wait_for_dag(SAMPLE_DAG)
    api.unpause(SAMPLE_DAG)
    run_id = api.trigger(SAMPLE_DAG, conf={"sleep": outage + margin})
    started = wait_until(
        lambda: any(t["state"] == "running" for t in api.task_instances(SAMPLE_DAG, run_id)), 120, 1.0
    )
    if started is None:
        raise ChaosError(f"no task of {run_id} started running within 120 s")
    sleep(3)  # let every mapped task start
    for host in webservers:
        ops.exec(host, "systemctl", "stop", "airflow-api-server")
    ops.log(f"api outage: every api-server stopped for {outage:.0f} s")
    try:
        sleep(outage)
    finally:
        for host in webservers:
            ops.exec(host, "systemctl", "start", "airflow-api-server")
    health = f"{ops.lab.api_url}/api/v2/monitor/health"
    if wait_until(lambda: _http_ok(health, lab=ops.lab), 180, 1.0) is None:
        raise ChaosError("the API did not answer again within 180 s of the api-servers' start")
    api.login()
    run = api.wait_for_run(SAMPLE_DAG, run_id, wait=outage + margin + 600)
    tis = [t for t in api.task_instances(SAMPLE_DAG, run_id) if t["task_id"] == "report_host"]
    survived = sum(1 for t in tis if t["state"] == "success" and t["try_number"] == 1)
    ops.log(
        f"api outage of {outage:.0f} s: {survived} of {len(tis)} running tasks survived; run {run['state']}"
    )
    return OutageTrial(outage, len(tis), survived, run["state"])


def render_outages(trials: Sequence[OutageTrial]) -> str:
    lines = [
        "| every api-server stopped for | running tasks that succeeded on their first try | DAG run |",
        "| --- | --- | --- |",
    ]
    lines += [f"| {t.outage:.0f} s | {t.survived} of {t.tasks} | {t.run_state} |" for t in trials]
    return "\n".join(lines)


def write_section(path: Path, section: str) -> None:
    bench.write_section(path, section, BEGIN, END, heading="Failover of each tier")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m airflow_ha.bench_failover", description=__doc__.splitlines()[0]
    )
    p.add_argument("--inventory", type=Path, default=labmod.REPO / "inventories" / "lab")
    p.add_argument("--tiers", default="database,broker,api", help="comma-separated: database,broker,api")
    p.add_argument("--repetitions", type=int, default=3)
    p.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for a recovery")
    p.add_argument(
        "--api-outages",
        default="15,30,60",
        help="comma-separated seconds of API outage to try running tasks against ('' for none)",
    )
    p.add_argument("--write", type=Path, help="markdown file to update (docs/benchmarks.md)")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parser().parse_args(argv)
    if args.repetitions < 1:
        parser().error("--repetitions must be at least 1")
    lab = labmod.load_lab(args.inventory)
    if not labmod.lab_exists(lab):
        raise SystemExit(f"no lab is running for {args.inventory}: start it with `make lab` first")
    secrets = load_secrets(lab.secrets_file)
    ops = LabOps(
        lab=lab,
        api=AirflowApi(lab.api_url, "admin", secrets["admin_password"], verify=lab.api_verify),
        secrets=secrets,
        hostvars=inventory_hostvars(args.inventory),
    )
    try:
        tiers = lab_tiers(ops, [t.strip() for t in args.tiers.split(",") if t.strip()])
        results = run(tiers, ops, args.repetitions, timeout=args.timeout)
        outage_list = [float(x) for x in args.api_outages.split(",") if x.strip()]
        if outage_list:
            ops.api.login()
        outages = [outage_trial(ops.api, ops, x) for x in outage_list]
    except (ChaosError, ApiError) as exc:
        raise SystemExit(f"bench: {exc}") from exc
    command = ("python -m airflow_ha.bench_failover " + shlex.join(argv)).strip()
    section = render_section(results, command, dt.datetime.now(dt.UTC), os.cpu_count(), outages)
    print(section)
    if args.write:
        write_section(args.write, section)
    reasons = [r for res in results for r in res.missed()]
    for reason in reasons:
        print(f"MISSED: {reason}")
    return 1 if reasons else 0


if __name__ == "__main__":
    sys.exit(main())
