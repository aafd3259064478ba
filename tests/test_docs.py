"""The docs stay true: runbooks name commands and tests that exist, the README's commands exist."""

from __future__ import annotations

import re

import pytest

from helpers import REPO

RUNBOOKS = sorted(p for p in (REPO / "docs" / "runbooks").glob("*.md") if p.name != "README.md")
MAKE_TARGETS = set(re.findall(r"^([a-z][a-z0-9-]*):", (REPO / "Makefile").read_text(), re.M))


def test_there_are_runbooks():
    assert RUNBOOKS


@pytest.mark.parametrize("page", RUNBOOKS, ids=lambda p: p.name)
def test_runbook_names_its_command_and_test(page):
    text = page.read_text()
    assert re.search(r"^\*\*Command:\*\*", text, re.M), f"{page.name}: no **Command:** line"
    tested = re.search(r"^\*\*Tested by:\*\*(.+?)(?:\n\n|\n\*\*|\n#)", text, re.M | re.S)
    assert tested, f"{page.name}: no **Tested by:** line"
    tests = re.findall(r"`(tests/[\w/]+\.py)(?:::(\w+))?`", tested.group(1))
    scenarios = re.findall(r"`(\w+)` Molecule scenario", tested.group(1))
    assert tests or scenarios, f"{page.name}: Tested by names no test file or scenario"
    for path, name in tests:
        source = (REPO / path).read_text()
        if name:
            assert f"def {name}(" in source, f"{page.name}: {path}::{name} does not exist"
    for scenario in scenarios:
        assert (REPO / "molecule" / scenario / "verify.yml").exists(), f"{page.name}: no scenario {scenario}"


@pytest.mark.parametrize("page", [*RUNBOOKS, REPO / "README.md"], ids=lambda p: p.name)
def test_named_playbooks_and_make_targets_exist(page):
    text = page.read_text()
    for playbook in set(re.findall(r"\b(playbooks/[\w-]+\.yml)", text)):
        assert (REPO / playbook).exists(), f"{page.name} names {playbook}, which does not exist"
    for target in set(re.findall(r"`make ([a-z0-9-]+)", text)):
        assert target in MAKE_TARGETS, f"{page.name} names `make {target}`, which is not a Makefile target"


def test_runbook_index_lists_every_runbook():
    index = (REPO / "docs" / "runbooks" / "README.md").read_text()
    missing = [p.name for p in RUNBOOKS if f"({p.name})" not in index]
    assert not missing, f"docs/runbooks/README.md does not list {missing}"
