"""What the scheduler hosts get for the failover controller, and who owns it.

The controller and the watchdog run as root on hosts where DAG code runs as ``airflow``. So:

- the wheel the role ships holds ``src/airflow_ha/failover`` alone (not the lab, benchmark or chaos
  code), and its change key covers only that directory;
- it installs into a root-owned virtualenv of its own, never the Airflow one;
- the Airflow install (AIRFLOW_HOME, the virtualenv, the wheelhouse) is root's, as the role files say.

No containers: the wheel is built and installed into a temporary directory, the role files are parsed.
"""

from __future__ import annotations

import ast
import importlib.util
import re
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from helpers import REPO, load_module

FAILOVER_SRC = REPO / "src" / "airflow_ha" / "failover"
ROLE = REPO / "roles" / "scheduler_failover"
COMMON = REPO / "roles" / "airflow_common"
BUILDER = ROLE / "files" / "build_wheel.py"


def _builder() -> ModuleType:
    return load_module(str(BUILDER.relative_to(REPO)), "build_wheel")


def _yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def _failover_modules() -> set[str]:
    return {
        p.relative_to(FAILOVER_SRC).as_posix()
        for p in FAILOVER_SRC.rglob("*.py")
        if "__pycache__" not in p.relative_to(FAILOVER_SRC).parts
    }


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _builder().build(FAILOVER_SRC, tmp_path_factory.mktemp("wheel"), "0123abcd")


# -- the artifact -------------------------------------------------------------------------------


def test_the_wheel_holds_the_failover_modules_and_nothing_else(wheel: Path):
    assert wheel.name == "airflow_ha_failover-0.1.0+0123abcd-py3-none-any.whl"
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        info = "airflow_ha_failover-0.1.0+0123abcd.dist-info"
        metadata = {n for n in names if n.startswith(info + "/")}
        assert metadata == {
            f"{info}/{n}" for n in ("METADATA", "WHEEL", "RECORD", "top_level.txt", "entry_points.txt")
        }
        code = names - metadata
        assert code == {f"airflow_ha/failover/{m}" for m in _failover_modules()}
        # Not the rest of airflow_ha: no airflow_ha/__init__.py (a namespace package on the hosts).
        assert not [n for n in code if not n.startswith("airflow_ha/failover/")]
        meta = zf.read(f"{info}/METADATA").decode()
        assert "Name: airflow-ha-failover" in meta
        assert "Version: 0.1.0+0123abcd" in meta
        assert "Requires-Dist: psycopg[binary]>=3.1" in meta
        assert (
            "airflow-ha-failover = airflow_ha.failover.cli:main"
            in zf.read(f"{info}/entry_points.txt").decode()
        )
        record = zf.read(f"{info}/RECORD").decode().splitlines()
        assert len(record) == len(names)


def test_the_wheel_is_deterministic(tmp_path: Path):
    build = _builder().build
    assert (
        build(FAILOVER_SRC, tmp_path / "a", "k").read_bytes()
        == build(FAILOVER_SRC, tmp_path / "b", "k").read_bytes()
    )


def test_a_bad_local_version_is_refused(tmp_path: Path):
    with pytest.raises(SystemExit):
        _builder().build(FAILOVER_SRC, tmp_path, "Not/A-Label")


def test_installed_alone_it_imports_and_its_commands_run(wheel: Path, tmp_path: Path):
    target = tmp_path / "site"
    pip = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-index"]
    subprocess.run([*pip, "--no-deps", "--target", str(target), str(wheel)], check=True)
    assert (target / "bin" / "airflow-ha-failover").exists()
    assert not (target / "airflow_ha" / "__init__.py").exists()
    # -S: no site-packages, so the development install of the whole airflow_ha cannot stand in.
    probe = (
        "import importlib, sys; sys.path.insert(0, sys.argv[1]);"
        "mods = [importlib.import_module('airflow_ha.failover.' + m) for m in sys.argv[2:]];"
        "assert all(m.__file__.startswith(sys.argv[1]) for m in mods), [m.__file__ for m in mods];"
        "import airflow_ha.failover as f; print(f.__version__);"
        "importlib.import_module('airflow_ha.lab')"
    )
    modules = sorted(
        m.removesuffix(".py").replace("/", ".") for m in _failover_modules() if m != "__init__.py"
    )
    modules.remove("__main__")
    out = subprocess.run(
        [sys.executable, "-S", "-c", probe, str(target), *modules],
        capture_output=True,
        text=True,
        check=False,
    )
    assert "No module named 'airflow_ha.lab'" in out.stderr, out.stderr
    out = subprocess.run(
        [
            sys.executable,
            "-S",
            "-m",
            "airflow_ha.failover.watchdog",
            "-c",
            "/nonexistent.toml",
            "check-config",
        ],
        cwd=tmp_path,
        env={"PYTHONPATH": str(target)},
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 2, out.stderr
    assert "no such file" in out.stderr


def test_the_failover_code_imports_nothing_else_of_airflow_ha():
    for path in FAILOVER_SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                assert node.level <= 1, (
                    f"{path.name}: from {'.' * node.level}{node.module or ''} leaves the package"
                )
                if node.level == 0 and node.module:
                    assert not node.module.startswith("airflow_ha") or node.module.startswith(
                        "airflow_ha.failover"
                    ), f"{path.name} imports {node.module}"
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    assert alias.name == "airflow_ha.failover" or not alias.name.startswith("airflow_ha"), (
                        f"{path.name} imports {alias.name}"
                    )


def test_versions_agree():
    project = tomllib.loads((FAILOVER_SRC / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    from airflow_ha import failover

    assert failover.__version__ == project["version"]
    assert project["scripts"] == {"airflow-ha-failover": "airflow_ha.failover.cli:main"}


def _pins(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, version = line.split("==")
            pins[re.sub(r"[-_.]+", "-", name).lower()] = version
    return pins


def test_the_dependency_pins_are_airflows():
    """One psycopg on the hosts, the one Airflow's constraints were tested with."""
    failover = _pins(ROLE / "files" / "constraints-python3.11.txt")
    version = _yaml(COMMON / "defaults" / "main.yml")["airflow_common_version"]
    airflow = _pins(COMMON / "files" / "constraints" / f"constraints-{version}-python3.11.txt")
    assert set(failover) == {"psycopg", "psycopg-binary", "typing-extensions"}
    assert {name: airflow[name] for name in failover} == failover


# -- the role: change detection covers the failover code only ---------------------------------------


def test_the_change_key_covers_only_the_failover_directory():
    defaults = _yaml(ROLE / "defaults" / "main.yml")
    variables = _yaml(ROLE / "vars" / "main.yml")
    assert defaults["scheduler_failover_source_dir"].endswith("}}/src/airflow_ha/failover")
    key = variables["_scheduler_failover_wheel_key_expr"]
    assert re.findall(r"lookup\('([^']+)'", key) == ["airflow_ha.cluster.tree_checksums"]
    assert "tree_checksums', scheduler_failover_source_dir)" in key
    # The built wheel carries that key in its version, and the hosts install exactly that build.
    install = (ROLE / "tasks" / "install.yml").read_text(encoding="utf-8")
    assert '- "{{ _scheduler_failover_wheel_key }}"' in install
    assert (
        "airflow-ha-failover=={{ _scheduler_failover_version }}+{{ _scheduler_failover_wheel_key }}"
        in install
    )


def test_the_key_hashes_the_failover_files_alone():
    """The key's lookup reads, under scheduler_failover_source_dir, the wheel's files and its pyproject."""
    spec = importlib.util.spec_from_file_location(
        "tree_checksums",
        REPO / "collections/ansible_collections/airflow_ha/cluster/plugins/lookup/tree_checksums.py",
    )
    assert spec is not None
    assert spec.loader is not None
    lookup = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(lookup)
    assert set(lookup.tree_checksums(str(FAILOVER_SRC))) == _failover_modules() | {"pyproject.toml"}


# -- the role: root-owned installs --------------------------------------------------------------------


def _tasks(path: Path, host_only: bool = False) -> list[dict[str, Any]]:
    """Every task of a task file, blocks flattened; host_only leaves out what runs on the controller."""
    out: list[dict[str, Any]] = []

    def walk(items: list[dict[str, Any]]) -> None:
        for task in items or []:
            if host_only and task.get("delegate_to") == "localhost":
                continue
            out.append(task)
            for key in ("block", "rescue", "always"):
                walk(task.get(key, []))

    walk(_yaml(path))
    return out


def _named(path: Path, fragment: str) -> dict[str, Any]:
    found = [t for t in _tasks(path) if fragment in t.get("name", "")]
    assert len(found) == 1, f"{path.name}: {len(found)} tasks named like {fragment!r}"
    return found[0]


def _file_entries(task: dict[str, Any]) -> list[dict[str, Any]]:
    return task["airflow_ha.cluster.files"]["files"]


def test_the_failover_virtualenv_is_its_own_and_root_owned():
    defaults = _yaml(ROLE / "defaults" / "main.yml")
    venv = defaults["scheduler_failover_venv"]
    assert venv == "/opt/airflow-ha-failover"
    assert not venv.startswith("/opt/airflow/")
    # The units run that virtualenv's code; nothing in the role runs as another user.
    for unit in ("airflow-ha-failover.service.j2", "airflow-ha-watchdog.service.j2"):
        text = (ROLE / "templates" / unit).read_text(encoding="utf-8")
        (exec_start,) = re.findall(r"^ExecStart=(.*)$", text, re.MULTILINE)
        assert exec_start.startswith("{{ scheduler_failover_venv }}/bin/"), unit
        assert "User=" not in text, unit
    for path in (ROLE / "tasks").glob("*.yml"):
        for task in _tasks(path):
            assert "become_user" not in task, f"{path.name}: {task.get('name')}"
    install = _named(ROLE / "tasks" / "install.yml", "into their own virtualenv")
    assert install["ansible.builtin.include_role"]["tasks_from"] == "install_offline_venv"


def test_the_shared_offline_install_is_root_owned():
    path = COMMON / "tasks" / "install_offline_venv.yml"
    assert not [t.get("name") for t in _tasks(path) if "become_user" in t or "become" in t]
    host_side = _tasks(path, host_only=True)
    for task in host_side:
        for module in ("ansible.builtin.copy", "ansible.builtin.unarchive"):
            if module in task:
                assert (task[module]["owner"], task[module]["group"]) == ("root", "root"), task["name"]
                assert task[module].get("mode", "0644") == "0644", task["name"]
    assert len([t for t in host_side if "ansible.builtin.copy" in t or "ansible.builtin.unarchive" in t]) == 2
    dirs = _file_entries(_named(path, "Virtualenv and wheelhouse directories"))
    assert [(d["owner"], d["group"], d["mode"], d["state"]) for d in dirs] == [
        ("root", "root", "0755", "directory")
    ] * 3
    assert dirs[0]["path"] == "{{ __airflow_common_ov.venv }}"
    marker = _file_entries(_named(path, "Record the install"))[0]
    assert (marker["owner"], marker["group"], marker["mode"]) == ("root", "root", "0644")
    removal = _named(path, "Remove a virtualenv that root does not own")
    assert "pw_name != 'root'" in removal["when"]
    # Patroni uses the same steps.
    patroni = _tasks(REPO / "roles" / "metadata_db" / "tasks" / "patroni_install.yml")
    assert [
        t["ansible.builtin.include_role"]["tasks_from"]
        for t in patroni
        if "ansible.builtin.include_role" in t
    ] == ["install_offline_venv"]


def test_the_airflow_install_is_root_owned():
    home = _file_entries(_named(COMMON / "tasks" / "install.yml", "Airflow directories"))
    by_path = {e["path"]: e for e in home}
    assert (by_path["{{ airflow_common_home }}"]["owner"], by_path["{{ airflow_common_home }}"]["group"]) == (
        "root",
        "root",
    )
    # The airflow user keeps its DAG and log folders.
    for folder in ("{{ airflow_common_dags_folder }}", "{{ airflow_common_logs_folder }}"):
        assert by_path[folder]["owner"] == "{{ airflow_common_user }}"
    include = _named(COMMON / "tasks" / "install.yml", "Install Airflow into the virtualenv")
    assert "pw_name | default('') != 'root'" in include["when"]

    for name in ("venv.yml", "wheelhouse.yml"):
        for task in _tasks(COMMON / "tasks" / name):
            assert "become_user" not in task, f"{name}: {task.get('name')}"
            assert "become" not in task, f"{name}: {task.get('name')}"
    marker = _named(COMMON / "tasks" / "venv.yml", "Record the install")["ansible.builtin.copy"]
    assert (marker["owner"], marker["group"], marker["mode"]) == ("root", "root", "0644")
    assert "pw_name != 'root'" in _named(COMMON / "tasks" / "venv.yml", "Remove a virtualenv")["when"]

    wheelhouse = COMMON / "tasks" / "wheelhouse.yml"
    dirs = _file_entries(_named(wheelhouse, "Node directories"))
    assert [(d["owner"], d["group"], d["mode"]) for d in dirs] == [("root", "root", "0755")] * 2
    unpack = _named(wheelhouse, "Unpack it on the node")["ansible.builtin.unarchive"]
    assert (unpack["owner"], unpack["group"]) == ("root", "root")
    removal = _named(wheelhouse, "Remove a wheelhouse")["when"]
    assert "rejectattr('stat.pw_name', 'equalto', 'root')" in removal

    # airflow.cfg stays readable by the airflow group only.
    config = {e["path"]: e for e in _file_entries(_named(COMMON / "tasks" / "configure.yml", "airflow.cfg"))}
    cfg = config["{{ airflow_common_home }}/airflow.cfg"]
    assert (cfg["owner"], cfg["group"], cfg["mode"]) == ("root", "{{ airflow_common_group }}", "0640")
