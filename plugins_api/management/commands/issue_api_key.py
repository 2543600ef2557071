"""``manage.py issue_api_key NAME --scope chat|admin [--rpm N] [--tpm N] [--max-concurrent N]
[--models 'openai/*,echo/*'] [--default-model provider/model] [--expires 2027-01-31]``.

Prints a new client key, once. The limits (``plugins_api.access.key_limits``)
are per key; left out, a limit is none. ``--models`` restricts the key to
``provider/model`` patterns (``plugins_api.access.key_model_access``; left
out: every model), ``--default-model`` is used when a call names no model,
and ``--expires`` (a date, or an ISO date-time; a date means its midnight in
the server's time zone) is when the key stops working. A bad value is a
``CommandError`` naming its option.
"""

from __future__ import annotations

import argparse
from datetime import datetime, time

from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from plugins_api.access.key_changes import client_key_issue
from plugins_api.access.key_limits import KeyLimits
from plugins_api.access.key_model_access import (
    ModelAccess,
    parse_default_model,
    parse_patterns,
)
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


#: Characters an --expires value may have (an ISO date-time is at most ~32).
MAX_EXPIRES_CHARS = 40


def parse_expires(text: str) -> datetime:
    """Return the aware moment TEXT (``YYYY-MM-DD`` or an ISO date-time) names, or raise ValueError."""
    text = text.strip()
    if not text or len(text) > MAX_EXPIRES_CHARS:
        raise ValueError("Give a date (YYYY-MM-DD) or an ISO date-time.")
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a date (YYYY-MM-DD) or an ISO date-time.") from None
    if len(text) == 10:  # a date alone: its midnight
        moment = datetime.combine(moment.date(), time.min)
    if timezone.is_naive(moment):
        moment = timezone.make_aware(moment)
    return moment


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
        parser.add_argument(
            "--models",
            help="Allowed models, comma-separated provider/model patterns such as "
            "'openai/*,echo/echo-1' (default: every model).",
        )
        parser.add_argument(
            "--default-model",
            dest="default_model",
            help="The provider/model used when a call names no model (default: routing's).",
        )
        parser.add_argument(
            "--expires",
            help="When the key stops working: YYYY-MM-DD (midnight) or an ISO date-time "
            "(default: never).",
        )

    def handle(self, *args, name: str, scope: str, **options):
        if ClientAPIKey.objects.filter(name=name).exists():
            raise CommandError(f"A key named {name!r} already exists; choose another name.")
        limits = KeyLimits(
            requests_per_minute=options.get("rpm"),
            tokens_per_minute=options.get("tpm"),
            max_concurrent=options.get("max_concurrent"),
        )
        access = self._access(options.get("models"), options.get("default_model"))
        expires_at = None
        if options.get("expires") is not None:
            try:
                expires_at = parse_expires(options["expires"])
            except ValueError as exc:
                raise CommandError(f"--expires: {exc}") from None
            if expires_at <= timezone.now():
                raise CommandError("--expires: the moment has passed; give a future date.")
        row, raw_key = client_key_issue(
            name=name, scope=scope, limits=limits, access=access, expires_at=expires_at
        )
        self.stderr.write(f"Issued {row.scope} key {row.name!r} ({row.prefix}...). Store it now.")
        self.stdout.write(raw_key)

    @staticmethod
    def _access(models: str | None, default_model: str | None) -> ModelAccess:
        """Return the model access the options name, or raise a CommandError naming the option."""
        try:
            patterns = parse_patterns(models)
        except ValueError as exc:
            raise CommandError(f"--models: {exc}") from None
        if models is not None and not patterns:
            raise CommandError("--models: name at least one provider/model pattern.")
        try:
            default = parse_default_model(default_model)
        except ValueError as exc:
            raise CommandError(f"--default-model: {exc}") from None
        return ModelAccess(patterns=patterns, default_model=default)
