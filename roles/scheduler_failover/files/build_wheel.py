"""Build a pure-Python wheel of a src-layout project with the standard library only.

Usage: build_wheel.py PROJECT_DIR OUT_DIR  (prints the wheel's path)

Why not ``pip wheel``: setuptools before 70.1 (the controller's venv has 65) needs the ``wheel``
package for ``bdist_wheel``, and build isolation would fetch a newer setuptools from an index. This
project's package is pure Python with console scripts, so a wheel is a zip of ``src/<package>/``
plus ``METADATA``, ``WHEEL``, ``entry_points.txt`` and ``RECORD`` (PEP 427, 566). Reads
``[project]`` name, version, description, requires-python, dependencies, optional-dependencies
and scripts from pyproject.toml. The archive is deterministic: the same source gives the same bytes.
"""

from __future__ import annotations

import base64
import hashlib
import re
import sys
import tomllib
import zipfile
from pathlib import Path

EPOCH = (1980, 1, 1, 0, 0, 0)


def _digest(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def _metadata(project: dict[str, object]) -> str:
    lines = ["Metadata-Version: 2.1", f"Name: {project['name']}", f"Version: {project['version']}"]
    if project.get("description"):
        lines.append(f"Summary: {project['description']}")
    if project.get("requires-python"):
        lines.append(f"Requires-Python: {project['requires-python']}")
    for dep in project.get("dependencies", []) or []:  # type: ignore[attr-defined]
        lines.append(f"Requires-Dist: {dep}")
    extras = project.get("optional-dependencies", {}) or {}
    for extra, deps in sorted(extras.items()):  # type: ignore[attr-defined]
        lines.append(f"Provides-Extra: {extra}")
        lines.extend(f'Requires-Dist: {dep}; extra == "{extra}"' for dep in deps)
    return "\n".join(lines) + "\n"


def build(project_dir: Path, out_dir: Path) -> Path:
    project = tomllib.loads((project_dir / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    dist = re.sub(r"[-_.]+", "_", project["name"]).lower()
    version = project["version"]
    src = project_dir / "src"
    packages = sorted(p.parent for p in src.glob("*/__init__.py"))
    if not packages:
        raise SystemExit(f"no package under {src}")
    files: list[tuple[str, bytes]] = []
    for pkg in packages:
        for path in sorted(pkg.rglob("*")):
            rel = path.relative_to(src)
            if path.is_file() and "__pycache__" not in rel.parts and path.suffix not in {".pyc", ".pyo"}:
                files.append((rel.as_posix(), path.read_bytes()))
    info = f"{dist}-{version}.dist-info"
    scripts = project.get("scripts", {})
    meta = [
        (f"{info}/METADATA", _metadata(project).encode()),
        (
            f"{info}/WHEEL",
            b"Wheel-Version: 1.0\nGenerator: airflow-ha build_wheel.py\nRoot-Is-Purelib: true\n"
            b"Tag: py3-none-any\n",
        ),
        (f"{info}/top_level.txt", "".join(f"{p.name}\n" for p in packages).encode()),
    ]
    if scripts:
        body = "[console_scripts]\n" + "".join(f"{k} = {v}\n" for k, v in sorted(scripts.items()))
        meta.append((f"{info}/entry_points.txt", body.encode()))
    entries = files + meta
    record = "".join(f"{name},{_digest(data)},{len(data)}\n" for name, data in entries) + f"{info}/RECORD,,\n"
    entries.append((f"{info}/RECORD", record.encode()))
    out_dir.mkdir(parents=True, exist_ok=True)
    wheel = out_dir / f"{dist}-{version}-py3-none-any.whl"
    tmp = wheel.with_suffix(".tmp")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries:
            zi = zipfile.ZipInfo(name, date_time=EPOCH)
            zi.external_attr = 0o644 << 16
            zi.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(zi, data)
    tmp.replace(wheel)
    return wheel


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    print(build(Path(argv[1]), Path(argv[2])))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
