#!/usr/bin/python
# Copyright: airflow-ha contributors
# Apache License 2.0 (see LICENSE at the root of the airflow-ha repository)
"""Documentation of the checks action (it runs on the controller: plugins/action/checks.py)."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: checks
short_description: Several assertions, each with its own message, in one task
description:
  - Evaluates each check of O(checks) in order on the controller, like M(ansible.builtin.assert),
    and fails with the message of every check that does not hold, one per line.
  - One task instead of one per assertion: a role's preflight costs one step per host.
  - A check whose conditions cannot be evaluated after an earlier check failed is left out (it
    usually fails because of the earlier one).
options:
  checks:
    description: The checks.
    type: list
    elements: dict
    required: true
    suboptions:
      that:
        description: Conditions (as in M(ansible.builtin.assert)); the check holds when all are true.
        type: list
        elements: str
        required: true
      fail_msg:
        description: Message when the check does not hold; templated only then.
        type: str
        required: true
      when:
        description: Condition for the check to apply at all.
        type: str
      no_log:
        description: Hide the evaluation error of a check that cannot be evaluated (it may show a secret).
        type: bool
        default: false
extends_documentation_fragment: airflow_ha.cluster.read_only
"""

EXAMPLES = r"""
- name: Preflight | Check the variables
  airflow_ha.cluster.checks:
    checks:
      - that: broker_port | int > 0
        fail_msg: "broker_port must be a port number, got {{ broker_port }}"
      - that: [broker_nodes | length >= 3, broker_nodes | length is odd]
        fail_msg: With Sentinel, broker_nodes needs an odd number (3 or more) of hosts.
        when: broker_sentinel_enabled | bool
"""

RETURN = r"""
failed_checks:
  description: How many checks failed.
  returned: failure
  type: int
"""
