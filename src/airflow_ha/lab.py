"""`airflow-ha-lab`: the lab cluster in local systemd containers, reached over SSH like real hosts.

`up` creates what is missing (SSH key, Docker network, one container per inventory host, a sudo
user with the key), runs site.yml against the lab inventory and prints where to reach the API.
`destroy` removes the lab's containers and network and nothing else (the secrets and the key stay,
so a new lab gets the same passwords).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from airflow_ha import docker_hosts
from airflow_ha.docker_hosts import HostSpec

REPO = Path(__file__).resolve().parents[2]
LAB_USER = "ansible"


@dataclass(frozen=True)
class Lab:
    """What the lab inventory says about its hosts."""

    inventory: Path
    image: str
    network: str
    subnet: str
    hosts: tuple[HostSpec, ...]
    groups: dict[str, list[str]]
    vip: str = ""
    # airflow_tls_enabled: the API (and every other hop) speaks TLS, verified against the
    # inventory's cluster CA (playbooks/certificates.yml).
    tls: bool = True

    @property
    def label(self) -> str:
        return f"airflow-ha.lab={self.network}"

    @property
    def key_file(self) -> Path:
        return self.inventory / ".ssh" / "id_ed25519"

    @property
    def secrets_file(self) -> Path:
        return self.inventory / ".secrets" / "airflow-secrets.yml"

    def address(self, host: str) -> str:
        return next(h.address for h in self.hosts if h.name == host)

    @property
    def ca_file(self) -> Path:
        """The inventory's cluster CA certificate (playbooks/certificates.yml)."""
        return self.inventory / ".secrets" / "pki" / "ca.crt"

    @property
    def api_scheme(self) -> str:
        return "https" if self.tls else "http"

    @property
    def api_verify(self) -> str | bool:
        """What an API client checks the server's certificate with (requests' `verify`): the
        cluster CA when the API speaks HTTPS."""
        return str(self.ca_file) if self.tls else True

    @property
    def api_url(self) -> str:
        """The API's front address: the VIP, else the first load balancer (or api-server), port 8080."""
        if self.vip:
            return f"{self.api_scheme}://{self.vip.split('/')[0]}:8080"
        front = self.groups.get("airflow_loadbalancer") or self.groups["airflow_webserver"]
        return f"{self.api_scheme}://{self.address(front[0])}:8080"


def load_lab(inventory: Path) -> Lab:
    """Read the lab's hosts, groups and container settings with `ansible-inventory`."""
    out = subprocess.run(
        [_tool("ansible-inventory"), "-i", str(inventory), "--list"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    data = json.loads(out)
    hostvars: dict[str, dict[str, object]] = data["_meta"]["hostvars"]
    if not hostvars:
        raise SystemExit(f"{inventory}: the inventory has no hosts")
    first = next(iter(hostvars.values()))
    missing = [k for k in ("lab_image", "lab_network", "lab_subnet") if k not in first]
    if missing:
        raise SystemExit(f"{inventory}: not a lab inventory, {', '.join(missing)} not set")
    hosts = []
    for name, hv in hostvars.items():
        if "ansible_host" not in hv:
            raise SystemExit(f"{inventory}: host {name} has no ansible_host (its fixed lab address)")
        hosts.append(HostSpec(name=name, address=str(hv["ansible_host"])))
    groups = {g: v.get("hosts", []) for g, v in data.items() if g != "_meta" and isinstance(v, dict)}
    return Lab(
        inventory=inventory.resolve(),
        image=str(first["lab_image"]),
        network=str(first["lab_network"]),
        subnet=str(first["lab_subnet"]),
        hosts=tuple(hosts),
        groups=groups,
        vip=str(first.get("loadbalancer_vip", "")),
        tls=str(first.get("airflow_tls_enabled", True)).lower() not in ("false", "no", "0", "off"),
    )


def _tool(name: str) -> str:
    """A command from the same environment as this Python (the project's venv)."""
    candidate = Path(sys.executable).with_name(name)
    return str(candidate) if candidate.exists() else name


def log(message: str) -> None:
    print(f"[lab] {message}", flush=True)


def ensure_key(lab: Lab) -> str:
    """Generate the lab's SSH key once; return the public key."""
    if not lab.key_file.exists():
        lab.key_file.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "airflow-ha-lab", "-f", str(lab.key_file)],
            check=True,
        )
    return lab.key_file.with_suffix(".pub").read_text().strip()


def provision_user(name: str, public_key: str) -> None:
    """Create the sudo user Ansible logs in as, with the lab's key."""
    script = f"""set -e
id {LAB_USER} >/dev/null 2>&1 || useradd -m -s /bin/bash {LAB_USER}
install -d -m 0700 -o {LAB_USER} -g {LAB_USER} /home/{LAB_USER}/.ssh
printf '%s\\n' '{public_key}' > /home/{LAB_USER}/.ssh/authorized_keys
chown {LAB_USER}:{LAB_USER} /home/{LAB_USER}/.ssh/authorized_keys
chmod 0600 /home/{LAB_USER}/.ssh/authorized_keys
printf '%s ALL=(ALL) NOPASSWD:ALL\\n' {LAB_USER} > /etc/sudoers.d/{LAB_USER}
chmod 0440 /etc/sudoers.d/{LAB_USER}
"""
    docker_hosts.exec_in(name, "sh", "-c", script)


def wait_for_ssh(lab: Lab, host: HostSpec, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        proc = subprocess.run(
            [
                "ssh",
                "-i",
                str(lab.key_file),
                "-o",
                "BatchMode=yes",
                "-o",
                "StrictHostKeyChecking=no",
                "-o",
                "UserKnownHostsFile=/dev/null",
                "-o",
                "LogLevel=ERROR",
                "-o",
                "ConnectTimeout=3",
                f"{LAB_USER}@{host.address}",
                "sudo -n true",
            ],
            capture_output=True,
            text=True,
        )
        if proc.returncode == 0:
            return
        if time.monotonic() > deadline:
            raise SystemExit(f"{host.name}: SSH as {LAB_USER} did not work: {proc.stderr.strip()}")
        time.sleep(1)


def create_hosts(lab: Lab) -> None:
    """Create (or start) every lab container and make it reachable over SSH."""
    public_key = ensure_key(lab)
    docker_hosts.ensure_network(lab.network, lab.subnet, lab.label)
    for host in lab.hosts:
        docker_hosts.run_host(host, lab.image, lab.network, lab.label)
    for host in lab.hosts:
        docker_hosts.wait_for_systemd(host.name)
        provision_user(host.name, public_key)
    for host in lab.hosts:
        wait_for_ssh(lab, host)
    log(f"{len(lab.hosts)} hosts up on {lab.network} ({lab.subnet})")


def run_playbook(lab: Lab, playbook: str = "site.yml", *extra: str) -> subprocess.CompletedProcess[str]:
    """Run a playbook against the lab; its output streams to stdout and is returned too."""
    env = dict(os.environ, ANSIBLE_CONFIG=str(REPO / "ansible.cfg"), ANSIBLE_FORCE_COLOR="0")
    cmd = [_tool("ansible-playbook"), "-i", str(lab.inventory), str(REPO / playbook), *extra]
    log(" ".join(cmd))
    proc = subprocess.Popen(
        cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    lines = []
    assert proc.stdout is not None
    for line in proc.stdout:
        sys.stdout.write(line)
        lines.append(line)
    proc.wait()
    return subprocess.CompletedProcess(cmd, proc.returncode, "".join(lines), "")


def lab_exists(lab: Lab) -> bool:
    return any(docker_hosts.container_state(h.name) is not None for h in lab.hosts)


def destroy(lab: Lab) -> None:
    removed = docker_hosts.remove_labelled(lab.label)
    log(f"removed {', '.join(removed) if removed else 'nothing (no lab was running)'}")


def summary(lab: Lab) -> str:
    rel = os.path.relpath(lab.secrets_file, Path.cwd())
    key = os.path.relpath(lab.key_file, Path.cwd())
    ca = os.path.relpath(lab.ca_file, Path.cwd())
    apis = len(lab.groups["airflow_webserver"])
    front = "keepalived VIP, " if lab.vip else ""
    return "\n".join(
        [
            "",
            "airflow-ha lab is up.",
            f"  API and UI:     {lab.api_url}  ({front}HAProxy in front of {apis} api-servers)",
            *([f"  Cluster CA:     {ca}  (trust it, or curl --cacert it)"] if lab.tls else []),
            "  Admin user:     admin",
            f"  Admin password: key admin_password in {rel}",
            f"                  (grep admin_password {rel})",
            f"  SSH to a host:  ssh -i {key} {LAB_USER}@{lab.hosts[0].address}",
            "  Remove the lab: make lab-destroy",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="airflow-ha-lab", description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["up", "hosts", "destroy", "info"])
    parser.add_argument("--inventory", type=Path, default=REPO / "inventories" / "lab")
    args = parser.parse_args(argv)
    lab = load_lab(args.inventory)
    if args.command == "destroy":
        destroy(lab)
        return 0
    if args.command == "info":
        print(summary(lab))
        return 0
    create_hosts(lab)
    if args.command == "hosts":
        return 0
    result = run_playbook(lab)
    if result.returncode != 0:
        log("site.yml failed; the hosts are left running for inspection (make lab-destroy removes them)")
        return result.returncode
    print(summary(lab))
    return 0


if __name__ == "__main__":
    sys.exit(main())
