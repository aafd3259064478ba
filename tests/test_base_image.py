"""The base image's apt cache (scripts/base-image-packages.txt) covers every Debian package the roles and
the Molecule scenarios install, so containers never silently fall back to downloading them."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from helpers import REPO

SCRIPT = REPO / "scripts" / "build-base-image.sh"
PACKAGE_LIST = REPO / "scripts" / "base-image-packages.txt"
# Task keywords that install Debian packages, and the argument that names them.
INSTALLERS = {
    "airflow_ha.cluster.packages": "names",
    "ansible.builtin.apt": "name",
    "apt": "name",
    "ansible.builtin.package": "name",
    "package": "name",
}
DEBIAN_NAME = re.compile(r"^[a-z0-9][a-z0-9+.-]+$")
LITERAL = re.compile(r"""'([^']*)'|"([^"]*)\"""")
IDENTIFIER = re.compile(r"\b[a-z_][a-z0-9_]*\b")
SIMPLE_VAR = re.compile(r"\{\{\s*([a-z_][a-z0-9_]*)\s*\}\}")


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads Ansible's !vault and !unsafe tags (as plain values)."""


_Loader.add_multi_constructor("!", lambda loader, suffix, node: None)


def load(path: Path) -> Any:
    return yaml.load(path.read_text(), Loader=_Loader)


def baked() -> set[str]:
    names: set[str] = set()
    for line in PACKAGE_LIST.read_text().splitlines():
        names.update(line.split("#", 1)[0].split())
    return names


def role_vars() -> dict[str, Any]:
    """Every role's defaults and vars: what a package expression may refer to."""
    found: dict[str, Any] = {}
    for path in sorted(REPO.glob("roles/*/defaults/main.yml")) + sorted(REPO.glob("roles/*/vars/main.yml")):
        found.update(load(path) or {})
    return found


def tasks(node: Any) -> Iterator[dict]:
    """Every task in a tasks file or playbook, blocks and plays included."""
    if isinstance(node, list):
        for item in node:
            yield from tasks(item)
    elif isinstance(node, dict):
        yield node
        for key in ("block", "rescue", "always", "tasks", "pre_tasks", "post_tasks", "handlers"):
            yield from tasks(node.get(key))


def resolve(value: Any, variables: dict[str, Any], depth: int = 0) -> set[str]:
    """The package names an argument can produce: every branch of a Jinja expression counts."""
    assert depth < 10, f"package expression nests too deep: {value!r}"
    if isinstance(value, list):
        return set().union(*(resolve(item, variables, depth + 1) for item in value))
    text = str(value).strip()
    if "{{" not in text:
        return {text}
    whole = re.fullmatch(r"\{\{(.*)\}\}", text, re.DOTALL)
    if whole and "{{" not in whole.group(1):
        expr = whole.group(1)
        names = {a or b for a, b in LITERAL.findall(expr)}
        for ident in set(IDENTIFIER.findall(LITERAL.sub("", expr))):
            # A list of packages held in a variable (by convention its name says so).
            if ident in variables and "packages" in ident:
                names |= resolve(variables[ident], variables, depth + 1)
        return names
    # A name with a variable in it, e.g. "postgresql-{{ metadata_db_version }}".
    substituted = SIMPLE_VAR.sub(lambda m: str(variables.get(m.group(1), m.group(0))), text)
    assert substituted != text, f"cannot read the package name {text!r}"
    return resolve(substituted, variables, depth + 1)


def installs() -> list[tuple[str, set[str]]]:
    """(where, package names) for each task that installs Debian packages."""
    variables = role_vars()
    files = [
        *REPO.glob("roles/*/tasks/*.yml"),
        *REPO.glob("roles/*/handlers/*.yml"),
        *REPO.glob("molecule/*/*.yml"),
        *REPO.glob("playbooks/*.yml"),
    ]
    found = []
    for path in sorted(files):
        for task in tasks(load(path)):
            for module, arg in INSTALLERS.items():
                if module in task:
                    args = task[module] if isinstance(task[module], dict) else {}
                    value = args.get(arg, args.get("pkg"))
                    where = f"{path.relative_to(REPO)}: {task.get('name', module)}"
                    found.append((where, resolve(value, variables) if value is not None else set()))
    return found


def test_every_installed_package_is_in_the_image_cache():
    found = installs()
    assert len(found) >= 7, f"the search for package installs found too few: {found}"
    cache = baked()
    problems = []
    for where, names in found:
        if not names:
            problems.append(f"{where}: no package names could be read")
        for name in sorted(names):
            if not DEBIAN_NAME.match(name):
                problems.append(f"{where}: {name!r} is not a Debian package name (an unread expression?)")
            elif name not in cache:
                problems.append(f"{where}: {name} is not in {PACKAGE_LIST.relative_to(REPO)}")
    assert not problems, "\n".join(problems)


def test_the_search_reads_conditional_and_templated_names():
    variables = {"pg_version": 15, "x_packages": "{{ ['a-1'] + (['b-2'] if flag | bool else []) }}"}
    assert resolve("{{ x_packages }}", variables) == {"a-1", "b-2"}
    assert resolve(["postgresql-{{ pg_version }}", "acl"], variables) == {"postgresql-15", "acl"}
    with pytest.raises(AssertionError, match="cannot read"):
        resolve("postgresql-{{ unknown }}", variables)


def test_the_package_list_is_part_of_the_recipe_hash():
    script = SCRIPT.read_text()
    assert "base-image-packages.txt" in script
    hash_line = next(line for line in script.splitlines() if line.startswith("recipe_hash="))
    assert '"$PACKAGE_LIST"' in hash_line, hash_line
    assert '"$0"' in hash_line, hash_line


def test_the_image_downloads_the_list_and_installs_none_of_it():
    script = SCRIPT.read_text()
    # apt-get runs inside the rootfs through in_root (chroot).
    in_root = [line.strip() for line in script.splitlines() if line.strip().startswith("in_root apt-get")]
    installs_ = [line for line in in_root if re.search(r"\binstall\b", line)]
    assert installs_, "the script no longer downloads the package list"
    assert all("--download-only" in line for line in installs_), installs_
    debootstrap = re.search(r'^PACKAGES="([^"]*)"', script, re.MULTILINE)
    assert debootstrap, "PACKAGES= not found"
    # postgresql-15 installed in the image would create and start a Debian cluster.
    assert not any(name.startswith("postgresql") for name in debootstrap.group(1).split(","))
