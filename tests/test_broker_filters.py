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
