"""``manage.py check_providers``: check the configured providers now, or on an interval.

For cron and terminals: the same check rounds as the serving processes'
periodic checks (``providers.health.monitor``), in a process of its own. It
loads the providers from the database, checks them (each plugin's
``health_check``, which never spends tokens), records a ``HealthCheck`` row
per enabled provider and prints a line per provider.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import connections

from providers.health.monitor import ProviderHealth, release_connections
from providers.models import ProviderConfig
from providers.runtime import process as runtime
from providers.runtime.lifecycle import discover_all_plugins

DEFAULT_WATCH_INTERVAL = 60.0
EXIT_UNAVAILABLE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


def positive_number(text: str) -> float:
    """Parse TEXT as a number of seconds above 0 (an argparse type)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be above 0, got {text}")
    return value


class Command(BaseCommand):
    help = (
        "Check the enabled providers now (each plugin's health check: it lists models or "
        "pings, and never spends tokens), record one health-check row per provider and "
        "print a line per provider: up or DOWN, latency, how many models, the error. "
        "Disabled providers are listed as skipped. With --watch, check again every "
        "--interval seconds until interrupted (or for --rounds rounds), recording at most "
        "one row per provider per half interval, as the serving processes do. "
        "Exit status: 0 when every checked provider is available; 1 when any is not (in "
        "--watch mode: in the last round); 2 for a --provider that is not configured; "
        "130 when interrupted."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--watch",
            action="store_true",
            help="Check again every --interval seconds until interrupted.",
        )
        parser.add_argument(
            "--interval",
            type=positive_number,
            help="Seconds between rounds with --watch (default: ECHO_HEALTH_INTERVAL_SECONDS, "
            f"or {DEFAULT_WATCH_INTERVAL:g} when that is 0).",
        )
        parser.add_argument(
            "--timeout",
            type=positive_number,
            help="Seconds each provider's check may take (default: ECHO_HEALTH_TIMEOUT_SECONDS).",
        )
        parser.add_argument(
            "--provider",
            dest="providers",
            action="extend",
            nargs="+",
            metavar="NAME",
            help="Check only these providers (repeatable).",
        )
        parser.add_argument(
            "--rounds",
            type=int,
            help="With --watch, stop after this many rounds.",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if options["rounds"] is not None and options["rounds"] < 1:
            raise CommandError("--rounds must be 1 or more.", returncode=EXIT_USAGE)
        interval = options["interval"] or (
            settings.ECHO_HEALTH_INTERVAL_SECONDS or DEFAULT_WATCH_INTERVAL
        )
        timeout = options["timeout"] or settings.ECHO_HEALTH_TIMEOUT_SECONDS
        self._loaded: dict[str, dt.datetime] = {}
        try:
            # asyncio.run, not async_to_sync: Ctrl-C then cancels the round
            # cleanly, and the providers' HTTP clients are closed on their loop.
            unavailable = asyncio.run(
                self._run(
                    names=options["providers"],
                    watch=options["watch"],
                    interval=interval,
                    timeout=timeout,
                    rounds=options["rounds"],
                )
            )
        except KeyboardInterrupt:
            raise CommandError("Interrupted.", returncode=EXIT_INTERRUPTED) from None
        if unavailable:
            raise CommandError(
                f"Unavailable: {', '.join(unavailable)}.", returncode=EXIT_UNAVAILABLE
            )

    async def _run(
        self,
        *,
        names: list[str] | None,
        watch: bool,
        interval: float,
        timeout: float,
        rounds: int | None,
    ) -> list[str]:
        """Check the providers once, or each INTERVAL with WATCH; return the last round's unavailable."""
        for result in await discover_all_plugins(runtime.registry):
            if result.status == "failed":
                self.stderr.write(f"Plugin {result.origin} not loaded: {result.error}")
        done = 0
        try:
            while True:
                configs = await self._load(names)
                if watch:
                    self.stdout.write(f"-- {dt.datetime.now(tz=dt.UTC):%Y-%m-%d %H:%M:%S} UTC")
                checked = [c.name for c in configs if c.enabled]
                results = await runtime.monitor.check_all(
                    timeout=timeout,
                    names=checked,
                    # Next to serving workers, a watch records no more than they do.
                    min_gap=interval / 2 if watch else None,
                )
                unavailable = self._report(configs, results)
                done += 1
                if not watch or (rounds is not None and done >= rounds):
                    return unavailable
                await sync_to_async(release_connections)()
                await asyncio.sleep(interval)
        finally:
            await runtime.registry.shutdown_all()
            # The ORM ran in asgiref's worker thread: close its connections there.
            await sync_to_async(connections.close_all)()

    async def _load(self, names: list[str] | None) -> list[ProviderConfig]:
        """Bring the providers in line with their rows; return the rows, by name.

        A row is (re)loaded when it is new or changed since the last round,
        so that a watch follows the admin's edits.
        """
        query = ProviderConfig.objects.order_by("name")
        if names:
            query = query.filter(name__in=names)
        configs = [row async for row in query]
        if names:
            unknown = sorted(set(names) - {c.name for c in configs})
            if unknown:
                raise CommandError(
                    f"No provider named {', '.join(map(repr, unknown))} is configured.",
                    returncode=EXIT_USAGE,
                )
        for config in configs:
            if self._loaded.get(config.name) == config.updated_at:
                continue
            # serving_spec: secrets no key decrypts keep it out, with the reason.
            spec, reason = config.serving_spec()
            await runtime.apply_config_state(config.name, spec, reason)
            self._loaded[config.name] = config.updated_at
        for gone in set(self._loaded) - {c.name for c in configs}:
            await runtime.registry.unregister(gone)
            del self._loaded[gone]
        if not configs:
            self.stdout.write("No providers are configured.")
        return configs

    def _report(
        self, configs: list[ProviderConfig], results: dict[str, ProviderHealth]
    ) -> list[str]:
        """Print a line per provider; return the names of the unavailable ones."""
        width = max((len(c.name) for c in configs), default=0)
        unavailable = []
        for config in configs:
            name = config.name.ljust(width)
            if not config.enabled:
                reason = config.disabled_reason or "no reason given"
                self.stdout.write(f"{name}  skipped (disabled: {reason})")
                continue
            health = results.get(config.name)
            if health is None:  # deleted during the round
                continue
            latency = (
                f"{health.response_time_ms:.1f} ms" if health.response_time_ms is not None else "-"
            )
            models = f"{len(health.models)} model{'s' if len(health.models) != 1 else ''}"
            if health.available:
                self.stdout.write(f"{name}  up    {latency:>10}  {models}")
            else:
                unavailable.append(config.name)
                self.stdout.write(
                    f"{name}  DOWN  {latency:>10}  {models}  error: {health.error or 'unavailable'}"
                )
        return unavailable
