"""Print, as JSON on the last line, whether Airflow's schema is current and whether a user exists.

airflow_common runs it on every deploy to decide whether `airflow db migrate` and
`airflow users create` are needed. Usage: airflow-ha-db-state.py USERNAME INSTALL_KEY [--migrated]

Importing Airflow to ask it whether migrations are due takes seconds, so the answer is kept: after
Airflow confirmed the schema current for the install INSTALL_KEY, the schema's revisions (the
alembic version tables of Airflow and of the FAB provider) are printed as "record", and the role
saves them next to this script as root (the airflow user running this may read, not write, them:
task code must not be able to make a deploy skip a migration). A later
run that finds the same revisions in the database for the same install answers from SQL alone; any
other revision (a new install, a fresh or restored database) asks Airflow again. With --migrated
(run right after `airflow db migrate` succeeded) the revisions are recorded as current.
"""

import configparser
import json
import os
import sys

VERSION_TABLES = ("alembic_version", "alembic_version_fab")


def database_url() -> str:
    url = os.environ.get("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN")
    if url:
        return url
    # Interpolating, as Airflow reads it: airflow.cfg writes a URL's % (a quoted password or
    # parameter) as %%. The URL keeps its query (sslmode=verify-full, sslrootcert, timeouts).
    parser = configparser.ConfigParser(interpolation=configparser.BasicInterpolation())
    parser.read(os.path.join(os.environ.get("AIRFLOW_HOME", "."), "airflow.cfg"))
    return parser.get("database", "sql_alchemy_conn")


def read_database(username: str) -> tuple[dict, bool]:
    """The schema revisions (table -> sorted list) and whether the user exists."""
    from sqlalchemy import create_engine, text

    engine = create_engine(database_url())
    revisions = {}
    with engine.connect() as conn:
        for table in VERSION_TABLES:
            exists = conn.execute(text("SELECT to_regclass(:t) IS NOT NULL"), {"t": table}).scalar()
            rows = conn.execute(text(f"SELECT version_num FROM {table}")).all() if exists else []
            revisions[table] = sorted(row[0] for row in rows)
        has_users = conn.execute(text("SELECT to_regclass('ab_user') IS NOT NULL")).scalar()
        user_exists = bool(
            has_users
            and conn.execute(text("SELECT 1 FROM ab_user WHERE username = :u"), {"u": username}).first()
        )
    engine.dispose()
    return revisions, user_exists


def airflow_says_current() -> tuple[bool, str]:
    from airflow.utils import db

    try:
        db.check_migrations(timeout=1)
    except Exception as exc:
        return False, str(exc)[:300]
    return True, ""


def main() -> None:
    username, install_key = sys.argv[1], sys.argv[2]
    record_path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "airflow-ha-db-state.json")
    revisions, user_exists = read_database(username)
    state = {"user_exists": user_exists, "migrations_current": False, "answered_by": "cache"}
    try:
        with open(record_path, encoding="utf-8") as handle:
            record = json.load(handle)
    except (OSError, ValueError):
        record = {}
    current = {"install_key": install_key, "revisions": revisions}
    if "--migrated" in sys.argv[3:]:
        state["migrations_current"] = True
        state["answered_by"] = "airflow db migrate"
        state["record"] = current
    elif record == current:
        state["migrations_current"] = True
    else:
        state["answered_by"] = "airflow"
        state["migrations_current"], detail = airflow_says_current()
        if detail:
            state["detail"] = detail
        if state["migrations_current"]:
            state["record"] = current
    print(json.dumps(state))


if __name__ == "__main__":
    main()
