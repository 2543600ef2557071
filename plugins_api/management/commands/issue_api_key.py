"""``manage.py issue_api_key NAME --scope chat|admin [--rpm N] [--tpm N] [--max-concurrent N]
[--models 'openai/*,echo/*'] [--default-model provider/model] [--expires 2027-01-31]
[--budget USD] [--budget-period day|week|month] [--owner USERNAME]``.

Prints a new client key, once. The limits (``plugins_api.access.key_limits``)
are per key; left out, a limit is none. ``--models`` restricts the key to
``provider/model`` patterns (``plugins_api.access.key_model_access``; left
out: every model), ``--default-model`` is used when a call names no model,
and ``--expires`` (a date, or an ISO date-time; a date means its midnight in
the server's time zone) is when the key stops working. ``--budget`` caps
the key's spend in USD per ``--budget-period`` (a UTC day, a week from
Monday, or a month; default month), and ``--owner`` gives the key to a user,
who then sees it and its usage. A bad value is a ``CommandError`` naming its
option, whether the command or ``key_changes.validate_key`` finds it.
"""

from __future__ import annotations

import argparse
from datetime import datetime, time
from decimal import Decimal, InvalidOperation

from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
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


#: Characters a --budget value may have (the column holds 8 digits and 6 decimals).
MAX_BUDGET_CHARS = 32
#: The option that sets each field ``key_changes.validate_key`` may name.
OPTION_OF_FIELD = {
    "name": "NAME",
    "scope": "--scope",
    "requests_per_minute": "--rpm",
    "tokens_per_minute": "--tpm",
    "max_concurrent_requests": "--max-concurrent",
    "allowed_models": "--models",
    "default_model": "--default-model",
    "expires_at": "--expires",
    "budget_usd": "--budget",
    "budget_period": "--budget-period",
    "owner": "--owner",
}


def _budget(text: str) -> Decimal:
    """Parse a budget: a positive amount of USD such as 5 or 0.25."""
    try:
        value = Decimal(text.strip()) if len(text) <= MAX_BUDGET_CHARS else None
    except InvalidOperation:
        value = None
    if value is None or not value.is_finite() or value <= 0:
        raise argparse.ArgumentTypeError(
            f"{text[:MAX_BUDGET_CHARS]!r} is not a positive amount of USD (e.g. 5 or 0.25)."
        )
    return value


def command_error(exc: ValidationError) -> CommandError:
    """Return the CommandError that names the option behind each field EXC names."""
    if not hasattr(exc, "error_dict"):
        return CommandError("; ".join(exc.messages))
    parts = [
        f"{OPTION_OF_FIELD.get(field, field)}: {' '.join(messages)}"
        for field, messages in exc.message_dict.items()
    ]
    return CommandError("; ".join(parts))


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
        parser.add_argument(
            "--budget",
            type=_budget,
            help="Spend cap in USD per budget period, e.g. 5 or 0.25 (default: none).",
        )
        parser.add_argument(
            "--budget-period",
            dest="budget_period",
            choices=[period for period, _ in ClientAPIKey.BUDGET_PERIODS],
            default=ClientAPIKey.PERIOD_MONTH,
            help="The budget's period, in UTC: day, week (from Monday) or month (default).",
        )
        parser.add_argument(
            "--owner",
            help="The username of the user the key belongs to (default: none, admins only).",
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
        owner = self._owner(options.get("owner"))
        try:
            row, raw_key = client_key_issue(
                name=name,
                scope=scope,
                limits=limits,
                access=access,
                expires_at=expires_at,
                budget_usd=options.get("budget"),
                budget_period=options.get("budget_period") or ClientAPIKey.PERIOD_MONTH,
                owner=owner,
            )
        except ValidationError as exc:
            raise command_error(exc) from None
        self.stderr.write(f"Issued {row.scope} key {row.name!r} ({row.prefix}...). Store it now.")
        self.stdout.write(raw_key)

    @staticmethod
    def _owner(username: str | None):
        """Return the user called USERNAME (None: no owner), or raise a CommandError naming --owner."""
        if username is None:
            return None
        model = get_user_model()
        user = None
        if "\x00" not in username:  # PostgreSQL's text cannot hold one: no user has it
            user = model.objects.filter(**{model.USERNAME_FIELD: username}).first()
        if user is None:
            raise CommandError(f"--owner: no user named {username[:150]!r}.")
        return user

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
