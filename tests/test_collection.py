"""The project's collection airflow_ha.cluster: its modules, its action and its lookups, run by Ansible."""

from __future__ import annotations

import grp
import hashlib
import json
import os
import pwd
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from helpers import REPO, ansible_env, load_module, tool

USER = pwd.getpwuid(os.geteuid()).pw_name
GROUP = grp.getgrgid(os.getegid()).gr_name


def run_module(module: str, args: dict, *flags: str) -> dict:
    """Run one module of the collection on localhost; return its result."""
    proc = subprocess.run(
        [
            tool("ansible"),
            "localhost",
            "-c",
            "local",
            "-m",
            f"airflow_ha.cluster.{module}",
            "-a",
            json.dumps(args),
            *flags,
        ],
        cwd=REPO,
        env=ansible_env(
            ANSIBLE_LOAD_CALLBACK_PLUGINS="1",
            ANSIBLE_STDOUT_CALLBACK="ansible.builtin.json",
            ANSIBLE_INVENTORY_UNPARSED_WARNING="0",
            ANSIBLE_LOCALHOST_WARNING="0",
        ),
        capture_output=True,
        text=True,
        timeout=120,
    )
    # The JSON document starts at the first line that opens one (profile_tasks prints around it).
    start = proc.stdout.index("\n{") + 1 if not proc.stdout.startswith("{") else 0
    output = json.JSONDecoder().raw_decode(proc.stdout[start:])[0]
    return output["plays"][0]["tasks"][0]["hosts"]["localhost"]


def run_play(tmp_path: Path, tasks: list[dict], **play_vars: object) -> subprocess.CompletedProcess[str]:
    playbook = tmp_path / "play.yml"
    playbook.write_text(
        yaml.safe_dump(
            [
                {
                    "name": "Test",
                    "hosts": "localhost",
                    "connection": "local",
                    "gather_facts": False,
                    "vars": play_vars,
                    "tasks": tasks,
                }
            ]
        )
    )
    return subprocess.run(
        [tool("ansible-playbook"), "-i", "localhost,", str(playbook)],
        cwd=REPO,
        env=ansible_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )


def entry(path: Path, **fields: object) -> dict:
    return {"path": str(path), "owner": USER, "group": GROUP, **fields}


# --- files ------------------------------------------------------------------------------------------


def test_files_creates_then_reports_nothing_to_do(tmp_path):
    wanted = [
        entry(tmp_path / "conf", state="directory", mode="0750"),
        entry(tmp_path / "conf" / "a.cfg", content="a = 1\n", mode="0640"),
    ]
    first = run_module("files", {"files": wanted})
    assert first["changed"] is True, first
    assert first["changed_paths"] == [str(tmp_path / "conf"), str(tmp_path / "conf" / "a.cfg")]
    assert (tmp_path / "conf" / "a.cfg").read_text() == "a = 1\n"
    assert oct((tmp_path / "conf" / "a.cfg").stat().st_mode & 0o777) == "0o640"
    assert oct((tmp_path / "conf").stat().st_mode & 0o777) == "0o750"
    second = run_module("files", {"files": wanted})
    assert second["changed"] is False, second
    assert second["changed_paths"] == []


def test_files_rewrites_only_what_differs_and_fixes_modes(tmp_path):
    (tmp_path / "same").write_text("x\n")
    (tmp_path / "same").chmod(0o644)
    (tmp_path / "other").write_text("old\n")
    (tmp_path / "loose").write_text("y\n")
    (tmp_path / "loose").chmod(0o666)
    result = run_module(
        "files",
        {
            "files": [
                entry(tmp_path / "same", content="x\n", mode="0644"),
                entry(tmp_path / "other", content="new\n", mode="0644"),
                entry(tmp_path / "loose", content="y\n", mode="0600"),
            ]
        },
    )
    assert result["changed_paths"] == [str(tmp_path / "other"), str(tmp_path / "loose")]
    assert (tmp_path / "other").read_text() == "new\n"
    assert (tmp_path / "loose").stat().st_mode & 0o777 == 0o600


def test_files_removes_absent_paths(tmp_path):
    (tmp_path / "gone.conf").write_text("z")
    (tmp_path / "gone.d").mkdir()
    (tmp_path / "gone.d" / "x").write_text("z")
    result = run_module(
        "files",
        {
            "files": [
                {"path": str(tmp_path / "gone.conf"), "state": "absent"},
                {"path": str(tmp_path / "gone.d"), "state": "absent"},
                {"path": str(tmp_path / "never"), "state": "absent"},
            ]
        },
    )
    assert result["changed_paths"] == [str(tmp_path / "gone.conf"), str(tmp_path / "gone.d")]
    assert not (tmp_path / "gone.conf").exists()
    assert not (tmp_path / "gone.d").exists()


def test_files_absent_list_removes_after_the_entries(tmp_path):
    (tmp_path / "old.d").mkdir()
    (tmp_path / "old.d" / "guard.conf").write_text("z")
    (tmp_path / "stale.conf").write_text("z")
    result = run_module(
        "files",
        {
            "files": [entry(tmp_path / "new.conf", content="n\n", mode="0644")],
            "absent": [str(tmp_path / "old.d"), str(tmp_path / "stale.conf"), str(tmp_path / "never")],
        },
    )
    assert result["changed_paths"] == [
        str(tmp_path / "new.conf"),
        str(tmp_path / "old.d"),
        str(tmp_path / "stale.conf"),
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["new.conf"]
    assert run_module("files", {"absent": [str(tmp_path / "stale.conf")]})["changed"] is False
    nothing = run_module("files", {"absent": []})
    assert nothing["changed"] is False, nothing
    assert "failed" not in nothing, nothing
    relative = run_module("files", {"absent": ["stale.conf"]})
    assert relative.get("failed"), relative
    assert "must be absolute" in relative["msg"], relative


def test_files_check_mode_reports_and_diffs_without_writing(tmp_path):
    (tmp_path / "a").write_text("old\n")
    result = run_module(
        "files", {"files": [entry(tmp_path / "a", content="new\n", mode="0644")]}, "--check", "--diff"
    )
    assert result["changed"] is True
    assert result["diff"][0]["before"] == "old\n"
    assert result["diff"][0]["after"] == "new\n"
    assert (tmp_path / "a").read_text() == "old\n"


def test_files_keeps_the_old_file_when_validation_fails(tmp_path):
    (tmp_path / "a.cfg").write_text("good\n")
    result = run_module(
        "files", {"files": [entry(tmp_path / "a.cfg", content="bad\n", validate="grep -q good %s")]}
    )
    assert result.get("failed") is True
    assert "validation failed, the file was not changed" in result["msg"]
    assert (tmp_path / "a.cfg").read_text() == "good\n"
    assert [p.name for p in tmp_path.iterdir()] == ["a.cfg"], "the temporary file was left behind"
    passing = run_module(
        "files", {"files": [entry(tmp_path / "a.cfg", content="good too\n", validate="grep -q good %s")]}
    )
    assert passing["changed"] is True
    assert (tmp_path / "a.cfg").read_text() == "good too\n"


def test_files_refuses_bad_entries(tmp_path):
    assert "must be absolute" in run_module("files", {"files": [{"path": "rel/a", "content": "x"}]})["msg"]
    bad_mode = run_module("files", {"files": [{"path": str(tmp_path / "a"), "content": "x", "mode": "rw"}]})
    assert "is not an octal string" in bad_mode["msg"]
    no_dir = run_module("files", {"files": [{"path": str(tmp_path / "missing" / "a"), "content": "x"}]})
    assert "does not exist (list it before the file)" in no_dir["msg"]
    no_user = run_module(
        "files", {"files": [{"path": str(tmp_path / "a"), "content": "x", "owner": "no-such-user-x"}]}
    )
    assert "owner 'no-such-user-x' does not exist" in no_user["msg"]


# --- read_files -------------------------------------------------------------------------------------


def test_read_files_returns_text_and_absence(tmp_path):
    (tmp_path / "a").write_text("hello\n")
    result = run_module("read_files", {"paths": [str(tmp_path / "a"), str(tmp_path / "b")]})
    assert result["changed"] is False
    assert result["files"] == {
        str(tmp_path / "a"): {"exists": True, "content": "hello\n"},
        str(tmp_path / "b"): {"exists": False, "content": None},
    }


# --- missing_packages -------------------------------------------------------------------------------


def test_missing_packages_reads_dpkg():
    if not Path("/var/lib/dpkg/status").exists():
        pytest.fail("this test needs a Debian controller (dpkg's database), as the README requires")
    result = run_module("missing_packages", {"names": ["dpkg", "airflow-ha-no-such-package"]})
    assert result["changed"] is False
    assert result["missing"] == ["airflow-ha-no-such-package"]
    assert isinstance(result["package_lists"], bool)
    refused = run_module("missing_packages", {"names": ["redis=7.0", "postgres*"]})
    assert "not plain Debian package names" in refused["msg"]


def test_packages_leaves_apt_alone_when_everything_is_installed():
    result = run_module("packages", {"names": ["dpkg", "coreutils"]})
    assert result.get("failed") is not True, result
    assert result["changed"] is False
    assert result["missing"] == []
    assert "cache_updated" not in result, "apt ran although nothing was missing"


def test_packages_hands_only_the_missing_ones_to_apt():
    # A package that exists nowhere: apt gets it (and only it) and fails; --check installs nothing.
    result = run_module("packages", {"names": ["dpkg", "airflow-ha-no-such-package"]}, "--check")
    assert result["missing"] == ["airflow-ha-no-such-package"]
    assert result.get("failed") is True, result
    assert "No package matching 'airflow-ha-no-such-package'" in result["msg"], "the failure is not apt's"
    if any(Path("/var/lib/apt/lists").glob("*_Packages*")):
        # Lists young enough for cache_valid_time (apt does not refresh in check mode): one retry.
        assert any("retried" in warning for warning in result.get("warnings", [])), result


def test_packages_knows_when_apt_failed_on_out_of_date_lists():
    action = load_module(
        "collections/ansible_collections/airflow_ha/cluster/plugins/action/packages.py", "packages"
    )
    # What apt-get says when the lists name a version the mirror dropped (ansible.builtin.apt's msg).
    gone = (
        "'/usr/bin/apt-get -y install redis-server' failed: E: Failed to fetch "
        "http://deb.debian.org/debian/pool/main/r/redis/redis-server_7.0.15-1~deb12u1_amd64.deb"
        "  404  Not Found [IP: 151.101.2.132 80]\n"
        "E: Unable to fetch some archives, maybe run apt-get update or try with --fix-missing?"
    )
    assert action.stale_lists({"failed": True, "msg": gone})
    assert action.stale_lists({"failed": True, "msg": "No package matching 'chrony' is available"})
    dpkg_failed = "E: Sub-process /usr/bin/dpkg returned an error code (1)"
    assert not action.stale_lists({"failed": True, "msg": dpkg_failed})
    assert not action.stale_lists({"changed": True, "stdout": "Failed to fetch (a warning) but installed"})


def test_packages_refuses_bad_arguments():
    assert "needs names" in run_module("packages", {"names": []})["msg"]
    assert "not cache" in run_module("packages", {"names": ["dpkg"], "cache": 1})["msg"]


# --- checks -----------------------------------------------------------------------------------------


def test_checks_reports_every_failed_check_and_skips_the_rest(tmp_path):
    proc = run_play(
        tmp_path,
        [
            {
                "name": "Checks",
                "airflow_ha.cluster.checks": {
                    "checks": [
                        {"that": ["port | int > 0"], "fail_msg": "port is {{ port }}"},
                        {"that": "nodes | length is odd", "fail_msg": "{{ nodes | length }} nodes"},
                        {"that": "undefined_var > 1", "fail_msg": "never shown", "when": "false"},
                        {"that": "true", "fail_msg": "never shown either"},
                    ]
                },
            }
        ],
        port=0,
        nodes=["a", "b"],
    )
    assert proc.returncode != 0
    assert '"msg": "port is 0\\n2 nodes"' in proc.stdout, proc.stdout
    assert "never shown" not in proc.stdout


def test_checks_pass(tmp_path):
    proc = run_play(
        tmp_path,
        [
            {
                "name": "Checks",
                "airflow_ha.cluster.checks": {
                    "checks": [
                        {"that": ["port | int > 0", "port | int < 65536"], "fail_msg": "port is {{ port }}"},
                    ]
                },
            }
        ],
        port=8080,
    )
    assert proc.returncode == 0, proc.stdout
    assert "ok=1" in proc.stdout


def test_checks_hides_the_error_of_a_secret_check(tmp_path):
    proc = run_play(
        tmp_path,
        [
            {
                "name": "Checks",
                "airflow_ha.cluster.checks": {
                    "checks": [
                        {"that": "secret.missing_key | length > 0", "fail_msg": "x", "no_log": True},
                    ]
                },
            }
        ],
        secret={"value": "hunter2"},
    )
    assert proc.returncode != 0
    assert "check 1 could not be evaluated (details hidden: no_log)" in proc.stdout, proc.stdout


# --- lookups ----------------------------------------------------------------------------------------


def test_tree_checksums_match_sha1_and_skip_pycache(tmp_path):
    (tmp_path / "dags" / "sub").mkdir(parents=True)
    (tmp_path / "dags" / "a.py").write_text("print(1)\n")
    (tmp_path / "dags" / "sub" / "b.py").write_text("print(2)\n")
    (tmp_path / "dags" / "__pycache__").mkdir()
    (tmp_path / "dags" / "__pycache__" / "a.pyc").write_bytes(b"\0")
    proc = run_play(
        tmp_path,
        [
            {
                "name": "Sums",
                "ansible.builtin.debug": {
                    "msg": "{{ lookup('airflow_ha.cluster.tree_checksums', dags) | to_json }}"
                },
            }
        ],
        dags=str(tmp_path / "dags"),
    )
    assert proc.returncode == 0, proc.stdout
    expected = {
        "a.py": hashlib.sha1(b"print(1)\n").hexdigest(),
        "sub/b.py": hashlib.sha1(b"print(2)\n").hexdigest(),
    }
    assert json.dumps(expected, sort_keys=True) in json.dumps(_debug_json(proc.stdout), sort_keys=True)


def test_role_argument_specs_drop_defaults_at_every_depth(tmp_path):
    proc = run_play(
        tmp_path,
        [
            {
                "name": "Specs",
                "ansible.builtin.debug": {
                    "msg": "{{ lookup('airflow_ha.cluster.role_argument_specs', ['worker', 'broker'],"
                    " roles_dir=roles) | to_json }}"
                },
            }
        ],
        roles=str(REPO / "roles"),
    )
    assert proc.returncode == 0, proc.stdout
    specs = _debug_json(proc.stdout)
    assert set(specs) == {"worker", "broker"}
    wanted = yaml.safe_load((REPO / "roles/worker/meta/argument_specs.yml").read_text())
    assert set(specs["worker"]) == set(wanted["argument_specs"]["main"]["options"])
    assert not _has_key(specs, "default")


def _has_key(value: object, key: str) -> bool:
    if isinstance(value, dict):
        return key in value or any(_has_key(v, key) for v in value.values())
    if isinstance(value, list):
        return any(_has_key(v, key) for v in value)
    return False


def _debug_json(stdout: str) -> Any:
    """The value of the first debug task's msg (printed as JSON text)."""
    start = stdout.index('"msg": ') + len('"msg": ')
    return json.loads(json.JSONDecoder().raw_decode(stdout[start:])[0])


@pytest.mark.parametrize(
    ("kind", "name"),
    [
        ("module", "files"),
        ("module", "read_files"),
        ("module", "missing_packages"),
        ("module", "checks"),
        ("module", "packages"),
        ("lookup", "tree_checksums"),
        ("lookup", "role_argument_specs"),
        ("lookup", "fernet_key"),
        ("filter", "cluster_status"),
    ],
)
def test_every_plugin_is_documented(kind, name):
    proc = subprocess.run(
        [tool("ansible-doc"), "-t", kind, "--json", f"airflow_ha.cluster.{name}"],
        cwd=REPO,
        env=ansible_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)[f"airflow_ha.cluster.{name}"]
    assert doc["doc"]["short_description"], doc
    assert doc["examples"].strip(), doc
