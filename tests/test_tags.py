"""One tag scheme for every role: each phase is tagged `<role>` and `<role>_<phase>`, so
`--tags <role>` runs a whole role and `--tags <role>_<phase>` one phase of it (README, "Tags")."""

from __future__ import annotations

import subprocess

import pytest
import yaml

from helpers import REPO, ansible_env, tool

ROLES = sorted(p.name for p in (REPO / "roles").iterdir() if (p / "tasks" / "main.yml").exists())


@pytest.mark.parametrize("role", ROLES)
def test_every_phase_of_a_role_carries_the_role_tag_and_its_phase_tag(role):
    tasks = yaml.safe_load((REPO / "roles" / role / "tasks" / "main.yml").read_text())
    for task in tasks:
        tags = task.get("tags")
        assert tags, f"{role}: task {task.get('name')!r} has no tags"
        assert role in tags, f"{role}: task {task.get('name')!r} is tagged {tags}, without {role!r}"
        phases = [t for t in tags if t.startswith(f"{role}_")]
        assert phases, f"{role}: task {task.get('name')!r} is tagged {tags}, without a {role}_<phase> tag"


def test_a_role_tag_selects_that_role_in_site_yml():
    listed = subprocess.run(
        [
            tool("ansible-playbook"),
            "-i",
            "inventories/lab",
            "site.yml",
            "--list-tasks",
            "--tags",
            "loadbalancer",
        ],
        cwd=REPO,
        env=ansible_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert listed.returncode == 0, listed.stderr
    roles = {line.split(" : ")[0].strip() for line in listed.stdout.splitlines() if " : " in line}
    assert "loadbalancer" in roles, listed.stdout[-2000:]
    work = [
        line
        for line in listed.stdout.splitlines()
        if "loadbalancer :" in line and "TAGS: [always]" not in line
    ]
    assert len(work) > 3, listed.stdout[-2000:]
