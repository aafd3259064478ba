"""Scheduler failover controller: one lease in the Airflow metadata database decides which scheduler
host runs the guarded systemd units (``airflow-scheduler`` and optionally the dag-processor and
triggerer); every other host keeps them stopped.

Modules:

- :mod:`.config`: the TOML/environment configuration and its validation.
- :mod:`.lease`: the lease and member tables, their SQL, and :class:`~.lease.LeaseStore` (psycopg).
- :mod:`.decisions`: the pure decision function (observed state in, actions out).
- :mod:`.controller`: the daemon loop, its timing and fencing (the safety argument is documented there).
- :mod:`.systemd`: the ServiceManager protocol, ``systemctl`` and dry-run implementations, sd_notify.
- :mod:`.health`: the HealthChecker protocol and the HTTP/command implementation.
- :mod:`.cli`: the ``airflow-ha-failover`` command (run, status, step-down, pause, resume, ...).

This package is its own distribution, ``airflow-ha-failover`` (``pyproject.toml`` here): it imports
nothing from the rest of ``airflow_ha``, which is not installed on the scheduler hosts.
"""

from importlib import metadata as _metadata

try:
    # The installed build, e.g. 0.1.0+3f2a...: the role appends the hash of this package's source.
    __version__ = _metadata.version("airflow-ha-failover")
except _metadata.PackageNotFoundError:  # the source tree (tests, the development virtualenv)
    __version__ = "0.1.0"
