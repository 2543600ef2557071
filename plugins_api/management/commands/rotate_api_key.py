"""``manage.py rotate_api_key NAME [--grace-hours H]``: give a client key a new secret.

Prints the new key alone on stdout, once (it is stored hashed). The former
secret keeps working for ``--grace-hours`` (0, the default, stops it at
once; at most ``key_changes.MAX_GRACE``), so that clients can move over.
The change is audited like every other (``key_changes.client_key_rotate``).
"""

from __future__ import annotations

import argparse
import math
from datetime import timedelta

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from plugins_api.access.key_changes import MAX_GRACE, client_key_rotate
from plugins_api.models import ClientAPIKey

MAX_GRACE_HOURS = MAX_GRACE.total_seconds() / 3600


def _grace_hours(text: str) -> float:
    """Parse a grace period in hours: a number from 0 to ``MAX_GRACE_HOURS`` (fractions allowed)."""
    try:
        hours = float(text) if len(text) <= 32 else math.nan
    except ValueError:
        hours = math.nan
    if not 0 <= hours <= MAX_GRACE_HOURS:  # NaN fails too
        raise argparse.ArgumentTypeError(
            f"{text[:32]!r}: give a number of hours from 0 to {MAX_GRACE_HOURS:g}."
        )
    return hours


class Command(BaseCommand):
    help = (
        "Give a client API key a new secret and print it alone on stdout. The former "
        "secret keeps working for --grace-hours (default 0: it stops at once)."
    )

    def add_arguments(self, parser):
        parser.add_argument("name", help="The key's name.")
        parser.add_argument(
            "--grace-hours",
            dest="grace_hours",
            type=_grace_hours,
            default=0.0,
            help=f"Hours the former secret keeps working, 0 to {MAX_GRACE_HOURS:g} (default 0).",
        )

    def handle(self, *args, name: str, grace_hours: float = 0.0, **options):
        grace = min(timedelta(hours=grace_hours), MAX_GRACE)
        try:
            row, raw_key = client_key_rotate(name=name, grace=grace)
        except ClientAPIKey.DoesNotExist:
            raise CommandError(f"No key named {name!r}.") from None
        except ValidationError as exc:
            messages = exc.message_dict if hasattr(exc, "error_dict") else {"": exc.messages}
            if "grace_seconds" in messages:
                message = " ".join(messages["grace_seconds"])
                raise CommandError(f"--grace-hours: {message}") from None
            raise CommandError(" ".join(m for ms in messages.values() for m in ms)) from None
        if row.previous_key_expires_at is None:
            former = "The former key stopped working now."
        else:
            former = f"The former key works until {row.previous_key_expires_at.isoformat()}."
        self.stderr.write(
            f"Rotated {row.name!r} ({row.prefix}...). {former} Store the new key now."
        )
        self.stdout.write(raw_key)
