"""``manage.py revoke_api_key NAME``: stop a client key from working."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from plugins_api.access.key_changes import client_key_revoke
from plugins_api.models import ClientAPIKey


class Command(BaseCommand):
    help = "Revoke a client API key by name."

    def add_arguments(self, parser):
        parser.add_argument("name")

    def handle(self, *args, name: str, **options):
        try:
            row = client_key_revoke(name=name)
        except ClientAPIKey.DoesNotExist:
            raise CommandError(f"No key named {name!r}.") from None
        self.stdout.write(f"Revoked {row.name!r} ({row.prefix}...).")
