"""Time that tests control: a clock that moves only when told, a sleep that only takes notes."""

from __future__ import annotations


class RecordedSleep:
    """An ``asyncio.sleep`` stand-in that only notes the waits asked for (each one a retry)."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


class FakeClock:
    """A monotonic clock that moves only when told to."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now
