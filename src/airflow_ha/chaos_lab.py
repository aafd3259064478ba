"""How the chaos run reaches the lab: docker for the containers, the controller's own network for the
Patroni REST API and the Redis Sentinels (the lab addresses are routable from the docker host), and a
Python on an Airflow host for the ledger table (that host's venv has the PostgreSQL driver and is
allowed through pg_hba).

The parsing and decisions are plain functions, unit-tested; `LabOps` does the I/O.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import os
import socket
import ssl
import subprocess
import time
from collections import Counter
from collections.abc import Collection, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import parse_qsl, unquote, urlsplit

import requests
import yaml

from airflow_ha import docker_hosts
from airflow_ha import lab as labmod
from airflow_ha.api import AirflowApi, ApiError
from airflow_ha.chaos_faults import ChaosError
from airflow_ha.chaos_invariants import (
    etcd_leader,
    etcd_problems,
    loadbalancer_problems,
    scheduler_problems,
    sentinel_problems,
    unit_problems,
    vrrp_state,
)
from airflow_ha.chaos_report import LedgerRow, TaskStart
from airflow_ha.docker_hosts import DockerError
from airflow_ha.lab import Lab

# Keep in step with dags/airflow_ha_chaos.py (tests/test_chaos.py checks they agree).
DAG_ID = "airflow_ha_chaos"
LEDGER_CONN_ID = "airflow_ha_ledger"
LEDGER_TABLE = "airflow_ha_chaos_ledger"

# No unique constraint on (dag_id, run_id, task_id, map_index, try_number): a try whose work runs
# twice shows as two rows. Each execution of a task writes a `start` row before its work and a `done`
# row after it, both with its `attempt_id` (one per execution), which also lets a task retry its
# insert after a lost connection without writing itself twice. `phase` came later: ADD COLUMN IF NOT
# EXISTS migrates a table from before it, whose rows were all completions ('done').
LEDGER_DDL = (
    f"""CREATE TABLE IF NOT EXISTS {LEDGER_TABLE} (
    id bigserial PRIMARY KEY,
    dag_id text NOT NULL,
    run_id text NOT NULL,
    task_id text NOT NULL,
    map_index integer NOT NULL,
    try_number integer NOT NULL,
    hostname text NOT NULL,
    attempt_id text NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT clock_timestamp()
)""",
    f"ALTER TABLE {LEDGER_TABLE} ADD COLUMN IF NOT EXISTS phase text NOT NULL DEFAULT 'done'",
    f"CREATE INDEX IF NOT EXISTS {LEDGER_TABLE}_run ON {LEDGER_TABLE} (run_id)",
    f"CREATE INDEX IF NOT EXISTS {LEDGER_TABLE}_attempt ON {LEDGER_TABLE} (attempt_id)",
)
LEDGER_QUERY = (
    "SELECT dag_id, run_id, task_id, map_index, try_number, hostname, recorded_at, phase, attempt_id "
    f"FROM {LEDGER_TABLE} WHERE starts_with(run_id, %s) ORDER BY id"
)

# libpq settings so a client notices a dead database host in seconds rather than at the kernel's TCP
# timeout (a killed container answers nothing, not even a reset).
LIBPQ_FAST_FAIL: dict[str, str] = {
    "connect_timeout": "10",
    "keepalives": "1",
    "keepalives_idle": "5",
    "keepalives_interval": "2",
    "keepalives_count": "3",
    "tcp_user_timeout": "15000",
}


@dataclass(frozen=True)
class DbAddress:
    """The metadata database as Airflow's `[database] sql_alchemy_conn` names it."""

    hosts: tuple[tuple[str, int], ...]
    user: str
    password: str
    dbname: str
    params: dict[str, str] = field(default_factory=dict)

    def libpq(self) -> dict[str, str]:
        """Keyword arguments for psycopg2/psycopg `connect()`."""
        return {
            **LIBPQ_FAST_FAIL,
            **self.params,
            "host": ",".join(h for h, _ in self.hosts),
            "port": ",".join(str(p) for _, p in self.hosts),
            "user": self.user,
            "password": self.password,
            "dbname": self.dbname,
        }

    def with_root_cert(self, ca_file: str | None) -> DbAddress:
        """The same address verified against `ca_file` instead of the `sslrootcert` airflow.cfg names
        (a path on the Airflow hosts): for connections from the controller, which keeps the cluster
        CA elsewhere. Unchanged when the URL names no `sslrootcert` or no file is given."""
        if not ca_file or "sslrootcert" not in self.params:
            return self
        return replace(self, params={**self.params, "sslrootcert": ca_file})

    def connection_body(self, conn_id: str = LEDGER_CONN_ID) -> dict[str, Any]:
        """The Airflow connection (REST body) the chaos DAG's tasks use to reach the ledger."""
        ports = {p for _, p in self.hosts}
        extra = {**LIBPQ_FAST_FAIL, **self.params}
        if len(ports) > 1:  # libpq takes one port per host; PostgresHook passes extras to connect()
            extra["port"] = ",".join(str(p) for _, p in self.hosts)
        return {
            "connection_id": conn_id,
            "conn_type": "postgres",
            "description": "airflow-ha chaos ledger (python -m airflow_ha.chaos); the metadata database",
            "host": ",".join(h for h, _ in self.hosts),
            "port": self.hosts[0][1],
            "login": self.user,
            "password": self.password,
            "schema": self.dbname,
            "extra": json.dumps(extra),
        }


def parse_sql_alchemy_conn(text: str) -> DbAddress:
    """Parse `sql_alchemy_conn = postgresql+psycopg2://user:pw@host:port/db?...` as airflow.cfg holds it
    (a `%` is written `%%` there). Several hosts may be given as `h1:p1,h2:p2` or `?host=h1:p1&host=...`."""
    value = text.strip()
    if "=" in value.split("://", 1)[0]:
        value = value.split("=", 1)[1].strip()
    value = value.replace("%%", "%")
    if not value.startswith(("postgresql", "postgres")) or "://" not in value:
        raise ChaosError(f"sql_alchemy_conn is not a PostgreSQL URL: {value.split('@')[-1]!r}")
    parts = urlsplit(value)
    userinfo, _, hostlist = parts.netloc.rpartition("@")
    user, _, password = userinfo.partition(":")
    params: dict[str, str] = {}
    query_hosts: list[str] = []
    for key, val in parse_qsl(parts.query):
        if key == "host":
            query_hosts.append(val)
        else:
            params[key] = val
    specs = [h for h in hostlist.split(",") if h] + query_hosts
    if not specs:
        raise ChaosError("sql_alchemy_conn names no database host")
    hosts = tuple(_host_port(spec) for spec in specs)
    return DbAddress(hosts, unquote(user), unquote(password), unquote(parts.path.lstrip("/")), params)


def _host_port(spec: str) -> tuple[str, int]:
    if spec.startswith("["):  # [v6]:port
        host, _, rest = spec[1:].partition("]")
        return host, int(rest.lstrip(":") or 5432)
    host, _, port = spec.partition(":")
    return host, int(port or 5432)


# ---------------------------------------------------------------------------------------------------
# Parsing what the cluster answers
# ---------------------------------------------------------------------------------------------------
def parse_time(value: str | None) -> dt.datetime | None:
    if not value:
        return None
    parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


def task_starts(task_instances: list[dict[str, Any]]) -> list[TaskStart]:
    return [
        TaskStart(
            run_id=ti["dag_run_id"],
            task_id=ti["task_id"],
            map_index=int(ti.get("map_index", -1)),
            try_number=int(ti.get("try_number") or 0),
            queued_at=parse_time(ti.get("queued_when")),
            started_at=parse_time(ti.get("start_date")),
            hostname=ti.get("hostname") or "",
        )
        for ti in task_instances
    ]


def parse_ledger(text: str) -> list[LedgerRow]:
    """The ledger reader's JSON output: a list of [dag, run, task, map, try, host, iso time, phase,
    attempt id]."""
    rows = []
    for dag_id, run, task_id, map_index, try_number, host, when, phase, attempt in json.loads(text):
        recorded = parse_time(when)
        assert recorded is not None
        rows.append(
            LedgerRow(dag_id, run, task_id, int(map_index), int(try_number), host, recorded, phase, attempt)
        )
    return rows


def health_problems(payload: Mapping[str, Any]) -> list[str]:
    """Components of `/api/v2/monitor/health` that are not healthy (a component that never ran,
    status null, is not counted)."""
    problems = []
    for component, info in sorted(payload.items()):
        status = info.get("status") if isinstance(info, dict) else None
        if status is not None and status != "healthy":
            problems.append(f"{component} {status}")
    if not payload:
        problems.append("empty health answer")
    return problems


def network_problem(state: str | None, networks: Mapping[str, Any], network: str, address: str) -> str | None:
    """Why a lab container is not as the inventory says (stopped, or off its network), or None."""
    if state != "running":
        return f"{state or 'missing'}"
    attached = networks.get(network)
    if not attached:
        return f"not attached to {network}"
    if attached.get("IPAddress") != address:
        return f"at {attached.get('IPAddress') or 'no address'} on {network}, expected {address}"
    return None


def lab_host_for(hostname: str, lab: Lab, group: str | None = None) -> str | None:
    """The lab host a task instance's `hostname` names (a name, an FQDN or an address)."""
    names = lab.groups.get(group, []) if group else [h.name for h in lab.hosts]
    for name in names:
        if hostname in (name, lab.address(name)) or hostname.split(".", 1)[0] == name:
            return name
    return None


def busiest(hostnames: list[str], lab: Lab, group: str, avoid: Collection[str] = ()) -> str | None:
    counts = Counter(h for h in (lab_host_for(n, lab, group) for n in hostnames) if h and h not in avoid)
    return counts.most_common(1)[0][0] if counts else None


def holds_address(ip_addr_output: str, address: str) -> bool:
    """Whether `ip -o addr show` lists the address on some interface."""
    return any(f" {address}/" in line for line in ip_addr_output.splitlines())


def choose_primary(codes: Mapping[str, int | None]) -> str | None:
    """The database host whose Patroni answered 200 on /primary. Raises when Patroni runs but names
    no primary (mid-failover). Returns None when no Patroni answered at all (plain PostgreSQL)."""
    primaries = [host for host, code in codes.items() if code == 200]
    if primaries:
        return primaries[0]
    if any(code is not None for code in codes.values()):
        answers = ", ".join(f"{h}: {c}" for h, c in codes.items())
        raise ChaosError(f"Patroni runs but no member is primary ({answers})")
    return None


def as_ip(value: object) -> str | None:
    """An address from an inventory value such as 172.30.10.10 or 172.30.10.10/24, else None."""
    if not isinstance(value, str):
        return None
    try:
        return str(ipaddress.ip_interface(value.strip()).ip)
    except ValueError:
        return None


# Redis protocol (RESP), enough to ask a Sentinel one question without redis-cli on the controller.
def encode_command(*args: str) -> bytes:
    out = [f"*{len(args)}\r\n".encode()]
    for arg in args:
        data = arg.encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


class ByteReader(Protocol):
    """What read_reply needs of a stream: a socket's makefile("rwb") or an io.BytesIO."""

    def readline(self, size: int | None = -1, /) -> bytes: ...

    def read(self, size: int | None = -1, /) -> bytes: ...


def read_reply(stream: ByteReader) -> Any:
    """One RESP reply: str for simple strings, bytes for bulk strings, list for arrays, None for
    nil; an error reply raises ChaosError."""
    line = stream.readline()
    if not line.endswith(b"\r\n"):
        raise ChaosError("connection closed by the Sentinel")
    kind, body = line[:1], line[1:-2]
    if kind == b"+":
        return body.decode()
    if kind == b"-":
        raise ChaosError(body.decode())
    if kind == b":":
        return int(body)
    if kind == b"$":
        size = int(body)
        if size < 0:
            return None
        data = stream.read(size + 2)
        return data[:-2]
    if kind == b"*":
        count = int(body)
        return None if count < 0 else [read_reply(stream) for _ in range(count)]
    raise ChaosError(f"unexpected Sentinel reply {line[:40]!r}")


@dataclass(frozen=True)
class ControlTls:
    """How the lab tooling reaches etcd's and Patroni's APIs. With the inventory's cluster CA
    (playbooks/certificates.yml): HTTPS verified against it, presenting the operator's client
    certificate (etcd accepts no client without one). Without it: plain HTTP."""

    ca: str | None = None
    cert: tuple[str, str] | None = None

    @classmethod
    def for_inventory(cls, inventory: Path) -> ControlTls:
        pki = inventory / ".secrets" / "pki"
        if not (pki / "ca.crt").is_file():
            return cls()
        client = (str(pki / "clients" / "admin.crt"), str(pki / "clients" / "admin.key"))
        return cls(str(pki / "ca.crt"), client if Path(client[0]).is_file() else None)

    @property
    def scheme(self) -> str:
        return "https" if self.ca else "http"

    def options(self) -> dict[str, Any]:
        """Keyword arguments for requests."""
        return {"verify": self.ca, "cert": self.cert} if self.ca else {}


def http_status(url: str, timeout: float = 3.0, tls: ControlTls | None = None) -> int | None:
    """The HTTP status of GET `url`, or None when nothing answers in time."""
    try:
        return requests.get(url, timeout=timeout, **(tls or ControlTls()).options()).status_code
    except requests.RequestException:
        return None


# Where the broker role puts the cluster CA on a broker host (roles/broker/vars/main.yml).
BROKER_HOST_CA = "/etc/redis/tls/ca.crt"


@contextmanager
def redis_socket(
    address: str, port: int, timeout: float, ca_file: str | None = None
) -> Iterator[socket.socket]:
    """A connection to a Redis server or Sentinel: with `ca_file` (the broker role's TLS), TLS 1.2
    or newer whose certificate chains to that CA and names `address` (as Celery's redis-py checks
    it); without, plain TCP. A failed verification raises ssl.SSLCertVerificationError (an OSError)."""
    with socket.create_connection((address, port), timeout=timeout) as sock:
        if not ca_file:
            yield sock
            return
        context = ssl.create_default_context(cafile=ca_file)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        with context.wrap_socket(sock, server_hostname=address) as tls:
            yield tls


def redis_call(
    address: str,
    port: int,
    password: str,
    *command: str,
    timeout: float = 3.0,
    username: str = "",
    ca_file: str | None = None,
) -> Any:
    """One command to a Redis server or Sentinel (after AUTH when a password is given, as the ACL
    user `username` when one is given; over TLS verified against `ca_file` when one is given); its
    reply. Raises OSError when nothing answers or the server fails verification, and ChaosError on
    an error reply."""
    with redis_socket(address, port, timeout, ca_file) as sock:
        stream = sock.makefile("rwb")
        if password:
            stream.write(encode_command("AUTH", *([username] if username else []), password))
            stream.flush()
            try:
                read_reply(stream)
            except ChaosError as exc:
                if "without any password" not in str(exc):  # a server without a password
                    raise
        stream.write(encode_command(*command))
        stream.flush()
        return read_reply(stream)


def sentinel_master(
    address: str,
    port: int,
    password: str,
    master: str,
    timeout: float = 3.0,
    username: str = "",
    ca_file: str | None = None,
) -> str | None:
    """The master address a Sentinel reports for `master`, or None (no Sentinel there, or it does not
    know the master)."""
    try:
        reply = redis_call(
            address,
            port,
            password,
            "SENTINEL",
            "get-master-addr-by-name",
            master,
            timeout=timeout,
            username=username,
            ca_file=ca_file,
        )
    except OSError:
        return None
    if not reply:
        return None
    return reply[0].decode()


def patroni_member_caught_up(cluster: dict[str, Any], member: str, max_lag: int = 1 << 20) -> bool:
    """From Patroni's GET /cluster: `member` replicates from the leader on its timeline with at most
    `max_lag` bytes of lag, and the cluster has a synchronous standby again. Until then a second
    failure can leave the cluster without a leader that may be promoted (see
    docs/runbooks/database-failover.md)."""
    members = cluster.get("members") or []
    leader = next((m for m in members if m.get("role") == "leader"), None)
    me = next((m for m in members if m.get("name") == member), None)
    if not leader or not me or leader is me:
        return False
    lag = me.get("lag")
    return (
        me.get("role") in ("replica", "sync_standby")
        and me.get("state") in ("running", "streaming")
        and me.get("timeline") == leader.get("timeline")
        and isinstance(lag, int)
        and lag <= max_lag
        and any(m.get("role") == "sync_standby" for m in members)
    )


def redis_replica_linked(
    address: str, password: str, port: int = 6379, username: str = "", ca_file: str | None = None
) -> bool:
    """The Redis server at `address` is a replica whose link to its master is up (INFO: a user
    with @dangerous commands, the broker role's admin user)."""
    try:
        info = redis_call(
            address, port, password, "INFO", "replication", timeout=2.0, username=username, ca_file=ca_file
        )
    except (OSError, ChaosError):
        return False
    text = info.decode() if isinstance(info, bytes) else str(info)
    return "role:slave" in text and "master_link_status:up" in text


def etcd_status(
    address: str, port: int = 2379, timeout: float = 2.0, tls: ControlTls | None = None
) -> dict[str, Any] | None:
    """An etcd member's /v3/maintenance/status (its member id and the leader it follows), or None."""
    tls = tls or ControlTls()
    try:
        url = f"{tls.scheme}://{address}:{port}/v3/maintenance/status"
        resp = requests.post(url, json={}, timeout=timeout, **tls.options())
        return resp.json() if resp.status_code == 200 else None
    except (requests.RequestException, ValueError):
        return None


def member_id(status: Mapping[str, Any] | None) -> str | None:
    header = (status or {}).get("header") or {}
    value = header.get("member_id")
    return str(value) if value else None


@dataclass(frozen=True)
class HostReport:
    """One look at a host: its units' states, its addresses, keepalived's last VRRP state."""

    units: dict[str, str]
    addresses: str
    vrrp: str | None


def host_report_script(units: list[str], keepalived: bool) -> str:
    """Shell printing `systemctl is-active` of the units, `ip -o addr`, and keepalived's last
    `Entering ... STATE` line, separated by `--` lines (one `docker exec` per host and look)."""
    lines = [
        f"systemctl is-active {' '.join(units)}" if units else "true",
        "echo --",
        "ip -o addr show",
        "echo --",
    ]
    if keepalived:
        lines.append(
            "journalctl -u keepalived --no-pager -o cat -n 500 2>/dev/null | grep 'Entering' | tail -n 1"
        )
    return "; ".join(lines)


def parse_host_report(text: str, units: list[str]) -> HostReport:
    sections: list[list[str]] = [[]]
    for line in text.splitlines():
        if line.strip() == "--":
            sections.append([])
        else:
            sections[-1].append(line)
    sections += [[], []]
    states = " ".join(sections[0]).split()
    unit_states = {unit: states[i] if i < len(states) else "" for i, unit in enumerate(units)}
    return HostReport(unit_states, "\n".join(sections[1]), vrrp_state("\n".join(sections[2])))


def load_secrets(path: os.PathLike[str] | str) -> dict[str, Any]:
    """The inventory's generated secrets (decrypted with ansible-vault when encrypted)."""
    text = Path(path).read_text()
    if text.startswith("$ANSIBLE_VAULT"):
        text = subprocess.run(
            [labmod._tool("ansible-vault"), "view", str(path)],
            check=True,
            capture_output=True,
            text=True,
            env=dict(os.environ, ANSIBLE_CONFIG=str(labmod.REPO / "ansible.cfg")),
        ).stdout
    return yaml.safe_load(text) or {}


def inventory_hostvars(inventory: os.PathLike[str] | str) -> dict[str, dict[str, Any]]:
    out = subprocess.run(
        [labmod._tool("ansible-inventory"), "-i", str(inventory), "--list"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return json.loads(out)["_meta"]["hostvars"]


# The ledger reader: runs with the venv's Python on an Airflow host, parameters embedded as JSON.
_LEDGER_SCRIPT = """
import json
try:
    import psycopg2 as driver
except ImportError:
    import psycopg as driver
conn = driver.connect(**P["connect"])
try:
    cur = conn.cursor()
    if P["action"] == "create":
        for statement in P["ddl"]:
            cur.execute(statement)
        out = []
    else:
        cur.execute(P["query"], (P["prefix"],))
        rows = [r for r in cur.fetchall() if r[1].startswith(P["prefix"])]
        out = [list(r[:6]) + [r[6].isoformat()] + list(r[7:]) for r in rows]
    conn.commit()
finally:
    conn.close()
print(json.dumps(out))
"""


def ledger_script(action: str, db: DbAddress, prefix: str = "") -> str:
    payload = {"action": action, "connect": db.libpq(), "ddl": list(LEDGER_DDL), "query": LEDGER_QUERY}
    payload["prefix"] = prefix
    return f"import json\nP = json.loads({json.dumps(payload)!r})\n{_LEDGER_SCRIPT}"


# ---------------------------------------------------------------------------------------------------
# The lab
# ---------------------------------------------------------------------------------------------------
@dataclass
class LabOps:
    """The faults' and the runner's hands on the lab (implements chaos_faults.Ops)."""

    lab: Lab
    api: AirflowApi
    secrets: dict[str, Any]
    hostvars: dict[str, dict[str, Any]]
    down_mode: str = "kill"  # "kill": SIGKILL to the container (power loss); "stop": docker stop
    airflow_home: str = "/opt/airflow"
    patroni_port: int = 8008
    sentinel_port: int = 26379
    sentinel_master_name: str = "airflow-broker"
    # The broker role's ACL users: the operator's (INFO, SENTINEL FAILOVER) and Celery's.
    broker_admin_user: str = "admin"
    broker_celery_user: str = "celery"
    etcd_port: int = 2379
    redis_port: int = 6379
    # Set from the lab's inventory when not given.
    tls: ControlTls | None = None
    # Redis and the Sentinels speak TLS (the broker role's broker_tls_enabled, on with the cluster's
    # TLS): verified against the inventory's CA whenever it has one.
    redis_tls: bool = True

    def __post_init__(self) -> None:
        if self.tls is None:
            self.tls = ControlTls.for_inventory(self.lab.inventory)

    @property
    def control_tls(self) -> ControlTls:
        return self.tls or ControlTls()

    @property
    def redis_host_ca(self) -> str:
        """The CA file redis-cli on a broker host verifies against (the broker role's copy); empty:
        plain TCP."""
        return BROKER_HOST_CA if self.redis_ca else ""

    @property
    def redis_ca(self) -> str | None:
        """The CA file redis_call verifies Redis and the Sentinels against; None: plain TCP."""
        return self.control_tls.ca if self.redis_tls else None

    def log(self, message: str) -> None:
        print(f"[chaos] {message}", flush=True)

    # -- containers ---------------------------------------------------------------------------------
    def exec(self, host: str, *command: str) -> str:
        return docker_hosts.exec_in(host, *command)

    def running(self, host: str) -> bool:
        return docker_hosts.container_state(host) == "running"

    def host_down(self, host: str) -> None:
        if self.down_mode == "stop":
            docker_hosts.docker("stop", "--time", "10", host)
            self.log(f"{host}: docker stop (systemd shuts down, SIGKILL after 10 s)")
        else:
            docker_hosts.docker("kill", host)
            self.log(f"{host}: docker kill (every process gone at once, like a power loss)")

    def host_up(self, host: str) -> None:
        if not self.running(host):
            docker_hosts.docker("start", host)
            self.log(f"{host}: docker start")
        docker_hosts.wait_for_systemd(host, timeout=180)

    def pause(self, host: str) -> None:
        docker_hosts.docker("pause", host)
        self.log(f"{host}: docker pause (every process frozen; its peers see silence)")

    def unpause(self, host: str) -> None:
        if docker_hosts.container_state(host) == "paused":
            docker_hosts.docker("unpause", host)
            self.log(f"{host}: docker unpause")
        else:
            self.log(f"{host}: not paused")

    def disconnect(self, host: str) -> None:
        """Cut the host off the lab network: the Docker host's end of its veth goes down, as if its
        cable were pulled. Its interface keeps its name and address (`docker network disconnect`
        would remove it and `connect` bring it back as another interface, which keepalived, bound to
        the old one, never takes back), and nothing it sends gets out: its peers see silence."""
        veth = self._host_veth(host)
        subprocess.run(["ip", "link", "set", veth, "down"], check=True, capture_output=True, text=True)
        self.log(f"{host}: cut off the lab network ({veth} down on the Docker host)")

    def connect(self, host: str) -> None:
        veth = self._host_veth(host)
        subprocess.run(["ip", "link", "set", veth, "up"], check=True, capture_output=True, text=True)
        self.log(f"{host}: back on the lab network ({veth} up)")

    def _host_veth(self, host: str) -> str:
        """The Docker host's end of the veth that carries the host's lab address."""
        address = self.lab.address(host)
        script = (
            f"for d in /sys/class/net/*; do ip -o -4 addr show dev ${{d##*/}} | grep -q ' {address}/' "
            "&& cat $d/iflink; done; true"
        )
        index = docker_hosts.exec_in(host, "sh", "-c", script).strip()
        if not index.isdigit():
            raise ChaosError(f"{host}: no interface with {address}")
        for link in Path("/sys/class/net").iterdir():
            try:
                if (link / "ifindex").read_text().strip() == index:
                    return link.name
            except OSError:
                continue
        raise ChaosError(f"{host}: no interface with index {index} on the Docker host")

    def _networks(self, host: str) -> dict[str, Any]:
        proc = docker_hosts.docker(
            "container", "inspect", "-f", "{{json .NetworkSettings.Networks}}", host, check=False
        )
        return json.loads(proc.stdout or "{}") if proc.returncode == 0 else {}

    def container_problems(self) -> list[str]:
        problems = []
        for host in self.lab.hosts:
            state = docker_hosts.container_state(host.name)
            why = network_problem(state, self._networks(host.name), self.lab.network, host.address)
            if why:
                problems.append(f"{host.name} {why}")
        return problems

    # -- targets ------------------------------------------------------------------------------------
    def active_scheduler_host(self, avoid: Collection[str] = ()) -> str:
        for host in self.lab.groups.get("airflow_scheduler", []):
            if host in avoid or not self.running(host):
                continue
            state = docker_hosts.exec_in(host, "systemctl", "is-active", "airflow-scheduler", check=False)
            if state.strip() == "active":
                return host
        raise ChaosError("no scheduler host has airflow-scheduler active")

    def api_server_host(self, avoid: Collection[str] = ()) -> str:
        """The last running api-server host (in the lab the first is the one scheduler faults hit)."""
        for host in reversed(self.lab.groups.get("airflow_webserver", [])):
            if host not in avoid and self.running(host):
                return host
        raise ChaosError("no api-server host is running")

    def busy_worker(self, avoid: Collection[str] = (), wait: float = 30.0) -> str:
        """The worker with the most running task instances (the API's hostname), else the first
        running worker."""
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            try:
                tis = self.api.get("/api/v2/dags/~/dagRuns/~/taskInstances", state="running", limit=100)
                host = busiest(
                    [ti.get("hostname") or "" for ti in tis["task_instances"]],
                    self.lab,
                    "airflow_worker",
                    avoid,
                )
                if host and self.running(host):
                    return host
            except (ApiError, requests.RequestException) as exc:
                self.log(f"running task instances not readable yet: {exc}")
            time.sleep(2)
        for host in self.lab.groups.get("airflow_worker", []):
            if host not in avoid and self.running(host):
                self.log(f"no worker reported running tasks within {wait:.0f} s; taking {host}")
                return host
        raise ChaosError("no worker container is running")

    def vip(self) -> str | None:
        """The API's virtual address: `loadbalancer_vip` from the inventory, else the API URL's host
        when it is no lab host's own address; None when there is no VIP."""
        lbs = self.lab.groups.get("airflow_loadbalancer", [])
        for host in lbs:
            found = as_ip(self.hostvars.get(host, {}).get("loadbalancer_vip"))
            if found:
                return found
        api_host = urlsplit(self.lab.api_url).hostname or ""
        own = {h.address for h in self.lab.hosts}
        return api_host if as_ip(api_host) and api_host not in own else None

    def vip_holder(self, avoid: Collection[str] = ()) -> str:
        holder = self._vip_holder()
        if holder in avoid:
            raise ChaosError(f"the VIP holder {holder} is already a target of this fault")
        return holder

    def _vip_holder(self) -> str:
        lbs = self.lab.groups.get("airflow_loadbalancer", [])
        if not lbs:
            raise ChaosError("the inventory has no airflow_loadbalancer host")
        vip = self.vip()
        if vip:
            for host in lbs:
                if self.running(host) and holds_address(
                    docker_hosts.exec_in(host, "ip", "-o", "addr", "show", check=False), vip
                ):
                    self.log(f"{host} holds the VIP {vip}")
                    return host
            self.log(f"no load balancer holds the VIP {vip}; taking the first, {lbs[0]}")
        else:
            self.log(f"no VIP configured; taking the first load balancer, {lbs[0]}")
        return lbs[0]

    def db_primary(self, avoid: Collection[str] = (), wait: float = 60.0) -> str:
        primary = self._db_primary(wait)
        if primary in avoid:
            raise ChaosError(f"the PostgreSQL primary {primary} is already a target of this fault")
        return primary

    def db_sync_standby(self, avoid: Collection[str] = (), wait: float = 60.0) -> str:
        """The member Patroni's /cluster names `sync_standby` (the one every commit waits for)."""
        deadline = time.monotonic() + wait
        while True:
            cluster = self.patroni_cluster() or {}
            found = [m["name"] for m in cluster.get("members", []) if m.get("role") == "sync_standby"]
            chosen = [
                h for h in found if h in self.lab.groups.get("airflow_metadata_db", []) and h not in avoid
            ]
            if chosen:
                self.log(f"Patroni: {chosen[0]} is the synchronous standby")
                return chosen[0]
            if time.monotonic() > deadline:
                raise ChaosError(f"no synchronous standby to target (Patroni names {found or 'none'})")
            time.sleep(2)

    def patroni_primary(self) -> str | None:
        """The member whose Patroni answers 200 on /primary now, quietly; None if none does."""
        for host in self.lab.groups.get("airflow_metadata_db", []):
            url = f"{self.control_tls.scheme}://{self.lab.address(host)}:{self.patroni_port}/primary"
            if http_status(url, 2.0, self.control_tls) == 200:
                return host
        return None

    def _db_primary(self, wait: float = 60.0) -> str:
        hosts = self.lab.groups.get("airflow_metadata_db", [])
        if not hosts:
            raise ChaosError("the inventory has no airflow_metadata_db host")
        deadline = time.monotonic() + wait
        while True:
            codes = {
                h: http_status(
                    f"{self.control_tls.scheme}://{self.lab.address(h)}:{self.patroni_port}/primary",
                    tls=self.control_tls,
                )
                for h in hosts
            }
            try:
                primary = choose_primary(codes)
            except ChaosError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(3)
                continue
            if primary:
                self.log(f"Patroni: {primary} is the primary")
                return primary
            self.log(
                f"no Patroni answers on port {self.patroni_port}; taking the first database host, {hosts[0]}"
            )
            return hosts[0]

    def patroni_cluster(self, hosts: list[str] | None = None, timeout: float = 3.0) -> dict[str, Any] | None:
        """Patroni's GET /cluster from the first of `hosts` (default: the running database hosts)
        that answers, or None."""
        if hosts is None:
            hosts = [h for h in self.lab.groups.get("airflow_metadata_db", []) if self.running(h)]
        for host in hosts:
            try:
                resp = requests.get(
                    f"{self.control_tls.scheme}://{self.lab.address(host)}:{self.patroni_port}/cluster",
                    timeout=timeout,
                    **self.control_tls.options(),
                )
                if resp.status_code == 200:
                    return resp.json()
            except (requests.RequestException, ValueError):
                continue
        return None

    def broker_master(self, avoid: Collection[str] = ()) -> str:
        master = self._broker_master()
        if master in avoid:
            self.log(f"the Redis master {master} is already a target; asking the Sentinels for a failover")
            master = self.move_broker_master(avoid)
        return master

    def move_broker_master(self, avoid: Collection[str], wait: float = 90.0) -> str:
        """SENTINEL FAILOVER until the master is a host outside `avoid`, then wait for every replica
        to link to it (a fault on the new master must find a promotable replica)."""
        password = self.broker_admin_password()
        brokers = self.lab.groups.get("airflow_broker", [])
        deadline = time.monotonic() + wait
        asked_at = 0.0
        while time.monotonic() < deadline:
            address = self.sentinel_majority_master()
            master = lab_host_for(address, self.lab) if address else None
            if master and master not in avoid:
                if not [p for p in self.replication_problems() if p.startswith("broker")]:
                    self.log(f"Sentinels: {master} is the Redis master now, every replica linked")
                    return master
            elif time.monotonic() - asked_at > 20:
                for host in brokers:
                    try:
                        redis_call(
                            self.lab.address(host),
                            self.sentinel_port,
                            password,
                            "SENTINEL",
                            "FAILOVER",
                            self.sentinel_master_name,
                            username=self.broker_admin_user,
                            ca_file=self.redis_ca,
                        )
                        asked_at = time.monotonic()
                        break
                    except (OSError, ChaosError) as exc:
                        self.log(f"SENTINEL FAILOVER on {host} refused: {exc}")
            time.sleep(2)
        raise ChaosError(f"the Redis master did not move off {', '.join(sorted(avoid))} within {wait:.0f} s")

    def _broker_master(self) -> str:
        brokers = self.lab.groups.get("airflow_broker", [])
        if not brokers:
            raise ChaosError("the inventory has no airflow_broker host")
        password = self.broker_admin_password()
        candidates = brokers + [h.name for h in self.lab.hosts if h.name not in brokers]
        answers: Counter[str] = Counter()
        for host in candidates:
            if not self.running(host):
                continue
            found = sentinel_master(
                self.lab.address(host),
                self.sentinel_port,
                password,
                self.sentinel_master_name,
                username=self.broker_admin_user,
                ca_file=self.redis_ca,
            )
            if found:
                answers[found] += 1
        if answers:
            address = answers.most_common(1)[0][0]
            master = lab_host_for(address, self.lab)
            if master is None:
                raise ChaosError(f"the Sentinels name {address} as the Redis master, which is no lab host")
            self.log(f"Sentinels: {master} ({address}) is the Redis master")
            return master
        self.log(
            f"no Sentinel answers on port {self.sentinel_port}; taking the first broker host, {brokers[0]}"
        )
        return brokers[0]

    def etcd_statuses(self) -> dict[str, dict[str, Any] | None]:
        return {
            h: etcd_status(self.lab.address(h), self.etcd_port, tls=self.control_tls)
            for h in self.lab.groups.get("airflow_etcd", [])
        }

    def etcd_leader(self, avoid: Collection[str] = (), wait: float = 60.0) -> str:
        """The etcd raft leader. When it is also the Patroni primary (or in `avoid`), leadership is
        moved to a member that is neither first, so the fault hits etcd and not the database primary;
        if that fails the leader is taken anyway (but never one in `avoid`)."""
        deadline = time.monotonic() + wait
        while True:
            statuses = self.etcd_statuses()
            leader = etcd_leader(statuses)
            if leader:
                break
            if time.monotonic() > deadline:
                raise ChaosError("the etcd members name no common leader")
            time.sleep(2)
        spare = set(avoid) | {p for p in [self.patroni_primary()] if p}
        if leader in spare:
            others = [h for h in statuses if h not in spare and member_id(statuses[h])]
            if others and self._move_etcd_leader(leader, others[0], statuses):
                leader = others[0]
            elif leader in avoid:
                raise ChaosError(f"the etcd leader {leader} is already a target and leadership did not move")
            else:
                self.log(f"the etcd leader {leader} is also the Patroni primary; taking it anyway")
        self.log(f"etcd: {leader} is the raft leader")
        return leader

    def _move_etcd_leader(
        self, leader: str, target: str, statuses: Mapping[str, Any], wait: float = 15
    ) -> bool:
        tls = self.control_tls
        url = f"{tls.scheme}://{self.lab.address(leader)}:{self.etcd_port}/v3/maintenance/transfer-leadership"
        try:
            body = {"targetID": member_id(statuses[target])}
            resp = requests.post(url, json=body, timeout=10, **tls.options())
        except requests.RequestException as exc:
            self.log(f"etcd: moving the leadership to {target} failed: {exc}")
            return False
        if resp.status_code != 200:
            self.log(
                f"etcd: moving the leadership to {target} failed: HTTP {resp.status_code} {resp.text[:200]}"
            )
            return False
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if etcd_leader(self.etcd_statuses()) == target:
                self.log(f"etcd: leadership moved from {leader} (the Patroni primary) to {target}")
                return True
            time.sleep(1)
        return False

    # -- hosts back in their roles ----------------------------------------------------------------------
    def wanted_units(self, host: str) -> list[str]:
        """The units a host must run by its groups (the scheduler's are judged apart)."""
        groups = self.lab.groups
        wanted: list[str] = []
        if host in groups.get("airflow_scheduler", []):
            wanted += ["airflow-scheduler", "airflow-ha-failover"]
        if host in groups.get("airflow_webserver", []):
            wanted.append("airflow-api-server")
        if host in groups.get("airflow_worker", []):
            wanted.append("airflow-worker")
        if host in groups.get("airflow_loadbalancer", []):
            wanted += ["haproxy"] + (["keepalived"] if self.vip() else [])
        if host in groups.get("airflow_broker", []):
            wanted += ["redis-server"] + (["redis-sentinel"] if len(groups["airflow_broker"]) > 1 else [])
        if host in groups.get("airflow_metadata_db", []) and len(groups["airflow_metadata_db"]) > 1:
            wanted.append("patroni")
        if host in groups.get("airflow_etcd", []):
            wanted.append("etcd")
        return wanted

    def host_report(self, host: str) -> HostReport | None:
        units = self.wanted_units(host)
        keepalived = "keepalived" in units
        try:
            proc = docker_hosts.docker(
                "exec", host, "sh", "-c", host_report_script(units, keepalived), check=False, timeout=15
            )
        except subprocess.TimeoutExpired:
            return None
        if proc.returncode != 0 and not proc.stdout:
            return None
        return parse_host_report(proc.stdout, units)

    def role_problems(self) -> list[str]:
        """Hosts not back in their roles: units down, Sentinels not agreeing on the master, no or two
        VIP holders or a load balancer that is not a keepalived BACKUP, etcd without a common leader.
        (Database replicas and broker links: replication_problems.)"""
        groups = self.lab.groups
        reports = {h.name: self.host_report(h.name) for h in self.lab.hosts if self.running(h.name)}
        problems = [f"{h}: no answer to docker exec" for h, r in reports.items() if r is None]
        ok = {h: r for h, r in reports.items() if r is not None}
        schedulers = set(groups.get("airflow_scheduler", []))
        problems += scheduler_problems({h: r.units for h, r in ok.items() if h in schedulers})
        problems += unit_problems(
            {
                h: {u: s for u, s in r.units.items() if u not in ("airflow-scheduler", "airflow-ha-failover")}
                for h, r in ok.items()
            }
        )
        vip = self.vip()
        lbs = groups.get("airflow_loadbalancer", [])
        problems += loadbalancer_problems(
            {h: holds_address(ok[h].addresses, vip) if h in ok and vip else None for h in lbs},
            {h: ok[h].vrrp if h in ok else None for h in lbs},
            vip,
        )
        brokers = groups.get("airflow_broker", [])
        if len(brokers) > 1:
            password = self.broker_admin_password()
            problems += sentinel_problems(
                {
                    h: sentinel_master(
                        self.lab.address(h),
                        self.sentinel_port,
                        password,
                        self.sentinel_master_name,
                        2.0,
                        username=self.broker_admin_user,
                        ca_file=self.redis_ca,
                    )
                    for h in brokers
                }
            )
        if groups.get("airflow_etcd"):
            problems += etcd_problems(self.etcd_statuses())
        return problems

    # -- the database and the ledger ------------------------------------------------------------------
    def airflow_host(self) -> str:
        """A running host with Airflow's venv, for reading airflow.cfg and the ledger."""
        groups = ("airflow_scheduler", "airflow_webserver", "airflow_worker")
        for group in groups:
            for host in self.lab.groups.get(group, []):
                if self.running(host):
                    return host
        raise ChaosError("no Airflow host is running")

    def db_address(self) -> DbAddress:
        host = self.airflow_host()
        cfg = f"{self.airflow_home}/airflow.cfg"
        line = docker_hosts.exec_in(host, "grep", "-E", r"^sql_alchemy_conn\s*=", cfg, check=False).strip()
        if not line:
            raise ChaosError(f"{host}: no [database] sql_alchemy_conn in {cfg}")
        return parse_sql_alchemy_conn(line.splitlines()[0])

    def controller_db(self, db: DbAddress) -> DbAddress:
        """`db` for a connection from here (the commit probe, the benchmark's writes): verified against
        the inventory's cluster CA, the file the Airflow hosts have a copy of."""
        return db.with_root_cert(self.control_tls.ca)

    def run_python(self, script: str, timeout: float = 120) -> str:
        host = self.airflow_host()
        python = f"{self.airflow_home}/venv/bin/python"
        proc = subprocess.run(
            ["docker", "exec", "-i", host, python, "-"],
            input=script,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if proc.returncode != 0:
            raise DockerError(f"{host}: ledger query failed: {proc.stderr.strip()[-500:]}")
        return proc.stdout

    def ensure_ledger_table(self, db: DbAddress) -> None:
        self.run_python(ledger_script("create", db))

    def read_ledger(self, db: DbAddress, prefix: str, attempts: int = 10) -> list[LedgerRow]:
        for attempt in range(1, attempts + 1):
            try:
                return parse_ledger(
                    self.run_python(ledger_script("read", db, prefix)).strip().splitlines()[-1]
                )
            except (DockerError, ChaosError, subprocess.TimeoutExpired, IndexError) as exc:
                if attempt == attempts:
                    raise ChaosError(f"the ledger could not be read: {exc}") from exc
                self.log(f"ledger not readable yet ({exc}); retrying")
                time.sleep(5)
        raise AssertionError("unreachable")

    def broker_admin_password(self) -> str:
        """The password of the broker role's admin user (broker_admin_user) from the secrets file."""
        return str(self.secrets.get("broker_admin_password") or "")

    def sentinel_majority_master(self) -> str | None:
        """The Redis master address most running Sentinels name (quietly), or None."""
        password = self.broker_admin_password()
        named: Counter[str] = Counter()
        for host in self.lab.groups.get("airflow_broker", []):
            if self.running(host):
                found = sentinel_master(
                    self.lab.address(host),
                    self.sentinel_port,
                    password,
                    self.sentinel_master_name,
                    1.0,
                    username=self.broker_admin_user,
                    ca_file=self.redis_ca,
                )
                if found:
                    named[found] += 1
        return named.most_common(1)[0][0] if named else None

    def replication_problems(self) -> list[str]:
        """Database members not yet caught up with the leader (or no synchronous standby), broker
        replicas without a link to their master. Another fault before these heal can leave a
        tier without a promotable member."""
        problems: list[str] = []
        dbs = [h for h in self.lab.groups.get("airflow_metadata_db", []) if self.running(h)]
        if len(self.lab.groups.get("airflow_metadata_db", [])) > 1:
            cluster = self.patroni_cluster(dbs)
            if cluster is None:
                problems.append("Patroni: no member answers /cluster")
            else:
                leaders = [m.get("name") for m in cluster.get("members", []) if m.get("role") == "leader"]
                problems += [
                    f"Patroni: {h} has not caught up with the leader"
                    for h in dbs
                    if h not in leaders and not patroni_member_caught_up(cluster, h)
                ]
                if not leaders:
                    problems.append("Patroni: no leader")
        brokers = self.lab.groups.get("airflow_broker", [])
        if len(brokers) > 1:
            password = self.broker_admin_password()
            master = self.sentinel_majority_master()
            if master is None:
                return [*problems, "broker: no Sentinel names a master"]
            problems += [
                f"broker: {h} is not a linked replica"
                for h in brokers
                if self.lab.address(h) != master
                and self.running(h)
                and not redis_replica_linked(
                    self.lab.address(h), password, username=self.broker_admin_user, ca_file=self.redis_ca
                )
            ]
        return problems

    def api_problems(self) -> list[str]:
        try:
            resp = requests.get(
                f"{self.lab.api_url}/api/v2/monitor/health", timeout=5, verify=self.lab.api_verify
            )
        except requests.RequestException as exc:
            return [f"API not answering: {exc.__class__.__name__}"]
        if resp.status_code != 200:
            return [f"API health HTTP {resp.status_code}"]
        try:
            return health_problems(resp.json())
        except ValueError:
            return ["API health answer is not JSON"]


def ensure_connection(api: AirflowApi, db: DbAddress, conn_id: str = LEDGER_CONN_ID) -> str:
    """Create the ledger's Airflow connection through the API, or update it if it exists."""
    body = db.connection_body(conn_id)
    resp = api.session.post(f"{api.base_url}/api/v2/connections", json=body, timeout=api.timeout)
    if resp.status_code in (200, 201):
        return "created"
    if resp.status_code != 409:
        raise ApiError(f"POST /api/v2/connections: HTTP {resp.status_code}: {resp.text[:300]}")
    api.request("PATCH", f"/api/v2/connections/{conn_id}", json=body)
    return "updated"
