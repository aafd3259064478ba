"""The broker role's filter that picks the current master from the Sentinels' answers."""

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location(
    "broker_sentinel", ROOT / "roles" / "broker" / "filter_plugins" / "broker_sentinel.py"
)
assert _spec is not None
assert _spec.loader is not None
broker_sentinel = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(broker_sentinel)

NODES = ["10.0.0.1", "10.0.0.2", "10.0.0.3"]


def test_the_master_most_sentinels_name_comes_first():
    lines = ["10.0.0.1 10.0.0.2 6379", "10.0.0.2 10.0.0.2 6379", "10.0.0.3 10.0.0.1 6379"]
    assert broker_sentinel.broker_master_answers(lines, NODES) == ["10.0.0.2", "10.0.0.1"]


def test_a_tie_goes_to_the_node_listed_first():
    lines = ["10.0.0.1 10.0.0.3 6379", "10.0.0.2 10.0.0.2 6379"]
    assert broker_sentinel.broker_master_answers(lines, NODES) == ["10.0.0.2", "10.0.0.3"]


def test_empty_and_foreign_answers_are_ignored():
    lines = [
        "10.0.0.1",  # Sentinel answered nil: it does not know the master (a new cluster)
        "10.0.0.2 192.168.1.9 6379",  # not a broker node
        "10.0.0.3 10.0.0.1 port",  # not a port
        "",
    ]
    assert broker_sentinel.broker_master_answers(lines, NODES) == []
    assert broker_sentinel.broker_master_answers(None, NODES) == []


MARKER = "airflow-ha broker sentinel layout 1"
WANTED = {
    "requirepass": "",
    "aclfile": "/etc/redis/airflow-ha-sentinel-users.acl",
    "sentinel_user": "sentinel",
    "sentinel_pass": "peerpw",
    "auth_user": "sentinel",
    "auth_pass": "peerpw",
}


def test_a_pre_acl_sentinel_conf_drifts_to_the_acl_users():
    old = (
        f"# {MARKER}\n"
        'requirepass "oldpw"\n'
        "sentinel sentinel-pass oldpw\n"
        "sentinel monitor airflow-broker 10.0.0.1 6379 2\n"
        "sentinel auth-pass airflow-broker oldpw\n"
    )
    state = broker_sentinel.broker_sentinel_state(old, "airflow-broker", MARKER)
    assert broker_sentinel.broker_sentinel_drift(state, WANTED) == [
        "aclfile",
        "auth_pass",
        "auth_user",
        "requirepass",
        "sentinel_pass",
        "sentinel_user",
    ]


def test_the_acl_settings_as_sentinel_rewrites_them_do_not_drift():
    # Sentinel's own rewrite quotes the aclfile path.
    rewritten = (
        f"# {MARKER}\n"
        'aclfile "/etc/redis/airflow-ha-sentinel-users.acl"\n'
        "sentinel sentinel-user sentinel\n"
        "sentinel sentinel-pass peerpw\n"
        "sentinel monitor airflow-broker 10.0.0.2 6379 2\n"
        "sentinel auth-user airflow-broker sentinel\n"
        "sentinel auth-pass airflow-broker peerpw\n"
        "sentinel known-sentinel airflow-broker 10.0.0.3 26379 abc\n"
    )
    state = broker_sentinel.broker_sentinel_state(rewritten, "airflow-broker", MARKER)
    assert broker_sentinel.broker_sentinel_drift(state, WANTED) == []
    assert state["master"] == {"host": "10.0.0.2", "port": "6379"}
