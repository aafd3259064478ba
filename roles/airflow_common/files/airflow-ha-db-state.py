"""Print, as JSON on the last line, whether Airflow's schema is current and whether a user exists.

One Python start instead of two CLI calls (`airflow db check-migrations`, `airflow users list`):
airflow_common runs it on every deploy to decide whether `airflow db migrate` and
`airflow users create` are needed. Usage: airflow-ha-db-state.py USERNAME
"""

import json
import sys


def main() -> None:
    from airflow import settings
    from airflow.utils import db
    from sqlalchemy import text

    state = {"migrations_current": False, "user_exists": False}
    try:
        db.check_migrations(timeout=1)
        state["migrations_current"] = True
    except Exception as exc:
        state["detail"] = str(exc)[:300]
    try:
        with settings.engine.connect() as conn:
            row = conn.execute(text("SELECT 1 FROM ab_user WHERE username = :u"), {"u": sys.argv[1]}).first()
            state["user_exists"] = row is not None
    except Exception:
        pass
    print(json.dumps(state))


if __name__ == "__main__":
    main()
