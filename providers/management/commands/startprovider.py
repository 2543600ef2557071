"""``manage.py startprovider``: generate a provider plugin, its test, config example and doc.

The guide's options (``--name``, ``--display``, ``--url``, ``--model``) plus
``--wire`` (which built-in wire format to start from) and ``--plugins-dir``
(where to write; the first of ECHO_PLUGIN_DIRS by default). The work is
``providers.authoring.generator``'s; this command parses and reports.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from providers.authoring.generator import (
    WIRES,
    PluginExistsError,
    PluginSpecError,
    generate_plugin,
    plugin_spec,
)


def add_generator_arguments(parser: Any, *, default_plugins_dir: Path | None) -> None:
    """Add the generator's options to PARSER (an argparse parser)."""
    parser.add_argument(
        "--name",
        required=True,
        help="Plugin name: lowercase, e.g. custom-ai (file custom_ai_provider.py, "
        "class CustomAiProvider).",
    )
    parser.add_argument("--display", required=True, help='Display name, e.g. "Custom AI".')
    parser.add_argument(
        "--url",
        required=True,
        help="Default base URL of the API, e.g. https://api.custom-ai.com/v1.",
    )
    parser.add_argument("--model", required=True, help="Default model, e.g. custom-model-v1.")
    parser.add_argument(
        "--wire",
        choices=list(WIRES),
        default="openai",
        help="The API format to start from (default: openai, which works as generated for "
        "OpenAI-compatible APIs); blank writes a skeleton to fill in.",
    )
    parser.add_argument(
        "--plugins-dir",
        type=Path,
        default=default_plugins_dir,
        help="Directory to write the plugin into (default: the first of ECHO_PLUGIN_DIRS). "
        "The test, config example and doc go into its tests/, config/ and docs/.",
    )


def run_generator(options: dict[str, Any]) -> list[str]:
    """Generate the plugin that OPTIONS describe; return the lines to print.

    Raise ``PluginSpecError`` or ``PluginExistsError`` with a message for the user.
    """
    spec = plugin_spec(
        name=options["name"],
        display=options["display"],
        url=options["url"],
        model=options["model"],
        wire=options["wire"],
    )
    files = generate_plugin(spec, options["plugins_dir"])
    lines = [f"Created the {spec.plugin!r} plugin ({spec.class_name}, {spec.wire} wire):"]
    lines += [f"  {path}" for path in files.all()]
    lines += [
        "Next:",
        f"  pytest {files.test}",
        "  python manage.py discover_plugins   (or POST /plugins/discover on a running server)",
        f"  add a provider with plugin {spec.plugin!r}: see {files.config}",
    ]
    if spec.wire == "blank":
        lines.append(f"  write the methods marked CHANGE ME in {files.provider}")
    return lines


class Command(BaseCommand):
    help = (
        "Generate a provider plugin: {name}_provider.py with class {Name}Provider, a test "
        "module that runs the conformance kit against a fake upstream, a config example "
        "and a short doc. Refuses to overwrite existing files."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        dirs = list(settings.ECHO_PLUGIN_DIRS)
        add_generator_arguments(parser, default_plugins_dir=Path(dirs[0]) if dirs else None)

    def handle(self, *args: Any, **options: Any) -> None:
        if options["plugins_dir"] is None:
            raise CommandError("--plugins-dir: ECHO_PLUGIN_DIRS is empty; name a directory.")
        try:
            lines = run_generator(options)
        except (PluginSpecError, PluginExistsError) as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write("\n".join(lines))
