# Copyright: airflow-ha contributors
# Apache License 2.0 (see LICENSE at the root of the airflow-ha repository)
"""A fresh Fernet key: URL-safe base64 of 32 random bytes, made by cryptography's Fernet.

Why a plugin: Ansible's generators pick characters, not bytes. ``ansible.builtin.password`` and
``community.general.random_string`` (even with ``base64: true``, which encodes the characters it
picked) yield a string of printable characters, and base64 of 32 such characters is a 44-character
key of which every byte is printable ASCII: the signing and encryption halves hold about 95 bits of
randomness each instead of 128. No module of ansible.builtin, community.general or community.crypto
returns random bytes or a Fernet key, so this lookup calls ``Fernet.generate_key()`` (32 bytes from
``os.urandom``), the generator of the library Airflow encrypts with. ``cryptography`` is a
dependency of ansible-core, so it is on every controller.
"""

from __future__ import annotations

DOCUMENTATION = r"""
---
name: fernet_key
short_description: A new random Fernet key
description:
  - Returns one new Fernet key per call, the URL-safe base64 encoding of 32 random bytes from the
    operating system's CSPRNG (C(cryptography.fernet.Fernet.generate_key)), as Airflow's
    C([core] fernet_key) expects.
  - Takes no terms. Each call returns a different key, so store the key once (the secrets file of
    the airflow_common role does) and never regenerate it; data encrypted with a lost key is lost.
author: airflow-ha contributors
"""

EXAMPLES = r"""
- name: Secrets | A new Fernet key
  ansible.builtin.set_fact:
    new_fernet_key: "{{ lookup('airflow_ha.cluster.fernet_key') }}"
"""

RETURN = r"""
_raw:
  description: One key, 44 characters of URL-safe base64.
  type: list
  elements: str
"""

from ansible.errors import AnsibleError
from ansible.plugins.lookup import LookupBase
from cryptography.fernet import Fernet


def fernet_key() -> str:
    """A new Fernet key (URL-safe base64 of 32 random bytes)."""
    return Fernet.generate_key().decode("ascii")


class LookupModule(LookupBase):
    def run(self, terms: list, variables: dict | None = None, **kwargs: object) -> list:
        if terms:
            raise AnsibleError("airflow_ha.cluster.fernet_key takes no terms")
        self.set_options(var_options=variables, direct=kwargs)
        return [fernet_key()]
