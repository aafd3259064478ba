#!/usr/bin/python
# Copyright: airflow-ha contributors
# Apache License 2.0 (see LICENSE at the root of the airflow-ha repository)
"""Documentation of the packages action (plugins/action/packages.py)."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: packages
short_description: Install Debian packages, asking apt only for those dpkg does not have
description:
  - Runs M(airflow_ha.cluster.missing_packages) on the host, then M(ansible.builtin.apt) with only
    the packages it reports missing, and not at all when none is. A host that has every package costs
    one light query instead of apt loading its cache.
  - A host whose package lists were never downloaded (a fresh image) looks "recently updated" to
    O(ansible.builtin.apt#module:cache_valid_time), so apt refreshes them unconditionally there.
  - When apt fails to fetch a package with lists young enough for O(cache_valid_time) (C(404 Not
    Found), C(Unable to fetch), or no such package in them), the lists are out of date, so it
    refreshes them and runs apt once more, with a warning. Hosts can thus install from lists that
    came with a matching apt cache (the project's base image) without C(apt-get update), and still
    recover when the mirror has moved on.
options:
  cache_valid_time:
    description: Refresh the package lists before installing when they are older than this (seconds).
    type: int
    default: 3600
attributes:
  check_mode:
    support: full
    description: apt reports what it would install.
  diff_mode:
    support: none
    description: apt shows no diff.
extends_documentation_fragment: airflow_ha.cluster.package_names
author: airflow-ha contributors
"""

EXAMPLES = r"""
- name: Install | The Redis packages
  airflow_ha.cluster.packages:
    names: [redis-server, redis-tools]
"""

RETURN = r"""
missing:
  description: The packages that were missing (and handed to apt).
  returned: success
  type: list
  elements: str
"""
