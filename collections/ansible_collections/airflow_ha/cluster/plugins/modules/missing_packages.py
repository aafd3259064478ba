#!/usr/bin/python
# Copyright: airflow-ha contributors
# Apache License 2.0 (see LICENSE at the root of the airflow-ha repository)
"""Which Debian packages are not installed yet (read only)."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: missing_packages
short_description: Which of a list of Debian packages are not installed, read from dpkg's database
description:
  - Asks C(dpkg-query) for the state of each package in O(names) and returns those that are not
    fully installed. Changes nothing, so it always reports C(changed=false).
  - Also says whether the host holds any downloaded package lists, so that the caller can make
    M(ansible.builtin.apt) refresh them on a host that never downloaded any (a fresh image looks
    "recently updated" to O(ansible.builtin.apt#module:cache_valid_time)).
  - M(airflow_ha.cluster.packages) runs it, then M(ansible.builtin.apt) only with what it reports
    missing, so a host that has everything costs one light query instead of apt loading its cache.
extends_documentation_fragment:
  - airflow_ha.cluster.package_names
  - airflow_ha.cluster.read_only
"""

EXAMPLES = r"""
# To install what is missing, use airflow_ha.cluster.packages: it runs this module, then apt.
- name: Install | Find which Redis packages are missing
  airflow_ha.cluster.missing_packages:
    names: [redis-server, redis-tools]
  register: redis_missing

- name: Install | Say which ones
  ansible.builtin.debug:
    msg: "Missing: {{ redis_missing.missing | join(', ') or 'none' }}"
"""

RETURN = r"""
missing:
  description: The names of O(names) that are not installed, in the order given.
  returned: success
  type: list
  elements: str
package_lists:
  description: Whether C(/var/lib/apt/lists) holds any downloaded package list.
  returned: success
  type: bool
"""

import glob
import re

from ansible.module_utils.basic import AnsibleModule

_NAME = re.compile(r"^[a-z0-9][a-z0-9+.-]+(:[a-z0-9-]+)?$")


def is_installed(module: AnsibleModule, name: str) -> bool:
    """Whether dpkg's database has the package fully installed."""
    rc, out, _ = module.run_command(["dpkg-query", "--show", "--showformat=${db:Status-Status}", name])
    return rc == 0 and out.strip() == "installed"


def main() -> None:
    module = AnsibleModule(
        argument_spec={"names": {"type": "list", "elements": "str", "required": True}},
        supports_check_mode=True,
    )
    names = module.params["names"]
    bad = [name for name in names if not _NAME.match(name)]
    if bad:
        module.fail_json(msg=f"not plain Debian package names (no versions or wildcards): {', '.join(bad)}")
    missing = [name for name in names if not is_installed(module, name)]
    package_lists = bool(glob.glob("/var/lib/apt/lists/*_Packages*"))
    module.exit_json(changed=False, missing=missing, package_lists=package_lists)


if __name__ == "__main__":
    main()
