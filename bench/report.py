"""Judge a benchmark's results against issue 16's targets and write them as markdown and JSON.

``evaluate_targets`` reads a results dict (as ``bench.run`` builds it) and
returns every target with its value, its limit and whether it is met
(``None``: not measured, with the reason). ``render_markdown`` turns the
results into ``latest.md``; ``write_report`` writes both files.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.timings import ratio

ECHO_ENDPOINTS = {"echo_v1": "Echo `/v1/chat/completions`", "echo_chat": "Echo `/chat`"}
STALL_TARGET_STREAMS = 256
WEBSOCKET_TARGET_STREAMS = 1000
CPU_MS_LIMIT = 1.5
P99_LIMIT_MS = 50.0


def _get(data: dict, *path: str) -> Any:
    for key in path:
        if not isinstance(data, dict) or key not in data:
            return None
        data = data[key]
    return data


def _target(
    ident: str, text: str, value: float | None, limit: float | None, *, at_most: bool, missing: str
) -> dict[str, Any]:
    met = None
    why = missing if value is None or limit is None else ""
    if value is not None and limit is not None:
        met = value <= limit if at_most else value >= limit
    return {
        "id": ident,
        "target": text,
        "value": value,
        "limit": None if limit is None else round(limit, 4),
        "met": met,
        "why": why,
    }


def _best_rps(results: dict, system: str, *, reference: bool = False) -> float | None:
    """Return SYSTEM's req/s at its best step; 0 if no step met the p99 limit (None for a REFERENCE)."""
    entry = _get(results, "throughput", system)
    if not entry or not entry.get("steps"):
        return None
    best = entry.get("best")
    if best is None:
        return None if reference else 0.0
    return best["rps"]


def evaluate_targets(results: dict) -> list[dict[str, Any]]:
    """Return issue 16's targets, each with value, limit and ``met`` (True, False or None)."""
    targets = []
    floor = "the floor (bare aiohttp forwarder) was not measured"
    litellm = "LiteLLM was not measured: " + str(
        _get(results, "systems", "litellm", "state") or "not run"
    )
    for system, label in ECHO_ENDPOINTS.items():
        added = _get(results, "latency", system, "nonstream_added") or {}
        floor_added = _get(results, "latency", "floor", "nonstream_added") or {}
        litellm_added = _get(results, "latency", "litellm", "nonstream_added") or {}
        p50, p99 = added.get("p50"), added.get("p99")
        missing = f"{label} was not measured"
        targets += [
            _target(
                f"latency_p50_vs_floor:{system}",
                f"{label}: added latency p50 at c=1 ≤ 2× the floor's",
                p50,
                None if "p50" not in floor_added else 2 * floor_added["p50"],
                at_most=True,
                missing=missing if p50 is None else floor,
            ),
            _target(
                f"latency_p50_vs_litellm:{system}",
                f"{label}: added latency p50 at c=1 ≤ ⅒ of LiteLLM's",
                p50,
                None if "p50" not in litellm_added else litellm_added["p50"] / 10,
                at_most=True,
                missing=missing if p50 is None else litellm,
            ),
            _target(
                f"latency_p99_vs_floor:{system}",
                f"{label}: added latency p99 at c=1 ≤ 3× the floor's",
                p99,
                None if "p99" not in floor_added else 3 * floor_added["p99"],
                at_most=True,
                missing=missing if p99 is None else floor,
            ),
        ]
        ttft = _get(results, "latency", system, "ttft_added", "p50")
        floor_ttft = _get(results, "latency", "floor", "ttft_added", "p50")
        targets.append(
            _target(
                f"ttft_vs_floor:{system}",
                f"{label}: added time to first token p50 ≤ 2× the floor's",
                ttft,
                None if floor_ttft is None else 2 * floor_ttft,
                at_most=True,
                missing=missing if ttft is None else floor,
            )
        )
    echo_rps = _best_rps(results, "echo_v1")
    floor_rps = _best_rps(results, "floor", reference=True)
    litellm_rps = _best_rps(results, "litellm", reference=True)
    if floor_rps is None and _get(results, "throughput", "floor", "steps"):
        floor = f"the floor had no step with p99 ≤ {P99_LIMIT_MS:.0f} ms"
    if litellm_rps is None and _get(results, "throughput", "litellm", "steps"):
        litellm = f"LiteLLM had no step with p99 ≤ {P99_LIMIT_MS:.0f} ms (not even c=1)"
    missing = "Echo's throughput was not measured"
    targets += [
        _target(
            "throughput_vs_floor",
            f"Echo throughput (one worker, p99 ≤ {P99_LIMIT_MS:.0f} ms) ≥ 50% of the floor's",
            echo_rps,
            None if floor_rps is None else 0.5 * floor_rps,
            at_most=False,
            missing=missing if echo_rps is None else floor,
        ),
        _target(
            "throughput_vs_litellm",
            f"Echo throughput (one worker, p99 ≤ {P99_LIMIT_MS:.0f} ms) ≥ 10× LiteLLM's",
            echo_rps,
            None if litellm_rps is None else 10 * litellm_rps,
            at_most=False,
            missing=missing if echo_rps is None else litellm,
        ),
        _target(
            "cpu_per_request",
            f"Echo CPU per request ≤ {CPU_MS_LIMIT} core-ms",
            _get(results, "throughput", "echo_v1", "best", "cpu_ms_per_request"),
            CPU_MS_LIMIT,
            at_most=True,
            missing="no throughput step of Echo met the p99 limit, so no CPU figure",
        ),
    ]
    most = _get(results, "streams", "echo_v1", "max_without_stall")
    targets.append(
        _target(
            "streams_no_stall",
            f"Echo: no stall at {STALL_TARGET_STREAMS} concurrent streams",
            most,
            STALL_TARGET_STREAMS,
            at_most=False,
            missing="Echo's stream concurrency was not measured",
        )
    )
    main_server = results.get("make_run_server")
    thousand = _get(results, "websocket", str(main_server), "thousand") or {}
    errors = thousand.get("errors")
    streamed = thousand.get("sockets")
    met_thousand = _target(
        "websocket_thousand",
        f"{WEBSOCKET_TARGET_STREAMS:,} concurrent websocket streams on one worker without an error",
        errors,
        0,
        at_most=True,
        missing="the websocket run was not made",
    )
    if streamed is not None and streamed < WEBSOCKET_TARGET_STREAMS and met_thousand["met"]:
        met_thousand["met"] = False
        met_thousand["why"] = f"only {streamed} sockets were tried"
    targets.append(met_thousand)
    return targets


def _mark(met: bool | None) -> str:
    return {True: "met", False: "**missed**", None: "not measured"}[met]


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _label(results: dict, system: str) -> str:
    return _get(results, "systems", system, "label") or system


def _section(title: str, columns: list[str], *intro: str) -> list[str]:
    """Return the lines that open a report section: its title, INTRO, and its table's head."""
    lines = ["", f"## {title}", ""]
    if intro:
        lines += [*intro, ""]
    return lines + ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]


def render_markdown(results: dict) -> str:
    """Return the report of RESULTS as markdown: machine, versions, figures, ratios, targets."""
    targets = results.get("targets") or evaluate_targets(results)
    out = [
        f"# Echo benchmark ({results.get('generated_at', '?')}, {results.get('mode', '?')} run)",
        "",
    ]
    machine = results.get("machine", {})
    out += [
        "## Machine and versions",
        "",
        "| | |",
        "|---|---|",
        *(f"| {k} | {_fmt(v)} |" for k, v in machine.items()),
        *(f"| {k} | {_fmt(v)} |" for k, v in results.get("versions", {}).items()),
        "",
    ]
    if results.get("placement"):
        out += [f"Placement: {results['placement']}", ""]
    out += ["## Systems", "", "| system | what | state |", "|---|---|---|"]
    for key, system in results.get("systems", {}).items():
        out.append(f"| `{key}` | {system.get('label', '')} | {system.get('state', '')} |")
    out += _section("Targets (issue 16)", ["target", "value", "limit", "result"])
    for t in targets:
        result = _mark(t["met"]) + (f" ({t['why']})" if t["why"] else "")
        out.append(f"| {t['target']} | {_fmt(t['value'])} | {_fmt(t['limit'])} | {result} |")
    ratios = results.get("ratios", {})
    if ratios:
        out += ["", "## Ratios", "", "| ratio | value |", "|---|---|"]
        out += [f"| {name} | {_fmt(value, 3)} |" for name, value in ratios.items()]
    latency = results.get("latency", {})
    if latency:
        out += _section(
            "(1) Latency at c=1 (ms; added = through the system minus direct, same rounds)",
            [
                "system",
                "p50",
                "p99",
                "added p50",
                "added p99",
                "TTFT p50",
                "added TTFT p50",
                "added TTFT p99",
                "chunk gap p50",
                "chunk gap p99",
            ],
        )
        for key, row in latency.items():
            whole = row.get("nonstream", {})
            add = row.get("nonstream_added", {})
            ttft = row.get("ttft", {})
            ttft_add = row.get("ttft_added", {})
            gap = row.get("gap", {})
            out.append(
                f"| {_label(results, key)} | {_fmt(whole.get('p50'))} | {_fmt(whole.get('p99'))} "
                f"| {_fmt(add.get('p50'))} | {_fmt(add.get('p99'))} | {_fmt(ttft.get('p50'))} "
                f"| {_fmt(ttft_add.get('p50'))} | {_fmt(ttft_add.get('p99'))} "
                f"| {_fmt(gap.get('p50'))} | {_fmt(gap.get('p99'))} |"
            )
    throughput = results.get("throughput", {})
    if throughput:
        out += [
            "",
            f"## (2) Throughput: the most req/s of a step with p99 ≤ {P99_LIMIT_MS:.0f} ms (wrk)",
            "",
            "| system | connections | req/s | p50 ms | p99 ms | CPU core-ms/request | RSS under load MB | steps (c: req/s, p99 ms) |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for key, row in throughput.items():
            best = row.get("best") or {}
            steps = ", ".join(
                f"{s['connections']}: {s['rps']:,.0f}, {s['latency_ms']['p99']:.1f}"
                + (f" ({s['errors']} errors)" if s.get("errors") else "")
                for s in row.get("steps", [])
            )
            out.append(
                f"| {_label(results, key)} | {_fmt(best.get('connections'))} | {_fmt(best.get('rps'), 0)} "
                f"| {_fmt(_get(best, 'latency_ms', 'p50'))} | {_fmt(_get(best, 'latency_ms', 'p99'))} "
                f"| {_fmt(best.get('cpu_ms_per_request'), 3)} | {_fmt(best.get('rss_max_mb'), 1)} | {steps} |"
            )
    streams = results.get("streams", {})
    if streams:
        out += [
            "",
            "## (3) Concurrent streams without a stall (a gap over twice the upstream's interval)",
            "",
            f"Upstream: {results.get('stream_shape', '')}.",
            "",
            "| system | most streams with no stall | steps (streams: stalled streams, max gap ms, errors, TTFT p99 ms) |",
            "|---|---|---|",
        ]
        for key, row in streams.items():
            steps = ", ".join(
                f"{s['streams']}: {s['stalled_streams']}, {s['max_gap_ms']:.0f}, {s['errors']}, {_fmt(s.get('ttft_p99_ms'), 0)}"
                for s in row.get("steps", [])
            )
            out.append(
                f"| {_label(results, key)} | {_fmt(row.get('max_without_stall'))} | {steps} |"
            )
        out += _worker_pauses(results, streams)
    websocket = results.get("websocket", {})
    if websocket:
        out += _section(
            "(4) Websocket streaming through the Channels consumer (`/ws/chat/`)",
            [
                "server",
                "ws answer p50 ms",
                "SSE answer p50 ms",
                "ratio p50",
                "ws TTFT p50",
                "SSE TTFT p50",
                "ratio TTFT",
                "1,000 sockets: opened",
                "errors",
                "seconds",
                "RSS per open socket KB",
            ],
            "c=1, the same answer as SSE on `/chat` (streamed), interleaved; ratio = websocket / SSE.",
        )
        for server, row in websocket.items():
            k = row.get("thousand", {})
            out.append(
                f"| {server} | {_fmt(_get(row, 'ws_total', 'p50'))} | {_fmt(_get(row, 'sse_total', 'p50'))} "
                f"| {_fmt(row.get('ratio_total'), 3)} | {_fmt(_get(row, 'ws_ttft', 'p50'))} "
                f"| {_fmt(_get(row, 'sse_ttft', 'p50'))} | {_fmt(row.get('ratio_ttft'), 3)} "
                f"| {_fmt(k.get('opened'))} | {_fmt(k.get('errors'))} | {_fmt(k.get('seconds'))} "
                f"| {_fmt(k.get('rss_per_socket_kb'), 1)} |"
            )
            for sample in k.get("error_samples", [])[:3]:
                out.append(f"|  | error sample: `{str(sample)[:160]}` | | | | | | | | | |")
    rss = results.get("rss", {})
    if rss:
        out += _section("(5) Memory (RSS, MB)", ["system", "idle", "under load (max)"])
        for key, row in rss.items():
            out.append(
                f"| {_label(results, key)} | {_fmt(row.get('idle_mb'), 1)} | {_fmt(row.get('load_mb'), 1)} |"
            )
    out += _measured_section(
        "(6) A flood of made-up keys (Echo `/v1/chat/completions`)", results.get("key_flood"),
        "Not measured", _key_flood_lines,
    )  # fmt: skip
    servers = results.get("servers", {})
    if servers:
        out += _section(
            "Echo under daphne, uvicorn and granian (one worker each, same app)",
            [
                "server",
                "added p50 ms",
                "added p99 ms",
                "added TTFT p50 ms",
                "req/s at p99 ≤ 50 ms",
                "CPU ms/request",
                "ws answer / SSE",
                "1,000 ws errors",
            ],
        )
        for server, key in servers.items():
            best = _get(results, "throughput", key, "best") or {}
            out.append(
                f"| {server} | {_fmt(_get(latency, key, 'nonstream_added', 'p50'))} "
                f"| {_fmt(_get(latency, key, 'nonstream_added', 'p99'))} "
                f"| {_fmt(_get(latency, key, 'ttft_added', 'p50'))} | {_fmt(best.get('rps'), 0)} "
                f"| {_fmt(best.get('cpu_ms_per_request'), 3)} "
                f"| {_fmt(_get(websocket, server, 'ratio_total'), 3)} "
                f"| {_fmt(_get(websocket, server, 'thousand', 'errors'))} |"
            )
    out += _measured_section(
        "Where Echo's time goes (py-spy, under load)", results.get("profile"), "No profile",
        _profile_lines,
    )  # fmt: skip
    out += _measured_section(
        "Where a call's CPU goes inside Echo (cProfile, in-process)", results.get("breakdown"),
        "No breakdown", _breakdown_lines,
    )  # fmt: skip
    out += _measured_section(
        "Instructions per call (callgrind)", results.get("instructions"), "Not counted",
        _instruction_lines,
    )  # fmt: skip
    notes = results.get("notes", [])
    if notes:
        out += ["", "## Notes", "", *(f"- {note}" for note in notes)]
    return "\n".join(out) + "\n"


def _measured_section(
    title: str, data: dict | None, missing: str, lines: Callable[[dict], list[str]]
) -> list[str]:
    """Return a report section: TITLE, then DATA's LINES, or MISSING and why (none without DATA)."""
    if not data:
        return []
    head = ["", f"## {title}", ""]
    if data.get("error"):
        return [*head, f"{missing}: {data['error']}"]
    return [*head, *lines(data)]


def _key_flood_lines(flood: dict) -> list[str]:
    alone, during = flood.get("valid_alone", {}), flood.get("valid_during_flood", {})
    statuses = ", ".join(
        f"{count:,} × {status}" for status, count in flood.get("made_up_statuses", {}).items()
    )
    return [
        f"A valid key calls one call after another for {_fmt(flood.get('seconds'))} s alone, "
        f"then as long while {_fmt(flood.get('connections'))} connections each send a new "
        "made-up key as fast as they are answered (`bench/key_flood.py`): what a hostile "
        "client's keys cost the others.",
        "",
        "| valid key | calls | p50 ms | p99 ms |",
        "|---|---|---|---|",
        f"| alone | {_fmt(alone.get('calls'))} | {_fmt(alone.get('p50_ms'), 3)} "
        f"| {_fmt(alone.get('p99_ms'), 3)} |",
        f"| during the flood | {_fmt(during.get('calls'))} | {_fmt(during.get('p50_ms'), 3)} "
        f"| {_fmt(during.get('p99_ms'), 3)} |",
        "",
        f"Made-up calls answered: {_fmt(flood.get('made_up_answered'))} ({statuses or 'none'}).",
    ]


def _profile_lines(profile: dict) -> list[str]:
    return [
        f"{profile.get('what', '')}; {profile.get('samples', 0):,} samples.",
        "",
        "| share of samples (inclusive) | function |",
        "|---|---|",
        *(f"| {share:.1f}% | `{name}` |" for name, share in profile.get("inclusive", [])),
        "",
        "| share of samples (self) | function |",
        "|---|---|",
        *(f"| {share:.1f}% | `{name}` |" for name, share in profile.get("self", [])),
    ]


def _breakdown_lines(breakdown: dict) -> list[str]:
    return [
        f"{breakdown.get('calls', 0):,} non-streamed `POST /v1/chat/completions` calls to "
        "Echo's ASGI application in-process, one after the other, against the same fake "
        f"upstream: {_fmt(breakdown.get('cpu_ms_per_call'), 3)} ms of CPU per call "
        "unprofiled (no HTTP server), "
        f"{_fmt(breakdown.get('loop_ms_per_call'), 3)} of it in the event loop's thread. "
        "The loop's shares from cProfile's cumulative times, which inflate code made of "
        "many small calls (Django's): approximate, in the right order; the usage rows' "
        "share is the CPU of the process's other threads.",
        "",
        "| part | share | what it holds |",
        "|---|---|---|",
        *(
            f"| {part['part']} | {part['share']:.1f}% | {part['holds']} |"
            for part in breakdown.get("parts", [])
        ),
    ]


def _instruction_lines(instructions: dict) -> list[str]:
    calls = instructions.get("calls", {})
    return [
        "The same non-streamed `POST /v1/chat/completions` call answered in-process by "
        "Echo's ASGI application and by the floor's, against the same fake upstream, "
        "under valgrind's callgrind: the instructions of a run of "
        f"{calls.get('many', '?')} calls less those of a run of {calls.get('few', '?')} "
        "(after the same warm-up), per call; every thread of the process, not the "
        "kernel. Unlike a time, a count does not move with the machine's load or speed "
        "(two runs agree within about 3%).",
        "",
        "| system | instructions per call |",
        "|---|---|",
        f"| Echo | {_fmt(instructions.get('echo'), 0)} |",
        f"| floor | {_fmt(instructions.get('floor'), 0)} |",
        f"| Echo / floor | {_fmt(instructions.get('ratio'), 3)} |",
        *_streamed_instruction_lines(instructions.get("streamed")),
    ]


def _streamed_instruction_lines(streamed: dict | None) -> list[str]:
    if not streamed:
        return []
    calls, chunks = streamed.get("calls", {}), streamed.get("chunks", {})
    return [
        "",
        "One chunk of a streamed answer, counted the same way: streamed calls of "
        f"{chunks.get('short', '?')} and of {chunks.get('long', '?')} chunks (runs of "
        f"{calls.get('few', '?')} and {calls.get('many', '?')} calls each), the two "
        "calls' difference over their chunks' difference.",
        "",
        "| system | instructions per streamed chunk |",
        "|---|---|",
        f"| Echo | {_fmt(streamed.get('echo_per_chunk'), 0)} |",
        f"| floor | {_fmt(streamed.get('floor_per_chunk'), 0)} |",
        f"| Echo / floor | {_fmt(streamed.get('ratio'), 3)} |",
    ]


def compute_ratios(results: dict) -> dict[str, float | None]:
    """Return the ratios the README quotes, from RESULTS (None where a side is missing)."""
    lat = results.get("latency", {})

    def added(system: str, what: str, q: str) -> float | None:
        return _get(lat, system, what, q)

    ratios = {}
    for system in ECHO_ENDPOINTS:
        ratios[f"{system} added p50 / floor added p50"] = ratio(
            added(system, "nonstream_added", "p50"), added("floor", "nonstream_added", "p50")
        )
        ratios[f"{system} added p99 / floor added p99"] = ratio(
            added(system, "nonstream_added", "p99"), added("floor", "nonstream_added", "p99")
        )
        ratios[f"{system} added p50 / LiteLLM added p50"] = ratio(
            added(system, "nonstream_added", "p50"), added("litellm", "nonstream_added", "p50")
        )
        ratios[f"{system} added TTFT p50 / floor added TTFT p50"] = ratio(
            added(system, "ttft_added", "p50"), added("floor", "ttft_added", "p50")
        )
    echo_rps = _best_rps(results, "echo_v1")
    ratios["echo_v1 req/s / floor req/s"] = ratio(
        echo_rps, _best_rps(results, "floor", reference=True)
    )
    ratios["echo_v1 req/s / LiteLLM req/s"] = ratio(
        echo_rps, _best_rps(results, "litellm", reference=True)
    )
    ratios["echo_v1 CPU per request / floor CPU per request"] = ratio(
        _get(results, "throughput", "echo_v1", "best", "cpu_ms_per_request"),
        _get(results, "throughput", "floor", "best", "cpu_ms_per_request"),
    )
    ratios["echo_v1 instructions per call / floor instructions per call"] = _get(
        results, "instructions", "ratio"
    )
    ratios["echo_v1 instructions per streamed chunk / floor instructions per streamed chunk"] = (
        _get(results, "instructions", "streamed", "ratio")
    )
    main_server = str(results.get("make_run_server"))
    ratios["websocket answer / SSE answer (p50)"] = _get(
        results, "websocket", main_server, "ratio_total"
    )
    ratios["valid key p50 during a flood of made-up keys / alone"] = ratio(
        _get(results, "key_flood", "valid_during_flood", "p50_ms"),
        _get(results, "key_flood", "valid_alone", "p50_ms"),
    )
    return ratios


def _worker_pauses(results: dict, streams: dict) -> list[str]:
    """The Echo worker's collector pauses in each stream step, where its /metrics was read."""
    rows = []
    for key, row in streams.items():
        steps = [s for s in row.get("steps", []) if "worker_pauses" in s]
        if steps:
            cells = ", ".join(
                f"{s['streams']}: {s['worker_pauses']['full_collections']}, "
                f"{s['worker_pauses']['passes_over_25ms']}, "
                f"{s['worker_pauses']['gc_seconds'] * 1000:.0f}"
                for s in steps
            )
            rows.append(f"| {_label(results, key)} | {cells} |")
    if not rows:
        return []
    return [
        "",
        "Echo's worker during each step, from its `/metrics` (`echo_gc_pause_seconds`): a stall"
        " of every stream at once is a pause of the whole worker, such as a full collection.",
        "",
        "| system | steps (streams: full collections, passes over 25 ms, ms in the collector) |",
        "|---|---|",
        *rows,
    ]


def write_report(results: dict, directory: Path) -> tuple[Path, Path]:
    """Add targets and ratios to RESULTS, write DIRECTORY/latest.md and latest.json; return both paths."""
    results["ratios"] = compute_ratios(results)
    results["targets"] = evaluate_targets(results)
    directory.mkdir(parents=True, exist_ok=True)
    markdown = directory / "latest.md"
    data = directory / "latest.json"
    markdown.write_text(render_markdown(results))
    data.write_text(json.dumps(results, indent=2, sort_keys=False, default=str) + "\n")
    return markdown, data
