"""Which roles run on which inventory group is said in three places: the plays (playbooks/site.yml
and playbooks/airflow.yml), preflight's argument check (playbooks/preflight.yml) and the README's
table. The plays are the source; the other two must say the same."""

from __future__ import annotations

import re
from collections import defaultdict

import yaml

from helpers import REPO


def _roles_of_play(play: dict) -> list[str]:
    names = [r if isinstance(r, str) else r["role"] for r in play.get("roles", [])]
    for task in play.get("tasks", []):
        for key in ("ansible.builtin.import_role", "ansible.builtin.include_role"):
            if key in task:
                names.append(task[key]["name"])
    return names


def _groups_of_task(play: dict, role: str) -> list[str]:
    """A task importing `role` may narrow the play's hosts with `when: "'<group>' in group_names"`."""
    for task in play.get("tasks", []):
        for key in ("ansible.builtin.import_role", "ansible.builtin.include_role"):
            if key in task and task[key]["name"] == role:
                match = re.fullmatch(r"'(\w+)' in group_names", str(task.get("when", "")).strip())
                if match:
                    return [match.group(1)]
    return play["hosts"].split(":")


def plays_map() -> dict[str, set[str]]:
    """group -> roles, from the plays site.yml runs (the host preparation tasks excluded)."""
    mapping: dict[str, set[str]] = defaultdict(set)
    for name in ("site.yml", "airflow.yml"):
        for play in yaml.safe_load((REPO / "playbooks" / name).read_text()):
            if "hosts" not in play:
                continue
            for role in _roles_of_play(play):
                if play.get("tasks") and any(
                    t.get("ansible.builtin.include_role", {}).get("tasks_from") for t in play["tasks"]
                ):
                    continue  # a single task file of a role (host preparation), not the role
                for group in _groups_of_task(play, role):
                    mapping[group].add(role)
    return dict(mapping)


def preflight_map() -> dict[str, set[str]]:
    for play in yaml.safe_load((REPO / "playbooks/preflight.yml").read_text()):
        roles = play.get("vars", {}).get("_preflight_group_roles")
        if roles:
            return {group: set(names) for group, names in roles.items()}
    raise AssertionError("playbooks/preflight.yml has no _preflight_group_roles")


def readme_map() -> dict[str, set[str]]:
    text = (REPO / "README.md").read_text()
    table = text[text.index("## What gets deployed") :].split("\n\n")[1]
    mapping: dict[str, set[str]] = defaultdict(set)
    for row in table.splitlines()[2:]:
        cells = [c.strip() for c in row.strip("|").split("|")]
        groups = re.findall(r"`(airflow_\w+)`", cells[0]) or (["all"] if "every host" in cells[0] else [])
        assert groups, row
        roles = set(re.findall(r"`(\w+)`", cells[1]))
        for group in groups:
            mapping[group] |= roles
    return dict(mapping)


def test_the_plays_cover_every_role():
    roles = {p.name for p in (REPO / "roles").iterdir() if (p / "tasks" / "main.yml").exists()}
    assert set().union(*plays_map().values()) == roles


def test_preflight_checks_the_roles_the_plays_run():
    assert preflight_map() == plays_map()


def test_the_readme_table_names_the_roles_the_plays_run():
    # The README leaves airflow_common out of the per-group rows: it says in prose that it is
    # applied to every Airflow host.
    wanted = {group: roles - {"airflow_common"} for group, roles in plays_map().items()}
    assert readme_map() == wanted
