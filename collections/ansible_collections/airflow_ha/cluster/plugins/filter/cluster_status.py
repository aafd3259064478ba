# Copyright: airflow-ha contributors
# Apache License 2.0 (see LICENSE at the root of the airflow-ha repository)
"""The cluster's status table and its problems, from what playbooks/status.yml read on each host.

Why a plugin: the playbook reads each tier with the tier's own tools (systemctl, patronictl, etcdctl,
redis-cli, HAProxy's stats CSV, Airflow's jobs table); deciding what their outputs mean together
(one Patroni leader, every Sentinel naming the one Redis master, one VIP holder, ...) is logic with
many cases that Jinja would hide from tests. No maintained plugin knows this cluster's shape, so the
decisions live here, as plain functions over the recorded outputs (tests/test_status.py).
"""

from __future__ import annotations

DOCUMENTATION = r"""
---
name: cluster_status
short_description: The airflow-ha cluster's status table and its problems
description:
  - Takes what C(playbooks/status.yml) read on each host (unit states, C(patronictl list -f json),
    C(etcdctl endpoint health/status -w json), C(redis-cli INFO replication), each Sentinel's
    C(get-master-addr-by-name), the VIP, HAProxy's stats CSV, the Airflow jobs probe, the failover
    controller's C(status --json), certificate expiry dates) and returns the table the playbook
    prints and the problems it found.
  - Each problem names the host, what is wrong and the runbook page (under C(docs/runbooks/)) that
    says what to do. A problem of severity C(error) makes the playbook fail; C(warning) is printed.
  - Changes nothing, reads no file: the playbook passes every input.
options:
  _input:
    description: Per inventory host, what the playbook read (keys in the playbook's last play).
    type: dict
    required: true
  settings:
    description: >-
      The cluster's shape and thresholds (C(vip), C(db_replicated), C(broker_replicated),
      C(failover_mode), C(max_replica_lag_mb), C(certificate_min_days), C(now) as epoch seconds).
    type: dict
    required: true
author: airflow-ha contributors
"""

EXAMPLES = r"""
- name: Status | The table and the problems
  ansible.builtin.set_fact:
    status_summary: "{{ status_hosts | airflow_ha.cluster.cluster_status(status_settings) }}"
"""

RETURN = r"""
_value:
  description: C(lines), the table as text lines; C(problems), a list of C({what, host, runbook, severity});
    C(errors), how many problems have severity C(error).
  type: dict
"""

import json
from collections import Counter
from datetime import UTC, datetime
from typing import Any

RUNBOOKS = "docs/runbooks/"
# Which runbook page handles a unit that is not active.
UNIT_RUNBOOKS = {
    "patroni": "database-failover.md",
    "postgresql": "database-failover.md",
    "etcd": "database-failover.md",
    "redis-server": "broker-failover.md",
    "redis-sentinel": "broker-failover.md",
    "haproxy": "loadbalancer-failover.md",
    "keepalived": "loadbalancer-failover.md",
    "airflow-api-server": "api-server-failure.md",
    "airflow-scheduler": "scheduler-failure.md",
    "airflow-dag-processor": "scheduler-failure.md",
    "airflow-triggerer": "scheduler-failure.md",
    "airflow-ha-watchdog": "scheduler-failure.md",
    "airflow-ha-failover": "failover-controller.md",
    "airflow-worker": "worker-failure.md",
}
# Airflow's job type for each scheduler-host component (its row in the jobs table).
JOB_TYPES = {"scheduler": "SchedulerJob", "dag-processor": "DagProcessorJob", "triggerer": "TriggererJob"}
# Patroni states of a member that serves (patronictl list: `running` primary, `streaming` replica).
SERVING = {"running", "streaming"}
PROBE_MARKER = "AIRFLOW_HA_STATUS "


def _unit_name(unit: str) -> str:
    return unit.removesuffix(".service")


def _unit_runbook(unit: str) -> str:
    name = _unit_name(unit)
    for prefix, page in UNIT_RUNBOOKS.items():
        if name == prefix or name.startswith(prefix + "@"):
            return page
    return "deploy-or-update.md"


# --- parsers of the tools' outputs --------------------------------------------------------------


def parse_probe(text: str | None) -> dict[str, Any]:
    """The host probe: `fqdn NAME`, `addresses A B`, then `unit UNIT STATE` lines."""
    found: dict[str, Any] = {"fqdn": "", "addresses": [], "units": {}}
    for line in (text or "").splitlines():
        kind, _, rest = line.partition(" ")
        if kind == "fqdn":
            found["fqdn"] = rest.strip()
        elif kind == "addresses":
            found["addresses"] = rest.split()
        elif kind == "unit":
            unit, _, state = rest.partition(" ")
            found["units"][unit] = state.strip() or "unknown"
    return found


def parse_json(text: str | None) -> Any:
    """JSON output of a tool, or None when there is none (the tool failed or printed an error)."""
    if not text or not text.strip():
        return None
    try:
        return json.loads(text)
    except ValueError:
        return None


def parse_info(text: str | None) -> dict[str, str]:
    """`INFO replication` as key: value (section headers and blank lines dropped)."""
    info: dict[str, str] = {}
    for line in (text or "").splitlines():
        line = line.strip()
        if line and not line.startswith("#") and ":" in line:
            key, _, value = line.partition(":")
            info[key] = value
    return info


def parse_sentinel(text: str | None) -> str | None:
    """A Sentinel's `get-master-addr-by-name` answer (two lines: address, port) as `address:port`."""
    lines = [x.strip() for x in (text or "").splitlines() if x.strip()]
    if len(lines) == 2 and lines[1].isdigit() and not lines[0].startswith(("ERR", "NOAUTH", "WRONGPASS")):
        return f"{lines[0]}:{lines[1]}"
    return None


def parse_haproxy_csv(text: str | None) -> list[dict[str, str]]:
    """HAProxy's `/stats;csv`: one row per server (frontends and backends' own rows dropped)."""
    lines = (text or "").splitlines()
    if not lines or not lines[0].startswith("# "):
        return []
    header = lines[0][2:].split(",")
    rows = []
    for line in lines[1:]:
        if not line.strip():
            continue
        row = dict(zip(header, line.split(","), strict=False))
        if row.get("svname") not in ("FRONTEND", "BACKEND"):
            rows.append(row)
    return rows


def parse_airflow_probe(text: str | None) -> dict[str, Any] | None:
    """The Airflow probe's JSON line (Airflow may log other lines around it)."""
    for line in (text or "").splitlines():
        if line.startswith(PROBE_MARKER):
            value = parse_json(line[len(PROBE_MARKER) :])
            if isinstance(value, dict):
                return value
    return None


def _lag_mb(member: dict[str, Any]) -> int | None:
    lags = [member.get(k) for k in ("Receive Lag", "Replay Lag", "Lag in MB")]
    numbers = [int(x) for x in lags if isinstance(x, int | float) or (isinstance(x, str) and x.isdigit())]
    return max(numbers) if numbers else None


def _age(seconds: Any) -> str:
    if not isinstance(seconds, int | float):
        return "-"
    if seconds < 120:
        return f"{seconds:.0f}s ago"
    return f"{seconds / 60:.0f}m ago"


def _table(header: list[str], rows: list[list[str]], indent: str = "  ") -> list[str]:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    return [
        (indent + "  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True))).rstrip()
        for row in [header, *rows]
    ]


class Status:
    """One pass over the inputs: the table's sections and the problems, in inventory order."""

    def __init__(self, hosts: dict[str, dict[str, Any]], settings: dict[str, Any]) -> None:
        self.hosts = hosts
        self.settings = settings
        self.lines: list[str] = []
        self.problems: list[dict[str, str]] = []
        self.probes = {h: parse_probe(d.get("probe")) for h, d in hosts.items()}
        # Address -> host: what each host reported (hostname -I) and its inventory address.
        self.by_address: dict[str, str] = {}
        for host, data in hosts.items():
            for address in [*self.probes[host]["addresses"], data.get("address") or ""]:
                if address:
                    self.by_address.setdefault(address, host)

    # -- helpers
    def problem(self, host: str, what: str, runbook: str, severity: str = "error") -> None:
        self.problems.append(
            {"host": host, "what": what, "runbook": RUNBOOKS + runbook, "severity": severity}
        )

    def in_group(self, group: str) -> list[str]:
        return [h for h, d in self.hosts.items() if group in d.get("groups", [])]

    def reachable(self, host: str) -> bool:
        return bool(self.hosts[host].get("reachable"))

    def name_of(self, address: str | None) -> str:
        if not address:
            return "-"
        bare = address.rsplit(":", 1)[0] if address.count(":") == 1 else address
        return self.by_address.get(bare, address)

    # -- sections
    def section_hosts(self) -> None:
        rows = []
        for host, data in self.hosts.items():
            groups = " ".join(sorted(g.removeprefix("airflow_") for g in data.get("groups", [])))
            if not self.reachable(host):
                # Ansible's message ends with ssh's own reason ("... ssh: connect to host ...: refused").
                reason = str(data.get("error") or "no answer").strip().rsplit("ssh: ", 1)[-1][:100]
                rows.append([host, groups, "UNREACHABLE", reason])
                self.problem(host, f"unreachable over SSH ({reason})", "frozen-or-partitioned-host.md")
                continue
            units = self.probes[host]["units"]
            by_state: dict[str, list[str]] = {}
            for unit in data.get("expected_units", []):
                state = units.get(unit, "unknown")
                by_state.setdefault(state, []).append(_unit_name(unit))
                if state != "active":
                    self.problem(host, f"{_unit_name(unit)} is {state}", _unit_runbook(unit))
            for unit in data.get("guarded_units", []):
                state = units.get(unit, "unknown")
                by_state.setdefault(f"{state} (guarded)", []).append(_unit_name(unit))
            # Units not active first, in capitals; then the active ones (and a standby's guarded ones).
            quiet = [k for k in by_state if k.startswith("active") or "guarded" in k]
            states = [f"{k.upper()}: {' '.join(by_state[k])}" for k in by_state if k not in quiet]
            states += [f"{k}: {' '.join(by_state[k])}" for k in quiet]
            rows.append([host, groups, "reachable", "; ".join(states)])
        self.lines += ["Hosts and services", *_table(["HOST", "GROUPS", "SSH", "UNITS"], rows)]

    def section_database(self) -> None:
        db_hosts = self.in_group("airflow_metadata_db")
        if not db_hosts:
            return
        if not self.settings.get("db_replicated"):
            self.lines += ["PostgreSQL: one host, no Patroni (" + db_hosts[0] + ")"]
            return
        view, seen_from = None, None
        for host in db_hosts:
            members = parse_json(self.hosts[host].get("patroni"))
            if isinstance(members, list) and self.reachable(host):
                view, seen_from = members, host
                break
        if view is None:
            errors = [str(self.hosts[h].get("patroni_stderr") or "") for h in db_hosts if self.reachable(h)]
            reason = next((e for e in errors if e), "no answer")[:120]
            self.lines += [f"PostgreSQL (Patroni): no member answered `patronictl list` ({reason})"]
            self.problem(
                ",".join(db_hosts),
                f"no database host could list the Patroni cluster (patronictl list: {reason})",
                "database-failover.md",
            )
            return
        rows = []
        for m in view:
            lag = _lag_mb(m)
            rows.append(
                [
                    str(m.get("Member", "?")),
                    str(m.get("Host", "")),
                    str(m.get("Role", "")),
                    str(m.get("State", "")),
                    str(m.get("TL", "")),
                    "" if lag is None else str(lag),
                ]
            )
        self.lines += [
            f"PostgreSQL (Patroni, as {seen_from} sees it)",
            *_table(["MEMBER", "HOST", "ROLE", "STATE", "TL", "LAG MB"], rows),
        ]
        leaders = [str(m.get("Member")) for m in view if m.get("Role") in ("Leader", "Standby Leader")]
        if len(leaders) != 1:
            self.problem(
                ",".join(leaders) or seen_from or "",
                f"{len(leaders)} Patroni leaders ({', '.join(leaders) or 'none'}); there must be exactly one",
                "database-failover.md",
            )
        names = {str(m.get("Member")) for m in view}
        for host in db_hosts:
            if host not in names:
                self.problem(host, "not a member of the Patroni cluster", "database-failover.md")
        for m in view:
            if str(m.get("State", "")) not in SERVING:
                self.problem(
                    str(m.get("Member")), f"Patroni member is {m.get('State', '?')}", "database-failover.md"
                )
            lag = _lag_mb(m)
            limit = int(self.settings.get("max_replica_lag_mb", 16))
            if lag is not None and lag > limit:
                self.problem(
                    str(m.get("Member")),
                    f"replica lags {lag} MB behind the leader (limit status_max_replica_lag_mb = {limit})",
                    "database-failover.md",
                )
        if len(db_hosts) >= 3 and not any(m.get("Role") in ("Sync Standby", "Quorum Standby") for m in view):
            self.problem(
                ",".join(db_hosts),
                "no synchronous standby: a leader failure now could lose acknowledged commits",
                "database-failover.md",
            )

    def section_etcd(self) -> None:
        etcd_hosts = self.in_group("airflow_etcd")
        if not etcd_hosts:
            return
        statuses: dict[str, dict[str, Any]] = {}
        ids: dict[int, str] = {}
        for host in etcd_hosts:
            status = parse_json(self.hosts[host].get("etcd_status"))
            entry = status[0] if isinstance(status, list) and status else None
            if isinstance(entry, dict):
                statuses[host] = entry.get("Status", {}) or {}
                member = (statuses[host].get("header") or {}).get("member_id")
                if member:
                    ids[int(member)] = host
        rows = []
        leaders: dict[str, str] = {}
        for host in etcd_hosts:
            if not self.reachable(host):
                rows.append([host, "unreachable", "-", "-"])
                continue
            health = parse_json(self.hosts[host].get("etcd_health"))
            healthy = (
                isinstance(health, list)
                and bool(health)
                and all(isinstance(e, dict) and e.get("health") for e in health)
            )
            status = statuses.get(host, {})
            leader = status.get("leader")
            leader_name = ids.get(int(leader), f"id {int(leader):x}") if leader else "none"
            if leader:
                leaders[host] = leader_name
            rows.append(
                [
                    host,
                    "healthy" if healthy else "UNHEALTHY",
                    leader_name,
                    str(status.get("raftTerm", (status.get("header") or {}).get("raft_term", "-"))),
                ]
            )
            if not healthy:
                detail = ""
                if isinstance(health, list) and health and isinstance(health[0], dict):
                    detail = str(health[0].get("error", ""))[:120]
                self.problem(
                    host,
                    f"etcd member is not healthy{': ' + detail if detail else ''}",
                    "database-failover.md",
                )
        self.lines += ["etcd", *_table(["MEMBER", "HEALTH", "LEADER", "RAFT TERM"], rows)]
        named = set(leaders.values())
        answering = [h for h in etcd_hosts if self.reachable(h)]
        if len(named) != 1 or len(leaders) != len(answering):
            self.problem(
                ",".join(etcd_hosts),
                "etcd members do not agree on one leader ("
                + ", ".join(f"{h}: {leaders.get(h, 'none')}" for h in answering)
                + ")",
                "database-failover.md",
            )

    def section_broker(self) -> None:
        broker_hosts = self.in_group("airflow_broker")
        if not broker_hosts:
            return
        infos = {h: parse_info(self.hosts[h].get("redis")) for h in broker_hosts if self.reachable(h)}
        replicated = bool(self.settings.get("broker_replicated"))
        answers = {
            h: parse_sentinel(self.hosts[h].get("sentinel"))
            for h in broker_hosts
            if self.reachable(h) and replicated
        }
        named = Counter(a for a in answers.values() if a)
        master_address = named.most_common(1)[0][0] if named else None
        master_host = self.name_of(master_address) if master_address else None
        masters = [h for h, i in infos.items() if i.get("role") == "master"]
        master_offset = None
        if master_host in infos:
            master_offset = infos[master_host].get("master_repl_offset")
        rows = []
        for host in broker_hosts:
            if not self.reachable(host):
                rows.append([host, "unreachable", "-", "-", "-", "-"])
                continue
            info = infos[host]
            role = info.get("role", "no answer")
            offset = info.get("master_repl_offset" if role == "master" else "slave_repl_offset", "-")
            behind = "-"
            if role == "slave" and master_offset and offset.isdigit() and master_offset.isdigit():
                behind = str(max(int(master_offset) - int(offset), 0))
            link = info.get("master_link_status", "-") if role == "slave" else "-"
            if role == "slave":
                link += f" to {self.name_of(info.get('master_host'))}"
            sentinel = self.name_of(answers.get(host)) if replicated else "-"
            if replicated and answers.get(host) is None:
                sentinel = "NO ANSWER"
            rows.append([host, role, offset, behind, link, sentinel])
        self.lines += [
            "Redis" + (f" (master {master_host}, {master_address})" if master_address else ""),
            *_table(["HOST", "ROLE", "OFFSET", "BEHIND", "LINK", "SENTINEL NAMES"], rows),
        ]
        for host, info in infos.items():
            if not info:
                self.problem(
                    host, "Redis did not answer INFO replication as the admin user", "broker-failover.md"
                )
        if not replicated:
            if infos and not masters:
                self.problem(broker_hosts[0], "Redis is not a master", "broker-failover.md")
            return
        for host, answer in answers.items():
            if answer is None:
                self.problem(host, "this host's Sentinel names no master", "broker-failover.md")
            elif master_address and answer != master_address:
                self.problem(
                    host,
                    f"this Sentinel names {self.name_of(answer)} ({answer}) as master, "
                    f"the others {master_host}",
                    "broker-failover.md",
                )
        if not master_address:
            self.problem(",".join(broker_hosts), "no Sentinel names a Redis master", "broker-failover.md")
        if len(masters) != 1 or (master_host and masters != [master_host]):
            self.problem(
                ",".join(masters) or ",".join(broker_hosts),
                f"{len(masters)} Redis nodes say they are master ({', '.join(masters) or 'none'}); "
                f"the Sentinels name {master_host or 'none'}",
                "broker-failover.md",
            )
        for host, info in infos.items():
            if host == master_host or info.get("role") != "slave":
                continue
            if info.get("master_link_status") != "up":
                self.problem(
                    host,
                    f"Redis replica's link to its master is {info.get('master_link_status', '?')}",
                    "broker-failover.md",
                )
            elif master_address and info.get("master_host") != master_address.rsplit(":", 1)[0]:
                self.problem(
                    host,
                    f"Redis replica follows {self.name_of(info.get('master_host'))}, "
                    f"not the master {master_host}",
                    "broker-failover.md",
                )

    def section_loadbalancers(self) -> None:
        lb_hosts = self.in_group("airflow_loadbalancer")
        if not lb_hosts:
            return
        vip = str(self.settings.get("vip") or "")
        rows = []
        holders = []
        for host in lb_hosts:
            if not self.reachable(host):
                rows.append([host, "unreachable", "-", "-"])
                continue
            data = self.hosts[host]
            held = bool((data.get("vip") or "").strip())
            if held:
                holders.append(host)
            servers = parse_haproxy_csv(data.get("haproxy"))
            cells = []
            for backend in ("airflow_api", "postgres"):
                mine = [s for s in servers if s.get("pxname") == backend]
                if not mine:
                    continue
                up = [s for s in mine if str(s.get("status", "")).startswith("UP")]
                down = [f"{s.get('svname')}={s.get('status')}" for s in mine if s not in up]
                # The API: which api-servers are out; PostgreSQL: which member is in (the primary).
                shown = down if backend == "airflow_api" else [str(s.get("svname")) for s in up]
                cells.append(f"{len(up)}/{len(mine)} UP" + (f" ({' '.join(shown)})" if shown else ""))
                if backend == "airflow_api" and down:
                    self.problem(
                        host,
                        f"HAProxy: api-server backends not UP: {', '.join(down)}",
                        "api-server-failure.md",
                        "warning",
                    )
                if backend == "postgres" and len(up) != 1:
                    self.problem(
                        host,
                        f"HAProxy: {len(up)} PostgreSQL servers UP (exactly one, the primary, must be)",
                        "database-failover.md",
                    )
            if not servers:
                self.problem(host, "HAProxy's stats page did not answer", "loadbalancer-failover.md")
            while len(cells) < 2:
                cells.append("-")
            rows.append([host, ("holds" if held else "-") if vip else "n/a", *cells])
        self.lines += [
            "Load balancers" + (f" (VIP {vip})" if vip else " (no VIP)"),
            *_table(["HOST", "VIP", "API BACKENDS", "POSTGRES BACKENDS"], rows),
        ]
        if vip and len(holders) != 1:
            self.problem(
                ",".join(holders) or ",".join(lb_hosts),
                f"{len(holders)} load balancers hold the VIP {vip} ({', '.join(holders) or 'none'}); "
                "exactly one must",
                "loadbalancer-failover.md",
            )

    def section_airflow(self) -> None:
        sched_hosts = self.in_group("airflow_scheduler")
        worker_hosts = self.in_group("airflow_worker")
        mode = str(self.settings.get("failover_mode") or "active_active")
        leader = None
        if mode == "active_standby":
            for host in sched_hosts:
                status = parse_json(self.hosts[host].get("failover"))
                if isinstance(status, dict) and self.reachable(host):
                    leader = status.get("live_holder")
                    break
            if leader is None:
                self.problem(
                    ",".join(sched_hosts),
                    "the failover controller has no live leader (airflow-ha-failover status)",
                    "failover-controller.md",
                )
            # The guarded units (the scheduler) run on the lease holder, and nowhere else.
            for host in sched_hosts:
                units = self.probes[host]["units"]
                for unit in self.hosts[host].get("guarded_units", []):
                    state = units.get(unit, "unknown")
                    if host == leader and state != "active":
                        self.problem(
                            host,
                            f"the failover leader's {_unit_name(unit)} is {state}",
                            "scheduler-failure.md",
                        )
                    elif host != leader and state == "active":
                        self.problem(
                            host,
                            f"{_unit_name(unit)} runs on a standby (the leader is {leader or 'none'})",
                            "failover-controller.md",
                        )
        rows = []
        online: set[str] | None = None
        asked_from = []
        for host in sched_hosts:
            if not self.reachable(host):
                rows.append([host, "unreachable", "-", "-"])
                continue
            probe = parse_airflow_probe(self.hosts[host].get("airflow"))
            expected = {_unit_name(u) for u in self.hosts[host].get("expected_units", [])}
            guarded = {_unit_name(u) for u in self.hosts[host].get("guarded_units", [])}
            if probe is None or "jobs" not in probe:
                error = (
                    (probe or {}).get("jobs_error") or self.hosts[host].get("airflow_stderr") or "no answer"
                )
                rows.append([host, f"probe failed: {str(error)[:60]}", "-", "-"])
                self.problem(
                    host, f"could not read Airflow's jobs table ({str(error)[:120]})", "scheduler-failure.md"
                )
                continue
            cells = []
            for component, job_type in JOB_TYPES.items():
                unit = f"airflow-{component}"
                wanted = unit in expected or (unit in guarded and leader == host)
                job = (probe.get("jobs") or {}).get(job_type)
                if job is None:
                    cells.append("no job" if wanted or unit in guarded else "-")
                else:
                    alive = "alive" if job.get("alive") else "DEAD"
                    cells.append(f"{alive} {_age(job.get('age'))}")
                if unit in guarded and leader != host:
                    cells[-1] += " (standby)"
                    continue
                if wanted and not (job and job.get("alive")):
                    self.problem(
                        host,
                        f"{component} has not heartbeated in time (last {_age((job or {}).get('age'))})",
                        "scheduler-failure.md",
                    )
            rows.append([host, *cells])
            if isinstance(probe.get("workers"), list):
                online = (online or set()) | {str(w) for w in probe["workers"]}
                asked_from.append(host)
        if sched_hosts:
            title = "Airflow scheduler hosts (latest heartbeat of each job)"
            if mode == "active_standby":
                title += f", failover leader {leader or 'NONE'}"
            self.lines += [title, *_table(["HOST", "SCHEDULER", "DAG-PROCESSOR", "TRIGGERER"], rows)]
        if not worker_hosts or not sched_hosts:
            return
        if online is None:
            self.lines += ["Celery workers: no scheduler host could ask the workers (celery inspect ping)"]
            self.problem(
                ",".join(sched_hosts), "no scheduler host could ping the Celery workers", "worker-failure.md"
            )
            return
        self.lines += [
            f"Celery workers online (ping from {', '.join(asked_from)}): "
            + (", ".join(sorted(online)) or "none")
        ]
        for host in worker_hosts:
            probe = self.probes[host]
            names = {host, host.split(".")[0], probe["fqdn"], probe["fqdn"].split(".")[0]} - {""}
            if not any(w.split("@", 1)[-1] in names for w in online):
                self.problem(host, "its Celery worker does not answer a ping", "worker-failure.md")

    def section_certificates(self) -> None:
        now = float(self.settings.get("now") or datetime.now(UTC).timestamp())
        limit = int(self.settings.get("certificate_min_days", 30))
        rows = []
        for host, data in self.hosts.items():
            for path, not_after in sorted((data.get("certificates") or {}).items()):
                try:
                    expires = datetime.strptime(str(not_after), "%Y%m%d%H%M%SZ").replace(tzinfo=UTC)
                except ValueError:
                    rows.append([host, path, str(not_after), "?"])
                    continue
                days = int((expires.timestamp() - now) // 86400)
                rows.append([host, path, expires.strftime("%Y-%m-%d"), str(days)])
                if days < limit:
                    what = "expired" if days < 0 else f"expires in {days} days"
                    self.problem(
                        host,
                        f"certificate {path} {what} ({expires:%Y-%m-%d}; "
                        f"limit status_certificate_min_days = {limit})",
                        "deploy-or-update.md",
                    )
        if rows:
            self.lines += ["Certificates", *_table(["HOST", "FILE", "EXPIRES", "DAYS LEFT"], rows)]

    def run(self) -> dict[str, Any]:
        self.section_hosts()
        self.section_database()
        self.section_etcd()
        self.section_broker()
        self.section_loadbalancers()
        self.section_airflow()
        self.section_certificates()
        errors = [p for p in self.problems if p["severity"] == "error"]
        if self.problems:
            self.lines += ["Problems"]
            self.lines += [
                f"  {p['severity'].upper()} {p['host']}: {p['what']} (see {p['runbook']})"
                for p in self.problems
            ]
        else:
            self.lines += ["Problems: none"]
        return {"lines": self.lines, "problems": self.problems, "errors": len(errors)}


def cluster_status(hosts: dict[str, dict[str, Any]], settings: dict[str, Any]) -> dict[str, Any]:
    """The status table's lines and the problems found, from what status.yml read on each host."""
    return Status(dict(hosts), dict(settings)).run()


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {"cluster_status": cluster_status}
