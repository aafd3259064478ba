"""Secrets never reach a host's argv or environment, and git never takes a secrets directory.

A command line is readable by every user in /proc/<pid>/cmdline and ps, and sudo logs it. A task's
`environment:` is no better: Ansible prefixes the remote command with it (`NAME=value python3 ...`),
so sudo's log and -vvv output show it, and the process keeps it in /proc/<pid>/environ. Tasks pass
a secret on stdin (redis-cli --askpass, `airflow users create`'s prompt) or in a root-only file.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from helpers import REPO

# Where tasks live: every role's tasks and handlers, and the playbooks.
TASK_FILES = sorted(
    [*REPO.glob("roles/*/tasks/*.yml"), *REPO.glob("roles/*/handlers/*.yml"), *REPO.glob("playbooks/*.yml")]
)
# Variables a task can reach by name: every role's defaults and vars, and the cluster's group_vars.
VAR_FILES = sorted(
    [
        *REPO.glob("roles/*/defaults/main.yml"),
        *REPO.glob("roles/*/vars/main.yml"),
        *REPO.glob("group_vars/all/*.yml"),
    ]
)
# Environment variables that carry a password to a client (and Airflow's settings that are secrets).
PASSWORD_ENV_NAMES = re.compile(r"\b(REDISCLI_AUTH|PGPASSWORD|MYSQL_PWD|ETCDCTL_PASSWORD)\b")
SECRET_ENV_NAMES = re.compile(rf"{PASSWORD_ENV_NAMES.pattern}|\bAIRFLOW__\w*(KEY|SECRET|PASS)\w*")
# A variable whose value is a secret, by its name; the name of a file or directory holding
# secrets (airflow_common_secrets_file) is no secret.
SECRET_NAME = re.compile(r"\w*(password|passwd|secret|fernet|jwt|_auth|token|private_key)\w*", re.I)
NOT_SECRET_SUFFIX = re.compile(r"_(file|dir|path)$")
# Shell, command and friends: modules whose arguments become a command line.
COMMAND_MODULES = re.compile(r"^(ansible\.builtin\.|ansible\.legacy\.)?(command|shell|raw|script)$")
TASK_KEYWORDS = {"block", "rescue", "always", "tasks", "pre_tasks", "post_tasks", "handlers"}


def load_vars() -> dict[str, Any]:
    found: dict[str, Any] = {}
    for path in VAR_FILES:
        found.update(yaml.safe_load(path.read_text()) or {})
    return found


ROLE_VARS = load_vars()


def tasks_of(data: Any, scope: dict[str, Any]) -> Iterator[tuple[dict, dict[str, Any]]]:
    """Every task in a task file or play, with the variables of its blocks and itself."""
    if isinstance(data, list):
        for item in data:
            yield from tasks_of(item, scope)
    elif isinstance(data, dict):
        inner = {**scope, **(data.get("vars") or {})}
        nested = [key for key in TASK_KEYWORDS if isinstance(data.get(key), list)]
        if nested:
            for key in nested:
                yield from tasks_of(data[key], inner)
        else:
            yield data, inner


def used_names(text: str) -> set[str]:
    """Names a Jinja expression in the text uses for their value. `x | length` (a flag that only
    says whether a secret is set) reveals nothing and does not count."""
    names = set()
    for expression in re.findall(r"\{\{.*?\}\}", text, re.S):
        for match in re.finditer(r"[A-Za-z_][A-Za-z0-9_]*", expression):
            if not re.match(r"\s*\|\s*length\b", expression[match.end() :]):
                names.add(match.group(0))
    return names


def expand(text: str, names: dict[str, Any], depth: int = 4) -> str:
    """The text plus the values of the variables it uses (and theirs, a few levels down)."""
    seen: set[str] = set()
    out = [text]
    frontier = [text]
    for _ in range(depth):
        following = []
        for piece in frontier:
            for name in used_names(piece) - seen:
                seen.add(name)
                if name in names:
                    following.append(str(names[name]))
        out += following
        frontier = following
    return "\n".join(out)


def secret_references(text: str) -> list[str]:
    """Secret variables (by name) the text uses for their value."""
    return sorted(
        name
        for name in used_names(text)
        if SECRET_NAME.fullmatch(name) and not NOT_SECRET_SUFFIX.search(name)
    )


def problems(task: dict, scope: dict[str, Any]) -> list[str]:
    names = {**ROLE_VARS, **scope}
    found = []
    environment = task.get("environment")
    if environment:
        text = expand(str(environment), names)
        found += [f"environment sets {m.group(0)}" for m in SECRET_ENV_NAMES.finditer(text)]
        found += [f"environment carries {n}" for n in secret_references(text)]
    for key, args in task.items():
        if not COMMAND_MODULES.match(str(key)):
            continue
        if isinstance(args, dict):
            # stdin is the safe channel; everything else ends up on the command line.
            args = {k: v for k, v in args.items() if k not in ("stdin", "stdin_add_newline")}
        text = expand(str(args), names)
        found += [f"command line carries {n}" for n in secret_references(text)]
        found += [f"command line sets {m.group(0)}" for m in SECRET_ENV_NAMES.finditer(text)]
    return found


@pytest.mark.parametrize("path", TASK_FILES, ids=lambda p: str(p.relative_to(REPO)))
def test_no_secret_in_a_command_line_or_a_task_environment(path):
    data = yaml.safe_load(path.read_text()) or []
    bad = [
        f"{task.get('name', '?')}: {problem}"
        for task, scope in tasks_of(data, {})
        for problem in problems(task, scope)
    ]
    assert not bad, "\n".join(bad)


def test_no_role_names_a_password_environment_variable():
    """A plain grep as well, outside comments, so a new way of writing a task cannot slip past."""
    hits = []
    for path in sorted(REPO.glob("roles/**/*")):
        if not path.is_file() or path.suffix not in (".yml", ".yaml", ".j2", ".sh", ".py"):
            continue
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            if line.lstrip().startswith("#"):
                continue
            if PASSWORD_ENV_NAMES.search(line):
                hits.append(f"{path.relative_to(REPO)}:{number}: {line.strip()}")
    assert not hits, "\n".join(hits)


# The checks above must catch the mistakes they are about.
@pytest.mark.parametrize(
    "task",
    [
        {
            "ansible.builtin.command": {"argv": ["redis-cli", "PING"]},
            "environment": {"REDISCLI_AUTH": "{{ broker_password }}"},
        },
        {"ansible.builtin.command": {"argv": ["airflow", "users", "create", "--password", "{{ admin_pw }}"]}},
        {"ansible.builtin.shell": "redis-cli -a {{ broker_sentinel_password }} PING"},
        {"ansible.builtin.command": {"argv": "{{ _cli + ['PING'] }}"}, "environment": "{{ _env }}"},
    ],
    ids=["environment", "argv", "shell", "through-vars"],
)
def test_the_checks_catch_a_secret_in_argv_or_environment(task):
    scope = {
        "admin_pw": "{{ airflow_common_admin_password }}",
        "_cli": "{{ ['redis-cli', '-a', broker_password] }}",
        "_env": {"PGPASSWORD": "x"},
    }
    assert problems(task, scope)


def test_the_checks_allow_stdin_and_a_length_test():
    task = {
        "ansible.builtin.command": {
            "argv": "{{ ['redis-cli'] + (['--askpass'] if broker_password | length > 0 else []) }}",
            "stdin": "{{ broker_password }}",
        },
    }
    assert problems(task, {}) == []


@pytest.mark.parametrize(
    ("path", "ignored"),
    [
        ("inventories/lab/.secrets/airflow-secrets.yml", True),
        ("inventories/prod/eu/.secrets/airflow-secrets.yml", True),
        ("inventories/prod/eu/west/.secrets/pki/ca.key", True),
        ("inventories/prod/eu/.ssh/id_ed25519", True),
        ("inventories/lab/.ssh/id_ed25519", True),
        ("elsewhere/.secrets/airflow-secrets.yml", True),
        ("inventories/prod/eu/hosts.yml", False),
        ("inventories/production/group_vars/all/main.yml", False),
    ],
)
def test_git_ignores_secrets_and_keys_of_inventories_at_any_depth(path, ignored):
    # --no-index: whether the path is ignored by the rules, tracked or not, present or not.
    proc = subprocess.run(
        ["git", "check-ignore", "--quiet", "--no-index", path],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode in (0, 1), proc.stderr
    assert (proc.returncode == 0) == ignored, f"{path}: ignored={proc.returncode == 0}"


def test_no_secrets_file_is_tracked():
    tracked = subprocess.run(
        ["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True, timeout=30
    ).stdout.splitlines()
    assert not [p for p in tracked if "/.secrets/" in f"/{p}" or "/.ssh/" in f"/{p}"]
