# Copyright: airflow-ha contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Install Debian packages, asking apt only for those dpkg does not have."""

from __future__ import annotations

from ansible.errors import AnsibleError
from ansible.plugins.action import ActionBase


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
        apt = self._execute_module(
            module_name="ansible.builtin.apt",
            module_args={
                "name": missing,
                "state": "present",
                "update_cache": True,
                "cache_valid_time": cache_valid_time if query["package_lists"] else 0,
            },
            task_vars=task_vars,
        )
        return {**result, **apt, "missing": missing}
