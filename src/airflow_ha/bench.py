"""`make bench`: deploy-time benchmarks on the lab, written into docs/benchmarks.md.

Measures a cold `make lab` (no lab containers; base image and wheelhouse cache already there), then
site.yml run again over the whole lab a few times (each must report changed=0; the median and the
worst are written, since one run varies by a few seconds on 2 cores), and keeps the per-task
profile of the cold run and of the median rerun (ansible.posix.profile_tasks). The lab is
destroyed first and left running after.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from airflow_ha import lab as labmod

BEGIN = "<!-- bench:deploy:begin -->"
END = "<!-- bench:deploy:end -->"


@dataclass
class Run:
    seconds: float
    changed: dict[str, int]
    profile: list[str]


def parse_recap(output: str) -> dict[str, int]:
    return {h: int(n) for h, n in re.findall(r"^(\S+)\s+: ok=\d+\s+changed=(\d+)", output, re.M)}


def parse_profile(output: str, top: int = 12) -> list[str]:
    """The slowest tasks from profile_tasks' recap, as 'seconds  task' lines."""
    tail = output.split("TASKS RECAP", 1)[-1]
    rows = re.findall(r"^(.+?) -+ (\d+\.\d+)s$", tail, re.M)
    return [f"{float(sec):6.2f} s  {name.strip()}" for name, sec in rows[:top]]


def timed_site(lab: labmod.Lab) -> Run:
    start = time.monotonic()
    result = labmod.run_playbook(lab)
    seconds = time.monotonic() - start
    if result.returncode != 0:
        raise SystemExit("site.yml failed; no benchmark written")
    return Run(seconds, parse_recap(result.stdout), parse_profile(result.stdout))


def render(cold_hosts: float, cold: Run, reruns: list[Run]) -> str:
    when = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    cpus, mem = os.cpu_count(), _mem_gib()
    changed = max(sum(run.changed.values()) for run in reruns)
    by_time = sorted(reruns, key=lambda run: run.seconds)
    typical = by_time[(len(by_time) - 1) // 2]  # the median run (the lower one of an even count)
    median, worst = typical.seconds, by_time[-1].seconds
    lines = [
        BEGIN,
        f"Measured {when} on {cpus} cores, {mem:.0f} GiB, with `make bench`",
        "(`python -m airflow_ha.bench`): the lab topology of `inventories/lab`.",
        "",
        "| measurement | target | result |",
        "| --- | --- | --- |",
        f"| cold `make lab` (no containers; base image and wheelhouse cached) | 300 s "
        f"| {cold_hosts + cold.seconds:.0f} s ({cold_hosts:.0f} s hosts, {cold.seconds:.0f} s site.yml) |",
        f"| second `site.yml` over the whole lab (median, worst of {len(reruns)} reruns) | 45 s, changed=0 "
        f"| {median:.0f} s, worst {worst:.0f} s; changed={changed} |",
        "",
        "Slowest tasks of the cold run (profile_tasks):",
        "",
        "```",
        *cold.profile,
        "```",
        "",
        "Slowest tasks of the median rerun:",
        "",
        "```",
        *typical.profile,
        "```",
        END,
    ]
    return "\n".join(lines)


def _mem_gib() -> float:
    try:
        kb = int(Path("/proc/meminfo").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return 0.0
    return kb / 1024 / 1024


def write_section(
    path: Path, section: str, begin: str = BEGIN, end: str = END, heading: str = "Deploy"
) -> None:
    """Replace the block between the markers `begin` and `end` with `section` (which carries the
    markers itself), or append it under a `## heading` when the file has no such block yet."""
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    if begin in text and end in text:
        text = text[: text.index(begin)] + section + text[text.index(end) + len(end) :]
    else:
        text = text.rstrip() + f"\n\n## {heading}\n\n" + section + "\n"
    path.write_text(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="airflow-ha-bench", description=__doc__.splitlines()[0])
    parser.add_argument("--inventory", type=Path, default=labmod.REPO / "inventories" / "lab")
    parser.add_argument("--write", type=Path, help="markdown file to update (docs/benchmarks.md)")
    parser.add_argument("--reruns", type=int, default=3, help="site.yml runs after the cold one")
    args = parser.parse_args(argv)
    if args.reruns < 1:
        parser.error("--reruns must be at least 1")
    lab = labmod.load_lab(args.inventory)
    labmod.destroy(lab)
    start = time.monotonic()
    labmod.create_hosts(lab)
    hosts = time.monotonic() - start
    cold = timed_site(lab)
    reruns = [timed_site(lab) for _ in range(args.reruns)]
    section = render(hosts, cold, reruns)
    print(section)
    if args.write:
        write_section(args.write, section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
