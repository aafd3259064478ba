#!/usr/bin/python3
# Copyright airflow-ha contributors. Licensed under the Apache License, Version 2.0.
"""Cluster facts for the node exporter's textfile collector (role exporters).

Run by airflow-ha-metrics.timer as root with one argument, its JSON settings file. Writes, in one
atomic rename, the metrics file the node exporter serves:

  airflow_ha_unit_active{unit}                         1 while a listed systemd unit is active
  airflow_ha_scheduler_healthy                         1/0: the scheduler's health server answers
                                                       200 (only while its unit is active)
  airflow_ha_vip_held{vip}                             1 while this host holds the VIP
  airflow_ha_certificate_expiry_timestamp_seconds{path} a certificate's notAfter (Unix time)
  airflow_ha_sentinel_master{name,master}              1: the master this host's Redis Sentinel
                                                       names (its config file, which Sentinel
                                                       rewrites on every failover)
  airflow_ha_facts_timestamp_seconds                   when this file was written

Why not a maintained collector: Debian's prometheus-node-exporter-collectors has no certificate,
VIP, health-check or Sentinel script, and the node exporter's systemd collector needs D-Bus.
Standard library only: it runs on Debian 12's /usr/bin/python3 on every host.
"""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def unit_states(units: list[str]) -> dict[str, bool]:
    """Each unit's `systemctl is-active` answer: one line per unit, in order."""
    if not units:
        return {}
    done = subprocess.run(
        ["systemctl", "is-active", *units], capture_output=True, text=True, timeout=20, check=False
    )
    lines = done.stdout.splitlines()
    return {unit: (lines[i].strip() == "active" if i < len(lines) else False) for i, unit in enumerate(units)}


def healthy(url: str, timeout: float = 5.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as answer:
            return bool(answer.status == 200)
    except (urllib.error.URLError, OSError, ValueError):
        return False


def held_addresses(ip_output: str) -> set[str]:
    """Addresses in `ip -o addr show` output (`2: eth0    inet 10.0.0.5/24 brd ...`)."""
    found = set()
    for line in ip_output.splitlines():
        fields = line.split()
        for kind in ("inet", "inet6"):
            if kind in fields and fields.index(kind) + 1 < len(fields):
                found.add(fields[fields.index(kind) + 1].split("/")[0])
    return found


def not_after(openssl_output: str) -> float | None:
    """`openssl x509 -enddate -noout` prints `notAfter=Nov 28 02:50:48 2027 GMT`."""
    text = openssl_output.strip()
    if not text.startswith("notAfter="):
        return None
    moment = datetime.strptime(text.removeprefix("notAfter=").replace("  ", " "), "%b %d %H:%M:%S %Y %Z")
    return moment.replace(tzinfo=UTC).timestamp()


def sentinel_masters(config_text: str) -> dict[str, str]:
    """{master name: "ADDRESS:PORT"} from sentinel.conf's `sentinel monitor NAME ADDRESS PORT QUORUM`."""
    found = {}
    for line in config_text.splitlines():
        fields = line.split()
        if len(fields) >= 5 and fields[0] == "sentinel" and fields[1] == "monitor":
            found[fields[2]] = f"{fields[3]}:{fields[4]}"
    return found


def certificate_expiries(patterns: list[str]) -> dict[str, float]:
    found: dict[str, float] = {}
    for path in sorted({p for pattern in patterns for p in glob.glob(pattern)}):
        done = subprocess.run(
            ["openssl", "x509", "-enddate", "-noout", "-in", path],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
        expiry = not_after(done.stdout) if done.returncode == 0 else None
        if expiry is not None:
            found[path] = expiry
    return found


def render(
    units: dict[str, bool],
    scheduler_healthy: bool | None,
    vips: dict[str, bool],
    certificates: dict[str, float],
    now: float,
    sentinel: dict[str, str] | None = None,
) -> str:
    out = [
        "# HELP airflow_ha_unit_active 1 while the systemd unit is active.",
        "# TYPE airflow_ha_unit_active gauge",
    ]
    out += [f'airflow_ha_unit_active{{unit="{_label(u)}"}} {int(a)}' for u, a in sorted(units.items())]
    if scheduler_healthy is not None:
        out += [
            "# HELP airflow_ha_scheduler_healthy 1 while the running scheduler's health server answers 200.",
            "# TYPE airflow_ha_scheduler_healthy gauge",
            f"airflow_ha_scheduler_healthy {int(scheduler_healthy)}",
        ]
    out += [
        "# HELP airflow_ha_vip_held 1 while this host holds the virtual IP.",
        "# TYPE airflow_ha_vip_held gauge",
    ]
    out += [f'airflow_ha_vip_held{{vip="{_label(v)}"}} {int(h)}' for v, h in sorted(vips.items())]
    out += [
        "# HELP airflow_ha_certificate_expiry_timestamp_seconds The certificate's notAfter, Unix time.",
        "# TYPE airflow_ha_certificate_expiry_timestamp_seconds gauge",
    ]
    out += [
        f'airflow_ha_certificate_expiry_timestamp_seconds{{path="{_label(p)}"}} {e:.0f}'
        for p, e in sorted(certificates.items())
    ]
    if sentinel:
        out += [
            "# HELP airflow_ha_sentinel_master The master this host's Redis Sentinel names.",
            "# TYPE airflow_ha_sentinel_master gauge",
        ]
        out += [
            f'airflow_ha_sentinel_master{{name="{_label(n)}",master="{_label(m)}"}} 1'
            for n, m in sorted(sentinel.items())
        ]
    out += [
        "# HELP airflow_ha_facts_timestamp_seconds When airflow-ha-metrics last wrote this file.",
        "# TYPE airflow_ha_facts_timestamp_seconds gauge",
        f"airflow_ha_facts_timestamp_seconds {now:.0f}",
    ]
    return "\n".join(out) + "\n"


def main(argv: list[str]) -> int:
    with open(argv[1], encoding="utf-8") as handle:
        settings = json.load(handle)
    units = unit_states(list(settings["units"]))
    scheduler_healthy = None
    url = settings.get("scheduler_health_url", "")
    if url and unit_states([settings["scheduler_unit"]])[settings["scheduler_unit"]]:
        scheduler_healthy = healthy(url)
    vips: dict[str, bool] = {}
    if settings["vips"]:
        ip = subprocess.run(
            ["ip", "-o", "addr", "show"], capture_output=True, text=True, timeout=10, check=False
        )
        held = held_addresses(ip.stdout)
        vips = {vip: vip in held for vip in settings["vips"]}
    sentinel = None
    sentinel_config = settings.get("sentinel_config", "")
    if sentinel_config and os.path.exists(sentinel_config):
        with open(sentinel_config, encoding="utf-8") as handle:
            sentinel = sentinel_masters(handle.read())
    text = render(
        units,
        scheduler_healthy,
        vips,
        certificate_expiries(settings["certificate_globs"]),
        time.time(),
        sentinel=sentinel,
    )
    output = settings["output"]
    temporary = f"{output}.tmp"
    with open(temporary, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.chmod(temporary, 0o644)
    os.replace(temporary, output)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
