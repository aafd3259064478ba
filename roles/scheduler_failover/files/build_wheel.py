"""Build a pure-Python wheel of a src-layout project, or of one package, with the standard library only.

Usage: build_wheel.py PROJECT_DIR OUT_DIR [LOCAL_VERSION]  (prints the wheel's path)

Why not ``pip wheel``: setuptools before 70.1 (the controller's venv has 65) needs the ``wheel``
package for ``bdist_wheel``, and build isolation would fetch a newer setuptools from an index. This
project's package is pure Python with console scripts, so a wheel is a zip of ``src/<package>/``
plus ``METADATA``, ``WHEEL``, ``entry_points.txt`` and ``RECORD`` (PEP 427, 566). Reads
``[project]`` name, version, description, requires-python, dependencies, optional-dependencies
and scripts from pyproject.toml. The archive is deterministic: the same source gives the same bytes.

Two layouts:

- PROJECT_DIR holds pyproject.toml and ``src/<package>/``: every package under src goes in.
- PROJECT_DIR is itself a package directory whose pyproject.toml names it in
  ``[tool.airflow-ha-wheel] package = "a.b"``: only that directory's files go in, as ``a/b/``
  (``a`` is then a namespace package), without the pyproject.toml. The scheduler_failover role
  builds src/airflow_ha/failover this way, so the wheel carries the failover code alone.

LOCAL_VERSION (e.g. a hash of the source) is appended as ``+LOCAL_VERSION``: a wheel of changed
source gets a new version, which pip installs over the old one without --force-reinstall.
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


def _metadata(project: dict[str, object], version: str) -> str:
    lines = ["Metadata-Version: 2.1", f"Name: {project['name']}", f"Version: {version}"]
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


def _files(root: Path, skip: set[Path]) -> list[tuple[Path, Path]]:
    """(path, path relative to root) of the files under root, less caches and ``skip``."""
    return [
        (path, path.relative_to(root))
        for path in sorted(root.rglob("*"))
        if path.is_file()
        and path not in skip
        and "__pycache__" not in path.relative_to(root).parts
        and path.suffix not in {".pyc", ".pyo"}
    ]


def build(project_dir: Path, out_dir: Path, local_version: str | None = None) -> Path:
    pyproject = tomllib.loads((project_dir / "pyproject.toml").read_text(encoding="utf-8"))
    project = pyproject["project"]
    dist = re.sub(r"[-_.]+", "_", project["name"]).lower()
    if local_version and not re.fullmatch(r"[a-z0-9]+(\.[a-z0-9]+)*", local_version):
        raise SystemExit(f"not a local version label: {local_version!r}")
    version = project["version"] + (f"+{local_version}" if local_version else "")
    files: list[tuple[str, bytes]] = []
    package = pyproject.get("tool", {}).get("airflow-ha-wheel", {}).get("package")
    if package:
        if not (project_dir / "__init__.py").is_file():
            raise SystemExit(f"{project_dir} is not a package (no __init__.py)")
        prefix = Path(*package.split("."))
        top_level = [package.split(".")[0]]
        for path, rel in _files(project_dir, {project_dir / "pyproject.toml"}):
            files.append(((prefix / rel).as_posix(), path.read_bytes()))
    else:
        src = project_dir / "src"
        packages = sorted(p.parent for p in src.glob("*/__init__.py"))
        if not packages:
            raise SystemExit(f"no package under {src}")
        top_level = [p.name for p in packages]
        for pkg in packages:
            for path, rel in _files(pkg, set()):
                files.append(((pkg.relative_to(src) / rel).as_posix(), path.read_bytes()))
    info = f"{dist}-{version}.dist-info"
    scripts = project.get("scripts", {})
    meta = [
        (f"{info}/METADATA", _metadata(project, version).encode()),
        (
            f"{info}/WHEEL",
            b"Wheel-Version: 1.0\nGenerator: airflow-ha build_wheel.py\nRoot-Is-Purelib: true\n"
            b"Tag: py3-none-any\n",
        ),
        (f"{info}/top_level.txt", "".join(f"{name}\n" for name in top_level).encode()),
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
    if len(argv) not in (3, 4):
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    print(build(Path(argv[1]), Path(argv[2]), argv[3] if len(argv) == 4 else None))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
