"""``manage.py issue_api_key NAME --scope chat|admin``: print a new client key, once."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from plugins_api.access.client_keys import client_key_issue
from plugins_api.models import ClientAPIKey


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

    def handle(self, *args, name: str, scope: str, **options):
        if ClientAPIKey.objects.filter(name=name).exists():
            raise CommandError(f"A key named {name!r} already exists; choose another name.")
        row, raw_key = client_key_issue(name=name, scope=scope)
        self.stderr.write(f"Issued {row.scope} key {row.name!r} ({row.prefix}...). Store it now.")
        self.stdout.write(raw_key)
