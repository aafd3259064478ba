#!/usr/bin/python
# Copyright: airflow-ha contributors
# Apache License 2.0 (see LICENSE at the root of the airflow-ha repository)
"""Ensure several files and directories in one module run."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: files
short_description: Ensure a set of files, directories and absent paths in one module run
description:
  - Ensures each entry of O(files) in order, then that each path of O(absent) is gone, on the
    target, in a single module run. A directory exists, a path is absent, or a file holds exactly
    the given text with the given owner, group and mode.
  - A file whose content differs is written to a temporary file in the same directory with its
    final owner, group and mode, optionally validated, then renamed over the old one, so a reader
    never sees a partial file and a file holding secrets is never readable by others.
  - Nothing is written when every entry is already as wanted; the task then reports C(changed=false).
  - The roles of airflow-ha use it where several files change together, so that a run that changes
    nothing reads them all in one round trip instead of two per file
    (M(ansible.builtin.template) and M(ansible.builtin.copy) each check a file, then its attributes).
  - Render templates on the controller with P(ansible.builtin.template#lookup) and pass their text
    as O(files[].content). Put O(ignore:no_log) on the task when a content holds secrets.
options:
  files:
    description: What to ensure, in order (list a directory before the files in it).
    type: list
    elements: dict
    default: []
    suboptions:
      path:
        description: Absolute path on the target.
        type: path
        required: true
      state:
        description:
          - V(file) writes O(files[].content), V(directory) makes a directory, V(absent) removes the path.
        type: str
        choices: [file, directory, absent]
        default: file
      content:
        description: The whole text of the file (UTF-8). Required with O(files[].state=file).
        type: str
      owner:
        description: Owner name. Defaults to the owner of an existing path, else the user running the module.
        type: str
      group:
        description:
          - Group name. Defaults to the group of an existing path, else the group of the user running
            the module.
        type: str
      mode:
        description: Octal permissions as a string, such as V("0640").
        type: str
      validate:
        description:
          - Command that checks a new file's content before it replaces the old one; C(%s) is the new
            file's path.
          - The old file stays in place when the command fails.
        type: str
  absent:
    description:
      - Paths to remove (a directory with everything in it), after the entries of O(files). An empty
        list, like an empty O(files), asks for nothing.
      - The same as entries of O(files) with O(files[].state=absent), for a list of paths built in Jinja.
    type: list
    elements: path
    default: []
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
author: airflow-ha contributors
"""

EXAMPLES = r"""
- name: Configure | The api-server's files
  airflow_ha.cluster.files:
    files:
      - path: /etc/airflow
        state: directory
        owner: root
        group: airflow
        mode: "0750"
      - path: /etc/airflow/airflow.env
        content: "{{ lookup('ansible.builtin.template', 'airflow.env.j2') }}"
        owner: root
        group: airflow
        mode: "0640"
      - path: /etc/airflow/old.conf
        state: absent
  notify: Airflow config changed

- name: Configure | No drop-in left on the units that are not guarded
  airflow_ha.cluster.files:
    absent: "{{ unguarded_units | map('regex_replace', '^(.*)$', '/etc/systemd/system/\\1.d/guard.conf') }}"
"""

RETURN = r"""
changed_paths:
  description: The paths that were (or, in check mode, would be) changed, in order.
  returned: always
  type: list
  elements: str
"""

import grp
import os
import pwd
import re
import shutil
import stat
import tempfile

from ansible.module_utils.basic import AnsibleModule

_MODE = re.compile(r"^0?[0-7]{3,4}$")


# For "owner" and "group": the id of a name, the stat field holding it, and the process's own id.
_IDS = {
    "owner": (lambda name: pwd.getpwnam(name).pw_uid, "st_uid", os.geteuid),
    "group": (lambda name: grp.getgrnam(name).gr_gid, "st_gid", os.getegid),
}


def _id(module: AnsibleModule, kind: str, name: str | None, current: os.stat_result | None) -> int:
    """The uid or gid of name; without a name, the path's own, else the process's."""
    by_name, stat_field, own = _IDS[kind]
    if name is None:
        return getattr(current, stat_field) if current else own()
    try:
        return by_name(name)
    except KeyError:
        module.fail_json(msg=f"{kind} {name!r} does not exist on this host")
    raise AssertionError  # fail_json exits


def _mode(mode: str | None, current: os.stat_result | None, default: int) -> int:
    if mode is None:
        return stat.S_IMODE(current.st_mode) if current else default
    return int(mode, 8)


def _wanted_attributes(
    module: AnsibleModule, entry: dict, current: os.stat_result | None, default_mode: int
) -> tuple[int, int, int]:
    """uid, gid and mode the entry wants (what it leaves unset stays as the path has it)."""
    return (
        _id(module, "owner", entry["owner"], current),
        _id(module, "group", entry["group"], current),
        _mode(entry["mode"], current, default_mode),
    )


def _attributes_differ(current: os.stat_result, uid: int, gid: int, mode: int) -> bool:
    return (current.st_uid, current.st_gid, stat.S_IMODE(current.st_mode)) != (uid, gid, mode)


def _lstat(path: str) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except FileNotFoundError:
        return None


def ensure_directory(module: AnsibleModule, entry: dict, diffs: list) -> bool:
    path = entry["path"]
    current = _lstat(path)
    if current is not None and not stat.S_ISDIR(current.st_mode):
        module.fail_json(msg=f"{path} exists and is not a directory")
    uid, gid, mode = _wanted_attributes(module, entry, current, 0o755)
    if current is not None and not _attributes_differ(current, uid, gid, mode):
        return False
    diffs.append(
        {
            "before_header": path,
            "after_header": path,
            "before": _describe(current),
            "after": _describe_wanted("directory", uid, gid, mode),
        }
    )
    if not module.check_mode:
        if current is None:
            os.makedirs(path, mode=0o700, exist_ok=True)
        os.chown(path, uid, gid)
        os.chmod(path, mode)
    return True


def ensure_absent(module: AnsibleModule, entry: dict, diffs: list) -> bool:
    path = entry["path"]
    current = _lstat(path)
    if current is None:
        return False
    diffs.append(
        {"before_header": path, "after_header": path, "before": _describe(current), "after": "absent\n"}
    )
    if not module.check_mode:
        if stat.S_ISDIR(current.st_mode):
            shutil.rmtree(path)
        else:
            os.unlink(path)
    return True


def ensure_file(module: AnsibleModule, entry: dict, diffs: list) -> bool:
    path = entry["path"]
    if entry["content"] is None:
        module.fail_json(msg=f"{path}: content is required with state=file")
    wanted = entry["content"].encode("utf-8")
    current = _lstat(path)
    if current is not None and not stat.S_ISREG(current.st_mode):
        module.fail_json(msg=f"{path} exists and is not a regular file")
    uid, gid, mode = _wanted_attributes(module, entry, current, 0o644)
    before = b""
    if current is not None:
        with open(path, "rb") as handle:
            before = handle.read()
    content_differs = current is None or before != wanted
    if not content_differs and not _attributes_differ(current, uid, gid, mode):
        return False
    diffs.append(
        {
            "before_header": path,
            "after_header": path,
            "before": _text(before) if current is not None else "",
            "after": entry["content"],
        }
        if content_differs
        else {
            "before_header": path,
            "after_header": path,
            "before": _describe(current),
            "after": _describe_wanted("file", uid, gid, mode),
        }
    )
    if module.check_mode:
        return True
    if not content_differs:
        os.chown(path, uid, gid)
        os.chmod(path, mode)
        return True
    directory = os.path.dirname(path) or "."
    if not os.path.isdir(directory):
        module.fail_json(msg=f"{path}: the directory {directory} does not exist (list it before the file)")
    handle, temporary = tempfile.mkstemp(prefix=".airflow-ha-", dir=directory)
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(wanted)
        os.chown(temporary, uid, gid)
        os.chmod(temporary, mode)
        if entry["validate"]:
            _validate(module, entry["validate"], temporary, path)
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)
    return True


def _validate(module: AnsibleModule, command: str, temporary: str, path: str) -> None:
    if "%s" not in command:
        module.fail_json(msg=f"{path}: validate must contain %s (the new file's path)")
    rc, out, err = module.run_command(command % temporary)
    if rc != 0:
        module.fail_json(
            msg=f"{path}: validation failed, the file was not changed", rc=rc, stdout=out, stderr=err
        )


def _text(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return "(binary content)\n"


def _describe(current: os.stat_result | None) -> str:
    if current is None:
        return "absent\n"
    kind = "directory" if stat.S_ISDIR(current.st_mode) else "file"
    return _describe_wanted(kind, current.st_uid, current.st_gid, stat.S_IMODE(current.st_mode))


def _describe_wanted(kind: str, uid: int, gid: int, mode: int) -> str:
    return f"{kind} uid={uid} gid={gid} mode={mode:04o}\n"


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "files": {
                "type": "list",
                "elements": "dict",
                "default": [],
                "options": {
                    "path": {"type": "path", "required": True},
                    "state": {"type": "str", "choices": ["file", "directory", "absent"], "default": "file"},
                    "content": {"type": "str"},
                    "owner": {"type": "str"},
                    "group": {"type": "str"},
                    "mode": {"type": "str"},
                    "validate": {"type": "str"},
                },
            },
            "absent": {"type": "list", "elements": "path", "default": []},
        },
        supports_check_mode=True,
    )
    unset = dict.fromkeys(("content", "owner", "group", "mode", "validate"))
    entries = module.params["files"] + [
        {**unset, "path": path, "state": "absent"} for path in module.params["absent"]
    ]
    for entry in entries:
        if not os.path.isabs(entry["path"]):
            module.fail_json(msg=f"{entry['path']}: the path must be absolute")
        if entry["mode"] is not None and not _MODE.match(entry["mode"]):
            module.fail_json(
                msg=f'{entry["path"]}: mode {entry["mode"]!r} is not an octal string such as "0640"'
            )
    ensure = {"file": ensure_file, "directory": ensure_directory, "absent": ensure_absent}
    changed_paths = []
    diffs: list = []
    for entry in entries:
        if ensure[entry["state"]](module, entry, diffs):
            changed_paths.append(entry["path"])
    result = {"changed": bool(changed_paths), "changed_paths": changed_paths}
    if module._diff:
        result["diff"] = diffs
    module.exit_json(**result)


if __name__ == "__main__":
    main()
