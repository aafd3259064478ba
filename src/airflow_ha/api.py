"""A small client for Airflow 3's REST API, used by the end-to-end tests, benchmarks and chaos runs."""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import requests


class ApiError(RuntimeError):
    """The API answered with an error, or did not reach the wanted state in time."""


@dataclass
class AirflowApi:
    """Logged-in session against one API address (the load balancer's, normally)."""

    base_url: str
    username: str
    password: str
    timeout: float = 10.0
    session: requests.Session = field(default_factory=requests.Session)
    # How the server's certificate is checked (requests' `verify`): the cluster CA's file for the
    # cluster's HTTPS API (Lab.api_verify), True for the system's CAs.
    verify: str | bool = True

    def __post_init__(self) -> None:
        self.session.verify = self.verify
        # requests lets REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE from the environment replace a session's
        # own CA file (psf/requests#3829): with the cluster CA given, ignore the environment (its
        # proxies too: the API is on the cluster's own network).
        if isinstance(self.verify, str):
            self.session.trust_env = False

    def login(self, wait: float = 120.0) -> None:
        """Get a JWT from the FAB auth manager's /auth/token, retrying while the API comes up."""
        deadline = time.monotonic() + wait
        last = ""
        refusals = 0
        while time.monotonic() < deadline:
            try:
                resp = self.session.post(
                    f"{self.base_url}/auth/token",
                    json={"username": self.username, "password": self.password},
                    timeout=self.timeout,
                )
                if resp.status_code in (200, 201):
                    token = resp.json()["access_token"]
                    self.session.headers["Authorization"] = f"Bearer {token}"
                    return
                last = f"HTTP {resp.status_code}: {resp.text[:200]}"
                # FAB answers 401 "Invalid credentials" also when its user lookup hit a dead pooled
                # database connection (seen right after the VIP holder was killed): a refusal counts
                # only when it repeats.
                refusals += resp.status_code in (400, 401, 403)
                if refusals >= 3:
                    break
            except requests.RequestException as exc:
                last = str(exc)
            time.sleep(2)
        raise ApiError(f"login to {self.base_url} failed: {last}")

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        resp = self.session.request(method, f"{self.base_url}{path}", timeout=self.timeout, **kwargs)
        if resp.status_code >= 400:
            raise ApiError(f"{method} {path}: HTTP {resp.status_code}: {resp.text[:300]}")
        return resp.json() if resp.content else None

    def get(self, path: str, **params: Any) -> Any:
        return self.request("GET", path, params=params or None)

    def wait_for_dag(self, dag_id: str, wait: float = 180.0) -> dict[str, Any]:
        deadline = time.monotonic() + wait
        while True:
            try:
                return self.get(f"/api/v2/dags/{dag_id}")
            except ApiError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(2)

    def unpause(self, dag_id: str) -> None:
        self.request("PATCH", f"/api/v2/dags/{dag_id}", json={"is_paused": False})

    def trigger(self, dag_id: str, conf: dict[str, Any] | None = None) -> str:
        run = self.request(
            "POST", f"/api/v2/dags/{dag_id}/dagRuns", json={"logical_date": None, "conf": conf or {}}
        )
        return run["dag_run_id"]

    def dag_run(self, dag_id: str, run_id: str) -> dict[str, Any]:
        return self.get(f"/api/v2/dags/{dag_id}/dagRuns/{quote(run_id, safe='')}")

    def wait_for_run(self, dag_id: str, run_id: str, wait: float = 300.0) -> dict[str, Any]:
        """Wait until the run is finished; return it (state success or failed)."""
        deadline = time.monotonic() + wait
        while True:
            run = self.dag_run(dag_id, run_id)
            if run["state"] in ("success", "failed"):
                return run
            if time.monotonic() > deadline:
                raise ApiError(f"{dag_id} {run_id} still {run['state']} after {wait:.0f} s")
            time.sleep(2)

    def task_instances(self, dag_id: str, run_id: str) -> list[dict[str, Any]]:
        path = f"/api/v2/dags/{dag_id}/dagRuns/{quote(run_id, safe='')}/taskInstances"
        return self.get(path, limit=500)["task_instances"]

    def task_log(self, dag_id: str, run_id: str, task_id: str, try_number: int, map_index: int = -1) -> str:
        run = quote(run_id, safe="")
        path = f"/api/v2/dags/{dag_id}/dagRuns/{run}/taskInstances/{task_id}/logs/{try_number}"
        resp = self.session.get(
            f"{self.base_url}{path}",
            params={"map_index": str(map_index), "full_content": "true"},
            headers={"Accept": "application/json"},
            timeout=30,
        )
        if resp.status_code >= 400:
            raise ApiError(f"GET {path}: HTTP {resp.status_code}: {resp.text[:300]}")
        return _log_text(resp.json().get("content"))

    def alive_scheduler_hosts(self) -> set[str]:
        jobs = self.get("/api/v2/jobs", job_type="SchedulerJob", is_alive="true", limit=100)["jobs"]
        return {job["hostname"] for job in jobs}


def _log_text(content: Any) -> str:
    """Airflow 3 returns structured log lines; flatten them to text."""
    if isinstance(content, str):
        return content
    if isinstance(content, Iterable):
        parts = []
        for item in content:
            if isinstance(item, dict):
                parts.append(" ".join(str(v) for v in item.values()))
            else:
                parts.append(str(item))
        return "\n".join(parts)
    return str(content)
