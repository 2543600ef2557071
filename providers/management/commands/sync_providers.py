"""``manage.py sync_providers``: import ``config/{ECHO_ENV}.yaml`` into the database."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from echo_site.environment import ENVIRONMENTS
from providers.config.files import (
    ConfigFileError,
    config_path,
    load_model_group_entries,
    load_provider_entries,
)
from providers.config.yaml_import import sync_model_groups, sync_provider_configs
from providers.runtime import process as runtime
from providers.runtime.process import run_in_serving_loop


class Command(BaseCommand):
    help = (
        "Import the providers (then the model groups) of config/{ECHO_ENV}.yaml into the "
        "database. Missing providers "
        "are created; providers the import wrote and no one edited since follow the file; "
        "providers edited in the admin or the API that differ from the file are reported "
        "field by field and kept, unless --overwrite. A provider whose ${VAR} is unset is "
        "imported disabled, with the reason. Providers that are not in the file are left "
        "alone. Exit status: 0 when every entry was imported or reported as a conflict; "
        "1 when the file cannot be read or an entry is invalid (the valid entries are "
        "still imported)."
    )
    # The providers.E001 check reads the very file this command reports on,
    # and would stop it (and --file, --env, --dry-run) before it could say more.
    requires_system_checks: list[str] = []

    def add_arguments(self, parser: CommandParser) -> None:
        source = parser.add_mutually_exclusive_group()
        source.add_argument(
            "--env",
            choices=ENVIRONMENTS,
            help="Import config/{ENV}.yaml (default: the current ECHO_ENV).",
        )
        source.add_argument("--file", type=Path, help="Import this YAML file instead.")
        parser.add_argument(
            "--dry-run",
            action="store_true",
            help="Report what the import would do, and save nothing.",
        )
        parser.add_argument(
            "--overwrite",
            action="store_true",
            help="Replace providers edited since the last import with the file's values.",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        path = options["file"] or config_path(
            settings.ECHO_CONFIG_DIR, options["env"] or settings.ECHO_ENV
        )
        try:
            entries = load_provider_entries(path)
            group_entries = load_model_group_entries(path)
        except ConfigFileError as exc:
            raise CommandError(str(exc)) from None
        self._discover_plugins()
        report = sync_provider_configs(
            entries=entries, dry_run=options["dry_run"], overwrite=options["overwrite"]
        )
        self.stdout.write(f"Providers from {path}:")
        for line in report.render():
            self.stdout.write(line)
        groups = None
        if group_entries:
            # After the providers: a group's deployments must name configured ones
            # (in a dry run they were not saved, so a new provider's groups say so).
            groups = sync_model_groups(
                entries=group_entries, dry_run=options["dry_run"], overwrite=options["overwrite"]
            )
            self.stdout.write(f"Model groups from {path}:")
            for line in groups.render():
                self.stdout.write(line)
        if report.has_errors or (groups is not None and groups.has_errors):
            raise CommandError(
                "Some entries in the file are invalid and were not imported (see above)."
            )

    def _discover_plugins(self) -> None:
        """Register the plugins a serving process would, so the file may name them.

        The same directories and entry points as ``ProviderLifecycle``; a
        broken plugin is reported and its providers fail as unknown plugins.
        """
        results = []
        for directory in settings.ECHO_PLUGIN_DIRS:
            if Path(directory).is_dir():
                results.extend(run_in_serving_loop(runtime.registry.discover_plugins, directory))
        results.extend(run_in_serving_loop(runtime.registry.discover_entry_points))
        for result in results:
            if result.status == "failed":
                self.stderr.write(f"Plugin {result.origin} not loaded: {result.error}")
