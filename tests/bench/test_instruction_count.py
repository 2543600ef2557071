"""Instructions per call: two callgrind runs' difference, the driver valgrind runs, the report's section."""

from __future__ import annotations

import asyncio

import pytest

from bench import fast_upstream, instruction_count
from bench.report import compute_ratios, render_markdown


@pytest.fixture
async def upstream():
    server = await fast_upstream.serve("127.0.0.1", 0, fast_upstream.Shape(chunks=2))
    port = server.sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}"
    server.close()
    await server.wait_closed()


def test_a_call_costs_the_runs_difference_over_their_calls_difference():
    # Start-up and warm-up (1,000,000) cost both runs the same; each call costs 2,500.
    few = 1_000_000 + 100 * 2_500
    many = 1_000_000 + 400 * 2_500
    assert instruction_count.per_call(few, many, 100, 400) == 2_500
    with pytest.raises(ValueError):
        instruction_count.per_call(few, many, 400, 400)


def test_the_total_is_read_from_callgrinds_output_and_nothing_else():
    header = b"# callgrind format\nversion: 1\ncmd: python x\nevents: Ir\n"
    assert instruction_count.read_total(header + b"fl=a.c\n0 12\nsummary: 6332607679\n") == (
        6_332_607_679
    )
    assert instruction_count.read_total(header + b"totals: 42\n") == 42
    for broken in (b"", header, b"summary: lots\n", b"cmd: summary: 12\n"):
        with pytest.raises(ValueError):
            instruction_count.read_total(broken)


async def test_the_driver_answers_every_call_through_the_floor(upstream, monkeypatch):
    monkeypatch.setenv("BENCH_UPSTREAM", upstream)
    answered = []
    from bench import inprocess_profile

    real_call = inprocess_profile._call

    async def counted(app, scope, body):
        status = await real_call(app, scope, body)
        answered.append(status)
        return status

    monkeypatch.setattr(inprocess_profile, "_call", counted)
    await instruction_count.drive("floor", 3, key="k", model="gpt-4o-mini")
    assert answered == [200] * (instruction_count.WARM_UP + 3)


async def test_a_driver_whose_application_cannot_start_says_why(monkeypatch):
    monkeypatch.delenv("BENCH_UPSTREAM", raising=False)
    with pytest.raises(KeyError, match="BENCH_UPSTREAM"):
        await instruction_count.drive("floor", 1, key="k", model="m")


def test_a_chunk_costs_a_long_streams_call_less_a_short_ones_over_their_chunks_difference():
    # A streamed call costs 2,000,000 besides its chunks, and 90,000 a chunk.
    short = 2_000_000 + instruction_count.SHORT_STREAM * 90_000
    long = 2_000_000 + instruction_count.LONG_STREAM * 90_000
    assert instruction_count.per_chunk(short, long) == 90_000


async def test_the_driver_streams_every_call_through_the_floor(upstream, monkeypatch):
    monkeypatch.setenv("BENCH_UPSTREAM", upstream)
    bodies = []
    from bench import inprocess_profile

    real_call = inprocess_profile._call

    async def counted(app, scope, body):
        bodies.append(body)
        return await real_call(app, scope, body)

    monkeypatch.setattr(inprocess_profile, "_call", counted)
    await instruction_count.drive("floor", 2, key="k", model="gpt-4o-mini", stream_chunks=5)
    assert len(bodies) == instruction_count.WARM_UP + 2
    assert b'"stream": true' in bodies[0] and b"bench chunks=5" in bodies[0]


def test_no_valgrind_is_an_error_not_a_count(monkeypatch):
    monkeypatch.setattr(instruction_count.shutil, "which", lambda name: None)
    with pytest.raises(RuntimeError, match="valgrind is not installed"):
        instruction_count.count("floor", 1, key="k", model="m", env={})


def test_the_report_shows_the_counts_and_their_ratio_or_why_not():
    counted = {
        "calls": {"few": 100, "many": 400, "warm_up": 100},
        "echo": 1_880_912,
        "floor": 407_000,
        "ratio": 4.621,
    }
    markdown = render_markdown({"machine": {}, "instructions": counted})
    assert "## Instructions per call (callgrind)" in markdown
    assert "| Echo | 1,880,912 |" in markdown
    assert "| floor | 407,000 |" in markdown
    assert "| Echo / floor | 4.621 |" in markdown
    ratios = compute_ratios({"instructions": counted})
    assert ratios["echo_v1 instructions per call / floor instructions per call"] == 4.621
    assert "instructions per streamed chunk" not in markdown  # counted before the streams were
    streamed = {
        **counted,
        "streamed": {
            "calls": {"few": 40, "many": 160},
            "chunks": {"short": 8, "long": 40},
            "echo_per_chunk": 92_972,
            "floor_per_chunk": 13_657,
            "ratio": 6.808,
        },
    }
    markdown = render_markdown({"machine": {}, "instructions": streamed})
    assert "| Echo | 92,972 |" in markdown
    assert "| floor | 13,657 |" in markdown
    assert "| Echo / floor | 6.808 |" in markdown
    assert "streamed calls of 8 and of 40 chunks" in markdown
    ratios = compute_ratios({"instructions": streamed})
    key = "echo_v1 instructions per streamed chunk / floor instructions per streamed chunk"
    assert ratios[key] == 6.808
    failed = render_markdown(
        {"machine": {}, "instructions": {"error": "valgrind is not installed"}}
    )
    assert "Not counted: valgrind is not installed" in failed


async def test_under_the_count_echos_access_lines_are_written_in_full_batches(monkeypatch):
    """As at load: a batch waits for its 32 lines, not for the 0.1 s that valgrind's pace would cut it at."""
    from echo_site import access_log

    written: list = []
    batch = access_log.LineBatch(
        written.append, write_all=lambda lines: written.append(lines) or True
    )
    monkeypatch.setattr(access_log, "pending", batch)
    instruction_count.batch_lines_by_count()
    line = ({"client": ("127.0.0.1", 1), "method": "POST", "path": "/"}, 200, [], 0.001, 0.0)
    for _ in range(access_log.BATCH_LINES - 1):
        batch.add(line)
    await asyncio.sleep(access_log.BATCH_SECONDS * 1.5)
    assert written == [] and len(batch) == access_log.BATCH_LINES - 1
    batch.add(line)
    assert [len(lines) for lines in written] == [access_log.BATCH_LINES]
    batch.flush()  # its timer, set an hour ahead, finds nothing
