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

The form only translates what the admin typed into a change; validation is
the provider services' own (``provider_config_check_update`` /
``provider_config_check_create``: the merge, the plugin's schema, then a
candidate instance started without serving it), the same path as the API
and the YAML import. Each error is shown next to the field it names, a
provider that fails to start included; ``ModelAdmin.save_model`` then saves
the very change checked here.
"""

from __future__ import annotations

import json
from typing import Any, ClassVar

from django import forms
from django.core.exceptions import ValidationError
from django.utils.html import format_html
from django.utils.safestring import SafeString, mark_safe

from providers.base import secret_fields
from providers.config.services import (
    ProviderConfigPlan,
    provider_config_check_create,
    provider_config_check_update,
)
from providers.errors import ProviderConfigError, ProviderError, ProviderNotFoundError
from providers.models import MAX_ROUTING_PRIORITY, ProviderConfig
from providers.runtime import process as runtime
from providers.secrets.masking import mask_secret

SETTING_PREFIX = "setting__"
CLEAR_PREFIX = "clear_secret__"
EXTRA_SETTINGS = "extra_settings"
BLANK_VALUES: tuple[Any, ...] = (None, "", [])
UNREADABLE_SECRETS_MESSAGE = (
    "The stored secrets cannot be decrypted with the keys in ECHO_ENCRYPTION_KEYS. "
    "Type the secrets again (they replace the stored ones), or untick 'Enabled'."
)


def setting_field_name(prop: str) -> str:
    """Return the form field name of schema property PROP."""
    return f"{SETTING_PREFIX}{prop}"


def clear_field_name(prop: str) -> str:
    """Return the name of the checkbox that removes stored secret PROP."""
    return f"{CLEAR_PREFIX}{prop}"


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
    options: dict[str, Any] = {
        "label": prop.get("title") or name.replace("_", " ").capitalize(),
        "help_text": _help_text(prop, kind),
        "required": required,
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
        label=prop.get("title") or name.replace("_", " ").capitalize(),
        help_text=format_html("{}", " ".join(filter(None, [state, prop.get("description")]))),
        required=required,
        widget=forms.PasswordInput(
            render_value=False, attrs={"placeholder": masked, "autocomplete": "new-password"}
        ),
    )


def _looks_secret(key: str) -> bool:
    return bool(secret_fields({"properties": {key: {}}}))


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
        start = not self.errors
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
        return cleaned

    def _add_service_errors(self, errors: dict[str, list[str]]) -> None:
        # A field Django already rejected would get a second, confusing message for the same input.
        already_wrong = set(self.errors)
        for key, messages in errors.items():
            if key == "secrets" and self.secrets_unreadable:
                continue  # said above, in the admin's words
            field, prefix = self._field_for_error(key)
            if field in already_wrong:
                continue
            for message in messages:
                self.add_error(field, f"{prefix}{message}")

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
