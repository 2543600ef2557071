"""The fake upstreams together: ``python -m providers.testing.fake_upstreams --openai 9001 ...``.

Serves any of the fake OpenAI, Anthropic and Ollama APIs on loopback ports
until Ctrl-C or SIGTERM, for demos, ``make run`` experiments and benchmarks.
Faults are injected over HTTP: ``POST /_fake/faults`` with a JSON fault such
as ``{"status": 429, "retry_after": 2}``; ``GET /_fake/requests`` lists what
each fake received.
"""

from __future__ import annotations

import argparse

from providers.testing.fake_anthropic import FakeAnthropic
from providers.testing.fake_ollama import FakeOllama
from providers.testing.fake_openai import FakeOpenAI
from providers.testing.fake_server import FakeUpstream, serve_until_stopped

FAKES: dict[str, type[FakeUpstream]] = {
    "openai": FakeOpenAI,
    "anthropic": FakeAnthropic,
    "ollama": FakeOllama,
}

__all__ = ["FAKES", "FakeAnthropic", "FakeOllama", "FakeOpenAI", "main"]


def main(argv: list[str] | None = None) -> None:
    """Serve the fakes named on the command line until stopped."""
    parser = argparse.ArgumentParser(
        prog="python -m providers.testing.fake_upstreams",
        description="Serve fake provider APIs on 127.0.0.1.",
    )
    for name in FAKES:
        parser.add_argument(f"--{name}", type=int, metavar="PORT", help=f"serve a fake {name} API")
    parser.add_argument(
        "--stream-interval", type=float, default=0.0, help="seconds between streamed events"
    )
    args = parser.parse_args(argv)
    chosen = {name: getattr(args, name) for name in FAKES if getattr(args, name) is not None}
    if not chosen:
        parser.error("name at least one fake, e.g. --openai 9001")
    running = [
        FAKES[name](port, stream_interval=args.stream_interval).start()
        for name, port in chosen.items()
    ]
    lines = [
        f"fake {name}: base_url {fake.base_url}" for name, fake in zip(chosen, running, strict=True)
    ]
    serve_until_stopped(running, "\n".join(lines))


if __name__ == "__main__":
    main()
