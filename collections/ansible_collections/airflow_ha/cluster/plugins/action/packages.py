# Copyright: airflow-ha contributors
# Apache License 2.0 (see LICENSE at the root of the airflow-ha repository)
"""Install Debian packages, asking apt only for those dpkg does not have."""

from __future__ import annotations

import re

from ansible.errors import AnsibleError
from ansible.plugins.action import ActionBase

# What apt says when its package lists name a version the mirror no longer has (or a package they do
# not know yet): the lists are out of date, and refreshing them is the cure.
_STALE_LISTS = re.compile(r"Failed to fetch|Unable to fetch|404\s+Not Found|No package matching")


def stale_lists(apt_result: dict) -> bool:
    """Whether a failed apt run failed because the package lists were out of date."""
    text = " ".join(str(apt_result.get(key) or "") for key in ("msg", "stderr", "stdout"))
    return bool(apt_result.get("failed")) and bool(_STALE_LISTS.search(text))


class ActionModule(ActionBase):
    """missing_packages on the host, then ansible.builtin.apt for what it reports missing."""

    def run(self, tmp: str | None = None, task_vars: dict | None = None) -> dict:
        result = super().run(tmp, task_vars)
        del tmp
        args = dict(self._task.args)
        names = args.pop("names", None)
        cache_valid_time = int(args.pop("cache_valid_time", 3600))
        if args:
            raise AnsibleError(f"packages takes names and cache_valid_time, not {', '.join(sorted(args))}")
        if not isinstance(names, list) or not names:
            raise AnsibleError("packages needs names: a non-empty list of Debian package names")
        query = self._execute_module(
            module_name="airflow_ha.cluster.missing_packages",
            module_args={"names": names},
            task_vars=task_vars,
        )
        if query.get("failed"):
            return {**result, **query}
        missing = query["missing"]
        if not missing:
            return {**result, "changed": False, "missing": []}
        # A host whose package lists were never downloaded (a fresh image) looks "recently updated"
        # to cache_valid_time, so apt refreshes them unconditionally there.
        apt_args = {"name": missing, "state": "present", "update_cache": True}
        fresh_enough = cache_valid_time if query["package_lists"] else 0
        apt = self._execute_module(
            module_name="ansible.builtin.apt",
            module_args={**apt_args, "cache_valid_time": fresh_enough},
            task_vars=task_vars,
        )
        # Lists young enough for cache_valid_time (say, an image's, dated for its apt cache) can still
        # name versions the mirror has dropped: refresh them and try once more. (A failed run does
        # not say whether it refreshed them; at worst this is a second refresh before the same error.)
        if fresh_enough and stale_lists(apt):
            first = str(apt.get("msg", "")).strip()[:300]
            apt = self._execute_module(
                module_name="ansible.builtin.apt",
                module_args={**apt_args, "cache_valid_time": 0},
                task_vars=task_vars,
            )
            warning = f"apt failed with the package lists as they were ({first}); refreshed them and retried"
            apt["warnings"] = [*apt.get("warnings", []), warning]
        return {**result, **apt, "missing": missing}
