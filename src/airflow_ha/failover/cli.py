"""``airflow-ha-failover``: the scheduler failover controller and its operator commands.

Usage::

    airflow-ha-failover [-c CONFIG] [-v] run                  # the daemon (systemd service)
    airflow-ha-failover [-c CONFIG] status [--json]           # leader, epoch, lease timing, hosts
    airflow-ha-failover [-c CONFIG] step-down [--wait SECS]   # ask the leader to hand over
    airflow-ha-failover [-c CONFIG] pause [--reason TEXT]     # freeze failover (maintenance)
    airflow-ha-failover [-c CONFIG] resume
    airflow-ha-failover [-c CONFIG] init-db                   # create the tables (idempotent)
    airflow-ha-failover [-c CONFIG] check-config [--json]     # validate, print effective config

Exit codes: 0 success (``status``: a live leader exists); 1 the request could not be met
(``status``: no live leader; ``step-down``: no leader, paused, or ``--wait`` ran out);
2 configuration or database error.
"""

from __future__ import annotations

import argparse
import getpass
import json
import socket
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

from .config import ConfigError, FailoverConfig, load_config
from .lease import LeaseInfo, LeaseStore, LeaseStoreError, MemberInfo
from .systemd import setup_logging


def _store(cfg: FailoverConfig) -> LeaseStore:
    return LeaseStore(
        cfg.dsn,
        cfg.lease_name,
        node_name=f"{cfg.node_name}-cli",
        connect_timeout=max(cfg.connect_timeout, 5),
        statement_timeout=max(cfg.statement_timeout, 5.0),
    )


def _operator() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


def _age(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds:.1f}s"


# -- commands -------------------------------------------------------------------------------------


def cmd_run(cfg: FailoverConfig, args: argparse.Namespace) -> int:
    from .controller import run_from_config

    return run_from_config(cfg)


def cmd_status(cfg: FailoverConfig, args: argparse.Namespace) -> int:
    store = _store(cfg)
    try:
        if not store.tables_exist():
            print(f"lease {cfg.lease_name!r}: not initialised (no controller has run yet; see init-db)")
            return 1
        info = store.read()
        members = store.members()
    finally:
        store.close()
    if args.json:
        print(
            json.dumps(
                {
                    "lease": None if info is None else asdict(info),
                    "live_holder": None if info is None else info.live_holder,
                    "members": [asdict(m) for m in members],
                },
                indent=2,
            )
        )
    else:
        print(format_status(cfg.lease_name, info, members))
    return 0 if info is not None and info.live_holder else 1


def format_status(name: str, info: LeaseInfo | None, members: Sequence[MemberInfo]) -> str:
    """Human-readable ``status`` output (times are database-clock differences)."""
    lines: list[str] = []
    if info is None:
        lines.append(f"lease {name!r}: no row")
    else:
        if info.live_holder:
            lines.append(
                f"lease {name!r}: leader {info.holder}, epoch {info.epoch}, "
                f"held for {_age(info.held_for)}, renewed {_age(info.renewed_ago)} ago, "
                f"expires in {info.remaining:.1f}s (database clock)"
            )
        elif info.holder:
            lines.append(
                f"lease {name!r}: NO LEADER - {info.holder}'s lease (epoch {info.epoch}) "
                f"expired {-info.remaining:.1f}s ago"
            )
        else:
            since = f" {_age(info.released_ago)} ago" if info.released_ago is not None else ""
            lines.append(
                f"lease {name!r}: NO LEADER - free (epoch {info.epoch}, "
                f"last holder {info.last_holder or 'none'}, released{since})"
            )
        if info.paused:
            why = f": {info.pause_reason}" if info.pause_reason else ""
            lines.append(
                f"failover: PAUSED by {info.paused_by or '?'} {_age(info.paused_ago)} ago{why} "
                "(nobody takes over; the leader keeps renewing and leaves its units alone)"
            )
        else:
            lines.append("failover: active")
        if info.step_down_pending:
            lines.append(f"step-down: requested by {info.step_down_requested_by or '?'} (pending)")
    if members:
        lines.append("")
        header = ("HOST", "ROLE", "HEALTHY", "REPORTED", "EPOCH", "UPTIME", "DETAIL")
        rows = [
            (
                m.host,
                m.role,
                "yes" if m.healthy else "no",
                f"{_age(m.reported_ago)} ago",
                "-" if m.epoch is None else str(m.epoch),
                _age(m.uptime),
                m.detail,
            )
            for m in members
        ]
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header) - 1)]
        for row in [header, *rows]:
            lines.append(
                "  ".join(c.ljust(w) for c, w in zip(row[:-1], widths, strict=True)) + "  " + row[-1]
            )
    else:
        lines.append("no host has reported yet")
    return "\n".join(lines)


def cmd_step_down(cfg: FailoverConfig, args: argparse.Namespace) -> int:
    store = _store(cfg)
    try:
        store.ensure_schema()
        got = store.request_step_down(_operator())
        if got is None:
            info = store.read()
            if info is not None and info.paused:
                print("failover is paused: resume it before asking for a step-down", file=sys.stderr)
            else:
                print("there is no live leader to step down", file=sys.stderr)
            return 1
        holder, epoch = got
        print(f"asked {holder} (epoch {epoch}) to step down")
        if args.wait <= 0:
            return 0
        end = time.monotonic() + args.wait
        announced = False
        while time.monotonic() < end:
            time.sleep(0.25)
            info = store.read()
            if info is None:
                continue
            if info.epoch != epoch and info.live_holder:
                print(f"new leader: {info.live_holder} (epoch {info.epoch})")
                return 0
            if info.holder is None and not announced:
                print(f"{holder} has stepped down; waiting for a standby to take over")
                announced = True
        print(f"no new leader within {args.wait:g}s", file=sys.stderr)
        return 1
    finally:
        store.close()


def _set_paused(cfg: FailoverConfig, paused: bool, reason: str = "") -> tuple[str | None, int]:
    store = _store(cfg)
    try:
        store.ensure_schema()
        return store.set_paused(paused, _operator(), reason)
    finally:
        store.close()


def cmd_pause(cfg: FailoverConfig, args: argparse.Namespace) -> int:
    holder, epoch = _set_paused(cfg, True, args.reason)
    print(f"failover paused; leader stays {holder or 'nobody'} (epoch {epoch})")
    return 0


def cmd_resume(cfg: FailoverConfig, args: argparse.Namespace) -> int:
    holder, epoch = _set_paused(cfg, False)
    print(f"failover resumed; leader {holder or 'nobody'} (epoch {epoch})")
    return 0


def cmd_init_db(cfg: FailoverConfig, args: argparse.Namespace) -> int:
    store = _store(cfg)
    try:
        store.ensure_schema()
    finally:
        store.close()
    print(f"tables ready for lease {cfg.lease_name!r}")
    return 0


def cmd_check_config(cfg: FailoverConfig, args: argparse.Namespace) -> int:
    data: dict[str, Any] = cfg.redacted()
    if args.json:
        print(json.dumps(data, indent=2))
    else:
        for key, value in data.items():
            if isinstance(value, dict):
                for sub, v in value.items():
                    print(f"health.{sub} = {v!r}")
            else:
                print(f"{key} = {value!r}")
        print(f"# worst-case takeover after the leader vanishes: {cfg.worst_case_takeover:g}s")
    return 0


# -- entry point ----------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="airflow-ha-failover",
        description="Scheduler failover controller (active/standby via a lease in PostgreSQL).",
    )
    parser.add_argument("-c", "--config", help="TOML config file (default /etc/airflow-ha/failover.toml)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser("run", help="run the controller daemon").set_defaults(func=cmd_run)
    p = sub.add_parser("status", help="show the leader, the lease and every host's last report")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_status)
    p = sub.add_parser("step-down", help="ask the current leader to stop its units and release the lease")
    p.add_argument("--wait", type=float, default=0.0, metavar="SECS", help="wait for a new leader")
    p.set_defaults(func=cmd_step_down)
    p = sub.add_parser("pause", help="pause failover: nobody takes over, the leader keeps its lease")
    p.add_argument("--reason", default="")
    p.set_defaults(func=cmd_pause)
    sub.add_parser("resume", help="resume failover").set_defaults(func=cmd_resume)
    sub.add_parser("init-db", help="create the lease tables (idempotent)").set_defaults(func=cmd_init_db)
    p = sub.add_parser("check-config", help="validate the configuration and print it")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_check_config)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    try:
        cfg = load_config(args.config)
    except ConfigError as exc:
        print(f"airflow-ha-failover: {exc}", file=sys.stderr)
        return 2
    try:
        return int(args.func(cfg, args))
    except LeaseStoreError as exc:
        print(f"airflow-ha-failover: database error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
