#!/usr/bin/python
# Copyright: airflow-ha contributors
# Apache License 2.0 (see LICENSE at the root of the airflow-ha repository)
"""Read several text files in one module run."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: read_files
short_description: Read several text files on the target in one module run
description:
  - Returns the text of each file in O(paths), or that it does not exist, in one round trip where
    M(ansible.builtin.stat) and M(ansible.builtin.slurp) need one each per file.
  - Changes nothing, so it always reports C(changed=false). Put O(ignore:no_log) on the task when a
    file holds secrets.
options:
  paths:
    description: Absolute paths of text files (UTF-8; undecodable bytes are replaced).
    type: list
    elements: path
    required: true
extends_documentation_fragment: airflow_ha.cluster.read_only
"""

EXAMPLES = r"""
- name: Configure | Read redis.conf and the static settings in place
  airflow_ha.cluster.read_files:
    paths: [/etc/redis/redis.conf, /etc/redis/airflow-ha.conf]
  register: redis_files
  no_log: true

- name: Configure | Use one
  ansible.builtin.debug:
    msg: "{{ redis_files.files['/etc/redis/redis.conf'].exists }}"
"""

RETURN = r"""
files:
  description: For each path, C(exists) and C(content) (the text, or null when the file does not exist).
  returned: success
  type: dict
  sample: {"/etc/redis/redis.conf": {"exists": true, "content": "include /etc/redis/airflow-ha.conf\n"}}
"""

import os

from ansible.module_utils.basic import AnsibleModule


def read_text(path: str) -> dict:
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except FileNotFoundError:
        return {"exists": False, "content": None}
    return {"exists": True, "content": data.decode("utf-8", errors="replace")}


def main() -> None:
    module = AnsibleModule(
        argument_spec={"paths": {"type": "list", "elements": "path", "required": True}},
        supports_check_mode=True,
    )
    files = {}
    for path in module.params["paths"]:
        if not os.path.isabs(path):
            module.fail_json(msg=f"{path}: the path must be absolute")
        try:
            files[path] = read_text(path)
        except OSError as error:
            module.fail_json(msg=f"cannot read {path}: {error.strerror}")
    module.exit_json(changed=False, files=files)


if __name__ == "__main__":
    main()
