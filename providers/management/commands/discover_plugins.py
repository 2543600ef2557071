"""``manage.py discover_plugins``: check the plugin directories and entry points, and report.

It runs the discovery of a serving process (the ECHO_PLUGIN_DIRS directories
and the ``echo.providers`` entry points) in this command's own process and
prints one line per plugin: registered, unchanged or failed and why. A
running server learns new or changed plugins from ``POST /plugins/discover``
or at start-up; this command is how to check plugin files from a terminal or
in CI before that. Exit status 1 when any plugin failed to load.
"""

from __future__ import annotations

import json
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser

from providers.runtime import process as runtime
from providers.runtime.registry import DiscoveryResult

EXIT_FAILED = 1


async def discover_configured() -> list[DiscoveryResult]:
    """Discover the plugins of every ECHO_PLUGIN_DIRS directory, then of the entry points."""
    results: list[DiscoveryResult] = []
    for directory in settings.ECHO_PLUGIN_DIRS:
        results += await runtime.registry.discover_plugins(directory)
    results += await runtime.registry.discover_entry_points()
    return results


class Command(BaseCommand):
    help = (
        "Load the {name}_provider.py files of the ECHO_PLUGIN_DIRS directories and the "
        "echo.providers entry points in this process, and report each: registered, "
        "unchanged or failed with the reason (syntax error, import error, missing methods, "
        "a name taken by a built-in). A running server loads them with POST "
        "/plugins/discover. Exit status 1 when any plugin failed."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--json", action="store_true", help="Print the report as JSON.")

    def handle(self, *args: Any, **options: Any) -> None:
        results = runtime.run_in_serving_loop(discover_configured)
        if options["json"]:
            report = {
                "directories": [str(d) for d in settings.ECHO_PLUGIN_DIRS],
                "results": [r.as_dict() for r in results],
            }
            self.stdout.write(json.dumps(report, indent=2))
        else:
            for directory in settings.ECHO_PLUGIN_DIRS:
                self.stdout.write(f"Scanned {directory}")
            if not results:
                self.stdout.write("No plugins found.")
            for result in results:
                self.stdout.write(self._line(result))
        if any(r.status == "failed" for r in results):
            raise SystemExit(EXIT_FAILED)

    def _line(self, result: DiscoveryResult) -> str:
        label = result.name or "-"
        if result.status == "failed":
            return self.style.ERROR(f"FAILED     {label}  {result.origin}: {result.error}")
        return f"{result.status:<10} {label}  {result.class_name}  ({result.origin})"
