"""How long each test file took in a recorded run, so that the longest start first.

With ``--dist loadfile`` pytest-xdist hands whole files to the workers in the
order collected; a long file handed out late keeps one worker busy at the end
while the others idle. The suite therefore runs the slow files first, longest
first, by the seconds recorded in ``tests/file_durations.json``. A file the
record does not know runs as a median one. The record only orders the run:
a stale one costs minutes, never a result. ``make test-durations`` refreshes it.
"""

from __future__ import annotations

import json
import statistics
import sys
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RECORD = Path(__file__).with_name("file_durations.json")


def recorded(record: Path = RECORD) -> dict[str, float]:
    """Return the recorded seconds per test file (a path from the repository root), or nothing."""
    try:
        durations = json.loads(record.read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(durations, dict):
        return {}
    return {k: float(v) for k, v in durations.items() if isinstance(v, int | float)}


def longest_first(files: list[str], durations: dict[str, float]) -> list[str]:
    """Return FILES, longest recorded first; an unknown file counts as the median of the known."""
    usual = statistics.median(durations.values()) if durations else 0.0
    return sorted(files, key=lambda f: -durations.get(f, usual))


def _file_of(classname: str) -> str | None:
    """Return the test file a JUnit classname (``tests.test_x`` or ``tests.test_x.TestY``) names."""
    parts = classname.split(".")
    for end in range(len(parts), 0, -1):
        candidate = "/".join(parts[:end]) + ".py"
        if (ROOT / candidate).is_file():
            return candidate
    return None


def durations_from_junit(junit_xml: Path) -> dict[str, float]:
    """Return the seconds per test file in a pytest ``--junitxml`` report, rounded to 0.1 s."""
    seconds: Counter[str] = Counter()
    for case in ET.parse(junit_xml).iter("testcase"):
        path = _file_of(case.get("classname", ""))
        if path is not None:
            seconds[path] += float(case.get("time", 0))
    return {path: round(total, 1) for path, total in sorted(seconds.items())}


if __name__ == "__main__":
    RECORD.write_text(json.dumps(durations_from_junit(Path(sys.argv[1])), indent=1) + "\n")
