"""The faults `python -m airflow_ha.chaos` injects, as data: each names the inventory groups it
targets, how it picks its host at run time, how it breaks it and how it undoes that.

Faults are named `<target>-<kind>`. Kinds: `crash` (the host goes down, `docker kill`), `freeze` (the
whole host hangs, `docker pause`), `partition` (the host is cut off the network but keeps running:
its veth's end on the Docker host goes down, then up again), and a single service frozen
with SIGSTOP (`<service>-freeze`). Combined faults (`a+b`) hit two hosts of different tiers at once.

The work goes through an `Ops` object (docker and cluster queries, see `airflow_ha.chaos_lab`), so the
catalogue can be checked with a fake in the unit tests.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Protocol

from airflow_ha.lab import Lab


class ChaosError(RuntimeError):
    """A fault could not be selected, aimed or injected; the message says why."""


class Ops(Protocol):
    """What a fault may do to the lab. A picker gets the hosts other parts of a combined fault
    already target (`avoid`) and must choose another host, or move the role away, or raise."""

    lab: Lab

    def log(self, message: str) -> None: ...
    def exec(self, host: str, *command: str) -> str: ...
    def host_down(self, host: str) -> None: ...
    def host_up(self, host: str) -> None: ...
    def pause(self, host: str) -> None: ...
    def unpause(self, host: str) -> None: ...
    def disconnect(self, host: str) -> None: ...
    def connect(self, host: str) -> None: ...
    def active_scheduler_host(self, avoid: Collection[str] = ()) -> str: ...
    def api_server_host(self, avoid: Collection[str] = ()) -> str: ...
    def busy_worker(self, avoid: Collection[str] = ()) -> str: ...
    def vip_holder(self, avoid: Collection[str] = ()) -> str: ...
    def db_primary(self, avoid: Collection[str] = ()) -> str: ...
    def db_sync_standby(self, avoid: Collection[str] = ()) -> str: ...
    def broker_master(self, avoid: Collection[str] = ()) -> str: ...
    def etcd_leader(self, avoid: Collection[str] = ()) -> str: ...


Picker = Callable[[Ops, frozenset[str]], str]
Action = Callable[[Ops, str], None]


@dataclass(frozen=True)
class Fault:
    """One fault on one host: `pick` chooses the host, `inject` breaks it, `recover` undoes that."""

    name: str
    description: str
    groups: tuple[str, ...]  # the inventory groups whose hosts this fault targets
    pick: Picker
    inject: Action
    recover: Action
    hold: float  # seconds the fault stays in place (the load keeps running) before recovery
    scheduler_fault: bool = False  # the other scheduler keeps scheduling: the tighter resume target
    steerable: bool = False  # `pick` can move its role off an avoided host (a combined fault picks it last)

    @property
    def parts(self) -> tuple[Fault, ...]:
        return (self,)

    @property
    def combined(self) -> bool:
        return False

    def applies(self, lab: Lab) -> str | None:
        """None when the lab has hosts this fault can target, else why not."""
        if any(lab.groups.get(group) for group in self.groups):
            return None
        return f"the inventory has no host in {' or '.join(self.groups)}"

    def aim(self, ops: Ops) -> list[tuple[Fault, str]]:
        return [(self, self.pick(ops, frozenset()))]


@dataclass(frozen=True)
class Combined:
    """Two faults of different tiers at once, on two different hosts."""

    name: str
    description: str
    parts: tuple[Fault, ...]
    hold: float

    @property
    def groups(self) -> tuple[str, ...]:
        return tuple(g for part in self.parts for g in part.groups)

    @property
    def scheduler_fault(self) -> bool:
        return False

    @property
    def combined(self) -> bool:
        return True

    def applies(self, lab: Lab) -> str | None:
        for part in self.parts:
            why = part.applies(lab)
            if why:
                return why
        return None

    def aim(self, ops: Ops) -> list[tuple[Fault, str]]:
        """Each part's host, all different. Parts that can move their role elsewhere pick last, so
        they step aside for a part that cannot (the VIP holder is where keepalived put it)."""
        chosen: dict[str, str] = {}
        for part in sorted(self.parts, key=lambda p: p.steerable):
            host = part.pick(ops, frozenset(chosen.values()))
            if host in chosen.values():
                raise ChaosError(f"{part.name} and another part of {self.name} both target {host}")
            chosen[part.name] = host
        return [(part, chosen[part.name]) for part in self.parts]


AnyFault = Fault | Combined


# The scheduler's main process, killed as the kernel's OOM killer or a crash would: systemd sees it
# die and restarts the unit after RestartSec (5 s).
KILL_SCHEDULER = (
    "pid=$(systemctl show -p MainPID --value airflow-scheduler); "
    '[ "${pid:-0}" -gt 0 ] || { echo "airflow-scheduler is not running" >&2; exit 1; }; '
    'kill -9 "$pid" && echo "$pid"'
)


def freeze_script(unit: str, whom: str = "all") -> str:
    """Shell that stops a unit with SIGSTOP: only its main process (`main`: Patroni, whose
    PostgreSQL keeps running) or every process of the unit (`all`: the service hangs). Prints the
    main pid."""
    if whom == "main":
        return (
            f"pid=$(systemctl show -p MainPID --value {unit}); "
            f'[ "${{pid:-0}}" -gt 0 ] || {{ echo "{unit} is not running" >&2; exit 1; }}; '
            'kill -STOP "$pid" && echo "$pid"'
        )
    return (
        f"pid=$(systemctl show -p MainPID --value {unit}); "
        f'[ "${{pid:-0}}" -gt 0 ] || {{ echo "{unit} is not running" >&2; exit 1; }}; '
        f'systemctl kill --signal=SIGSTOP {unit} && echo "$pid"'
    )


def thaw_script(unit: str) -> str:
    """Shell that continues every process of the unit (harmless for those not stopped)."""
    return f"systemctl kill --signal=SIGCONT {unit}"


def _kill_scheduler(ops: Ops, host: str) -> None:
    pid = ops.exec(host, "sh", "-c", KILL_SCHEDULER).strip()
    ops.log(f"{host}: kill -9 of airflow-scheduler's main process (pid {pid})")


def _systemd_restarts(ops: Ops, host: str) -> None:
    ops.log(f"{host}: nothing to undo, systemd restarts airflow-scheduler (Restart=always)")


def _host_down(ops: Ops, host: str) -> None:
    ops.host_down(host)


def _host_up(ops: Ops, host: str) -> None:
    ops.host_up(host)


def _pause(ops: Ops, host: str) -> None:
    ops.pause(host)


def _unpause(ops: Ops, host: str) -> None:
    ops.unpause(host)


def _disconnect(ops: Ops, host: str) -> None:
    ops.disconnect(host)


def _connect(ops: Ops, host: str) -> None:
    ops.connect(host)


def _freeze(unit: str, whom: str) -> Action:
    def inject(ops: Ops, host: str) -> None:
        pid = ops.exec(host, "sh", "-c", freeze_script(unit, whom)).strip()
        what = "its main process" if whom == "main" else "every process"
        ops.log(f"{host}: SIGSTOP to {what} of {unit} (main pid {pid})")

    return inject


def _thaw(unit: str) -> Action:
    def recover(ops: Ops, host: str) -> None:
        ops.exec(host, "sh", "-c", thaw_script(unit))
        ops.log(f"{host}: SIGCONT to {unit}")

    return recover


# What each kind of fault does to its host, and how it is undone.
KINDS: dict[str, tuple[str, Action, Action]] = {
    "crash": (
        "goes down (`docker kill`, or `docker stop` with --host-down stop), then is started again",
        _host_down,
        _host_up,
    ),
    "freeze": ("is frozen whole (`docker pause`), then unpaused", _pause, _unpause),
    "partition": (
        "is cut off the network while it keeps running (its veth down on the Docker host), then "
        "connected again",
        _disconnect,
        _connect,
    ),
}

# Who each fault targets: the inventory groups, how the host is chosen, and the words for it.
TARGETS: dict[str, tuple[tuple[str, ...], Picker, str]] = {
    "scheduler": (
        ("airflow_scheduler",),
        lambda ops, avoid: ops.active_scheduler_host(avoid),
        "a scheduler host (also an api-server)",
    ),
    "api-server": (
        ("airflow_webserver",),
        lambda ops, avoid: ops.api_server_host(avoid),
        "an api-server host (the last one running; in the lab also a scheduler)",
    ),
    "worker": (
        ("airflow_worker",),
        lambda ops, avoid: ops.busy_worker(avoid),
        "the worker running the most tasks",
    ),
    "vip-holder": (
        ("airflow_loadbalancer",),
        lambda ops, avoid: ops.vip_holder(avoid),
        "the load balancer holding the VIP (the API and database address)",
    ),
    "db-primary": (
        ("airflow_metadata_db",),
        lambda ops, avoid: ops.db_primary(avoid),
        "the PostgreSQL primary (Patroni's leader)",
    ),
    "db-sync-standby": (
        ("airflow_metadata_db",),
        lambda ops, avoid: ops.db_sync_standby(avoid),
        "the PostgreSQL synchronous standby (every commit waits for it)",
    ),
    "etcd-leader": (
        ("airflow_etcd",),
        lambda ops, avoid: ops.etcd_leader(avoid),
        "the etcd raft leader (moved off the Patroni primary first when possible)",
    ),
    "broker-master": (
        ("airflow_broker",),
        lambda ops, avoid: ops.broker_master(avoid),
        "the Redis master (as the Sentinels report it)",
    ),
}


def host_fault(target: str, kind: str, hold: float = 60, name: str | None = None, **kw: bool) -> Fault:
    """A whole-host fault (crash, freeze, partition) on a target."""
    groups, pick, who = TARGETS[target]
    what, inject, recover = KINDS[kind]
    return Fault(
        name=name or f"{target}-{kind}",
        description=f"{who} {what}",
        groups=groups,
        pick=pick,
        inject=inject,
        recover=recover,
        hold=hold,
        steerable=target == "broker-master",
        **kw,
    )


def service_freeze(name: str, target: str, unit: str, whom: str, why: str, hold: float = 60) -> Fault:
    """One service on a target's host frozen with SIGSTOP, then continued with SIGCONT."""
    groups, pick, who = TARGETS[target]
    return Fault(
        name=name,
        description=f"`{unit}` on {who} frozen (SIGSTOP), then continued: {why}",
        groups=groups,
        pick=pick,
        inject=_freeze(unit, whom),
        recover=_thaw(unit),
        hold=hold,
        steerable=target == "broker-master",
    )


def combine(*parts: Fault, hold: float = 60) -> Combined:
    return Combined(
        name="+".join(p.name for p in parts),
        description="at once, on different hosts: " + "; and ".join(p.description for p in parts),
        parts=parts,
        hold=hold,
    )


FAULTS: tuple[AnyFault, ...] = (
    Fault(
        name="scheduler-kill",
        description="kill -9 of the main process of `airflow-scheduler` on a scheduler host; systemd "
        "restarts it",
        groups=("airflow_scheduler",),
        pick=lambda ops, avoid: ops.active_scheduler_host(avoid),
        inject=_kill_scheduler,
        recover=_systemd_restarts,
        hold=60,
        scheduler_fault=True,
    ),
    host_fault("scheduler", "crash", name="scheduler-host-crash", scheduler_fault=True),
    host_fault("scheduler", "freeze", name="scheduler-host-freeze", scheduler_fault=True),
    host_fault("scheduler", "partition", scheduler_fault=True),
    service_freeze(
        "api-server-freeze", "api-server", "airflow-api-server", "all", "its clients and HAProxy see silence"
    ),
    host_fault("api-server", "partition"),
    host_fault("worker", "crash", hold=90),
    host_fault("worker", "freeze", hold=90),
    host_fault("worker", "partition", hold=90),
    host_fault("vip-holder", "crash"),
    host_fault("vip-holder", "freeze"),
    host_fault("vip-holder", "partition"),
    service_freeze(
        "keepalived-freeze", "vip-holder", "keepalived", "all", "its VRRP adverts stop while it keeps the VIP"
    ),
    host_fault("db-primary", "crash"),
    host_fault("db-primary", "freeze"),
    host_fault("db-primary", "partition"),
    host_fault("db-sync-standby", "freeze"),
    service_freeze(
        "db-patroni-freeze",
        "db-primary",
        "patroni",
        "main",
        "PostgreSQL keeps running as primary while a replica may be promoted (the split-brain case)",
    ),
    host_fault("etcd-leader", "freeze"),
    host_fault("etcd-leader", "partition"),
    service_freeze("etcd-process-freeze", "etcd-leader", "etcd", "all", "the raft leader stops answering"),
    host_fault("broker-master", "crash"),
    host_fault("broker-master", "freeze"),
    host_fault("broker-master", "partition"),
    service_freeze(
        "broker-redis-freeze", "broker-master", "redis-server", "all", "Sentinel promotes a replica"
    ),
    combine(host_fault("db-primary", "freeze"), host_fault("worker", "partition"), hold=90),
    combine(host_fault("broker-master", "crash"), host_fault("vip-holder", "freeze")),
)

# The faults' former names (before every fault was named <target>-<kind>), still accepted.
ALIASES: dict[str, str] = {
    "scheduler-host": "scheduler-host-crash",
    "worker-host": "worker-crash",
    "worker-network": "worker-partition",
    "api-vip": "vip-holder-crash",
    "db-primary": "db-primary-crash",
    "broker-master": "broker-master-crash",
}

# The short pass the end-to-end test runs on a deployed lab (see airflow_ha.chaos.run_chaos).
CI_FAULTS: tuple[str, ...] = ("db-primary-freeze", "worker-partition", "broker-master-crash")


def fault_names(catalogue: Sequence[AnyFault] = FAULTS) -> list[str]:
    return [f.name for f in catalogue]


def select_faults(spec: str | Sequence[str] | None, catalogue: Sequence[AnyFault] = FAULTS) -> list[AnyFault]:
    """The faults named in a comma-separated list (or a list of names), in that order; every fault
    when spec is empty. Former names (ALIASES) are accepted."""
    if isinstance(spec, str):
        spec = spec.split(",")
    names = [ALIASES.get(n.strip(), n.strip()) for n in spec or () if n.strip()]
    if not names:
        return list(catalogue)
    by_name = {f.name: f for f in catalogue}
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise ChaosError(
            f"unknown fault{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}; "
            f"known: {', '.join(by_name)}"
        )
    chosen: list[AnyFault] = []
    for name in names:
        if by_name[name] not in chosen:
            chosen.append(by_name[name])
    return chosen


def applicable(faults: Sequence[AnyFault], lab: Lab, explicit: bool) -> tuple[list[AnyFault], list[str]]:
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
