"""``manage.py issue_api_key NAME --scope chat|admin [--rpm N] [--tpm N] [--max-concurrent N]``.

Prints a new client key, once. The limits (``plugins_api.access.key_limits``)
are per key; left out, a limit is none.
"""

from __future__ import annotations

import argparse

from django.core.management.base import BaseCommand, CommandError

from plugins_api.access.client_keys import client_key_issue
from plugins_api.access.key_limits import KeyLimits
from plugins_api.models import ClientAPIKey


def _limit(text: str) -> int:
    """Parse a limit: a whole number from 1 to 2**31 - 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number.") from None
    if not 1 <= value <= 2**31 - 1:
        raise argparse.ArgumentTypeError("A limit must be from 1 to 2147483647.")
    return value


class Command(BaseCommand):
    help = (
        "Create a client API key and print it alone on stdout. It is stored hashed "
        "and cannot be shown again."
    )

    def add_arguments(self, parser):
        parser.add_argument("name", help="A unique name for the key (who or what uses it).")
        parser.add_argument(
            "--scope",
            choices=["chat", "admin"],
            default="chat",
            help="chat: /chat and model endpoints; admin: everything.",
        )
        parser.add_argument("--rpm", type=_limit, help="Requests per minute (default: none).")
        parser.add_argument("--tpm", type=_limit, help="Tokens per minute (default: none).")
        parser.add_argument(
            "--max-concurrent",
            type=_limit,
            dest="max_concurrent",
            help="Requests at once (default: none).",
        )

    def handle(self, *args, name: str, scope: str, **options):
        if ClientAPIKey.objects.filter(name=name).exists():
            raise CommandError(f"A key named {name!r} already exists; choose another name.")
        limits = KeyLimits(
            requests_per_minute=options.get("rpm"),
            tokens_per_minute=options.get("tpm"),
            max_concurrent=options.get("max_concurrent"),
        )
        row, raw_key = client_key_issue(name=name, scope=scope, limits=limits)
        self.stderr.write(f"Issued {row.scope} key {row.name!r} ({row.prefix}...). Store it now.")
        self.stdout.write(raw_key)
