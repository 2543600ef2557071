"""The harness's small parts: make run's command line, wrk's script and results, /proc readings."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from bench import processes, wrk_load
from bench.run import summarize_profile

ROOT = Path(__file__).resolve().parents[2]


def test_make_run_command_is_read_from_the_makefile():
    makefile = (ROOT / "Makefile").read_text()
    command = processes.make_run_command(makefile, bin_dir=".venv/bin", host="127.0.0.1", port=9)
    assert command[0].startswith(".venv/bin/")
    assert "echo_site.asgi:application" in command
    assert "9" in command and "$(PORT)" not in " ".join(command)


def test_make_run_command_joins_continuation_lines():
    makefile = "run: install\n\t$(BIN)/python manage.py migrate\n\t$(BIN)/srv app \\\n\t\t--port $(PORT)\n\nx:\n"
    assert processes.make_run_command(makefile, bin_dir="b", host="h", port=1) == [
        "b/srv",
        "app",
        "--port",
        "1",
    ]
    with pytest.raises(ValueError):
        processes.make_run_command("test:\n\tpytest\n", bin_dir="b", host="h", port=1)


def test_wrk_script_quotes_anything_and_results_parse(tmp_path):
    script = wrk_load.write_script(
        tmp_path / "s.lua", {"prompt": "a ]] b ]=] c"}, {"Authorization": "Bearer k"}
    )
    text = script.read_text()
    assert '{"prompt":"a ]] b ]=] c"}' in text
    assert "[==[" in text  # a level no content can end early
    output = (
        "Running 1s test\n"
        'BENCH_JSON {"requests":2000,"duration_us":2000000,"bytes":1,'
        '"errors":{"connect":0,"read":0,"write":0,"status":3,"timeout":0},'
        '"latency_us":{"p50":1500,"p90":2500,"p99":4000,"max":9000,"mean":1600.5}}\n'
    )
    result = wrk_load.parse_output(output)
    assert result["rps"] == 1000.0
    assert result["errors"] == 3 and result["error_kinds"] == {"status": 3}
    assert result["latency_ms"]["p99"] == 4.0
    with pytest.raises(ValueError):
        wrk_load.parse_output("unable to connect")


def test_cpu_and_rss_of_a_process_tree():
    child = subprocess.Popen(["sleep", "5"])
    try:
        tree = processes.children(os.getpid())
        assert os.getpid() in tree and child.pid in tree
        assert processes.rss_bytes([os.getpid()]) > 1024 * 1024
        assert processes.cpu_seconds([os.getpid()]) > 0
    finally:
        child.kill()
        child.wait()


def test_profile_summary_drops_waiting_threads():
    raw = (
        "main (x.py:1);serve (app/views.py:3);encode (json/encoder.py:9) 6\n"
        "main (x.py:1);serve (app/views.py:3) 2\n"
        "Thread.run (threading.py:1);_worker (concurrent/futures/thread.py:9) 40\n"
    )
    profile = summarize_profile(raw)
    assert profile["samples"] == 8 and profile["waiting_samples"] == 40
    assert dict(profile["self"]) == {"encode (json/encoder.py)": 75.0, "serve (app/views.py)": 25.0}
    assert dict(profile["inclusive"])["serve (app/views.py)"] == 100.0
