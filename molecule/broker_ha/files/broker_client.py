"""A Celery client configured from airflow.cfg lines the way Airflow's Celery provider does it.

Reads [celery] broker_url and [celery_broker_transport_options] from the ini file named by
BROKER_CLIENT_CFG and turns them into Celery settings like apache-airflow-providers-celery 3.26.0
(default_celery.py): conf.getsection() turns numbers and booleans into Python values, and
sentinel_kwargs, a JSON string in the file, becomes a dict. The task `probe` writes a file named
after its argument, so the test sees which messages a worker consumed.

    python3 -m celery -A broker_client worker --pool solo -Q probe   (the worker)
    python3 broker_client.py publish NAME                            (one message)
    python3 broker_client.py publish-loop PREFIX SECONDS INTERVAL    (JSON lines, one per message)
    python3 broker_client.py watch-failover OLD_MASTER TIMEOUT       (JSON: when a new master serves)

The URL and sentinel_kwargs carry the broker role's Celery user, as Airflow's do. watch-failover also
asks the new master's ROLE, which Celery's user may not run (@dangerous): it logs in as the broker
role's admin user from the JSON file BROKER_CLIENT_ADMIN ({"user": ..., "password": ...}), a test aid
that no Airflow host has.
"""

from __future__ import annotations

import configparser
import json
import os
import ssl
import sys
import time
from pathlib import Path

from celery import Celery

CFG = Path(os.environ.get("BROKER_CLIENT_CFG", "/opt/broker-client/airflow.cfg"))
DONE = Path(os.environ.get("BROKER_CLIENT_DONE", "/var/lib/broker-client/done"))
ADMIN = Path(os.environ.get("BROKER_CLIENT_ADMIN", "/opt/broker-client/admin.json"))
QUEUE = "probe"


def _airflow_value(value: str) -> int | float | bool | str:
    """AirflowConfigParser.getsection(): int, then float, then t/true/f/false, else the string."""
    try:
        return int(value)
    except ValueError:
        pass
    try:
        return float(value)
    except ValueError:
        pass
    if value.lower() in ("t", "true"):
        return True
    if value.lower() in ("f", "false"):
        return False
    return value


def airflow_celery_config() -> dict:
    parser = configparser.ConfigParser()
    parser.read(CFG)
    broker_url = parser.get("celery", "broker_url")
    options = {
        key: _airflow_value(value)
        for key, value in (
            parser.items("celery_broker_transport_options")
            if parser.has_section("celery_broker_transport_options")
            else []
        )
    }
    options.setdefault("visibility_timeout", 86400)
    if "sentinel_kwargs" in options:
        options["sentinel_kwargs"] = json.loads(options["sentinel_kwargs"])
        if not isinstance(options["sentinel_kwargs"], dict):
            raise ValueError("sentinel_kwargs is not a JSON object")
    return {
        "broker_url": broker_url,
        **broker_use_ssl(parser, broker_url),
        "broker_transport_options": options,
        "broker_connection_retry_on_startup": True,
        "task_acks_late": True,
        "worker_prefetch_multiplier": 1,
        "task_default_queue": QUEUE,
        "task_default_exchange": QUEUE,
        "accept_content": ["json"],
        "task_serializer": "json",
        "result_backend": None,
        "task_ignore_result": True,
    }


def broker_use_ssl(parser: configparser.ConfigParser, broker_url: str) -> dict:
    """default_celery.py's broker_use_ssl for a Redis URL: [celery] ssl_active on, the server
    verified (ssl_cert_reqs required) against ssl_cacert, a client certificate only with
    ssl_mutual_tls (the provider's default is on: airflow.cfg turns it off)."""
    if not parser.getboolean("celery", "ssl_active", fallback=False):
        return {}
    if not broker_url.startswith(("redis://", "rediss://", "sentinel://")):
        raise ValueError("ssl_active needs a Redis broker here")
    settings: dict = {"ssl_cert_reqs": ssl.CERT_REQUIRED}
    if parser.get("celery", "ssl_cacert", fallback=""):
        settings["ssl_ca_certs"] = parser.get("celery", "ssl_cacert")
    if parser.getboolean("celery", "ssl_mutual_tls", fallback=True):
        settings["ssl_keyfile"] = parser.get("celery", "ssl_key")
        settings["ssl_certfile"] = parser.get("celery", "ssl_cert")
    return {"broker_use_ssl": settings}


def tls_kwargs() -> dict:
    """redis-py arguments for the watcher's own connections: the Sentinels' TLS settings from
    sentinel_kwargs (the same CA verifies the master)."""
    kwargs = airflow_celery_config()["broker_transport_options"].get("sentinel_kwargs", {})
    return {k: v for k, v in kwargs.items() if k.startswith("ssl")}


app = Celery("broker_client")
app.config_from_object(airflow_celery_config())


@app.task(name="probe")
def probe(name: str) -> None:
    DONE.mkdir(parents=True, exist_ok=True)
    (DONE / name).write_text(f"{time.time():.3f}\n")


def publish(name: str) -> None:
    probe.apply_async(args=[name], queue=QUEUE)


def publish_loop(prefix: str, seconds: float, interval: float) -> None:
    end = time.time() + seconds
    n = 0
    while time.time() < end:
        n += 1
        name = f"{prefix}-{n:04d}"
        started = time.time()
        try:
            publish(name)
            outcome = {"name": name, "at": round(started, 3), "ok": True}
        except Exception as exc:  # every failure is a data point here
            outcome = {"name": name, "at": round(started, 3), "ok": False, "error": type(exc).__name__}
        outcome["took"] = round(time.time() - started, 3)
        print(json.dumps(outcome), flush=True)
        time.sleep(max(0.0, interval - (time.time() - started)))


def watch_failover(old_master: str, timeout: float) -> None:
    """Poll the Sentinels until one names a master other than old_master and that node answers
    ROLE as master. Prints when that happened (epoch seconds) and what each step saw."""
    import redis  # redis-py, the library kombu's Sentinel transport uses

    options = airflow_celery_config()["broker_transport_options"]
    sentinel_kwargs = options["sentinel_kwargs"]
    master_name = options["master_name"]
    urls = airflow_celery_config()["broker_url"].split(";")
    admin = json.loads(ADMIN.read_text())
    sentinels = []
    for url in urls:
        rest = url.split("://", 1)[1]
        hostport = rest.rpartition("@")[2]
        host, _, port = hostport.split("/", 1)[0].partition(":")
        if host != old_master:
            sentinels.append((host, int(port or 26379)))
    deadline = time.time() + timeout
    switched_at = None
    while time.time() < deadline:
        for host, port in sentinels:
            try:
                client = redis.Redis(
                    host=host,
                    port=port,
                    username=sentinel_kwargs.get("username"),
                    password=sentinel_kwargs["password"],
                    socket_timeout=0.5,
                    socket_connect_timeout=0.5,
                    **tls_kwargs(),
                )
                addr = client.execute_command("SENTINEL", "get-master-addr-by-name", master_name)
            except redis.RedisError:
                continue
            if not addr:
                continue
            new = addr[0].decode() if isinstance(addr[0], bytes) else addr[0]
            if new == old_master:
                continue
            switched_at = switched_at or time.time()
            try:
                role = redis.Redis(
                    host=new,
                    port=int(addr[1]),
                    username=admin["user"],
                    password=admin["password"],
                    socket_timeout=0.5,
                    socket_connect_timeout=0.5,
                    **tls_kwargs(),
                ).execute_command("ROLE")
            except redis.RedisError:
                continue
            kind = role[0].decode() if isinstance(role[0], bytes) else role[0]
            if kind == "master":
                print(
                    json.dumps(
                        {
                            "new_master": new,
                            "sentinel": f"{host}:{port}",
                            "switched_at": round(switched_at, 3),
                            "serving_at": round(time.time(), 3),
                        }
                    )
                )
                return
        time.sleep(0.05)
    print(json.dumps({"new_master": None, "timeout": timeout}))
    sys.exit(1)


if __name__ == "__main__":
    command, *args = sys.argv[1:]
    if command == "publish":
        publish(args[0])
    elif command == "publish-loop":
        publish_loop(args[0], float(args[1]), float(args[2]))
    elif command == "watch-failover":
        watch_failover(args[0], float(args[1]))
    else:
        sys.exit(f"unknown command {command}")
