# Copyright: airflow-ha contributors
# Apache License 2.0 (see LICENSE at the root of the airflow-ha repository)
"""The names option of the plugins that look up Debian packages (missing_packages, packages)."""

from __future__ import annotations


class ModuleDocFragment:
    DOCUMENTATION = r"""
options:
  names:
    description: Package names, optionally with an architecture (V(name:arch)). No versions or wildcards.
    type: list
    elements: str
    required: true
"""
