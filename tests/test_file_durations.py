"""The suite's run order: slow files longest first, by a record of each file's seconds."""

from __future__ import annotations

import json
from pathlib import Path

from tests.file_durations import ROOT, durations_from_junit, longest_first, recorded

JUNIT = """<?xml version="1.0" encoding="utf-8"?>
<testsuites><testsuite name="pytest">
 <testcase classname="tests.test_file_durations" name="a" time="1.25"/>
 <testcase classname="tests.test_file_durations" name="b" time="2.0"/>
 <testcase classname="tests.echo_site.test_hot_path.TestSomething" name="c" time="0.5"/>
 <testcase classname="examples.echo-shout-plugin.tests.test_shout_provider" name="d" time="3"/>
 <testcase classname="no.such.module" name="e" time="9"/>
</testsuite></testsuites>
"""


def test_a_junit_report_gives_the_seconds_of_each_file(tmp_path: Path) -> None:
    report = tmp_path / "junit.xml"
    report.write_text(JUNIT)
    assert durations_from_junit(report) == {
        "examples/echo-shout-plugin/tests/test_shout_provider.py": 3.0,
        "tests/echo_site/test_hot_path.py": 0.5,
        "tests/test_file_durations.py": 3.2,
    }


def test_the_longest_come_first_and_an_unknown_file_counts_as_a_median_one() -> None:
    durations = {"a.py": 10.0, "b.py": 1.0, "c.py": 5.0}
    assert longest_first(["b.py", "new.py", "a.py", "c.py"], durations) == [
        "a.py",
        "new.py",
        "c.py",
        "b.py",
    ]
    assert longest_first(["y.py", "x.py"], {}) == ["y.py", "x.py"]


def test_a_missing_or_broken_record_orders_nothing(tmp_path: Path) -> None:
    assert recorded(tmp_path / "absent.json") == {}
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    assert recorded(broken) == {}
    broken.write_text(json.dumps(["a list"]))
    assert recorded(broken) == {}
    broken.write_text(json.dumps({"a.py": 2, "b.py": "x"}))
    assert recorded(broken) == {"a.py": 2.0}


def test_the_record_names_files_that_exist() -> None:
    known = recorded()
    assert known, "tests/file_durations.json is missing: run `make test-durations`"
    missing = [path for path in known if not (ROOT / path).is_file()]
    assert len(missing) <= len(known) // 10, f"a stale record: {missing}"
