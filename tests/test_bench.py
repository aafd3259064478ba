"""The benchmark's parsing and rendering (the measurement itself is `make bench`)."""

from __future__ import annotations

from airflow_ha.bench import END, Run, parse_profile, parse_recap, render, write_section

OUTPUT = """
PLAY RECAP *********************************************************************
lab-airflow1               : ok=41   changed=0    unreachable=0    failed=0    skipped=21
lab-infra1                 : ok=53   changed=2    unreachable=0    failed=0    skipped=10

TASKS RECAP ********************************************************************
===============================================================================
airflow_common : Migrate | Look for the admin user ---------------------- 3.32s
Gathering Facts --------------------------------------------------------- 2.41s
"""


def test_recap_and_profile_are_parsed():
    assert parse_recap(OUTPUT) == {"lab-airflow1": 0, "lab-infra1": 2}
    assert parse_profile(OUTPUT) == [
        "  3.32 s  airflow_common : Migrate | Look for the admin user",
        "  2.41 s  Gathering Facts",
    ]


def test_section_is_replaced_in_place(tmp_path):
    doc = tmp_path / "benchmarks.md"
    doc.write_text("# Benchmarks\n\nintro\n")
    run = Run(40.0, {"h": 0}, ["  1.00 s  x"])
    write_section(doc, render(10.0, run, [run]))
    first = doc.read_text()
    assert "| 50 s (10 s hosts, 40 s site.yml) |" in first
    write_section(doc, render(12.0, run, [Run(30.0, {"h": 1}, [])]))
    second = doc.read_text()
    assert second.count(END) == 1
    assert "intro" in second
    assert "| 30 s, worst 30 s; changed=1 |" in second


def test_reruns_report_median_worst_and_any_change():
    reruns = [
        Run(44.0, {"h": 0}, ["  1.00 s  slow"]),
        Run(40.0, {"h": 0}, ["  0.90 s  fast"]),
        Run(42.0, {"h": 0, "g": 2}, ["  0.95 s  typical"]),
    ]
    section = render(7.0, Run(200.0, {}, []), reruns)
    assert "(median, worst of 3 reruns)" in section
    assert "| 42 s, worst 44 s; changed=2 |" in section
    assert section.split("median rerun:", 1)[1].count("typical") == 1
    assert "slow" not in section
