"""The admin form for a provider: its plugin's config schema turned into form fields.

Each property of the plugin's schema becomes one field named
``setting__<property>`` (so that a property can never clash with a model
field): a text box, a number box, a checkbox, a select for an ``enum``, a
text area with one item per line for an array of strings, and a JSON box for
anything else. Secrets (``providers.base.secret_fields``) are password
inputs that never render their value; the current value shows only masked.

A field is written to the provider's settings when the admin changed it (or
when the property is required and not stored yet), so that saving a form
does not pin every schema default into the database. A blank field removes
the setting: the plugin's default applies again. A blank secret keeps the
stored one; its "remove" checkbox deletes it.

A failed post shows the form again with the secrets the admin typed still
in their password inputs (the value of that post, never a stored secret, and
not a secret whose own field was refused), so that one wrong URL does not
cost the key; a saved form redirects, and a GET renders no secret.

Errors speak the admin's language: a schema's ``pattern`` on a URL says
"Enter a URL starting with http:// or https:// in Base URL.", a minimum says
"Read timeout (seconds) must be at least 0.1." (``human_message``), each
under the field it names.

The **Test connection** button (``TEST_BUTTON``) posts the form without
saving it: the same validation, then ``connection_test`` starts the
provider the form describes beside the live ones (the typed secrets, or the
stored ones left blank), runs its health check (zero tokens: a model list
or a ping) and shuts it down; the form comes back with the result
(``ConnectionResult``, secrets masked) and nothing is saved.

The form only translates what the admin typed into a change; validation is
the provider services' own (``provider_config_check_update`` /
``provider_config_check_create``: the merge, the plugin's schema, then a
candidate instance started without serving it), the same path as the API
and the YAML import. Each error is shown next to the field it names, a
provider that fails to start included; ``ModelAdmin.save_model`` then saves
the very change checked here.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
import time
from dataclasses import dataclass
from typing import Any, ClassVar

from django import forms
from django.conf import settings
from django.core.exceptions import ValidationError
from django.utils.html import format_html
from django.utils.safestring import SafeString, mark_safe
from django.views.decorators.debug import sensitive_variables

from providers.base import ROUTING_SETTINGS_SCHEMA, secret_fields
from providers.config.services import (
    ProviderConfigPlan,
    provider_config_check_create,
    provider_config_check_update,
)
from providers.errors import ProviderConfigError, ProviderError, ProviderNotFoundError
from providers.models import MAX_ROUTING_PRIORITY, ProviderConfig
from providers.runtime import process as runtime
from providers.runtime.registry import ProviderSpec, plugin_failure_text
from providers.secrets.masking import mask_secret, redact
from providers.secrets.values import config_secret_values
from providers.types import HealthStatus

SETTING_PREFIX = "setting__"
CLEAR_PREFIX = "clear_secret__"
EXTRA_SETTINGS = "extra_settings"
BLANK_VALUES: tuple[Any, ...] = (None, "", [])
UNREADABLE_SECRETS_MESSAGE = (
    "The stored secrets cannot be decrypted with the keys in ECHO_ENCRYPTION_KEYS. "
    "Type the secrets again (they replace the stored ones), or untick 'Enabled'."
)
#: The name of the submit button that tests the connection instead of saving.
TEST_BUTTON = "_test"
#: Settings every provider has that most admins never touch: retries, the breaker,
#: the deadline, the HTTP timeouts and pool. The admin shows them collapsed.
ADVANCED_SETTINGS = frozenset(
    {*ROUTING_SETTINGS_SCHEMA, "timeout", "connect_timeout", "max_connections"}
)
#: How many of the models a successful connection test found are listed.
SHOWN_MODELS = 10
URL_PATTERN_MESSAGE = "Enter a URL starting with http:// or https:// in {label}."
TYPE_WORDS = {
    "integer": "a whole number",
    "number": "a number",
    "string": "text",
    "boolean": "on or off",
    "array": "a list",
    "object": "a JSON object",
    "null": "empty",
}


def setting_field_name(prop: str) -> str:
    """Return the form field name of schema property PROP."""
    return f"{SETTING_PREFIX}{prop}"


def clear_field_name(prop: str) -> str:
    """Return the name of the checkbox that removes stored secret PROP."""
    return f"{CLEAR_PREFIX}{prop}"


def is_url_setting(prop: str, spec: dict[str, Any]) -> bool:
    """Return whether schema property PROP (described by SPEC) holds an upstream URL."""
    return prop == "base_url" or prop.endswith("_url") or spec.get("format") == "uri"


def _label(prop: str, spec: dict[str, Any]) -> str:
    return str(spec.get("title") or prop.replace("_", " ").capitalize())


def _type_words(types: str) -> str:
    return " or ".join(TYPE_WORDS.get(t, t) for t in types.split(" or "))


#: providers.base's schema messages, each with the sentence that replaces it in the form.
_SCHEMA_MESSAGES: list[tuple[re.Pattern[str], Any]] = [
    (
        re.compile(r"^Must match the pattern \^https\?://.*\.$"),
        lambda m, label: URL_PATTERN_MESSAGE.format(label=label),
    ),
    (
        re.compile(r"^Must match the pattern (.+)\.$"),
        lambda m, label: f"{label} is not in the expected form (it must match {m[1]}).",
    ),
    (re.compile(r"^Must be a valid uri\.$"), lambda m, label: f"Enter a full URL in {label}."),
    (
        re.compile(r"^Must be of type (.+)\.$"),
        lambda m, label: f"{label} must be {_type_words(m[1])}.",
    ),
    (re.compile(r"^Must be at least 1 characters long\.$"), lambda m, label: f"Enter {label}."),
    (
        re.compile(r"^Must be (at least|at most) (\S+) characters long\.$"),
        lambda m, label: f"{label} must be {m[1]} {m[2]} characters long.",
    ),
    (
        re.compile(r"^Must be (at least|at most|greater than|less than) (\S+)\.$"),
        lambda m, label: f"{label} must be {m[1]} {m[2]}.",
    ),
    (
        re.compile(r"^Must be one of: (.+)\.$"),
        lambda m, label: f"{label} must be one of: {m[1]}.",
    ),
    (
        re.compile(r"^Must have at (least|most) (\S+) items\.$"),
        lambda m, label: f"{label} must have at {m[1]} {m[2]} items.",
    ),
    (
        re.compile(r"^Must be a finite number\.$"),
        lambda m, label: f"{label} must be a finite number.",
    ),
    (
        re.compile(r"^Unknown setting\.$"),
        lambda m, label: f"{label} is not a setting of this plugin.",
    ),
]


def human_message(message: str, *, label: str) -> str:
    """Return schema error MESSAGE as a plain sentence naming the field LABEL.

    MESSAGE is one of ``providers.base``'s schema messages ("Must match the
    pattern ^https?://."); any other message (the upstream policy's, a
    plugin's own) is already a sentence and comes back as it is.
    """
    for pattern, sentence in _SCHEMA_MESSAGES:
        found = pattern.match(message)
        if found:
            return sentence(found, label)
    return message


def _field_messages(label: str, kind: str | None) -> dict[str, str]:
    """Return Django error messages for a field LABEL of JSON type KIND, naming it."""
    escaped = label.replace("%", "%%")  # the messages are %-formatted with their limits
    messages = {
        "min_value": f"{escaped} must be at least %(limit_value)s.",
        "max_value": f"{escaped} must be at most %(limit_value)s.",
        "min_length": f"{escaped} must be at least %(limit_value)d characters long.",
        "max_length": f"{escaped} must be at most %(limit_value)d characters long.",
    }
    if kind == "integer":
        messages["invalid"] = f"{escaped} must be a whole number."
    elif kind == "number":
        messages["invalid"] = f"{escaped} must be a number."
    return messages


class LinesField(forms.Field):
    """A list of strings edited one per line; blank lines are ignored.

    One per line rather than comma-separated, so that an item may contain a
    comma.
    """

    widget = forms.Textarea(attrs={"rows": 3, "cols": 40})

    def prepare_value(self, value: Any) -> Any:
        if isinstance(value, (list, tuple)):
            return "\n".join(str(item) for item in value)
        return value

    def to_python(self, value: Any) -> list[str]:
        if value in self.empty_values:
            return []
        if isinstance(value, (list, tuple)):
            return [str(item) for item in value]
        return [line.strip() for line in str(value).splitlines() if line.strip()]


class BlankableJSONField(forms.JSONField):
    """A JSON box that shows nothing, rather than ``null``, when there is no value."""

    def prepare_value(self, value: Any) -> Any:
        return "" if value is None else super().prepare_value(value)


def json_type(prop: dict[str, Any]) -> str | None:
    """Return the JSON type of schema property PROP, ignoring a ``"null"`` alternative."""
    kind = prop.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), None)
    return kind if isinstance(kind, str) else None


def _shown(value: Any) -> str:
    """Return a default value as an admin reads it."""
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return ", ".join(value)
    return json.dumps(value)


def _help_text(prop: dict[str, Any], kind: str | None, *extra: str) -> SafeString:
    # The admin renders help text unescaped: every plugin-provided piece is escaped here.
    parts = [prop.get("description") or ""]
    if kind == "array" and json_type(prop.get("items") or {}) in (None, "string"):
        parts.append("One per line.")
    if "default" in prop:
        if kind == "boolean":
            parts.append(f"Default: {_shown(prop['default'])}.")
        else:
            parts.append(f"Leave blank for the default ({_shown(prop['default'])}).")
    parts.extend(extra)
    text = " ".join(p for p in parts if p)
    return format_html("{}", text)


def schema_field(name: str, prop: dict[str, Any], *, required: bool) -> forms.Field:
    """Return the form field that edits schema property NAME (described by PROP)."""
    kind = json_type(prop)
    label = _label(name, prop)
    options: dict[str, Any] = {
        "label": label,
        "help_text": _help_text(prop, kind),
        "required": required,
        "error_messages": _field_messages(label, kind),
    }
    if isinstance(prop.get("enum"), list) and kind != "boolean":
        # Options travel as text; map each back to the enum's own value (int, str, ...).
        by_text = {str(value): value for value in prop["enum"]}
        choices = [(text, text) for text in by_text]
        if not required:
            choices.insert(0, ("", "---------"))
        return forms.TypedChoiceField(
            choices=choices, coerce=by_text.__getitem__, empty_value=None, **options
        )
    if kind == "boolean":
        return forms.BooleanField(**{**options, "required": False})
    if kind == "integer":
        return forms.IntegerField(
            min_value=prop.get("minimum"), max_value=prop.get("maximum"), **options
        )
    if kind == "number":
        return forms.FloatField(
            min_value=prop.get("minimum"), max_value=prop.get("maximum"), **options
        )
    if kind == "string":
        # strip=False: a prefix such as "Echo: " means its trailing space.
        return forms.CharField(
            strip=False,
            max_length=prop.get("maxLength"),
            min_length=prop.get("minLength"),
            widget=forms.TextInput(attrs={"class": "vTextField"}),
            **options,
        )
    if kind == "array" and json_type(prop.get("items") or {}) in (None, "string"):
        return LinesField(**options)
    return BlankableJSONField(widget=forms.Textarea(attrs={"rows": 4, "cols": 40}), **options)


def secret_field(
    name: str, prop: dict[str, Any], *, stored: Any, required: bool, unreadable: bool = False
) -> forms.Field:
    """Return the password field for secret NAME; STORED is its current value, never rendered.

    UNREADABLE says the stored secrets cannot be decrypted: STORED is then unknown.
    """
    masked = mask_secret(stored)
    if unreadable:
        state = "The stored secrets cannot be decrypted: type it again."
    elif stored not in BLANK_VALUES:
        state = f"Current: {masked}. Leave blank to keep it."
    else:
        state = "Not set."
    return forms.CharField(
        label=_label(name, prop),
        help_text=format_html("{}", " ".join(filter(None, [state, prop.get("description")]))),
        required=required,
        widget=forms.PasswordInput(
            render_value=False, attrs={"placeholder": masked, "autocomplete": "new-password"}
        ),
    )


def _looks_secret(key: str) -> bool:
    return bool(secret_fields({"properties": {key: {}}}))


# --- Test connection --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ConnectionResult:
    """What a connection test found: up or not, how fast, the models listed, the error (masked)."""

    available: bool
    response_time_ms: float | None = None
    models: tuple[str, ...] = ()
    error: str = ""

    @property
    def shown_models(self) -> str:
        """Return the first models found, as a line of text, saying how many more there are."""
        shown = ", ".join(self.models[:SHOWN_MODELS])
        more = len(self.models) - SHOWN_MODELS
        return f"{shown} and {more} more" if more > 0 else shown


@sensitive_variables("plan", "spec", "secrets")
def connection_test(change: ProviderConfigPlan, *, timeout: float) -> ConnectionResult:
    """Start the provider CHANGE describes beside the live ones, check its health, shut it down.

    The check is the health monitor's (the plugin's ``health_check``: a model
    list or a ping, never a completion), within TIMEOUT seconds. A disabled
    CHANGE is tested as if enabled: the admin asks whether it would work.
    Nothing is saved and nothing live changes. Every message is masked
    against CHANGE's secrets, which no live instance knows yet.
    """
    plan = dataclasses.replace(change, enabled=True)
    spec = plan.spec()
    if spec is None:
        return ConnectionResult(available=False, error=UNREADABLE_SECRETS_MESSAGE)
    secrets = config_secret_values(plan.secrets or {}, plan.secrets or {})
    try:
        status = runtime.run_in_serving_loop(_candidate_health, spec, timeout, timeout=timeout + 60)
    except ProviderError as exc:  # it would not start: refused setting, bad key, ...
        status = HealthStatus(available=False, error=exc.message)
    except Exception as exc:  # noqa: BLE001 - plugin code, or the serving loop's timeout
        status = HealthStatus(available=False, error=plugin_failure_text(exc))
    return ConnectionResult(
        available=bool(status.available),
        response_time_ms=status.response_time_ms,
        models=tuple(str(model) for model in status.models or ()),
        error=redact(str(status.error or ""), secrets),
    )


async def _candidate_health(spec: ProviderSpec, timeout: float) -> HealthStatus:
    """Build SPEC's instance without serving it, run its health check, then discard it."""
    provider = await runtime.registry.build_candidate(spec)
    try:
        started = time.perf_counter()
        try:
            async with asyncio.timeout(timeout):
                status = await provider.health_check()
            if not isinstance(status, HealthStatus):
                raise TypeError(f"health_check returned a {type(status).__name__}")
        except TimeoutError:
            status = HealthStatus(
                available=False, error=f"Health check timed out after {timeout:g}s."
            )
        except ProviderError as exc:
            status = HealthStatus(available=False, error=exc.message)
        except Exception as exc:  # noqa: BLE001 - a plugin bug is a failed test, not a 500
            status = HealthStatus(available=False, error=plugin_failure_text(exc))
        if status.response_time_ms is None:
            status.response_time_ms = round((time.perf_counter() - started) * 1000, 3)
        return status
    finally:
        await runtime.registry.discard(provider)


class ProviderConfigForm(forms.ModelForm):
    """Edit a provider: routing fields, plus one field per property of its plugin's schema.

    Use ``provider_config_form`` to get the class for a given plugin and row;
    this base class alone has no schema fields.
    """

    plugin_name: ClassVar[str | None] = None
    schema: ClassVar[dict[str, Any] | None] = None
    setting_props: ClassVar[list[str]] = []
    secret_props: ClassVar[list[str]] = []
    clearable_props: ClassVar[list[str]] = []
    has_extra_settings: ClassVar[bool] = False

    fallbacks = LinesField(
        required=False,
        help_text="Providers tried in order when this one fails, one per line: "
        "'name' or 'name/model'.",
    )
    # Not required: a form that leaves it out keeps the stored priority (or the default).
    routing_priority = forms.IntegerField(
        required=False,
        min_value=0,
        max_value=MAX_ROUTING_PRIORITY,
        help_text=ProviderConfig._meta.get_field("routing_priority").help_text,
    )

    class Meta:
        model = ProviderConfig
        fields = ["name", "plugin", "enabled", "is_default", "fallbacks", "routing_priority"]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # A post of the Test connection button: checked and tested, never saved.
        self.testing = self.is_bound and TEST_BUTTON in self.data
        self.connection_result: ConnectionResult | None = None
        self.stored_settings: dict[str, Any] = dict(self.instance.settings or {})
        stored_secrets = self.instance.readable_secrets()
        # Secrets no key decrypts: shown as such, and replaced by whatever is typed.
        self.secrets_unreadable = stored_secrets is None
        self.stored_secrets: dict[str, Any] = dict(stored_secrets or {})
        properties = (self.schema or {}).get("properties") or {}
        for prop in self.setting_props:
            if prop in self.stored_settings:
                self.initial[setting_field_name(prop)] = self.stored_settings[prop]
            elif "default" in properties[prop]:
                self.initial[setting_field_name(prop)] = properties[prop]["default"]
        if self.has_extra_settings:
            extras = self._stored_extras()
            self.initial[EXTRA_SETTINGS] = extras or None

    # --- what the admin asked for -----------------------------------------

    def settings_changes(self) -> dict[str, Any]:
        """Return the settings to write: changed fields, None where a setting is removed."""
        required = set((self.schema or {}).get("required") or [])
        changed = set(self.changed_data)
        changes: dict[str, Any] = {}
        for prop in self.setting_props:
            field_name = setting_field_name(prop)
            if field_name not in self.cleaned_data:
                continue
            value = self.cleaned_data[field_name]
            value = None if value in BLANK_VALUES else value
            # A required property must be stored even when it equals its default:
            # the plugin validates the stored config, defaults not applied.
            must_store = prop in required and prop not in self.stored_settings
            if field_name in changed or (must_store and value is not None):
                changes[prop] = value
        if (
            self.has_extra_settings
            and EXTRA_SETTINGS in changed
            and EXTRA_SETTINGS in self.cleaned_data
        ):
            new = self.cleaned_data[EXTRA_SETTINGS] or {}
            changes.update({key: None for key in self._stored_extras() if key not in new})
            changes.update(new)
        return changes

    def secrets_changes(self) -> dict[str, Any]:
        """Return the secrets to write: typed ones, and None for each one to remove."""
        changes: dict[str, Any] = {}
        for prop in self.secret_props:
            value = self.cleaned_data.get(setting_field_name(prop))
            if value:
                changes[prop] = value
            elif self.cleaned_data.get(clear_field_name(prop)):
                changes[prop] = None
        return changes

    def update_changes(self) -> dict[str, Any]:
        """Return the change to the edited provider, for ``providers.config.services``."""
        cleaned = self.cleaned_data
        changes: dict[str, Any] = {
            "is_default": bool(cleaned.get("is_default", self.instance.is_default)),
            "fallbacks": list(cleaned.get("fallbacks", self.instance.fallbacks or [])),
            "settings": self.settings_changes(),
            "secrets": self.secrets_changes(),
        }
        # Sent only when the admin ticked or unticked it: a provider the import
        # disabled for want of a key is then enabled by typing the key.
        if "enabled" in self.changed_data:
            changes["enabled"] = bool(cleaned.get("enabled"))
        if cleaned.get("routing_priority") is not None:
            changes["routing_priority"] = cleaned["routing_priority"]
        return changes

    def create_arguments(self) -> dict[str, Any]:
        """Return the new provider, as ``providers.config.services.provider_config_create`` takes it."""
        cleaned = self.cleaned_data
        return {
            "name": cleaned.get("name"),
            "plugin": self.plugin_name or cleaned.get("plugin"),
            "settings": self.settings_changes(),
            "secrets": self.secrets_changes(),
            "enabled": bool(cleaned.get("enabled", True)),
            "is_default": bool(cleaned.get("is_default", False)),
            "fallbacks": list(cleaned.get("fallbacks") or []),
            **(
                {"routing_priority": cleaned["routing_priority"]}
                if cleaned.get("routing_priority") is not None
                else {}
            ),
        }

    # --- validation -------------------------------------------------------

    def clean_extra_settings(self) -> dict[str, Any] | None:
        value = self.cleaned_data.get(EXTRA_SETTINGS)
        if value in (None, ""):
            return None
        if not isinstance(value, dict):
            raise ValidationError('Enter a JSON object, such as {"key": "value"}.')
        properties = (self.schema or {}).get("properties") or {}
        own = sorted(key for key in value if key in properties)
        if own:
            raise ValidationError(f"Set these with their own fields above: {', '.join(own)}.")
        secret_like = sorted(key for key in value if _looks_secret(key))
        if secret_like:
            # Extra settings are shown back in this box; a secret must never be.
            raise ValidationError(
                f"These look like secrets and cannot be extra settings: {', '.join(secret_like)}."
            )
        return value

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean()
        if (
            self.secrets_unreadable
            and cleaned.get("enabled", self.instance.enabled)
            and not self.secrets_changes()
        ):
            self.add_error(None, UNREADABLE_SECRETS_MESSAGE)
        for prop in self.secret_props:
            if cleaned.get(setting_field_name(prop)) and cleaned.get(clear_field_name(prop)):
                self.add_error(
                    clear_field_name(prop), "Either type a new value or remove it, not both."
                )
        # The services' check: the merge, the plugin's schema and, when the
        # form has no other error, the candidate instance started.
        self.checked_change: ProviderConfigPlan | None = None
        # A test starts its own candidate below, to report how it went rather than refuse.
        start = not self.errors and not self.testing
        try:
            if self.instance._state.adding:
                self.checked_change = provider_config_check_create(
                    **self.create_arguments(), start=start
                )
            else:
                self.checked_change = provider_config_check_update(
                    config=self.instance, changes=self.update_changes(), start=start
                )
        except ProviderConfigError as exc:
            self._add_service_errors(exc.errors)
        except ProviderError as exc:
            # A provider that cannot start: next to the field its error names, if any.
            self._add_service_errors({exc.field or "config": [exc.message]})
        if self.testing and not self.errors and self.checked_change is not None:
            self.connection_result = connection_test(
                self.checked_change, timeout=float(settings.ECHO_HEALTH_TIMEOUT_SECONDS)
            )
        return cleaned

    def is_valid(self) -> bool:
        """Return whether the form may be saved: never for a Test connection post."""
        return super().is_valid() and not self.testing

    def full_clean(self) -> None:
        """Validate; then let each secret typed into this post be shown back in its input.

        Only a bound form's: only what this post typed can be rendered,
        never a stored secret, never on a GET. A secret whose own field was
        refused (a key the upstream rejected) is not sent back.
        """
        super().full_clean()
        if not self.is_bound:
            return
        for prop in self.secret_props:
            name = setting_field_name(prop)
            if name in self.fields:
                self.fields[name].widget.render_value = name not in self._errors

    def _add_service_errors(self, errors: dict[str, list[str]]) -> None:
        # A field Django already rejected would get a second, confusing message for the same input.
        already_wrong = set(self.errors)
        for key, messages in errors.items():
            if key == "secrets" and self.secrets_unreadable:
                continue  # said above, in the admin's words
            field, prefix = self._field_for_error(key)
            if field in already_wrong:
                continue
            label = self.fields[field].label if field in self.fields and not prefix else None
            for message in messages:
                text = human_message(message, label=str(label)) if label else message
                self.add_error(field, f"{prefix}{text}")

    def _field_for_error(self, key: str) -> tuple[str | None, str]:
        """Return (form field, message prefix) for an error the services file under KEY."""
        if key in ("name", "fallbacks", "plugin", "routing_priority") and key in self.fields:
            return key, ""
        top = key.split(".", 1)[0]
        if setting_field_name(top) in self.fields:
            rest = key[len(top) + 1 :]
            return setting_field_name(top), f"{rest}: " if rest else ""
        properties = (self.schema or {}).get("properties") or {}
        if self.has_extra_settings and top not in properties and key != "config":
            return EXTRA_SETTINGS, f"{key}: "
        return None, "" if key in ("config", "plugin") else f"{key}: "

    def _get_validation_exclusions(self) -> set[str]:
        # Saving a new default clears the old one (providers.config.services), so the
        # one-default constraint must not refuse the form beforehand.
        return {*super()._get_validation_exclusions(), "is_default"}

    def _stored_extras(self) -> dict[str, Any]:
        properties = (self.schema or {}).get("properties") or {}
        return {
            key: value
            for key, value in (self.instance.settings or {}).items()
            if key not in properties and not _looks_secret(key)
        }


def provider_config_form(
    plugin: str | None, instance: ProviderConfig | None = None
) -> type[ProviderConfigForm]:
    """Return the form class for a provider of PLUGIN (INSTANCE: the row edited, if any).

    The class declares one field per schema property; with no plugin, or a
    plugin that is not installed, it has the routing fields only.
    """
    try:
        schema = runtime.registry.plugin(plugin).config_schema() if plugin else None
    except ProviderNotFoundError:
        schema = None
    attrs: dict[str, Any] = {
        "plugin_name": plugin,
        "schema": schema,
        "setting_props": [],
        "secret_props": [],
        "clearable_props": [],
        "has_extra_settings": False,
        "plugin": forms.ChoiceField(
            choices=[(name, name) for name in sorted(runtime.registry.plugins())],
            initial=plugin,
            # Fixed by the page's ?plugin=: the schema fields below belong to it.
            disabled=bool(schema),
            help_text=mark_safe('<a href="./">Choose another plugin</a>'),
        ),
    }
    if schema is not None:
        properties = schema.get("properties") or {}
        required = set(schema.get("required") or [])
        secrets = secret_fields(schema)
        readable = instance.readable_secrets() if instance else {}
        stored_secrets = readable or {}
        for prop, spec in properties.items():
            spec = spec if isinstance(spec, dict) else {}
            if prop in secrets:
                stored = stored_secrets.get(prop)
                attrs[setting_field_name(prop)] = secret_field(
                    prop,
                    spec,
                    stored=stored,
                    required=prop in required and stored is None,
                    unreadable=readable is None,
                )
                attrs["secret_props"].append(prop)
                if stored not in BLANK_VALUES:
                    attrs[clear_field_name(prop)] = forms.BooleanField(
                        required=False,
                        label=f"Remove the stored {attrs[setting_field_name(prop)].label}",
                    )
                    attrs["clearable_props"].append(prop)
            else:
                attrs[setting_field_name(prop)] = schema_field(
                    prop, spec, required=prop in required and "default" not in spec
                )
                attrs["setting_props"].append(prop)
        stored_settings = (instance.settings or {}) if instance else {}
        unknown = [k for k in stored_settings if k not in properties and not _looks_secret(k)]
        if schema.get("additionalProperties", True) is not False or unknown:
            attrs["has_extra_settings"] = True
            attrs[EXTRA_SETTINGS] = BlankableJSONField(
                required=False,
                label="Extra settings (JSON)",
                help_text="Settings beyond the fields above, as a JSON object. "
                "Most providers need none.",
                widget=forms.Textarea(attrs={"rows": 4, "cols": 40}),
            )
    return type(
        f"{(plugin or 'Provider').title().replace('-', '')}ConfigForm", (ProviderConfigForm,), attrs
    )
