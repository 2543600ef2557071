"""Echo's worker's garbage-collector pauses over a round: its ``/metrics`` read before and after.

Echo times each pass of the collector (``echo_gc_pause_seconds``, by
generation; ``echo_site.collector_pauses``). A stall of every stream at once
is a pause of the whole worker, and a full collection was one such pause
(docs/BENCHMARKS.md, "Stalls at 256 streams"): the stream round reports, for
each of Echo's steps, the full collections it saw and the passes longer than
``LONG_PAUSE``, so that a stall in the report says whether the collector
was the cause.
"""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

from bench.http_probe import HttpConnection, get_request

#: A pass at least this long delays every stream's next chunk noticeably (half the bench's interval).
LONG_PAUSE = 0.025
METRIC = "echo_gc_pause_seconds"


@dataclass(frozen=True)
class Pauses:
    """A worker's passes so far: the full ones, those over LONG_PAUSE, and all of their seconds."""

    full: int = 0
    long: int = 0
    seconds: float = 0.0

    def since(self, before: Pauses) -> dict[str, float]:
        """Return what happened between BEFORE and this reading."""
        return {
            "full_collections": self.full - before.full,
            "passes_over_25ms": self.long - before.long,
            "gc_seconds": round(self.seconds - before.seconds, 4),
        }


def parse(text: str) -> Pauses:
    """Return the pauses in a ``/metrics`` page (one worker's); none if it has no such metric."""
    full = long = 0
    seconds = 0.0
    for family in text_string_to_metric_families(text):
        if family.name != METRIC:
            continue
        counts: dict[str, float] = {}
        within: dict[str, float] = {}
        for sample in family.samples:
            generation = sample.labels.get("generation", "")
            if sample.name == f"{METRIC}_count":
                counts[generation] = sample.value
            elif sample.name == f"{METRIC}_sum":
                seconds += sample.value
            elif sample.name == f"{METRIC}_bucket" and float(sample.labels["le"]) == LONG_PAUSE:
                within[generation] = sample.value
        full = int(counts.get("2", 0))
        long = int(sum(counts[g] - within.get(g, counts[g]) for g in counts))
    return Pauses(full, long, seconds)


async def read(port: int, admin_key: str) -> Pauses | None:
    """Return the pauses of the Echo worker on PORT so far, or None if its ``/metrics`` did not answer."""
    connection = HttpConnection("127.0.0.1", port)
    request = get_request("127.0.0.1", port, "/metrics", {"authorization": f"Bearer {admin_key}"})
    try:
        answer = await connection.exchange(request, keep_body=True)
    except Exception:
        return None
    finally:
        await connection.close()
    if answer.status != 200:
        return None
    return parse(answer.body.decode("utf-8", "replace"))
