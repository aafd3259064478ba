"""Fail if an installed Ansible collection is missing or differs from requirements.yml.

Galaxy is not reachable from the build machines, so the collections come from the PyPI `ansible`
package; this keeps requirements.yml honest about which versions that package brings.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml


def main(requirements: str) -> int:
    wanted = yaml.safe_load(Path(requirements).read_text())["collections"]
    out = subprocess.run(
        [str(Path(sys.executable).with_name("ansible-galaxy")), "collection", "list", "--format", "json"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    installed: dict[str, str] = {}
    for collections in json.loads(out).values():
        for name, info in collections.items():
            installed.setdefault(name, info["version"])
    problems = [
        f"{c['name']}: wanted {c['version']}, found {installed.get(c['name'], 'nothing')}"
        for c in wanted
        if installed.get(c["name"]) != str(c["version"])
    ]
    for problem in problems:
        print(f"collection mismatch: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "requirements.yml"))
