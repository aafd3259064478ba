"""airflow-ha: helpers for the Ansible toolkit (lab hosts, tests, scheduler failover controller)."""

__version__ = "0.1.0"
