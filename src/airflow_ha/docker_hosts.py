"""Systemd containers that stand in for Debian 12 hosts (the lab and the container tests).

Only the `docker` CLI is used. The flags are the ones verified on the build machines: systemd as
PID 1 needs SYS_ADMIN, an unconfined seccomp profile, the cgroup tree and a tmpfs /run; keepalived
needs NET_ADMIN. `--privileged` is refused on these machines.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass

SYSTEMD_FLAGS: tuple[str, ...] = (
    "--cap-add",
    "SYS_ADMIN",
    "--cap-add",
    "NET_ADMIN",
    "--security-opt",
    "seccomp=unconfined",
    "--security-opt",
    "apparmor=unconfined",
    "-v",
    "/sys/fs/cgroup:/sys/fs/cgroup:rw",
    "--tmpfs",
    "/run",
    "--tmpfs",
    "/run/lock",
    "-e",
    "container=docker",
    "--stop-signal",
    "SIGRTMIN+3",
)


class DockerError(RuntimeError):
    """A docker command failed; the message carries its output."""


def docker(*args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run `docker ARGS`; raise DockerError with its output when it fails and check is set."""
    proc = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise DockerError(f"docker {' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


@dataclass(frozen=True)
class HostSpec:
    """One container: its name (also its hostname) and fixed address on the network."""

    name: str
    address: str


def network_exists(name: str) -> bool:
    return docker("network", "inspect", name, check=False).returncode == 0


def ensure_network(name: str, subnet: str, label: str) -> None:
    """Create the network with a fixed subnet unless it exists."""
    if not network_exists(name):
        docker("network", "create", "--subnet", subnet, "--label", label, name)


def container_state(name: str) -> str | None:
    """The container's state ("running", "exited", ...) or None when there is no such container."""
    proc = docker("container", "inspect", "-f", "{{.State.Status}}", name, check=False)
    return proc.stdout.strip() if proc.returncode == 0 else None


def run_host(spec: HostSpec, image: str, network: str, label: str, extra: Sequence[str] = ()) -> None:
    """Start a systemd container for the host, or start it again if it exists but is stopped."""
    state = container_state(spec.name)
    if state == "running":
        return
    if state is not None:
        docker("start", spec.name)
        return
    docker(
        "run",
        "-d",
        "--name",
        spec.name,
        "--hostname",
        spec.name,
        "--network",
        network,
        "--ip",
        spec.address,
        "--label",
        label,
        *SYSTEMD_FLAGS,
        *extra,
        image,
        "/lib/systemd/systemd",
    )


def exec_in(name: str, *command: str, check: bool = True, user: str | None = None) -> str:
    """Run a command in the container and return its stdout."""
    args = ["exec", *(["-u", user] if user else []), name, *command]
    return docker(*args, check=check).stdout


def wait_for_systemd(name: str, timeout: float = 90) -> None:
    """Wait until systemd in the container has finished booting (running or degraded)."""
    deadline = time.monotonic() + timeout
    state = ""
    while time.monotonic() < deadline:
        state = exec_in(name, "systemctl", "is-system-running", check=False).strip()
        if state in ("running", "degraded"):
            return
        time.sleep(1)
    raise DockerError(f"{name}: systemd did not finish booting within {timeout:.0f} s (state {state!r})")


def remove_labelled(label: str) -> list[str]:
    """Remove every container and network carrying the label; return what was removed."""
    removed: list[str] = []
    names = docker("ps", "-aq", "--filter", f"label={label}", "--format", "{{.Names}}").stdout.split()
    if names:
        docker("rm", "-f", *names)
        removed += names
    nets = docker("network", "ls", "-q", "--filter", f"label={label}", "--format", "{{.Name}}").stdout.split()
    for net in nets:
        docker("network", "rm", net)
        removed.append(net)
    return removed


def inspect(name: str) -> dict[str, object]:
    return json.loads(docker("container", "inspect", name).stdout)[0]
