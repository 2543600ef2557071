"""Import providers from the YAML configuration into the database, never over an admin's edit.

The import remembers what it wrote: ``ProviderConfig.import_fingerprint`` is
a keyed hash (HMAC under SECRET_KEY) of the values it last saved. A row that still hashes to it is the
import's own and follows the file (the YAML changed, or a variable was set
since). A row that does not was created or edited outside the import (the
admin, the API); where it differs from the file, the difference is reported
as a conflict and the row is kept, unless the caller asks to overwrite it.

Writes go through ``providers.config.services``, so validation, the candidate
instance, the revision and the reload in every worker happen as for every
other change; a provider imported disabled because a variable is unset may
lack its required keys, which the services accept for a disabled provider.
When only secrets are missing, their names are kept in
``ProviderConfig.missing_secrets``: whoever supplies them later (the admin,
either API) enables the provider. ``manage.py sync_providers`` is the
command in front of this module.

A provider's ``routing_priority`` (``ai_providers.<name>.routing_priority``)
is imported like its other fields. The ``model_groups:`` section (read by
``load_model_group_entries``, imported by ``sync_model_groups``) follows
the same rules: a group the import wrote and no one edited since follows
the file, one edited in the admin or the API is a conflict unless
overwritten, and groups not in the file are left alone::

    model_groups:
      fast:
        strategy: weighted          # or least_busy, lowest_latency
        deployments:
          - {provider: openai, model: gpt-4o-mini, weight: 3}
          - {provider: anthropic, model: claude-3-5-haiku-latest, weight: 1}
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
from collections import Counter
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils.crypto import constant_time_compare, salted_hmac

from providers.audit.history import SOURCE_YAML_IMPORT, Actor
from providers.base import secret_fields
from providers.config import services
from providers.config.files import (
    ModelGroupEntry,
    ProviderEntry,
)
from providers.errors import ProviderConfigError, ProviderError, ProviderNotFoundError
from providers.models import DEFAULT_ROUTING_PRIORITY, ModelGroup, ProviderConfig

IMPORT_ACTOR = Actor(name="sync_providers", source=SOURCE_YAML_IMPORT)
UNREADABLE_SECRETS = "secrets: the stored ones cannot be decrypted with ECHO_ENCRYPTION_KEYS"
FILE_DISABLED_REASON = "The configuration file sets enabled: false."
SHOWN_VALUE_LENGTH = 60


class Outcome(StrEnum):
    """What the import did with one provider."""

    CREATED = "created"
    UPDATED = "updated"
    UNCHANGED = "unchanged"
    CONFLICT = "conflict"
    OVERWRITTEN = "overwritten"
    ERROR = "error"
    NOT_IN_FILE = "not in file"


@dataclass(slots=True)
class ProviderSyncResult:
    """The import's outcome for one provider, with what differs and why.

    DIFFERENCES are readable lines, one per field, that never hold a secret
    value. DISABLED_REASON is set when the provider the import left in the
    database is disabled by the file (an unset variable, ``enabled: false``).
    CONFLICT_CAUSE says why a conflict was kept rather than imported.
    """

    name: str
    outcome: Outcome
    differences: list[str] = field(default_factory=list)
    errors: dict[str, list[str]] = field(default_factory=dict)
    disabled_reason: str = ""
    notes: list[str] = field(default_factory=list)
    conflict_cause: str = ""


@dataclass(slots=True)
class SyncReport:
    """What one import did (or, for a dry run, would do), provider by provider."""

    results: list[ProviderSyncResult]
    dry_run: bool = False
    overwrite: bool = False
    #: What the results are of, for the summary line ("provider", "model group").
    noun: str = "provider"

    def get(self, name: str) -> ProviderSyncResult:
        """Return the result for provider NAME; raise ``KeyError`` when it has none."""
        for result in self.results:
            if result.name == name:
                return result
        raise KeyError(name)

    @property
    def has_errors(self) -> bool:
        return any(r.outcome == Outcome.ERROR for r in self.results)

    def render(self) -> list[str]:
        """Return the report as lines for a terminal; no line holds a secret."""
        lines = []
        if self.dry_run:
            lines.append("Dry run: nothing is saved. The import would do this:")
        for result in self.results:
            lines.extend(_render_result(result))
        counts = Counter(r.outcome for r in self.results)
        summary = ", ".join(f"{counts[o]} {o.value}" for o in Outcome if counts[o])
        noun = self.noun if len(self.results) == 1 else f"{self.noun}s"
        lines.append(f"{len(self.results)} {noun}: {summary or 'none'}.")
        if counts[Outcome.CONFLICT] and not self.overwrite:
            lines.append(
                "Conflicts keep the database's values; "
                "'sync_providers --overwrite' replaces them with the file's."
            )
        return lines


_HEADLINES = {
    Outcome.CREATED: "created",
    Outcome.UPDATED: "updated from the file (no one had edited it since the last import)",
    Outcome.UNCHANGED: "unchanged",
    Outcome.OVERWRITTEN: "overwritten with the file's values",
    Outcome.ERROR: "not imported, the file's entry is invalid",
    Outcome.NOT_IN_FILE: "not in the file; left as it is",
}


def _render_result(result: ProviderSyncResult) -> list[str]:
    if result.outcome == Outcome.CONFLICT:
        headline = f"conflict: {result.conflict_cause}; kept as it is"
    else:
        headline = _HEADLINES[result.outcome]
    lines = [f"{result.name}: {headline}."]
    if result.disabled_reason:
        lines[0] += f" Disabled: {result.disabled_reason}"
    lines.extend(f"    {line}" for line in result.differences)
    for key, messages in result.errors.items():
        lines.append(f"    {key}: {' '.join(messages)}")
    lines.extend(f"    {note}" for note in result.notes)
    return lines


@dataclass(frozen=True, slots=True)
class ImportedValues:
    """The fields of a ProviderConfig that the import writes, and their fingerprint."""

    plugin: str
    enabled: bool
    is_default: bool
    fallbacks: list[str]
    settings: dict[str, Any]
    secrets: dict[str, Any]
    disabled_reason: str
    # Not fingerprinted (``canonical`` leaves it out): it follows from the
    # variables, which the reason already names.
    missing_secrets: tuple[str, ...] = ()
    # Fingerprinted only when not the default, so that rows imported before
    # the field existed still count as the import's own.
    routing_priority: int = DEFAULT_ROUTING_PRIORITY

    @classmethod
    def from_row(cls, row: ProviderConfig) -> ImportedValues:
        return cls(
            plugin=row.plugin,
            enabled=row.enabled,
            is_default=row.is_default,
            fallbacks=list(row.fallbacks or []),
            settings=dict(row.settings or {}),
            # Unreadable secrets count as none: the import then replaces them, or says so.
            secrets=dict(row.readable_secrets() or {}),
            # A reason on an enabled row means nothing; the services clear it.
            disabled_reason="" if row.enabled else row.disabled_reason,
            missing_secrets=tuple(row.missing_secrets or ()) if not row.enabled else (),
            routing_priority=row.routing_priority,
        )

    def canonical(self) -> bytes:
        """Return these values as canonical JSON: the same values, the same bytes."""
        values = dataclasses.asdict(self)
        del values["missing_secrets"]  # fingerprints made before the field must still match
        if values["routing_priority"] == DEFAULT_ROUTING_PRIORITY:
            del values["routing_priority"]  # the same, for rows imported before it existed
        return json.dumps(
            values, sort_keys=True, separators=(",", ":"), ensure_ascii=False
        ).encode()

    def fingerprint(self) -> str:
        """Return the HMAC-SHA256 of these values keyed by SECRET_KEY, as ``h1:<base64url>``.

        The values include the plaintext secrets: a plain hash would let anyone
        with a database dump test guesses of a key offline. Keyed, it is stable
        for as long as SECRET_KEY is, which is what "no one edited it since the
        import" needs.
        """
        return _keyed_fingerprint(self.canonical(), settings.SECRET_KEY)

    def matches(self, stored: str) -> bool:
        """Return whether STORED is the fingerprint of these values.

        A fingerprint made with a key of SECRET_KEY_FALLBACKS matches too, so
        that rotating SECRET_KEY does not make every imported row look edited.
        """
        if not stored.startswith(FINGERPRINT_PREFIX):
            return False
        canonical = self.canonical()
        keys = [settings.SECRET_KEY, *getattr(settings, "SECRET_KEY_FALLBACKS", [])]
        return any(constant_time_compare(stored, _keyed_fingerprint(canonical, k)) for k in keys)


FINGERPRINT_PREFIX = "h1:"
FINGERPRINT_SALT = "providers.config.yaml_import.ImportedValues.fingerprint"


def _keyed_fingerprint(canonical: bytes, secret: str) -> str:
    digest = salted_hmac(FINGERPRINT_SALT, canonical, secret=secret, algorithm="sha256").digest()
    return FINGERPRINT_PREFIX + base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def _replace_unkeyed_fingerprint(row: ProviderConfig, current: ImportedValues) -> None:
    """Replace ROW's fingerprint of the old unkeyed form (a bare sha256 of its values).

    One that still matches CURRENT (no one edited the row since) becomes its
    keyed fingerprint; one that does not becomes a keyed one that matches no
    values, so the row still counts as edited since the import. Either way
    the guessable hash leaves the database.
    """
    stored = row.import_fingerprint
    if not stored or stored.startswith(FINGERPRINT_PREFIX):
        return
    if constant_time_compare(stored, hashlib.sha256(current.canonical()).hexdigest()):
        replacement = current.fingerprint()
    else:
        replacement = _keyed_fingerprint(b"edited since:" + stored.encode(), settings.SECRET_KEY)
    ProviderConfig.objects.filter(pk=row.pk).update(import_fingerprint=replacement)
    row.import_fingerprint = replacement


def sync_provider_configs(
    *, entries: list[ProviderEntry], dry_run: bool = False, overwrite: bool = False
) -> SyncReport:
    """Bring the database's providers in line with ENTRIES, keeping every outside edit.

    A provider missing from the database is created; one the import wrote
    and no one edited since follows the file; one edited outside the import
    that differs from the file is a conflict and is kept, unless OVERWRITE.
    An entry that refers to an unset variable is imported disabled, with
    the reason. An invalid entry is reported and changes nothing; the other
    entries are still imported. Providers that are not in ENTRIES are left
    alone. With DRY_RUN, return the same report and save nothing.
    """
    order = {entry.name: index for index, entry in enumerate(entries)}
    results: list[ProviderSyncResult] = []
    # One transaction for the whole sync, so that the providers reload once
    # it commits, and a dry run is this same code rolled back: its report
    # cannot drift from what a real run does. Each entry runs in a savepoint,
    # so an entry that fails rolls back alone.
    with transaction.atomic():
        # The default provider goes last: by then every entry that gives the
        # default up has, so a row still holding it was chosen outside the import.
        for entry in sorted(entries, key=lambda e: e.is_default):
            results.append(_sync_entry(entry, overwrite=overwrite))
        results.sort(key=lambda r: order[r.name])
        others = ProviderConfig.objects.exclude(name__in=list(order)).values_list("name", flat=True)
        results.extend(ProviderSyncResult(name, Outcome.NOT_IN_FILE) for name in others)
        if dry_run:
            transaction.set_rollback(True)
    return SyncReport(results=results, dry_run=dry_run, overwrite=overwrite)


def _sync_entry(entry: ProviderEntry, *, overwrite: bool) -> ProviderSyncResult:
    """Import one entry inside its own savepoint; return what happened."""
    try:
        desired = _desired_values(entry)
    except ProviderConfigError as exc:
        return ProviderSyncResult(entry.name, Outcome.ERROR, errors=exc.errors)
    row = ProviderConfig.objects.filter(name=entry.name).first()
    try:
        with transaction.atomic():
            return _apply(entry.name, row, desired, overwrite=overwrite)
    except ProviderConfigError as exc:
        # The services validate again; whatever they refuse changed nothing.
        return ProviderSyncResult(entry.name, Outcome.ERROR, errors=exc.errors)
    except ProviderError as exc:
        # Its provider could not start (a key refused, say): nothing was saved.
        return ProviderSyncResult(
            entry.name, Outcome.ERROR, errors={exc.field or "config": [exc.message]}
        )


def _apply(
    name: str,
    row: ProviderConfig | None,
    desired: ImportedValues,
    *,
    overwrite: bool,
) -> ProviderSyncResult:
    """Create, update or keep ROW (None when missing) as DESIRED says; return the outcome."""
    reason = desired.disabled_reason
    holder = None if overwrite or not desired.is_default else _default_holder(name)
    notes = []
    written = desired
    if holder is not None:
        # Taking the default from a provider chosen outside the import would
        # silently undo an admin's choice: keep it, and say so.
        written = dataclasses.replace(desired, is_default=False)
        notes.append(
            f"Not made the default: {holder!r} is the default provider, chosen outside the "
            f"import; 'sync_providers --overwrite' makes {name!r} the default."
        )

    if row is None:
        _write(name, None, written)
        return ProviderSyncResult(name, Outcome.CREATED, disabled_reason=reason, notes=notes)

    current = ImportedValues.from_row(row)
    _replace_unkeyed_fingerprint(row, current)
    differences = _differences(current, desired)
    unreadable = row.readable_secrets() is None
    if unreadable:
        # Compared with nothing, every secret would look "not in the database".
        differences = [UNREADABLE_SECRETS] + [
            line for line in differences if not line.startswith("secrets.")
        ]
    if not differences:
        if row.import_fingerprint != current.fingerprint():
            # The row already says what the file says (an admin made the same
            # change, or created it so), or was fingerprinted under a key now
            # only in SECRET_KEY_FALLBACKS: from now on it follows the file.
            ProviderConfig.objects.filter(pk=row.pk).update(
                import_fingerprint=current.fingerprint()
            )
        return ProviderSyncResult(name, Outcome.UNCHANGED, disabled_reason=reason)

    owned = not unreadable and current.matches(row.import_fingerprint)
    if owned:
        if written == current:
            # Only the default differs, and it stays where the admin put it.
            return ProviderSyncResult(
                name,
                Outcome.CONFLICT,
                differences=differences,
                notes=notes,
                conflict_cause="the default provider was chosen outside the import",
            )
        _write(name, row, written)
        return ProviderSyncResult(
            name, Outcome.UPDATED, differences=differences, disabled_reason=reason, notes=notes
        )
    if not overwrite:
        return ProviderSyncResult(
            name,
            Outcome.CONFLICT,
            differences=differences,
            conflict_cause=(
                "its stored secrets cannot be decrypted"
                if unreadable
                else (
                    "created outside the import"
                    if row.import_fingerprint == ""
                    else "edited since the last import"
                )
                + " and differs from the file"
            ),
        )
    _write(name, row, written)
    return ProviderSyncResult(
        name, Outcome.OVERWRITTEN, differences=differences, disabled_reason=reason
    )


def _desired_values(entry: ProviderEntry) -> ImportedValues:
    """Return the values ENTRY asks for.

    Raise ``ProviderConfigError`` naming each bad field. A required key left
    out because its variable is unset is excused: the provider is imported
    disabled and saying why, not refused.
    """
    # YAML null means "not set": the services would store None on create
    # but drop the key on update, so it is dropped here.
    config = {k: v for k, v in entry.config.items() if v is not None}
    priority = _routing_priority(config.pop("routing_priority", DEFAULT_ROUTING_PRIORITY))
    if priority is None:
        raise ProviderConfigError(
            "Invalid provider configuration.",
            errors={"routing_priority": [services.ROUTING_PRIORITY_MESSAGE]},
        )
    errors = _json_errors(config)
    if errors:
        raise ProviderConfigError("Invalid provider configuration.", errors=errors)
    try:
        settings, secrets = services.split_config(entry.plugin, config)
    except ProviderNotFoundError as exc:
        raise ProviderConfigError(exc.message, errors={"plugin": [exc.message]}) from None
    enabled = entry.enabled and not entry.missing_variables
    if entry.missing_variables:
        reason = _missing_variables_reason(entry.missing_variables)
    elif not entry.enabled:
        reason = FILE_DISABLED_REASON
    else:
        reason = ""
    errors = services.provider_config_errors(
        plugin=entry.plugin,
        settings=settings,
        secrets=secrets,
        fallbacks=entry.fallbacks,
        name=entry.name,
    )
    # A key absent from the config can only fail as "required", so these
    # errors are exactly the ones the unset variables caused.
    excusable = {k for k in entry.unset_keys if k not in config}
    errors = {k: v for k, v in errors.items() if k not in excusable}
    if errors:
        raise ProviderConfigError("Invalid provider configuration.", errors=errors)
    secret_names = secret_fields(services.plugin_schema(entry.plugin))
    # Disabled only for want of secrets: supplying them later enables it. A
    # file that says enabled: false, or an unset setting, keeps it disabled.
    only_secrets = entry.enabled and all(k in secret_names for k in entry.unset_keys)
    values = ImportedValues(
        plugin=entry.plugin,
        enabled=enabled,
        is_default=entry.is_default,
        fallbacks=list(entry.fallbacks),
        settings=settings,
        secrets=secrets,
        disabled_reason=reason,
        missing_secrets=tuple(sorted(entry.unset_keys)) if only_secrets and not enabled else (),
        routing_priority=priority,
    )
    return values


def _routing_priority(value: Any) -> int | None:
    """Return VALUE as a routing priority (a ``${VAR}`` gives digits as text), or None when it is not one."""
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    return None if services.routing_priority_problem(value) else value


def _json_errors(config: dict[str, Any]) -> dict[str, list[str]]:
    """Return the keys of CONFIG whose values JSON cannot hold (YAML dates, say)."""
    errors = {}
    for key, value in config.items():
        try:
            json.dumps(value)
        except (TypeError, ValueError):
            errors[key] = ["Must be text, a number, true/false, a list or a mapping (quote dates)."]
    return errors


def _missing_variables_reason(names: list[str]) -> str:
    if len(names) == 1:
        return f"Environment variable {names[0]} is not set."
    return f"Environment variables {', '.join(names[:-1])} and {names[-1]} are not set."


def _default_holder(name: str) -> str | None:
    """Return the provider other than NAME that is the default now, if any."""
    return (
        ProviderConfig.objects.filter(is_default=True)
        .exclude(name=name)
        .values_list("name", flat=True)
        .first()
    )


def _write(name: str, row: ProviderConfig | None, values: ImportedValues) -> ProviderConfig:
    """Save VALUES as provider NAME and remember their fingerprint."""
    if row is None:
        row = services.provider_config_create(
            name=name,
            plugin=values.plugin,
            settings=values.settings,
            secrets=values.secrets,
            enabled=values.enabled,
            is_default=values.is_default,
            fallbacks=values.fallbacks,
            disabled_reason=values.disabled_reason,
            missing_secrets=values.missing_secrets,
            routing_priority=values.routing_priority,
            actor=IMPORT_ACTOR,
        )
    else:
        # The file holds the whole configuration: it replaces settings and secrets.
        row = services.provider_config_update(
            config=row,
            changes={
                "plugin": values.plugin,
                "enabled": values.enabled,
                "is_default": values.is_default,
                "fallbacks": values.fallbacks,
                "settings": values.settings,
                "secrets": values.secrets,
                "replace_settings": True,
                "replace_secrets": True,
                "disabled_reason": values.disabled_reason,
                "missing_secrets": list(values.missing_secrets),
                "routing_priority": values.routing_priority,
            },
            actor=IMPORT_ACTOR,
        )
    # Hash the row as saved, so that the next sync's "no one edited it"
    # compares like with like.
    row.refresh_from_db()
    fingerprint = ImportedValues.from_row(row).fingerprint()
    ProviderConfig.objects.filter(pk=row.pk).update(import_fingerprint=fingerprint)
    return row


def _differences(current: ImportedValues, wanted: ImportedValues) -> list[str]:
    """Return one line per field where CURRENT (the database) and WANTED (the file) differ."""
    lines = []
    for label, attr in (
        ("plugin", "plugin"),
        ("enabled", "enabled"),
        ("default provider", "is_default"),
        ("fallbacks", "fallbacks"),
        ("disabled reason", "disabled_reason"),
        ("routing priority", "routing_priority"),
    ):
        old, new = getattr(current, attr), getattr(wanted, attr)
        if attr == "disabled_reason" and current.enabled != wanted.enabled:
            continue  # follows from "enabled", which is already shown
        if old != new:
            lines.append(f"{label}: {_shown(old)} in the database, {_shown(new)} in the file")
    # Settings are not secret by their plugin's schema; a key that only looks
    # secret by name (another plugin's, an unknown one) is masked all the same.
    names = set(current.settings) | set(wanted.settings)
    looks_secret = secret_fields({"properties": {k: {} for k in names}})
    for key in sorted(names):
        old, new = current.settings.get(key), wanted.settings.get(key)
        if old == new:
            continue
        if key in looks_secret:
            lines.append(
                f"settings.{key}: {_secret_difference(key, current.settings, wanted.settings)}"
            )
        else:
            lines.append(
                f"settings.{key}: {_shown(old, key in current.settings)} in the database, "
                f"{_shown(new, key in wanted.settings)} in the file"
            )
    for key in sorted(set(current.secrets) | set(wanted.secrets)):
        if current.secrets.get(key) != wanted.secrets.get(key):
            lines.append(
                f"secrets.{key}: {_secret_difference(key, current.secrets, wanted.secrets)}"
            )
    return lines


def _secret_difference(key: str, current: dict[str, Any], wanted: dict[str, Any]) -> str:
    if key not in wanted:
        return "set in the database, not in the file"
    if key not in current:
        return "set in the file, not in the database"
    return "differs (values not shown)"


def _shown(value: Any, present: bool = True) -> str:
    """Return VALUE as short JSON for a report line."""
    if not present:
        return "unset"
    if isinstance(value, bool):
        return "yes" if value else "no"
    text = json.dumps(value, ensure_ascii=False, sort_keys=True)
    if len(text) > SHOWN_VALUE_LENGTH:
        text = text[: SHOWN_VALUE_LENGTH - 3] + "..."
    return text


# --- model groups -------------------------------------------------------------------

GROUP_FINGERPRINT_SALT = "providers.config.yaml_import.model_group"


def _group_values(strategy: Any, deployments: Any, enabled: Any) -> dict[str, Any]:
    return {"strategy": strategy, "deployments": deployments, "enabled": enabled}


def _group_fingerprint(values: dict[str, Any], secret: str | None = None) -> str:
    canonical = json.dumps(values, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    digest = salted_hmac(
        GROUP_FINGERPRINT_SALT,
        canonical.encode(),
        secret=secret or settings.SECRET_KEY,
        algorithm="sha256",
    ).digest()
    return FINGERPRINT_PREFIX + base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def _group_owned(values: dict[str, Any], stored: str) -> bool:
    """Return whether STORED is the import's fingerprint of VALUES (under any current key)."""
    if not stored.startswith(FINGERPRINT_PREFIX):
        return False
    keys = [settings.SECRET_KEY, *getattr(settings, "SECRET_KEY_FALLBACKS", [])]
    return any(constant_time_compare(stored, _group_fingerprint(values, k)) for k in keys)


def sync_model_groups(
    *, entries: list[ModelGroupEntry], dry_run: bool = False, overwrite: bool = False
) -> SyncReport:
    """Bring the database's model groups in line with ENTRIES, keeping every outside edit.

    The rules of ``sync_provider_configs``: a missing group is created, one
    the import wrote and no one edited since follows the file, one edited
    outside the import that differs is a conflict (kept unless OVERWRITE);
    an invalid entry (or one whose ``${VAR}`` is unset) is reported and
    changes nothing; groups not in ENTRIES are left alone. Import the
    providers first: deployments must name configured providers. With
    DRY_RUN, return the same report and save nothing.
    """
    order = {entry.name: index for index, entry in enumerate(entries)}
    results: list[ProviderSyncResult] = []
    with transaction.atomic():
        for entry in entries:
            results.append(_sync_group_entry(entry, overwrite=overwrite))
        others = ModelGroup.objects.exclude(name__in=list(order)).values_list("name", flat=True)
        results.extend(ProviderSyncResult(name, Outcome.NOT_IN_FILE) for name in others)
        if dry_run:
            transaction.set_rollback(True)
    return SyncReport(results=results, dry_run=dry_run, overwrite=overwrite, noun="model group")


def _sync_group_entry(entry: ModelGroupEntry, *, overwrite: bool) -> ProviderSyncResult:
    """Import one model group inside its own savepoint; return what happened."""
    if entry.missing_variables:
        reason = _missing_variables_reason(entry.missing_variables)
        return ProviderSyncResult(entry.name, Outcome.ERROR, errors={"model_groups": [reason]})
    deployments, errors = services.model_group_errors(
        name=entry.name,
        strategy=entry.strategy,
        deployments=entry.deployments,
        enabled=entry.enabled,
    )
    if errors:
        return ProviderSyncResult(entry.name, Outcome.ERROR, errors=errors)
    wanted = _group_values(entry.strategy, deployments, entry.enabled)
    row = ModelGroup.objects.filter(name=entry.name).first()
    try:
        with transaction.atomic():
            return _apply_group(entry.name, row, wanted, overwrite=overwrite)
    except ProviderError as exc:
        return ProviderSyncResult(
            entry.name,
            Outcome.ERROR,
            errors=getattr(exc, "errors", None) or {"model_groups": [exc.message]},
        )


def _apply_group(
    name: str, row: ModelGroup | None, wanted: dict[str, Any], *, overwrite: bool
) -> ProviderSyncResult:
    if row is None:
        row = services.model_group_create(name=name, actor=IMPORT_ACTOR, **wanted)
        ModelGroup.objects.filter(pk=row.pk).update(import_fingerprint=_group_fingerprint(wanted))
        return ProviderSyncResult(name, Outcome.CREATED)
    current = _group_values(row.strategy, list(row.deployments or []), row.enabled)
    differences = [
        f"{key}: {_shown(current[key])} in the database, {_shown(wanted[key])} in the file"
        for key in ("strategy", "deployments", "enabled")
        if current[key] != wanted[key]
    ]
    if not differences:
        if not _group_owned(current, row.import_fingerprint):
            # The database already says what the file says: from now on it follows the file.
            ModelGroup.objects.filter(pk=row.pk).update(
                import_fingerprint=_group_fingerprint(current)
            )
        return ProviderSyncResult(name, Outcome.UNCHANGED)
    owned = _group_owned(current, row.import_fingerprint)
    if not owned and not overwrite:
        cause = (
            "created outside the import"
            if row.import_fingerprint == ""
            else "edited since the last import"
        )
        return ProviderSyncResult(
            name,
            Outcome.CONFLICT,
            differences=differences,
            conflict_cause=f"{cause} and differs from the file",
        )
    services.model_group_update(group=row, changes=wanted, actor=IMPORT_ACTOR)
    ModelGroup.objects.filter(pk=row.pk).update(import_fingerprint=_group_fingerprint(wanted))
    outcome = Outcome.UPDATED if owned else Outcome.OVERWRITTEN
    return ProviderSyncResult(name, outcome, differences=differences)
