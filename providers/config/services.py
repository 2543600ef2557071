"""Writes to provider configurations: the one path for every interface.

The admin, ``/api/providers/``, ``PUT /plugins/{name}/config``, ``POST
/plugins/{name}/reload`` with a config, the YAML import and the management
commands all call ``provider_config_create`` or ``provider_config_update``,
which, in this order:

1. merge the change into the stored row (``merge_provider_config``, the one
   place the merge rules live) and validate the result against the plugin's
   schema: ``ProviderConfigError`` (400) names every bad field;
2. when the result is enabled, build and initialize a candidate instance
   without serving it, then shut it down: a configuration whose provider
   cannot start is refused with ``ProviderInitializationError`` (409), its
   message masked against the new secrets;
3. save the row, its audit entry and ``revision + 1`` in one transaction,
   the row locked (``select_for_update``).

Nothing else: the post-save signal applies and publishes the committed
revision (``providers.runtime.config_sync``), so a save that fails leaves every
worker serving what it served, and writes no audit entry.

Stored secrets that no key in ECHO_ENCRYPTION_KEYS decrypts are never merged
with: a change that sends secrets replaces them all, one that sends none
keeps the ciphertext as it is (a key added back may still open it), and a
change that would leave the provider enabled without sending secrets is
refused, naming ``secrets``: it could not serve.

A provider the YAML import disabled only because secrets were missing
(``missing_secrets``) is enabled, and its reason cleared, by any change that
supplies all of them and does not itself say ``enabled: false``; a provider
an admin disabled stays disabled.

The fallbacks a write adds through the admin or an API (``/api/providers/``,
``/plugins/``) must name configured providers, and a ``provider/model`` one
a model that provider is known to serve (``fallback_target_errors``): the
same refusal, naming ``fallbacks`` and the item, wherever it comes from. The
YAML import is exempt: its providers name one another before all exist.

A provider's ``routing_priority`` (which provider answers a bare model name
that several serve) is one more field of the same write, audited as
``routing_priority``.

Model groups (``ModelGroup``: a public model name served by deployments)
are written here too: ``model_group_create``, ``model_group_update`` and
``model_group_delete`` validate (``model_group_errors`` names each bad field,
``deployments.0.weight`` and the like), save with ``revision + 1``, audit in
the providers' one trail (``ProviderConfigChange`` under the name
``group:<name>``, fields ``strategy``, ``deployments``, ``enabled``) in one
transaction, and after the commit have every worker serve the new groups
(``config_sync.model_groups_after_commit``).
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from django.db import transaction
from django.views.decorators.debug import sensitive_variables

from providers.audit.history import (
    SOURCE_ADMIN,
    SOURCE_API,
    SOURCE_PLUGINS_API,
    SYSTEM,
    Actor,
    record_change,
    snapshot,
)
from providers.base import secret_fields
from providers.errors import (
    ProviderConfigError,
    ProviderInitializationError,
    ProviderNotFoundError,
)
from providers.models import (
    DEFAULT_ROUTING_PRIORITY,
    MAX_ROUTING_PRIORITY,
    ModelGroup,
    ProviderConfig,
    ProviderConfigChange,
)
from providers.runtime import config_sync
from providers.runtime import process as runtime
from providers.runtime.model_groups import STRATEGIES, WEIGHTED
from providers.runtime.process import run_in_serving_loop
from providers.runtime.registry import ProviderSpec
from providers.secrets.box import DECRYPTION_FAILED
from providers.secrets.masking import mask_secret, redact
from providers.secrets.values import config_secret_values
from providers.upstream.policy import base_url_problem

logger = logging.getLogger(__name__)

FALLBACK_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}(/.+)?$")
NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
REQUIRED_MESSAGE = "This field is required."
# Words the management API uses after /plugins/: a provider so named could not be reached there.
RESERVED_NAMES = frozenset({"health", "metadata", "instances", "discover"})
#: The interfaces that write one provider at a time: the fallbacks they add must name
#: configured providers (and models those serve). Not the YAML import, whose providers
#: name one another (openai -> anthropic -> openai) before all of them exist.
FALLBACK_TARGET_SOURCES = frozenset({SOURCE_ADMIN, SOURCE_API, SOURCE_PLUGINS_API})
#: How long a fallback's check may wait for its provider's model list from the upstream.
FALLBACK_MODEL_LIST_SECONDS = 5.0
#: How many of a provider's models a refused fallback's message suggests.
FALLBACK_SUGGESTIONS = 5
#: How many refused fallbacks are named one by one, and how much of each is quoted.
FALLBACK_PROBLEMS_SHOWN = 10
FALLBACK_QUOTED_CHARS = 80
#: A model name longer than this is nobody's: refused without looking for close matches.
FALLBACK_MODEL_MAX_CHARS = 200


def plugin_schema(plugin: str) -> dict[str, Any]:
    """Return the normalized config schema of PLUGIN; raise ``ProviderNotFoundError``."""
    return runtime.registry.plugin(plugin).config_schema()


def split_config(plugin: str, config: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split a flat CONFIG into (settings, secrets) by PLUGIN's schema."""
    secret_names = secret_fields(plugin_schema(plugin))
    settings = {k: v for k, v in config.items() if k not in secret_names}
    secrets = {k: v for k, v in config.items() if k in secret_names}
    return settings, secrets


# Error reports show none of these locals: they hold plaintext secrets, new ones
# included (neither live nor stored yet, so no redaction would know them).
@sensitive_variables("secrets", "merged")
def provider_config_errors(
    *,
    plugin: str,
    settings: dict[str, Any],
    secrets: dict[str, Any],
    fallbacks: list[str] | tuple[str, ...] = (),
    name: str | None = None,
    enabled: bool = True,
) -> dict[str, list[str]]:
    """Return every problem with a provider configuration, per field (empty when valid).

    A disabled provider may lack required settings (its key's variable is
    unset, say); they are required again the moment it is enabled.
    """
    errors: dict[str, list[str]] = {}
    if name is not None and not NAME_PATTERN.match(name):
        errors["name"] = [
            "Use 1-64 lowercase letters, digits, '-' or '_', starting with a letter or digit."
        ]
    elif name in RESERVED_NAMES:
        errors["name"] = [f"{name!r} is reserved by the API; choose another name."]
    if not isinstance(fallbacks, (list, tuple)) or not all(isinstance(f, str) for f in fallbacks):
        errors["fallbacks"] = ["Must be a list of provider names ('name' or 'name/model')."]
    else:
        bad = [f for f in fallbacks if not FALLBACK_PATTERN.match(f)]
        if bad:
            # Quoted short, and only the first few: an error must not echo a huge body back.
            shown = ", ".join(_quoted(f) for f in bad[:FALLBACK_PROBLEMS_SHOWN])
            more = len(bad) - FALLBACK_PROBLEMS_SHOWN
            errors["fallbacks"] = [
                f"Not a provider name or 'name/model': {shown}"
                + (f" and {more} more." if more > 0 else ".")
            ]
        elif name is not None and any(f.split("/", 1)[0] == name for f in fallbacks):
            errors["fallbacks"] = ["A provider cannot fall back to itself."]
    if not isinstance(settings, dict):
        errors["settings"] = ["Must be an object."]
    if not isinstance(secrets, dict):
        errors["secrets"] = ["Must be an object."]
    if "settings" in errors or "secrets" in errors:
        return errors
    try:
        cls = runtime.registry.plugin(plugin)
    except ProviderNotFoundError as exc:
        errors["plugin"] = [exc.message]
        return errors
    schema = cls.config_schema()
    secret_names = secret_fields(schema)
    misplaced = sorted(k for k in settings if k in secret_names)
    for key in misplaced:
        errors[key] = ["This is a secret: send it in 'secrets', not 'settings'."]
    merged = {k: v for k, v in {**settings, **secrets}.items() if v is not None}
    for field, messages in cls.check_config(merged).items():
        if not enabled and messages == [REQUIRED_MESSAGE]:
            continue
        errors[field] = messages
    # Every plugin's upstream URLs obey the policy, not only HTTPProvider's
    # (which checks base_url itself, and each connection it opens).
    for field in url_settings(schema, merged):
        problem = None if field in errors else base_url_problem(merged[field])
        if problem:
            errors[field] = [problem]
    return errors


def fallback_target_errors(*, fallbacks: Sequence[str], stored: Sequence[str] = ()) -> list[str]:
    """Return what is wrong with each of FALLBACKS not already STORED, naming the item.

    ``name`` must name a configured provider. ``name/model`` must also name
    a model that provider is known to serve: one the model catalogue lists
    for it (its well-known models, its default model, a dated or tagged
    variant of one), or one its upstream lists (asked once, kept
    ``ECHO_MODEL_LIST_CACHE_SECONDS``). A provider this process does not
    serve (disabled, or not loaded) has no known list: any model is accepted
    for it. Items already stored are not checked again, so that a provider
    removed since, or a model list that changed, does not block unrelated edits.
    FALLBACKS must have passed ``provider_config_errors``'s shape check.
    """
    kept = set(stored)
    added = [item for item in dict.fromkeys(fallbacks) if item not in kept]
    if not added:
        return []
    wanted = {item.split("/", 1)[0] for item in added}
    configured = set(ProviderConfig.objects.filter(name__in=wanted).values_list("name", flat=True))
    problems: list[str] = []
    refused = 0
    for item in added:
        provider, _, model = item.partition("/")
        if provider not in configured:
            problem: str | None = (
                f"no provider named {provider!r} is configured. "
                "A fallback must name a configured provider."
            )
        else:
            problem = _fallback_model_problem(provider, model) if model else None
        if problem:
            refused += 1
            if refused <= FALLBACK_PROBLEMS_SHOWN:
                problems.append(f"{_quoted(item)}: {problem}")
    if refused > FALLBACK_PROBLEMS_SHOWN:
        problems.append(f"And {refused - FALLBACK_PROBLEMS_SHOWN} more fallbacks are refused.")
    return problems


def _quoted(text: str) -> str:
    """Return TEXT quoted for a message, cut to ``FALLBACK_QUOTED_CHARS``."""
    if len(text) > FALLBACK_QUOTED_CHARS:
        return repr(text[:FALLBACK_QUOTED_CHARS] + "...")
    return repr(text)


def _fallback_model_problem(provider: str, model: str) -> str | None:
    """Return why PROVIDER is not known to serve MODEL, or None when it is (or its list is unknown)."""
    if provider not in runtime.registry:
        return None  # disabled or not loaded here: what it serves is unknown
    if len(model) > FALLBACK_MODEL_MAX_CHARS:
        return f"the provider {provider!r} serves no model with so long a name."
    if provider in runtime.manager.catalogue.providers_for(model):
        return None
    try:
        listed = run_in_serving_loop(
            runtime.model_lists.models, provider, timeout=FALLBACK_MODEL_LIST_SECONDS
        )
    except Exception:  # noqa: BLE001 - the catalogue's answer stands
        logger.warning("the model list of %s could not be read for a fallback check", provider)
        listed = []
    if model in listed or provider in runtime.manager.catalogue.providers_for(model):
        return None
    known = sorted({*listed, *_catalogue_models(provider)})
    hint = difflib.get_close_matches(model, known, n=FALLBACK_SUGGESTIONS, cutoff=0.4)
    hint = hint or known[:FALLBACK_SUGGESTIONS]
    suggestion = f" Models it serves include: {', '.join(hint)}." if hint else ""
    return (
        f"the provider {provider!r} is not known to serve the model {_quoted(model)}.{suggestion}"
    )


def _catalogue_models(provider: str) -> list[str]:
    """Return the bare model names the catalogue lists for live PROVIDER."""
    catalogue = runtime.manager.catalogue
    return [name for name in catalogue.names() if provider in catalogue.providers_for(name)]


def url_settings(schema: dict[str, Any], config: dict[str, Any]) -> list[str]:
    """Return the keys of CONFIG that name an upstream URL: ``base_url``, ``*_url``, or ``format: uri``."""
    properties = schema.get("properties") or {}
    return [
        key
        for key, value in config.items()
        if isinstance(value, str)
        and (
            key == "base_url"
            or key.endswith("_url")
            or (properties.get(key) or {}).get("format") == "uri"
        )
    ]


def _raise_if(errors: dict[str, list[str]]) -> None:
    if errors:
        summary = "; ".join(f"{field}: {' '.join(msgs)}" for field, msgs in errors.items())
        raise ProviderConfigError(f"Invalid provider configuration: {summary}", errors=errors)


# --- the merge rules ----------------------------------------------------------


@sensitive_variables("secrets", "sent", "merged_secrets")
def merge_provider_config(
    *, settings: dict[str, Any], secrets: dict[str, Any] | None, changes: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Return (settings, secrets) after CHANGES: the one place the merge rules live.

    SETTINGS and SECRETS are the stored ones; SECRETS is None when no key
    decrypts them. ``changes["settings"]`` and ``changes["secrets"]`` are
    partial: their keys are merged into the stored ones and a None value
    removes a key. With ``replace_settings`` the settings sent are the whole
    settings (the others are removed); secrets are merged all the same, so a
    client that never saw them cannot wipe them, unless ``replace_secrets``
    (the YAML import, which holds the whole set). A secret sent back as the
    mask of the stored one (``sk-...f3a9``) keeps the stored one. Unreadable
    stored secrets are replaced whole when secrets are sent, and kept as
    they are (None returned) when none are.
    """
    sent_settings = changes.get("settings") or {}
    base = {} if changes.get("replace_settings") else dict(settings or {})
    merged_settings = _apply_partial(base, sent_settings)

    sent = dict(changes.get("secrets") or {})
    if secrets is None:
        return merged_settings, (_apply_partial({}, sent) if sent else None)
    for key, value in sent.items():
        # What a client read back is a mask, never the secret: sending it changes nothing.
        if key in secrets and value is not None and value == mask_secret(secrets[key]):
            sent[key] = secrets[key]
    merged_secrets = _apply_partial({} if changes.get("replace_secrets") else secrets, sent)
    return merged_settings, merged_secrets


def _apply_partial(current: dict[str, Any], partial: dict[str, Any]) -> dict[str, Any]:
    merged = dict(current)
    for key, value in partial.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = value
    return merged


# --- planning a write -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ProviderConfigPlan:
    """What a provider's row will hold once a write is saved (secrets in clear).

    SECRETS is None when the stored ones cannot be decrypted and the change
    keeps them as they are. Two equal changes save the same row, so a
    change checked once (the admin form's validation) need not be checked
    again by the save, unless another write landed in between.
    """

    name: str
    plugin: str
    enabled: bool
    is_default: bool
    fallbacks: tuple[str, ...]
    settings: dict[str, Any] = dataclasses.field(repr=False)
    secrets: dict[str, Any] | None = dataclasses.field(repr=False)
    disabled_reason: str = ""
    missing_secrets: tuple[str, ...] = ()
    routing_priority: int = DEFAULT_ROUTING_PRIORITY

    def spec(self) -> ProviderSpec | None:
        """Return the spec a worker will serve, or None when the provider will not serve."""
        if not self.enabled or self.secrets is None:
            return None
        return ProviderSpec(
            name=self.name,
            plugin=self.plugin,
            config={**self.settings, **self.secrets},
            fallbacks=self.fallbacks,
            is_default=self.is_default,
        )


UPDATABLE = {
    "plugin",
    "enabled",
    "is_default",
    "fallbacks",
    "settings",
    "secrets",
    "disabled_reason",
    "replace_settings",
    "replace_secrets",
    "missing_secrets",
    "routing_priority",
}
ROUTING_PRIORITY_MESSAGE = f"Must be a whole number from 0 to {MAX_ROUTING_PRIORITY}."


def routing_priority_problem(value: Any) -> str | None:
    """Return what is wrong with VALUE as a routing priority, or None."""
    if isinstance(value, bool) or not isinstance(value, int):
        return ROUTING_PRIORITY_MESSAGE
    if not 0 <= value <= MAX_ROUTING_PRIORITY:
        return ROUTING_PRIORITY_MESSAGE
    return None


def _check_shapes(changes: dict[str, Any]) -> None:
    unknown = sorted(set(changes) - UPDATABLE)
    if unknown:
        _raise_if({field: ["Unknown field."] for field in unknown})
    for key in ("settings", "secrets"):
        if key in changes and changes[key] is not None and not isinstance(changes[key], dict):
            _raise_if({key: ["Must be an object."]})
    missing = changes.get("missing_secrets", [])
    if not isinstance(missing, (list, tuple)) or not all(isinstance(m, str) for m in missing):
        _raise_if({"missing_secrets": ["Must be a list of secret names."]})
    if "routing_priority" in changes:
        problem = routing_priority_problem(changes["routing_priority"])
        if problem:
            _raise_if({"routing_priority": [problem]})


def _enablement(
    row: ProviderConfig, changes: dict[str, Any], secrets: dict[str, Any] | None
) -> tuple[bool, str, tuple[str, ...]]:
    """Return (enabled, disabled_reason, missing_secrets) of ROW after CHANGES."""
    if "missing_secrets" in changes:
        missing = tuple(changes["missing_secrets"])
    elif "enabled" in changes:
        missing = ()  # whoever says enabled now decides, not the import's reason
    else:
        missing = tuple(row.missing_secrets or ())
    if "enabled" in changes:
        enabled = bool(changes["enabled"])
    elif row.enabled:
        enabled = True
    else:
        # Disabled only for lack of secrets: supplying the last of them enables it.
        sent = changes.get("secrets") or {}
        enabled = (
            bool(missing)
            and secrets is not None
            and any(sent.get(key) not in (None, "") for key in missing)
            and all(secrets.get(key) not in (None, "") for key in missing)
        )
    if enabled:
        return True, "", ()
    return False, changes.get("disabled_reason", row.disabled_reason) or "", missing


@sensitive_variables("settings", "secrets")
def _plan_update(
    row: ProviderConfig, changes: dict[str, Any], *, check_fallback_targets: bool = False
) -> ProviderConfigPlan:
    """Return what ROW becomes after CHANGES; raise ``ProviderConfigError`` when invalid.

    With CHECK_FALLBACK_TARGETS, the fallbacks added to ROW's must name
    configured providers and their models (``fallback_target_errors``).
    """
    _check_shapes(changes)
    plugin = changes.get("plugin", row.plugin)
    settings, secrets = merge_provider_config(
        settings=row.settings or {}, secrets=row.readable_secrets(), changes=changes
    )
    enabled, reason, missing = _enablement(row, changes, secrets)
    fallbacks = changes.get("fallbacks", row.fallbacks)
    if secrets is None and enabled:
        _raise_if(
            {
                "secrets": [
                    f"{DECRYPTION_FAILED} Send the secrets again (they replace the stored "
                    "ones), or disable the provider."
                ]
            }
        )
    errors = provider_config_errors(
        plugin=plugin,
        settings=settings,
        # Unreadable secrets kept as they are belong to a disabled provider:
        # required ones are not asked for.
        secrets=secrets if secrets is not None else {},
        fallbacks=fallbacks,
        name=row.name,
        enabled=enabled,
    )
    if check_fallback_targets and "fallbacks" not in errors:
        problems = fallback_target_errors(fallbacks=fallbacks or [], stored=row.fallbacks or [])
        if problems:
            errors["fallbacks"] = problems
    _raise_if(errors)
    return ProviderConfigPlan(
        name=row.name,
        plugin=plugin,
        enabled=enabled,
        is_default=bool(changes.get("is_default", row.is_default)),
        fallbacks=tuple(fallbacks or ()),
        settings=settings,
        secrets=secrets,
        disabled_reason=reason,
        missing_secrets=missing,
        routing_priority=changes.get("routing_priority", row.routing_priority),
    )


@sensitive_variables("settings", "secrets")
def _plan_create(
    *,
    name: str,
    plugin: str,
    settings: dict[str, Any] | None = None,
    secrets: dict[str, Any] | None = None,
    enabled: bool = True,
    is_default: bool = False,
    fallbacks: list[str] | None = None,
    disabled_reason: str = "",
    missing_secrets: list[str] | tuple[str, ...] = (),
    routing_priority: int = DEFAULT_ROUTING_PRIORITY,
    check_fallback_targets: bool = False,
) -> ProviderConfigPlan:
    """Return the row a create saves; raise ``ProviderConfigError`` naming each bad field.

    With CHECK_FALLBACK_TARGETS, the fallbacks must name configured
    providers and their models (``fallback_target_errors``).
    """
    changes = {"settings": settings or {}, "secrets": secrets or {}}
    _check_shapes(
        {**changes, "missing_secrets": list(missing_secrets), "routing_priority": routing_priority}
    )
    settings, secrets = merge_provider_config(settings={}, secrets={}, changes=changes)
    fallbacks = list(fallbacks or [])
    errors = provider_config_errors(
        plugin=plugin,
        settings=settings,
        secrets=secrets or {},
        fallbacks=fallbacks,
        name=name,
        enabled=enabled,
    )
    if check_fallback_targets and "fallbacks" not in errors:
        problems = fallback_target_errors(fallbacks=fallbacks)
        if problems:
            errors["fallbacks"] = problems
    if ProviderConfig.objects.filter(name=name).exists():
        errors.setdefault("name", []).append(f"A provider named {name!r} already exists.")
    _raise_if(errors)
    return ProviderConfigPlan(
        name=name,
        plugin=plugin,
        enabled=bool(enabled),
        is_default=bool(is_default),
        fallbacks=tuple(fallbacks),
        settings=settings,
        secrets=secrets or {},
        disabled_reason="" if enabled else disabled_reason,
        missing_secrets=() if enabled else tuple(missing_secrets),
        routing_priority=routing_priority,
    )


# --- the candidate instance ---------------------------------------------------------


@sensitive_variables("spec", "secrets")
def check_candidate(change: ProviderConfigPlan) -> None:
    """Build and initialize the instance CHANGE would serve, then shut it down; serve nothing.

    Raise ``ProviderConfigError`` when the plugin refuses a field (400) and
    ``ProviderInitializationError`` (409) when it fails to start, whatever
    the plugin raised; messages are masked against CHANGE's secrets, which
    no live instance knows yet. A disabled change starts nothing.
    """
    spec = change.spec()
    if spec is None:
        return
    stored = change.secrets or {}
    secrets = config_secret_values(stored, stored)
    try:
        run_in_serving_loop(_start_and_stop, spec)
    except ProviderConfigError as exc:
        exc.message = redact(exc.message, secrets)
        exc.errors = {k: [redact(m, secrets) for m in v] for k, v in exc.errors.items()}
        raise
    except ProviderInitializationError as exc:
        exc.message = redact(exc.message, secrets)
        raise
    except Exception as exc:  # noqa: BLE001 - plugin code, or the serving loop's timeout
        message = redact(f"Initialization failed: {exc or type(exc).__name__}", secrets)
        # Not chained: the original may carry the new secrets into a traceback.
        raise ProviderInitializationError(message, provider=change.name) from None


async def _start_and_stop(spec: ProviderSpec) -> None:
    """Build and initialize SPEC's instance beside the live one, then shut it down."""
    await runtime.registry.discard(await runtime.registry.build_candidate(spec))


# --- the services -----------------------------------------------------------------


def _checks_fallback_targets(actor: Actor, check_fallback_targets: bool | None) -> bool:
    """Return whether a write by ACTOR checks its fallbacks' targets (None: by its source)."""
    if check_fallback_targets is None:
        return actor.source in FALLBACK_TARGET_SOURCES
    return check_fallback_targets


@sensitive_variables("new")
def provider_config_check_create(
    *, start: bool = True, check_fallback_targets: bool = True, **new: Any
) -> ProviderConfigPlan:
    """Validate a new provider and start its candidate; return what the create would save.

    NEW are ``provider_config_create``'s fields (name, plugin, settings, ...).
    Raise ``ProviderConfigError`` or ``ProviderInitializationError``; save
    nothing. With START false, validate only. The fallbacks' targets are
    checked unless CHECK_FALLBACK_TARGETS is false.
    """
    change = _plan_create(**new, check_fallback_targets=check_fallback_targets)
    if start:
        check_candidate(change)
    return change


@sensitive_variables("new")
def provider_config_create(
    *,
    actor: Actor = SYSTEM,
    checked: ProviderConfigPlan | None = None,
    check_fallback_targets: bool | None = None,
    **new: Any,
) -> ProviderConfig:
    """Create a provider (validated, its candidate started, then saved and audited).

    NEW are the new provider's fields, as ``_plan_create`` names them: name,
    plugin, settings, secrets, enabled, is_default, fallbacks,
    disabled_reason, missing_secrets. Raise ``ProviderConfigError`` naming
    each bad field, or ``ProviderInitializationError`` when it cannot start;
    either way nothing is saved. ACTOR (who, through what) goes into the audit
    trail. CHECKED, what ``provider_config_check_create`` returned for the same
    input, spares starting the candidate a second time. The fallbacks must
    name configured providers and their models (``fallback_target_errors``)
    when CHECK_FALLBACK_TARGETS says so; None: when ACTOR is the admin or an
    API (``FALLBACK_TARGET_SOURCES``), not the YAML import.
    """
    new["check_fallback_targets"] = _checks_fallback_targets(actor, check_fallback_targets)
    change = _plan_create(**new)
    if change != checked:
        check_candidate(change)
    with transaction.atomic():
        # Checked again now that this transaction will write: a create that
        # raced this one is refused by name, not by the unique constraint.
        change = _plan_create(**new)
        name = change.name
        if change.is_default:
            _take_default_from_others(name, actor)
        config = ProviderConfig(name=name, revision=1)
        _write_row(config, change)
        config.save(force_insert=True)
        record_change(name=name, before=None, after=snapshot(config), actor=actor)
    return config


@sensitive_variables("changes")
def provider_config_check_update(
    *,
    config: ProviderConfig,
    changes: dict[str, Any],
    start: bool = True,
    check_fallback_targets: bool = True,
) -> ProviderConfigPlan:
    """Validate CHANGES to CONFIG and start the candidate; return what the update would save.

    Raise ``ProviderConfigError`` or ``ProviderInitializationError``; save
    nothing. With START false, validate only. The fallbacks added are
    checked against the configured providers unless CHECK_FALLBACK_TARGETS is false.
    """
    change = _plan_update(
        _current_row(config), changes, check_fallback_targets=check_fallback_targets
    )
    if start:
        check_candidate(change)
    return change


# The audit snapshot BEFORE holds the stored secrets in clear, CHANGES the new ones.
@sensitive_variables("changes", "before")
def provider_config_update(
    *,
    config: ProviderConfig,
    changes: dict[str, Any],
    actor: Actor = SYSTEM,
    checked: ProviderConfigPlan | None = None,
    check_fallback_targets: bool | None = None,
) -> ProviderConfig:
    """Apply CHANGES to CONFIG: validate, start the candidate, save, audit, raise the revision.

    CHANGES holds the fields to change (``UPDATABLE``); ``settings`` and
    ``secrets`` are partial and merged by ``merge_provider_config``. Raise
    ``ProviderConfigError`` (400) or ``ProviderInitializationError`` (409)
    and change nothing when the result is invalid or cannot start. CHECKED,
    what ``provider_config_check_update`` returned for the same CHANGES,
    spares starting the candidate a second time when the row has not moved.
    The fallbacks added must name configured providers and their models
    (``fallback_target_errors``) when CHECK_FALLBACK_TARGETS says so; None:
    when ACTOR is the admin or an API, not the YAML import.
    """
    targets = _checks_fallback_targets(actor, check_fallback_targets)
    # Planned and started outside the row lock: a plugin may take seconds to start.
    change = _plan_update(_current_row(config), changes, check_fallback_targets=targets)
    if change != checked:
        check_candidate(change)
    with transaction.atomic():
        row = ProviderConfig.objects.select_for_update().get(pk=config.pk)
        locked_change = _plan_update(row, changes, check_fallback_targets=targets)
        if locked_change != change:
            # Another write landed in between: check what will actually be saved.
            check_candidate(locked_change)
        before = snapshot(row)
        if locked_change.is_default and not row.is_default:
            _take_default_from_others(row.name, actor)
        _write_row(row, locked_change)
        row.revision = row.revision + 1
        row.save()
        record_change(name=row.name, before=before, after=snapshot(row), actor=actor)
    return row


def _current_row(config: ProviderConfig) -> ProviderConfig:
    row = ProviderConfig.objects.filter(pk=config.pk).first()
    if row is None:
        raise ProviderNotFoundError(f"Provider {config.name!r} is not configured.")
    return row


def _write_row(row: ProviderConfig, change: ProviderConfigPlan) -> None:
    row.plugin = change.plugin
    row.enabled = change.enabled
    row.is_default = change.is_default
    row.fallbacks = list(change.fallbacks)
    row.settings = change.settings
    if change.secrets is not None:
        row.secrets = change.secrets
    row.disabled_reason = change.disabled_reason
    row.missing_secrets = list(change.missing_secrets)
    row.routing_priority = change.routing_priority


def _take_default_from_others(name: str, actor: Actor) -> None:
    """Clear the default flag of every other provider, auditing each and raising its revision."""
    for other in (
        ProviderConfig.objects.select_for_update().filter(is_default=True).exclude(name=name)
    ):
        before = snapshot(other)
        other.is_default = False
        other.revision = other.revision + 1
        # A save, not an update(): its signal tells every worker about this row too.
        other.save(update_fields=["is_default", "revision", "updated_at"])
        record_change(name=other.name, before=before, after=snapshot(other), actor=actor)


@transaction.atomic
def provider_config_delete(*, config: ProviderConfig, actor: Actor = SYSTEM) -> None:
    """Delete CONFIG; the provider leaves service once the deletion commits."""
    before = snapshot(config)
    name = config.name
    config.delete()
    record_change(name=name, before=before, after=None, actor=actor)


# --- model groups -----------------------------------------------------------------

#: A group's name: what clients send as ``model``. 58 characters, so that its audit name fits.
GROUP_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@/+-]{0,57}$")
#: A deployment's upstream model name.
DEPLOYMENT_MODEL_PATTERN = re.compile(r"^[A-Za-z0-9_.:@/+-]{1,200}$")
MAX_DEPLOYMENTS = 20
MAX_WEIGHT = 1000
DEPLOYMENT_KEYS = frozenset({"provider", "model", "weight"})
GROUP_UPDATABLE = frozenset({"strategy", "deployments", "enabled"})
#: The prefix of a group's name in the audit trail (no provider name holds ':').
GROUP_AUDIT_PREFIX = "group:"


def group_audit_name(name: str) -> str:
    """Return the name model group NAME's changes are audited under (``group:<name>``)."""
    return f"{GROUP_AUDIT_PREFIX}{name}"


#: Words ``/api/model-groups/`` uses after its prefix: a group so named could not be reached there.
RESERVED_GROUP_NAMES = frozenset({"history"})


def _group_name_errors(name: Any) -> list[str]:
    if not isinstance(name, str) or not GROUP_NAME_PATTERN.match(name):
        return [
            "Use 1-58 letters, digits or '._:@/+-', starting with a letter or digit "
            "(the model name clients send)."
        ]
    if name in RESERVED_GROUP_NAMES:
        return [f"{name!r} is reserved by the API; choose another name."]
    prefix, slash, _ = name.partition("/")
    if slash and ProviderConfig.objects.filter(name=prefix).exists():
        return [
            f"{name!r} starts with the provider {prefix!r}: requests for it would go to that "
            "provider ('provider/model'). Choose a name without that prefix."
        ]
    return []


def normalize_deployments(deployments: Any) -> tuple[list[dict[str, Any]], dict[str, list[str]]]:
    """Return (DEPLOYMENTS with their weights filled in, errors by field such as ``deployments.0.weight``).

    Each deployment is ``{"provider", "model", "weight"}``: a configured
    provider, the model to ask it for, and a whole number from 1 to
    ``MAX_WEIGHT`` (1 when left out). The same provider and model twice is a
    mistake; so are no deployments, or more than ``MAX_DEPLOYMENTS``.
    """
    if not isinstance(deployments, list):
        return [], {"deployments": ["Must be a list of {provider, model, weight} objects."]}
    if not deployments:
        return [], {"deployments": ["A group needs at least one deployment."]}
    if len(deployments) > MAX_DEPLOYMENTS:
        return [], {"deployments": [f"At most {MAX_DEPLOYMENTS} deployments per group."]}
    errors: dict[str, list[str]] = {}
    normalized: list[dict[str, Any]] = []
    providers = {str(d.get("provider")) for d in deployments if isinstance(d, dict)}
    configured = set(
        ProviderConfig.objects.filter(
            name__in=[p for p in providers if NAME_PATTERN.match(p)]
        ).values_list("name", flat=True)
    )
    seen: set[tuple[str, str]] = set()
    for index, entry in enumerate(deployments):
        where = f"deployments.{index}"
        if not isinstance(entry, dict):
            errors[where] = ["Must be an object with 'provider', 'model' and 'weight'."]
            continue
        unknown = sorted(str(key)[:40] for key in entry if key not in DEPLOYMENT_KEYS)
        if unknown:
            errors[f"{where}.{unknown[0]}"] = ["Unknown field (use provider, model, weight)."]
            continue
        provider, model, weight = entry.get("provider"), entry.get("model"), entry.get("weight", 1)
        if not isinstance(provider, str) or not NAME_PATTERN.match(provider):
            errors[f"{where}.provider"] = ["Must be the name of a configured provider."]
        elif provider not in configured:
            errors[f"{where}.provider"] = [f"No provider named {provider!r} is configured."]
        if not isinstance(model, str) or not DEPLOYMENT_MODEL_PATTERN.match(model):
            errors[f"{where}.model"] = [
                "Must be the model to ask the provider for: 1-200 letters, digits or '_.:@/+-'."
            ]
        if isinstance(weight, bool) or not isinstance(weight, int) or not 1 <= weight <= MAX_WEIGHT:
            errors[f"{where}.weight"] = [f"Must be a whole number from 1 to {MAX_WEIGHT}."]
        if any(key.startswith(where + ".") for key in errors):
            continue
        if (provider, model) in seen:
            errors[f"{where}.model"] = [f"{provider}/{model} is listed twice."]
            continue
        seen.add((provider, model))
        normalized.append({"provider": provider, "model": model, "weight": weight})
    return normalized, errors


def model_group_errors(
    *, name: Any = None, strategy: Any = WEIGHTED, deployments: Any = None, enabled: Any = True
) -> tuple[list[dict[str, Any]], dict[str, list[str]]]:
    """Return (the deployments normalized, every problem of a model group per field).

    NAME is checked when given (a create); an update cannot rename.
    """
    errors: dict[str, list[str]] = {}
    if name is not None:
        problems = _group_name_errors(name)
        if problems:
            errors["name"] = problems
    if not isinstance(strategy, str) or strategy not in STRATEGIES:
        errors["strategy"] = [f"Must be one of: {', '.join(STRATEGIES)}."]
    if not isinstance(enabled, bool):
        errors["enabled"] = ["Must be true or false."]
    normalized, deployment_errors = normalize_deployments(deployments)
    errors.update(deployment_errors)
    return normalized, errors


def _raise_group_errors(errors: dict[str, list[str]]) -> None:
    if errors:
        summary = "; ".join(f"{field}: {' '.join(msgs)}" for field, msgs in errors.items())
        raise ProviderConfigError(f"Invalid model group: {summary}", errors=errors)


def model_group_snapshot(group: ModelGroup) -> dict[str, Any]:
    """Return the audited state of GROUP."""
    return {
        "strategy": group.strategy,
        "deployments": [dict(d) for d in group.deployments or []],
        "enabled": group.enabled,
    }


def _record_group_change(
    *, name: str, before: dict[str, Any] | None, after: dict[str, Any] | None, actor: Actor
) -> ProviderConfigChange | None:
    """Write the audit entry of model group NAME going from BEFORE to AFTER; None if nothing changed."""
    old, new = before or {}, after or {}
    changes = [
        {"field": field, "before": old.get(field), "after": new.get(field)}
        for field in ("strategy", "deployments", "enabled")
        if old.get(field) != new.get(field)
    ]
    if before is None:
        action = "created"
    elif after is None:
        action = "deleted"
    elif not changes:
        return None
    elif old.get("enabled") != new.get("enabled"):
        action = "enabled" if new.get("enabled") else "disabled"
    else:
        action = "updated"
    return ProviderConfigChange.objects.create(
        provider_name=group_audit_name(name),
        action=action,
        actor=actor.name[:150],
        source=actor.source,
        remote_addr=actor.remote_addr,
        changes=changes,
    )


def _serve_groups_after_commit() -> None:
    transaction.on_commit(config_sync.model_groups_after_commit, robust=True)


def model_group_create(
    *,
    name: Any,
    deployments: Any,
    strategy: Any = WEIGHTED,
    enabled: Any = True,
    actor: Actor = SYSTEM,
) -> ModelGroup:
    """Create model group NAME: validate, save, audit; every worker serves it after the commit.

    Raise ``ProviderConfigError`` (400) naming each bad field; nothing is
    saved then.
    """
    normalized, errors = model_group_errors(
        name=name, strategy=strategy, deployments=deployments, enabled=enabled
    )
    _raise_group_errors(errors)
    with transaction.atomic():
        if ModelGroup.objects.select_for_update().filter(name=name).exists():
            _raise_group_errors({"name": [f"A model group named {name!r} already exists."]})
        group = ModelGroup(
            name=name, strategy=strategy, deployments=normalized, enabled=enabled, revision=1
        )
        group.save(force_insert=True)
        _record_group_change(name=name, before=None, after=model_group_snapshot(group), actor=actor)
        _serve_groups_after_commit()
    return group


def model_group_update(
    *, group: ModelGroup, changes: dict[str, Any], actor: Actor = SYSTEM
) -> ModelGroup:
    """Apply CHANGES (``strategy``, ``deployments``, ``enabled``) to GROUP: validate, save, audit.

    Raise ``ProviderConfigError`` (400) naming each bad field (a rename
    included); nothing changes then. A change that changes nothing saves
    nothing and writes no audit entry.
    """
    if not isinstance(changes, dict):
        _raise_group_errors({"changes": ["Must be an object."]})
    unknown = sorted(str(key)[:40] for key in changes if key not in GROUP_UPDATABLE)
    if unknown:
        message = "A model group cannot be renamed." if unknown == ["name"] else "Unknown field."
        _raise_group_errors({unknown[0]: [message]})
    with transaction.atomic():
        row = ModelGroup.objects.select_for_update().filter(pk=group.pk).first()
        if row is None:
            raise ProviderNotFoundError(f"No model group named {group.name!r}.", field="name")
        normalized, errors = model_group_errors(
            strategy=changes.get("strategy", row.strategy),
            deployments=changes.get("deployments", row.deployments),
            enabled=changes.get("enabled", row.enabled),
        )
        _raise_group_errors(errors)
        before = model_group_snapshot(row)
        row.strategy = changes.get("strategy", row.strategy)
        row.deployments = normalized
        row.enabled = changes.get("enabled", row.enabled)
        after = model_group_snapshot(row)
        if after == before:
            return row
        row.revision = row.revision + 1
        row.save()
        _record_group_change(name=row.name, before=before, after=after, actor=actor)
        _serve_groups_after_commit()
    return row


@transaction.atomic
def model_group_delete(*, group: ModelGroup, actor: Actor = SYSTEM) -> None:
    """Delete GROUP; every worker stops serving it once the deletion commits."""
    before = model_group_snapshot(group)
    name = group.name
    ModelGroup.objects.filter(pk=group.pk).delete()
    _record_group_change(name=name, before=before, after=None, actor=actor)
    _serve_groups_after_commit()
