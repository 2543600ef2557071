"""The report writer judges every target of issue 16 and writes it as markdown and JSON."""

from __future__ import annotations

import json

import pytest

from bench.report import evaluate_targets, render_markdown, write_report

TARGET_IDS = {
    "latency_p50_vs_floor:echo_v1",
    "latency_p50_vs_litellm:echo_v1",
    "latency_p99_vs_floor:echo_v1",
    "ttft_vs_floor:echo_v1",
    "latency_p50_vs_floor:echo_chat",
    "latency_p50_vs_litellm:echo_chat",
    "latency_p99_vs_floor:echo_chat",
    "ttft_vs_floor:echo_chat",
    "throughput_vs_floor",
    "throughput_vs_litellm",
    "cpu_per_request",
    "streams_no_stall",
    "websocket_thousand",
}


def step(connections, rps, p99, cpu):
    return {
        "connections": connections,
        "rps": rps,
        "errors": 0,
        "latency_ms": {"p50": p99 / 2, "p99": p99},
        "cpu_ms_per_request": cpu,
        "rss_max_mb": 100.0,
    }


def latency(p50, p99, ttft):
    return {
        "nonstream": {"n": 10, "p50": p50 + 0.5, "p90": p99, "p99": p99 + 0.5, "max": p99 + 1},
        "nonstream_added": {"p50": p50, "p99": p99},
        "ttft": {"n": 10, "p50": ttft + 0.5, "p90": ttft, "p99": ttft, "max": ttft},
        "ttft_added": {"p50": ttft, "p99": ttft * 2},
    }


def results(with_litellm=True):
    data = {
        "generated_at": "2026-01-01 00:00 UTC",
        "mode": "quick",
        "machine": {"cores": 2, "CPU": "test CPU"},
        "versions": {"Echo commit": "abc1234", "uvicorn": "0.38.0"},
        "make_run_server": "uvicorn",
        "systems": {
            "echo_v1": {"label": "Echo v1", "state": "ok"},
            "floor": {"label": "floor", "state": "ok"},
            "litellm": {
                "label": "LiteLLM",
                "state": "ok" if with_litellm else "did not start: boom",
            },
        },
        "latency": {
            # /v1: p50 within 2x the floor and a tenth of LiteLLM; p99 over 3x the floor.
            "echo_v1": latency(1.0, 4.0, 0.9),
            # /chat: p50 over 2x the floor.
            "echo_chat": latency(1.5, 2.0, 1.2),
            "floor": latency(0.6, 1.0, 0.5),
        },
        "throughput": {
            "echo_v1": {"steps": [step(8, 1500.0, 20.0, 1.2)], "best": step(8, 1500.0, 20.0, 1.2)},
            "floor": {"steps": [step(16, 2000.0, 30.0, 0.4)], "best": step(16, 2000.0, 30.0, 0.4)},
        },
        "streams": {"echo_v1": {"steps": [], "max_without_stall": 128}},
        "websocket": {"uvicorn": {"ratio_total": 1.2, "thousand": {"sockets": 1000, "errors": 0}}},
    }
    if with_litellm:
        data["latency"]["litellm"] = latency(12.0, 30.0, 10.0)
        data["throughput"]["litellm"] = {
            "steps": [step(1, 100.0, 40.0, 9.0)],
            "best": step(1, 100.0, 40.0, 9.0),
        }
    return data


def by_id(targets):
    return {t["id"]: t for t in targets}


def test_every_target_is_judged():
    targets = by_id(evaluate_targets(results()))
    assert set(targets) == TARGET_IDS
    assert targets["latency_p50_vs_floor:echo_v1"]["met"] is True  # 1.0 <= 1.2
    assert targets["latency_p50_vs_litellm:echo_v1"]["met"] is True  # 1.0 <= 1.2
    assert targets["latency_p99_vs_floor:echo_v1"]["met"] is False  # 4.0 > 3.0
    assert targets["ttft_vs_floor:echo_v1"]["met"] is True  # 0.9 <= 1.0
    assert targets["latency_p50_vs_floor:echo_chat"]["met"] is False  # 1.5 > 1.2
    assert targets["ttft_vs_floor:echo_chat"]["met"] is False  # 1.2 > 1.0
    assert targets["throughput_vs_floor"]["met"] is True  # 1500 >= 1000
    assert targets["throughput_vs_litellm"]["met"] is True  # 1500 >= 1000
    assert targets["cpu_per_request"]["met"] is True  # 1.2 <= 1.5
    assert targets["streams_no_stall"]["met"] is False  # 128 < 256
    assert targets["websocket_thousand"]["met"] is True


def test_a_missing_peer_is_not_measured_never_met():
    targets = by_id(evaluate_targets(results(with_litellm=False)))
    for ident in ("latency_p50_vs_litellm:echo_v1", "throughput_vs_litellm"):
        assert targets[ident]["met"] is None
        assert "did not start: boom" in targets[ident]["why"]


def test_no_step_under_the_p99_limit_is_zero_throughput():
    data = results()
    data["throughput"]["echo_v1"] = {"steps": [step(1, 900.0, 80.0, 2.0)], "best": None}
    targets = by_id(evaluate_targets(data))
    assert targets["throughput_vs_floor"]["value"] == 0.0
    assert targets["throughput_vs_floor"]["met"] is False
    assert targets["cpu_per_request"]["met"] is None


def test_websocket_errors_miss_the_target():
    data = results()
    data["websocket"]["uvicorn"]["thousand"] = {"sockets": 1000, "errors": 3}
    assert by_id(evaluate_targets(data))["websocket_thousand"]["met"] is False


def test_markdown_and_json_name_every_target(tmp_path):
    data = results()
    markdown_path, json_path = write_report(data, tmp_path)
    markdown = markdown_path.read_text()
    written = json.loads(json_path.read_text())
    assert {t["id"] for t in written["targets"]} == TARGET_IDS
    for target in written["targets"]:
        assert target["target"] in markdown
    assert markdown.count("| met |") + markdown.count("| **missed** |") == len(TARGET_IDS)
    assert "test CPU" in markdown and "abc1234" in markdown
    assert written["ratios"]["echo_v1 req/s / floor req/s"] == 0.75
    assert written["ratios"]["echo_v1 added p50 / LiteLLM added p50"] == round(1.0 / 12.0, 3)


def test_markdown_of_a_partial_run():
    markdown = render_markdown({"machine": {}, "notes": ["THE RUN FAILED: boom"]})
    assert "not measured" in markdown and "THE RUN FAILED: boom" in markdown


def test_a_peer_with_no_step_under_the_limit_is_not_measured():
    data = results()
    data["throughput"]["litellm"] = {"steps": [step(1, 20.0, 60.0, 9.0)], "best": None}
    target = by_id(evaluate_targets(data))["throughput_vs_litellm"]
    assert target["met"] is None
    assert "no step with p99" in target["why"]


def test_the_in_process_breakdown_is_a_table_of_parts_or_says_why_not():
    breakdown = {
        "calls": 2000,
        "cpu_ms_per_call": 0.651,
        "loop_ms_per_call": 0.602,
        "parts": [
            {"part": "edge", "share": 32.7, "holds": "the ASGI entry"},
            {"part": "upstream http", "share": 17.2, "holds": "aiohttp"},
        ],
    }
    markdown = render_markdown({"machine": {}, "breakdown": breakdown})
    assert "## Where a call's CPU goes inside Echo" in markdown
    assert "0.651 ms of CPU per call" in markdown
    assert "0.602 of it in the event loop's thread" in markdown
    assert "| edge | 32.7% | the ASGI entry |" in markdown
    assert "| upstream http | 17.2% | aiohttp |" in markdown
    failed = render_markdown({"machine": {}, "breakdown": {"error": "Echo answered 500"}})
    assert "No breakdown: Echo answered 500" in failed


def test_the_breakdown_parts_are_the_boundaries_less_what_they_hold():
    from bench.inprocess_profile import BOUNDARIES, PARTS, split

    seconds = {
        "whole": 10.0,
        "serve": 7.0,
        "admit": 1.0,
        "limit": 0.5,
        "manager": 4.0,
        "plugin": 3.0,
        "upstream": 2.5,
        "session": 1.5,  # the upstream exchange: sent...
        "session_read": 0.4,  # ...its answer read...
        "session_finish": 0.1,  # ...its connection given back
        "usage": 0.5,
        "deferred": 0.25,  # the usage recorded after the answer: inside "whole", outside "serve"
        "log": 0.25,  # the access-log lines, written in batches: outside "whole"
        "log_console": 0.5,  # or written straight to the console handler: counted the same
    }

    class Stats:  # pstats.Stats' table: (file, line, function) -> (.., .., .., cumulative, ..)
        stats = {
            (f"/src/{BOUNDARIES[key][0]}", 1, BOUNDARIES[key][1]): (1, 1, 0.0, value, {})
            for key, value in seconds.items()
        }

    parts = split(Stats())  # type: ignore[arg-type]
    assert parts == {
        "edge": 2.75,
        "admit": 1.5,
        "manager": 1.0,
        "plugin": 0.5,
        "upstream json": 0.5,
        "upstream http": 2.0,
        "usage": 0.75,
        "answer": 1.0,
        "access log": 0.75,
    }
    assert sum(parts.values()) == seconds["whole"] + seconds["log"] + seconds["log_console"]
    assert [name for name, _ in PARTS] == list(parts)


def test_the_other_threads_cpu_is_a_part_of_its_own_and_the_shares_add_up():
    from bench.inprocess_profile import PARTS, THREAD_PART, shares

    seconds = {name: 1.0 for name, _ in PARTS}
    found = shares(seconds, cpu_ms=1.0, loop_ms=0.8)
    assert found[THREAD_PART[0]] == pytest.approx(20.0)
    assert found["edge"] == pytest.approx(80.0 / len(PARTS))
    assert sum(found.values()) == pytest.approx(100.0)
    # A loop timed a hair over the process (clocks' grain): no negative part.
    assert shares(seconds, cpu_ms=1.0, loop_ms=1.01)[THREAD_PART[0]] == 0.0


def test_a_systems_throughput_is_its_best_step_within_the_limit():
    from bench.run import better_step

    steps = [step(1, 900.0, 3.0, 0.8), step(4, 1500.0, 7.0, 0.6), step(16, 1200.0, 28.0, 0.8)]
    best = None
    for each in steps:
        best = better_step(best, each)
    assert best is steps[1]
    assert better_step(best, step(32, 1600.0, 45.0, 0.7))["rps"] == 1600.0


def test_the_echo_workers_pauses_in_each_stream_step_are_a_table_of_their_own():
    data = results()
    step = {"streams": 256, "stalled_streams": 200, "max_gap_ms": 124.0, "errors": 0}
    paused = {"full_collections": 1, "passes_over_25ms": 2, "gc_seconds": 0.0613}
    data["streams"] = {
        "echo_v1": {"steps": [{**step, "worker_pauses": paused}], "max_without_stall": 128},
        "floor": {"steps": [step], "max_without_stall": 128},  # not Echo: never read
    }

    markdown = render_markdown(data)

    assert "full collections, passes over 25 ms, ms in the collector" in markdown
    rows = [line for line in markdown.splitlines() if line.endswith("| 256: 1, 2, 61 |")]
    assert rows == ["| Echo v1 | 256: 1, 2, 61 |"]


def test_without_the_workers_pauses_there_is_no_such_table():
    markdown = render_markdown(results())
    assert "ms in the collector" not in markdown


def test_the_made_up_keys_flood_is_a_section_and_a_ratio():
    from bench.report import compute_ratios

    data = results()
    data["key_flood"] = {
        "connections": 1000,
        "seconds": 4.0,
        "valid_alone": {"calls": 6500, "p50_ms": 0.5, "p99_ms": 1.6},
        "valid_during_flood": {"calls": 4000, "p50_ms": 0.6, "p99_ms": 3.0},
        "made_up_answered": 5700,
        "made_up_statuses": {"401": 5700},
    }

    markdown = render_markdown(data)

    assert "## (6) A flood of made-up keys" in markdown
    assert "| during the flood | 4,000 | 0.600 | 3.000 |" in markdown
    assert "Made-up calls answered: 5,700 (5,700 × 401)." in markdown
    ratio = compute_ratios(data)["valid key p50 during a flood of made-up keys / alone"]
    assert ratio == pytest.approx(1.2)


def test_a_flood_that_could_not_run_says_why_and_has_no_ratio():
    from bench.report import compute_ratios

    data = results()
    data["key_flood"] = {"error": "RuntimeError: the valid key was answered 401"}

    markdown = render_markdown(data)

    assert "Not measured: RuntimeError: the valid key was answered 401" in markdown
    assert compute_ratios(data)["valid key p50 during a flood of made-up keys / alone"] is None
