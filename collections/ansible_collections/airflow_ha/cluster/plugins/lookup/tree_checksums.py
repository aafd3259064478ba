# Copyright: airflow-ha contributors
# Apache License 2.0 (see LICENSE at the root of the airflow-ha repository)
"""SHA-1 of every file under a directory on the controller."""

from __future__ import annotations

DOCUMENTATION = r"""
---
name: tree_checksums
short_description: SHA-1 checksum of every file under a directory on the controller
description:
  - Walks each directory given and returns one dictionary per directory, mapping every regular
    file's path relative to it to the file's SHA-1 (the checksum M(ansible.builtin.find) and
    M(ansible.builtin.stat) report on the target).
  - Skips C(__pycache__) directories. Follows no symbolic links to directories.
  - Used to sync a folder by copying only the files whose checksum differs on the target, and to
    key a cache on a folder's content.
options:
  _terms:
    description: Directories on the controller.
    required: true
    type: list
    elements: path
author: airflow-ha contributors
"""

EXAMPLES = r"""
- name: DAGs | Checksums of the DAG files on the controller
  ansible.builtin.set_fact:
    dag_checksums: "{{ lookup('airflow_ha.cluster.tree_checksums', airflow_common_dags_src) }}"
"""

RETURN = r"""
_raw:
  description: One dictionary per directory, relative path to SHA-1.
  type: list
  elements: dict
"""

import hashlib
import os

from ansible.errors import AnsibleError
from ansible.plugins.lookup import LookupBase


def tree_checksums(root: str) -> dict[str, str]:
    """Map each regular file under root (relative path) to its SHA-1."""
    if not os.path.isdir(root):
        raise AnsibleError(f"{root} is not a directory on the controller")
    checksums = {}
    for directory, subdirectories, names in os.walk(root):
        subdirectories[:] = sorted(d for d in subdirectories if d != "__pycache__")
        for name in sorted(names):
            path = os.path.join(directory, name)
            if not os.path.isfile(path):
                continue
            digest = hashlib.sha1()
            with open(path, "rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
            checksums[os.path.relpath(path, root)] = digest.hexdigest()
    return checksums


class LookupModule(LookupBase):
    def run(self, terms: list, variables: dict | None = None, **kwargs: object) -> list:
        self.set_options(var_options=variables, direct=kwargs)
        return [tree_checksums(os.path.expanduser(str(term))) for term in terms]
