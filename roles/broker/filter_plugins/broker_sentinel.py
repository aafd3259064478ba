"""Filters of the broker role: read the files Redis and Sentinel rewrite themselves.

Sentinel owns its configuration file: it rewrites it whenever its view of the cluster changes
(epochs, replicas, other Sentinels, the master's address after a failover). The role therefore never
compares sentinel.conf byte for byte with a template. It parses the file into the settings the role
manages (compared with the wanted values) and the runtime lines Sentinel owns (carried over when the
role has to write the file again).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

# Sentinel's defaults for a per-master setting missing from its file (it drops default values).
_MASTER_DEFAULTS = {
    "down_after_ms": "30000",
    "failover_timeout_ms": "180000",
    "parallel_syncs": "1",
    "auth_user": "",
    "auth_pass": "",
    "quorum": "",
    "client_reconfig_script": "",
}
_GLOBAL_DEFAULTS = {
    "port": "26379",
    "bind": [],
    "requirepass": "",
    "aclfile": "",
    "sentinel_user": "",
    "sentinel_pass": "",
    "announce_ip": "",
    # TLS (broker_tls_enabled): Sentinel's defaults for what it leaves out of its rewrites.
    "tls_port": "0",
    "tls_cert_file": "",
    "tls_key_file": "",
    "tls_ca_cert_file": "",
    "tls_auth_clients": "yes",
    "tls_replication": "no",
}
# Global one-value settings read as they are, "tls-port" as "tls_port".
_GLOBAL_SINGLE = (
    "tls-port",
    "tls-cert-file",
    "tls-key-file",
    "tls-ca-cert-file",
    "tls-auth-clients",
    "tls-replication",
)
# Settings whose value Sentinel may write in any case (yes/YES).
_YES_NO = ("tls-auth-clients", "tls-replication")
# Per-master lines that only Sentinel writes: its view of the cluster, kept across a rewrite.
_RUNTIME_MASTER_OPTIONS = ("config-epoch", "leader-epoch", "known-replica", "known-sentinel")
# Global lines that only Sentinel writes.
_RUNTIME_GLOBAL_OPTIONS = ("myid", "current-epoch")

_ESCAPES = {"n": "\n", "r": "\r", "t": "\t", "b": "\b", "a": "\a", "\\": "\\", '"': '"'}


def _after_closing_quote(line: str, i: int) -> int:
    """Index after the closing quote at `i`; Redis wants a space (or the end) right after it."""
    i += 1
    if i < len(line) and not line[i].isspace():
        raise ValueError(f"closing quote must be followed by a space: {line!r}")
    return i


def split_args(line: str) -> list[str]:
    """Split one configuration line the way Redis does (sdssplitargs): quotes and escapes."""
    args: list[str] = []
    i, n = 0, len(line)
    while True:
        while i < n and line[i].isspace():
            i += 1
        if i >= n:
            return args
        current: list[str] = []
        quote = None
        while i < n:
            c = line[i]
            if quote == '"':
                if (
                    c == "\\"
                    and i + 3 < n
                    and line[i + 1] == "x"
                    and all(h in "0123456789abcdefABCDEF" for h in line[i + 2 : i + 4])
                ):
                    current.append(chr(int(line[i + 2 : i + 4], 16)))
                    i += 4
                    continue
                if c == "\\" and i + 1 < n:
                    current.append(_ESCAPES.get(line[i + 1], line[i + 1]))
                    i += 2
                    continue
                if c == '"':
                    quote = None
                    i = _after_closing_quote(line, i)
                    break
                current.append(c)
            elif quote == "'":
                if c == "\\" and i + 1 < n and line[i + 1] == "'":
                    current.append("'")
                    i += 2
                    continue
                if c == "'":
                    quote = None
                    i = _after_closing_quote(line, i)
                    break
                current.append(c)
            else:
                if c.isspace():
                    break
                if c in "\"'" and not current:
                    quote = c
                else:
                    current.append(c)
            i += 1
        if quote is not None:
            raise ValueError(f"unbalanced quotes: {line!r}")
        args.append("".join(current))


def broker_sentinel_state(content: str, master_name: str, marker: str) -> dict[str, Any]:
    """Parse sentinel.conf.

    Returns ``marker`` (the role wrote this file's layout), ``settings`` (what the role manages, as
    strings; ``bind`` a list), ``master`` (``{"host", "port"}`` Sentinel monitors under master_name,
    or None) and ``runtime`` (Sentinel's own state lines for master_name, to carry over).
    """
    settings: dict[str, Any] = dict(_GLOBAL_DEFAULTS) | dict(_MASTER_DEFAULTS)
    master = None
    runtime: list[str] = []
    has_marker = False
    for raw in (content or "").splitlines():
        line = raw.strip()
        if not line:
            continue
        if line.startswith("#"):
            has_marker = has_marker or marker in line
            continue
        args = split_args(line)
        if not args:
            continue
        name = args[0].lower()
        if name == "port" and len(args) == 2:
            settings["port"] = args[1]
        elif name == "bind":
            settings["bind"] = args[1:]
        elif name == "requirepass" and len(args) == 2:
            settings["requirepass"] = args[1]
        elif name == "aclfile" and len(args) == 2:
            settings["aclfile"] = args[1]
        elif name in _GLOBAL_SINGLE and len(args) == 2:
            settings[name.replace("-", "_")] = args[1].lower() if name in _YES_NO else args[1]
        elif name == "sentinel" and len(args) >= 2:
            option = args[1].lower()
            rest = args[2:]
            if option == "sentinel-pass" and len(rest) == 1:
                settings["sentinel_pass"] = rest[0]
            elif option == "sentinel-user" and len(rest) == 1:
                settings["sentinel_user"] = rest[0]
            elif option == "announce-ip" and len(rest) == 1:
                settings["announce_ip"] = rest[0]
            elif option in _RUNTIME_GLOBAL_OPTIONS:
                runtime.append(line)
            elif rest and rest[0] == master_name:
                values = rest[1:]
                if option == "monitor" and len(values) == 3:
                    master = {"host": values[0], "port": values[1]}
                    settings["quorum"] = values[2]
                elif option == "auth-pass" and len(values) == 1:
                    settings["auth_pass"] = values[0]
                elif option == "auth-user" and len(values) == 1:
                    settings["auth_user"] = values[0]
                elif option == "down-after-milliseconds" and len(values) == 1:
                    settings["down_after_ms"] = values[0]
                elif option == "failover-timeout" and len(values) == 1:
                    settings["failover_timeout_ms"] = values[0]
                elif option == "parallel-syncs" and len(values) == 1:
                    settings["parallel_syncs"] = values[0]
                elif option == "client-reconfig-script" and len(values) == 1:
                    settings["client_reconfig_script"] = values[0]
                elif option in _RUNTIME_MASTER_OPTIONS:
                    runtime.append(line)
    return {"marker": has_marker, "settings": settings, "master": master, "runtime": runtime}


def broker_sentinel_drift(state: dict[str, Any], wanted: dict[str, Any]) -> list[str]:
    """Names of the managed settings whose value in the file differs from the wanted one.

    Only names, never values: some are passwords.
    """
    have = state.get("settings", {})
    drift = []
    for key, value in sorted(wanted.items()):
        want = [str(v) for v in value] if isinstance(value, list) else str(value)
        if have.get(key) != want:
            drift.append(key)
    if not state.get("marker"):
        drift.insert(0, "layout")
    return drift


def broker_master_answers(lines: list[str], nodes: list[str]) -> list[str]:
    """Masters named by the Sentinels' ``SENTINEL get-master-addr-by-name`` answers, one line per
    Sentinel that answered: ``<sentinel> <master address> <master port>``. Keeps only addresses of
    the broker nodes, most named first."""
    named = []
    for line in lines or []:
        fields = line.split()
        if len(fields) == 3 and fields[1] in nodes and fields[2].isdigit():
            named.append(fields[1])
    counts = Counter(named)
    # Most common first; ties broken by the order of the nodes (the first node wins a tie).
    return sorted(counts, key=lambda host: (-counts[host], nodes.index(host)))


class FilterModule:
    """Filters of the broker role."""

    def filters(self) -> dict[str, Any]:
        return {
            "broker_sentinel_state": broker_sentinel_state,
            "broker_sentinel_drift": broker_sentinel_drift,
            "broker_master_answers": broker_master_answers,
        }
