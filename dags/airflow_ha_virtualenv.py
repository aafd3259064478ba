"""A task that builds its own virtualenv and installs a package into it from the package index.

pip in that virtualenv uses what the inventory configures for the hosts (/etc/pip.conf, written by
the airflow_common role): the system CA store with airflow_common_ca_bundle_src, the package index
and the proxy. The end-to-end test runs it.
"""

from __future__ import annotations

import pendulum
from airflow.sdk import DAG, task

with DAG(
    dag_id="airflow_ha_virtualenv",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    tags=["airflow-ha"],
):

    @task.virtualenv(requirements=["six==1.17.0"], system_site_packages=False)
    def from_the_index() -> str:
        """Import the package pip installed into this task's virtualenv; return its version."""
        import six

        print(f"six {six.__version__} from {six.__file__}")
        return six.__version__

    from_the_index()
