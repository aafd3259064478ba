"""Chaos load for airflow-ha: short tasks that each record in a ledger table when their work starts
and when it is done.

`python -m airflow_ha.chaos` (`make chaos`) triggers this DAG every few seconds through the REST
API while it injects faults, then reads the ledger to prove that no run was lost and that no task's
work ran twice (a try finished its work, a `done` row, and a later try started, a `start` row). It
creates the Airflow connection `airflow_ha_ledger` (the metadata database) and the table (migrating
one from before the `phase` column) before the first run.

Shape: `begin` -> `work` mapped over `parts` -> `end`; every task sleeps a little (`sleep_min` to
`sleep_max` seconds, from the run's conf) so faults hit running tasks. Retries are the cluster's
defaults ([core] default_task_retries, default_task_retry_delay): the point is to test those.
"""

from __future__ import annotations

import random
import socket
import time
import uuid

import pendulum
from airflow.sdk import DAG, get_current_context, task

# Keep in step with src/airflow_ha/chaos_lab.py (tests/test_chaos.py checks they agree).
LEDGER_CONN_ID = "airflow_ha_ledger"
LEDGER_TABLE = "airflow_ha_chaos_ledger"
# How long a task keeps retrying its ledger insert while the database fails over.
LEDGER_WRITE_TIMEOUT = 180

# Two rows per execution of a task, no unique key: `start` before its work, `done` after it. The
# attempt id (one per execution of the task) makes each insert safe to repeat after a lost
# connection, so only another execution can add more rows. Casts: psycopg 3 (which PostgresHook
# uses when it is installed) sends str parameters untyped.
INSERT_SQL = f"""
INSERT INTO {LEDGER_TABLE} (dag_id, run_id, task_id, map_index, try_number, hostname, attempt_id, phase)
SELECT %s::text, %s::text, %s::text, %s::integer, %s::integer, %s::text, %s::text, %s::text
WHERE NOT EXISTS (SELECT 1 FROM {LEDGER_TABLE} WHERE attempt_id = %s::text AND phase = %s::text)
"""


def _pause() -> None:
    conf = get_current_context()["dag_run"].conf or {}
    low = float(conf.get("sleep_min", 2))
    high = float(conf.get("sleep_max", 4))
    time.sleep(random.uniform(low, max(low, high)))


def _record(phase: str, attempt: str) -> str:
    """Write `start` (before the work) or `done` (after it) for this execution into the ledger;
    return the host name."""
    from airflow.providers.postgres.hooks.postgres import PostgresHook

    ti = get_current_context()["ti"]
    map_index = ti.map_index if ti.map_index is not None else -1
    host = socket.getfqdn()
    params = (
        ti.dag_id,
        ti.run_id,
        ti.task_id,
        map_index,
        ti.try_number,
        host,
        attempt,
        phase,
        attempt,
        phase,
    )
    deadline = time.monotonic() + LEDGER_WRITE_TIMEOUT
    while True:
        try:
            conn = PostgresHook(postgres_conn_id=LEDGER_CONN_ID).get_conn()
            try:
                with conn.cursor() as cur:
                    cur.execute(INSERT_SQL, params)
                conn.commit()
            finally:
                conn.close()
            print(f"ledger: {ti.task_id}[{map_index}] try {ti.try_number} {phase} on {host}")
            return host
        except Exception as exc:
            if time.monotonic() > deadline:
                raise
            print(f"ledger write failed ({exc.__class__.__name__}: {exc}); retrying in 3 s")
            time.sleep(3)


with DAG(
    dag_id="airflow_ha_chaos",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    tags=["airflow-ha", "chaos"],
    max_active_runs=32,
    max_active_tasks=64,
):

    @task
    def begin() -> list[int]:
        """Fan out: one `work` task per part (conf `parts`, default 2)."""
        attempt = uuid.uuid4().hex
        _record("start", attempt)
        _pause()
        parts = int((get_current_context()["dag_run"].conf or {}).get("parts", 2))
        _record("done", attempt)
        return list(range(parts))

    @task
    def work(part: int) -> str:
        attempt = uuid.uuid4().hex
        _record("start", attempt)
        _pause()
        return _record("done", attempt)

    @task
    def end(hosts: list[str]) -> None:
        attempt = uuid.uuid4().hex
        _record("start", attempt)
        _pause()
        _record("done", attempt)
        print(f"parts ran on: {', '.join(sorted(set(hosts)))}")

    end(work.expand(part=begin()))
