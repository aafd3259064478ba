# Copyright: airflow-ha contributors
# Apache License 2.0 (see LICENSE at the root of the airflow-ha repository)
"""The options of roles' meta/argument_specs.yml, without their defaults."""

from __future__ import annotations

DOCUMENTATION = r"""
---
name: role_argument_specs
short_description: The options of roles' C(meta/argument_specs.yml), defaults dropped
description:
  - Reads the C(main) entry point of each role's C(meta/argument_specs.yml) and returns one
    dictionary, role name to its options, ready for M(ansible.builtin.validate_argument_spec).
  - Drops every C(default) key (at any depth), so that a check of what the inventory provides does
    not report the roles' own defaults as if the inventory had set them.
options:
  _terms:
    description: Role names (or lists of them).
    required: true
    type: list
    elements: str
  roles_dir:
    description: The directory holding the roles.
    required: true
    type: path
author: airflow-ha contributors
"""

EXAMPLES = r"""
- name: Roles | Read each role's argument specs
  ansible.builtin.set_fact:
    role_specs: >-
      {{ lookup('airflow_ha.cluster.role_argument_specs', 'broker', 'worker', roles_dir='roles') }}
"""

RETURN = r"""
_raw:
  description: One dictionary, role name to the options of its C(main) entry point.
  type: list
  elements: dict
"""

import os

import yaml
from ansible.errors import AnsibleError
from ansible.plugins.lookup import LookupBase


def without_defaults(value: object) -> object:
    """value with every 'default' key removed, at any depth."""
    if isinstance(value, dict):
        return {key: without_defaults(item) for key, item in value.items() if key != "default"}
    if isinstance(value, list):
        return [without_defaults(item) for item in value]
    return value


def role_options(roles_dir: str, role: str) -> dict:
    """The options of the role's main entry point, defaults dropped."""
    path = os.path.join(roles_dir, role, "meta", "argument_specs.yml")
    try:
        with open(path, encoding="utf-8") as handle:
            specs = yaml.safe_load(handle)
    except OSError as error:
        raise AnsibleError(f"cannot read the argument specs of role {role}: {error}") from error
    try:
        options = specs["argument_specs"]["main"]["options"]
    except (KeyError, TypeError) as error:
        raise AnsibleError(f"{path} has no argument_specs.main.options") from error
    return without_defaults(options)


class LookupModule(LookupBase):
    def run(self, terms: list, variables: dict | None = None, **kwargs: object) -> list:
        self.set_options(var_options=variables, direct=kwargs)
        roles_dir = os.path.expanduser(str(self.get_option("roles_dir")))
        roles = []
        for term in terms:
            roles.extend(term if isinstance(term, list) else [term])
        return [{str(role): role_options(roles_dir, str(role)) for role in roles}]
