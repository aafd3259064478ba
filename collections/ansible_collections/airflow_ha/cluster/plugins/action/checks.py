# Copyright: airflow-ha contributors
# Apache License 2.0 (see LICENSE at the root of the airflow-ha repository)
"""Several assertions, each with its own message, in one task."""

from __future__ import annotations

import typing as t

from ansible.errors import AnsibleError
from ansible.plugins.action import ActionBase

if t.TYPE_CHECKING:
    from ansible._internal._templating._engine import TemplateEngine


class ActionModule(ActionBase):
    """Evaluate checks in order on the controller; fail with the message of every check that fails."""

    _requires_connection = False

    @classmethod
    def finalize_task_arg(cls, name: str, value: t.Any, templar: TemplateEngine, context: t.Any) -> t.Any:
        # Conditions and messages are evaluated in run(), one check at a time: a message may refer
        # to values that only exist when its check applies.
        if name == "checks":
            return value
        return super().finalize_task_arg(name, value, templar, context)

    def run(self, tmp: str | None = None, task_vars: dict | None = None) -> dict:
        result = super().run(tmp, task_vars)
        del tmp
        checks = self._task.args.get("checks")
        unknown = set(self._task.args) - {"checks"}
        if unknown or not isinstance(checks, list) or not checks:
            raise AnsibleError(
                "checks takes one argument, checks: a non-empty list of {that, fail_msg, when, no_log}"
            )
        failures: list[str] = []
        for number, check in enumerate(checks, start=1):
            message = self._evaluate(number, check, failures)
            if message is not None:
                failures.append(message)
        result["changed"] = False
        if failures:
            result["failed"] = True
            result["msg"] = "\n".join(failures)
            result["failed_checks"] = len(failures)
        else:
            result["msg"] = f"All {len(checks)} checks passed"
        return result

    def _evaluate(self, number: int, check: t.Any, failures: list[str]) -> str | None:
        """None when the check passes or does not apply, else its message."""
        if not isinstance(check, dict) or "that" not in check or "fail_msg" not in check:
            raise AnsibleError(f"check {number}: needs that and fail_msg")
        conditions = check["that"] if isinstance(check["that"], list) else [check["that"]]
        secret = bool(check.get("no_log", False))
        try:
            if "when" in check and not self._templar.evaluate_conditional(conditional=check["when"]):
                return None
            if all(self._templar.evaluate_conditional(conditional=that) for that in conditions):
                return None
            return str(self._templar.template(check["fail_msg"])).strip()
        except AnsibleError:
            if failures:
                # An earlier check failed; this one probably fails because of it. Report those.
                return None
            if secret:
                raise AnsibleError(
                    f"check {number} could not be evaluated (details hidden: no_log)"
                ) from None
            raise
