"""``python -m airflow_ha.failover``: the same as the ``airflow-ha-failover`` command."""

import sys

from .cli import main

sys.exit(main())
