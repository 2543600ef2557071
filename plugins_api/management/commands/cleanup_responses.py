"""``manage.py cleanup_responses``: delete stored ``/v1/responses`` answers past their retention."""

from __future__ import annotations

from django.core.management.base import BaseCommand

from plugins_api.compat.responses_store import retention_days, stored_responses_expire


class Command(BaseCommand):
    help = (
        "Delete responses stored by POST /v1/responses that are older than "
        "ECHO_RESPONSES_RETENTION_DAYS (default 30). Run it daily."
    )

    def handle(self, *args, **options):
        deleted = stored_responses_expire()
        self.stdout.write(
            f"Deleted {deleted} stored response(s) older than {retention_days()} day(s)."
        )
