"""Drive ``wrk`` (a C load generator): the script that makes it POST a chat, and its results as a dict.

The script's ``done`` hook prints one ``BENCH_JSON {...}`` line (requests,
errors, duration, latency percentiles in µs) so that nothing depends on
wrk's human-readable output.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

RESULT_PREFIX = "BENCH_JSON "

_SCRIPT = """
wrk.method = "POST"
wrk.body = {body}
{headers}
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {{"requests":%d,"duration_us":%d,"bytes":%d,' ..
    '"errors":{{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d}},' ..
    '"latency_us":{{"p50":%d,"p90":%d,"p99":%d,"max":%d,"mean":%.1f}}}}\\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.max, latency.mean))
end
"""


def lua_string(text: str) -> str:
    """Return TEXT as a Lua long-bracket string literal that no content can end early."""
    level = 0
    while f"]{'=' * level}]" in text:
        level += 1
    return f"[{'=' * level}[{text}]{'=' * level}]"


def write_script(path: Path, body: dict, headers: dict[str, str]) -> Path:
    """Write a wrk script to PATH that POSTs BODY (as JSON) with HEADERS; return PATH."""
    lines = [
        f"wrk.headers[ {lua_string(name)} ] = {lua_string(value)}"
        for name, value in {"Content-Type": "application/json", **headers}.items()
    ]
    text = _SCRIPT.format(
        body=lua_string(json.dumps(body, separators=(",", ":"))), headers="\n".join(lines)
    )
    path.write_text(text)
    return path


def command(
    url: str, script: Path, *, connections: int, seconds: float, threads: int = 1
) -> list[str]:
    """Return the wrk command line for CONNECTIONS kept-alive connections over SECONDS."""
    wrk = shutil.which("wrk") or "wrk"
    return [
        wrk,
        f"-t{max(1, min(threads, connections))}",
        f"-c{connections}",
        f"-d{max(1, round(seconds))}s",
        "--timeout",
        "10s",
        "-s",
        str(script),
        url,
    ]


def parse_output(output: str) -> dict:
    """Return the results of a wrk run from its OUTPUT: requests/s, latency in ms, errors.

    Raise ``ValueError`` when the output holds no result line (wrk failed).
    """
    for line in output.splitlines():
        if line.startswith(RESULT_PREFIX):
            raw = json.loads(line[len(RESULT_PREFIX) :])
            break
    else:
        raise ValueError(f"no result in wrk's output: {output[-500:]!r}")
    seconds = raw["duration_us"] / 1e6
    errors = sum(raw["errors"].values())
    return {
        "requests": raw["requests"],
        "seconds": round(seconds, 3),
        "rps": round(raw["requests"] / seconds, 1) if seconds > 0 else 0.0,
        "errors": errors,
        "error_kinds": {k: v for k, v in raw["errors"].items() if v},
        "latency_ms": {k: round(v / 1000, 3) for k, v in raw["latency_us"].items()},
    }
