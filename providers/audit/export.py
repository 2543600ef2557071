"""The audit trail as auditors take it away: JSON records and CSV, one row per changed field.

One record shape serves the API, its exports and the admin's exports::

    {"id", "changed_at", "provider", "action", "actor", "source",
     "remote_addr", "changes": [{"field", "before", "after", "secret"?, "changed"?}]}

``changed_at`` is ISO 8601 in UTC. Secrets in ``changes`` are masks already
(``providers.audit.history``); nothing here can unmask them.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
from collections.abc import Iterable
from typing import Any

from providers.models import ProviderConfigChange

CSV_COLUMNS = (
    "changed_at",
    "provider",
    "action",
    "actor",
    "source",
    "remote_addr",
    "field",
    "before",
    "after",
    "secret",
)
# A spreadsheet runs a cell that starts with one of these as a formula.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def iso_utc(moment: dt.datetime) -> str:
    """Return MOMENT as ISO 8601 in UTC, ending in ``Z``."""
    return moment.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


def change_record(change: ProviderConfigChange) -> dict[str, Any]:
    """Return CHANGE as the audit trail's one record shape."""
    return {
        "id": change.pk,
        "changed_at": iso_utc(change.changed_at),
        "provider": change.provider_name,
        "action": change.action,
        "actor": change.actor,
        "source": change.source,
        "remote_addr": change.remote_addr,
        "changes": list(change.changes or []),
    }


def records_json(records: Iterable[dict[str, Any]]) -> str:
    """Return RECORDS as a JSON array."""
    return json.dumps(list(records), indent=2, ensure_ascii=False) + "\n"


def _cell(value: Any) -> str:
    """Return VALUE as a CSV cell that a spreadsheet shows as text, never runs."""
    text = "" if value is None else str(value)
    if text.startswith(FORMULA_STARTS):
        return "'" + text
    return text


def _value(value: Any) -> str:
    # JSON keeps null, "" and "1" apart from 1: an auditor must tell "removed" from "emptied".
    return json.dumps(value, ensure_ascii=False, sort_keys=True)


def records_csv(records: Iterable[dict[str, Any]]) -> str:
    """Return RECORDS as CSV with ``CSV_COLUMNS``: one row per changed field.

    ``before`` and ``after`` are JSON values; ``secret`` is ``true`` for a
    secret's row, whose values are masks. An entry without field changes
    still gets one row, so that none goes missing.
    """
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(CSV_COLUMNS)
    for record in records:
        head = [
            record["changed_at"],
            record["provider"],
            record["action"],
            record["actor"],
            record["source"],
            record["remote_addr"],
        ]
        head = [_cell(value) for value in head]
        for change in record["changes"] or [{}]:
            field = change.get("field", "")
            if not field:
                writer.writerow([*head, "", "", "", ""])
                continue
            # A JSON value starts with a quote, a bracket, a digit, "-" (a number,
            # harmless) or a literal: it cannot be a formula, and stays as it is.
            writer.writerow(
                [
                    *head,
                    _cell(field),
                    _value(change.get("before")),
                    _value(change.get("after")),
                    "true" if change.get("secret") else "false",
                ]
            )
    return buffer.getvalue()


def export_filename(provider: str | None, extension: str) -> str:
    """Return the download's file name: which provider's history, and when it was taken."""
    stamp = dt.datetime.now(tz=dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    scope = f"-{provider}" if provider else ""
    return f"echo-history{scope}-{stamp}.{extension}"
