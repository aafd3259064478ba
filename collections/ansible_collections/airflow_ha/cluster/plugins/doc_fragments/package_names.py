# Copyright: airflow-ha contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
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
