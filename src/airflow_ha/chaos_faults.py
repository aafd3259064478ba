"""The faults `python -m airflow_ha.chaos` injects, as data: each names the inventory groups it
targets, how it picks its host at run time, how it breaks it and how it undoes that.

The work goes through an `Ops` object (docker and cluster queries, see `airflow_ha.chaos_lab`), so the
catalogue can be checked with a fake in the unit tests.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from airflow_ha.lab import Lab


class ChaosError(RuntimeError):
    """A fault could not be selected, aimed or injected; the message says why."""


class Ops(Protocol):
    """What a fault may do to the lab."""

    lab: Lab

    def log(self, message: str) -> None: ...
    def exec(self, host: str, *command: str) -> str: ...
    def host_down(self, host: str) -> None: ...
    def host_up(self, host: str) -> None: ...
    def disconnect(self, host: str) -> None: ...
    def connect(self, host: str) -> None: ...
    def active_scheduler_host(self) -> str: ...
    def busy_worker(self) -> str: ...
    def vip_holder(self) -> str: ...
    def db_primary(self) -> str: ...
    def broker_master(self) -> str: ...


@dataclass(frozen=True)
class Fault:
    """One fault: `pick` chooses the host, `inject` breaks it, `recover` undoes that."""

    name: str
    description: str
    groups: tuple[str, ...]  # the inventory groups whose hosts this fault targets
    pick: Callable[[Ops], str]
    inject: Callable[[Ops, str], None]
    recover: Callable[[Ops, str], None]
    hold: float  # seconds the fault stays in place (the load keeps running) before recovery
    scheduler_fault: bool = False  # the other scheduler keeps scheduling: the tighter resume target

    def applies(self, lab: Lab) -> str | None:
        """None when the lab has hosts this fault can target, else why not."""
        if any(lab.groups.get(group) for group in self.groups):
            return None
        return f"the inventory has no host in {' or '.join(self.groups)}"


# The scheduler's main process, killed as the kernel's OOM killer or a crash would: systemd sees it
# die and restarts the unit after RestartSec (5 s).
KILL_SCHEDULER = (
    "pid=$(systemctl show -p MainPID --value airflow-scheduler); "
    '[ "${pid:-0}" -gt 0 ] || { echo "airflow-scheduler is not running" >&2; exit 1; }; '
    'kill -9 "$pid" && echo "$pid"'
)


def _kill_scheduler(ops: Ops, host: str) -> None:
    pid = ops.exec(host, "sh", "-c", KILL_SCHEDULER).strip()
    ops.log(f"{host}: kill -9 of airflow-scheduler's main process (pid {pid})")


def _systemd_restarts(ops: Ops, host: str) -> None:
    ops.log(f"{host}: nothing to undo, systemd restarts airflow-scheduler (Restart=always)")


def _host_down(ops: Ops, host: str) -> None:
    ops.host_down(host)


def _host_up(ops: Ops, host: str) -> None:
    ops.host_up(host)


def _disconnect(ops: Ops, host: str) -> None:
    ops.disconnect(host)


def _connect(ops: Ops, host: str) -> None:
    ops.connect(host)


FAULTS: tuple[Fault, ...] = (
    Fault(
        name="scheduler-kill",
        description="kill -9 of the main process of `airflow-scheduler` on a scheduler host; systemd "
        "restarts it",
        groups=("airflow_scheduler",),
        pick=lambda ops: ops.active_scheduler_host(),
        inject=_kill_scheduler,
        recover=_systemd_restarts,
        hold=20,
        scheduler_fault=True,
    ),
    Fault(
        name="scheduler-host",
        description="a scheduler host (also an api-server) goes down, then is started again",
        groups=("airflow_scheduler",),
        pick=lambda ops: ops.active_scheduler_host(),
        inject=_host_down,
        recover=_host_up,
        hold=60,
        scheduler_fault=True,
    ),
    Fault(
        name="worker-host",
        description="the worker running the most tasks goes down while they run, then is started again",
        groups=("airflow_worker",),
        pick=lambda ops: ops.busy_worker(),
        inject=_host_down,
        recover=_host_up,
        hold=90,
    ),
    Fault(
        name="api-vip",
        description="the load balancer holding the API address (the VIP, else the first load balancer) "
        "goes down, then is started again",
        groups=("airflow_loadbalancer",),
        pick=lambda ops: ops.vip_holder(),
        inject=_host_down,
        recover=_host_up,
        hold=45,
    ),
    Fault(
        name="db-primary",
        description="the PostgreSQL primary (Patroni's leader, else the first database host) goes "
        "down, then is started again",
        groups=("airflow_metadata_db",),
        pick=lambda ops: ops.db_primary(),
        inject=_host_down,
        recover=_host_up,
        hold=60,
    ),
    Fault(
        name="broker-master",
        description="the Redis master (as the Sentinels report it, else the first broker host) goes "
        "down, then is started again",
        groups=("airflow_broker",),
        pick=lambda ops: ops.broker_master(),
        inject=_host_down,
        recover=_host_up,
        hold=60,
    ),
    Fault(
        name="worker-network",
        description="the worker running the most tasks is cut off the network (`docker network "
        "disconnect`), then connected again at its address",
        groups=("airflow_worker",),
        pick=lambda ops: ops.busy_worker(),
        inject=_disconnect,
        recover=_connect,
        hold=90,
    ),
)


def fault_names(catalogue: Sequence[Fault] = FAULTS) -> list[str]:
    return [f.name for f in catalogue]


def select_faults(spec: str | None, catalogue: Sequence[Fault] = FAULTS) -> list[Fault]:
    """The faults named in a comma-separated list, in that order; every fault when spec is empty."""
    if not spec or not spec.strip():
        return list(catalogue)
    by_name = {f.name: f for f in catalogue}
    names = [n.strip() for n in spec.split(",") if n.strip()]
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise ChaosError(
            f"unknown fault{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}; "
            f"known: {', '.join(by_name)}"
        )
    chosen: list[Fault] = []
    for name in names:
        if by_name[name] not in chosen:
            chosen.append(by_name[name])
    return chosen


def applicable(faults: Sequence[Fault], lab: Lab, explicit: bool) -> tuple[list[Fault], list[str]]:
    """The faults this lab can take and notes on the ones skipped. A fault named explicitly that the
    lab cannot take is an error rather than a note."""
    keep, notes = [], []
    for fault in faults:
        why = fault.applies(lab)
        if why is None:
            keep.append(fault)
        elif explicit:
            raise ChaosError(f"fault {fault.name} cannot run on this lab: {why}")
        else:
            notes.append(f"{fault.name} skipped: {why}")
    return keep, notes
