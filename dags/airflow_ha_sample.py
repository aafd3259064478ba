"""Sample DAG shipped with airflow-ha: fans out short tasks that report the host that ran them.

The end-to-end test triggers it through the REST API at the load-balanced address and checks that
the run succeeds and that its tasks ran on more than one worker.
"""

from __future__ import annotations

import socket
import time

import pendulum
from airflow.sdk import DAG, get_current_context, task

with DAG(
    dag_id="airflow_ha_sample",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    tags=["airflow-ha"],
    max_active_runs=4,
):

    @task
    def report_host(index: int) -> str:
        """Sleep a little (3 s, or the run conf's `sleep`) so the tasks spread over the workers,
        then return this host's name. `make bench` runs it with a long sleep to see tasks survive
        an API outage."""
        conf = get_current_context()["dag_run"].conf or {}
        time.sleep(float(conf.get("sleep", 3)))
        host = socket.getfqdn()
        print(f"task {index} ran on {host}")
        return host

    @task
    def summarize(hosts: list[str]) -> list[str]:
        seen = sorted(set(hosts))
        print(f"tasks ran on: {', '.join(seen)}")
        return seen

    summarize(report_host.expand(index=list(range(8))))
