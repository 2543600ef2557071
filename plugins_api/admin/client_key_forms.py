"""The client key admin's forms: a key's settings, checked by ``key_changes.validate_key``, and a rotation's grace.

``ClientKeyForm`` only validates and shows; saving is the admin's, through
``plugins_api.access.key_changes``. Its model access is typed as text (one
``provider/model`` pattern per line, or comma-separated) and stored as a
list. Every value goes through ``validate_key``, the same check the API and
the commands use, and each of its messages lands on the field it names.
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

from django import forms
from django.core.exceptions import NON_FIELD_ERRORS, ValidationError
from django.forms.models import construct_instance

from plugins_api.access.key_changes import MAX_GRACE, validate_key
from plugins_api.access.key_model_access import MAX_PATTERN_CHARS, MAX_PATTERNS, parse_patterns
from plugins_api.models import ClientAPIKey

#: The fields of the add and change forms, in the order shown.
KEY_FIELDS = (
    "name",
    "scope",
    "owner",
    "requests_per_minute",
    "tokens_per_minute",
    "max_concurrent_requests",
    "allowed_models",
    "default_model",
    "expires_at",
    "budget_usd",
    "budget_period",
)
#: The most text the allowed models box takes: every pattern at full length, with a separator.
MAX_MODELS_TEXT = MAX_PATTERNS * (MAX_PATTERN_CHARS + 2)
_SEPARATORS = re.compile(r"[,\r\n]+")


def patterns_from_text(text: str) -> list[str]:
    """Return the patterns of TEXT (one per line or comma-separated), or raise ``ValidationError``."""
    items = [item.strip() for item in _SEPARATORS.split(text or "")]
    try:
        return list(parse_patterns([item for item in items if item]))
    except ValueError as exc:
        raise ValidationError(str(exc), code="invalid") from exc


class ClientKeyForm(forms.ModelForm):
    """A client key's name, scope, owner, limits, model access, expiry and budget."""

    allowed_models = forms.CharField(
        label="allowed models",
        required=False,
        max_length=MAX_MODELS_TEXT,
        widget=forms.Textarea(attrs={"rows": 4, "cols": 50}),
        help_text=(
            "One provider/model pattern per line or comma-separated, e.g. openai/* or "
            "echo/echo-1. Empty: every model."
        ),
    )

    class Meta:
        model = ClientAPIKey
        fields = KEY_FIELDS
        help_texts = {
            "requests_per_minute": "Empty: no limit.",
            "tokens_per_minute": "Empty: no limit (counted from each answer's usage).",
            "max_concurrent_requests": "Empty: no limit.",
            "default_model": "provider/model used when a call names none (optional).",
            "expires_at": "After this moment the key is refused. Empty: never.",
            "budget_usd": "Spend cap per period, from the recorded cost. Empty: none.",
            "budget_period": "The period the budget is counted over (UTC).",
        }

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if "allowed_models" in self.fields and not self.is_bound:
            stored = self.instance.allowed_models
            if isinstance(stored, list):
                self.initial["allowed_models"] = "\n".join(str(item) for item in stored)

    def clean_allowed_models(self) -> list[str]:
        """Return the typed patterns as a list, or name the first that is not one."""
        return patterns_from_text(self.cleaned_data.get("allowed_models") or "")

    def _post_clean(self) -> None:
        """Put the cleaned values on the instance and check it the one way keys are checked."""
        try:
            self.instance = construct_instance(self, self.instance, self._meta.fields)
        except ValidationError as exc:
            self._add_key_errors(exc)
            return
        try:
            validate_key(self.instance)
        except ValidationError as exc:
            self._add_key_errors(exc)

    def _add_key_errors(self, error: ValidationError) -> None:
        """Add ERROR's messages to the fields they name; a field not on the form goes on top."""
        by_field = (
            error.message_dict
            if hasattr(error, "error_dict")
            else {NON_FIELD_ERRORS: error.messages}
        )
        for field, messages in by_field.items():
            if field in self.fields:
                if field not in self.errors:  # the form's own check already said why
                    self.add_error(field, messages)
            else:
                label = "" if field == NON_FIELD_ERRORS else f"{field}: "
                self.add_error(None, [f"{label}{message}" for message in messages])


#: The grace periods offered for a rotated key's former secret, in seconds.
GRACE_CHOICES = [
    ("0", "none: the former secret stops now"),
    ("3600", "1 hour"),
    ("86400", "24 hours"),
    ("604800", "7 days"),
    ("hours", "a number of hours:"),
]


class RotateKeyForm(forms.Form):
    """How long a rotated key's former secret keeps working."""

    grace = forms.ChoiceField(
        label="the former secret keeps working for",
        choices=GRACE_CHOICES,
        initial="3600",
        widget=forms.RadioSelect,
    )
    hours = forms.IntegerField(
        label="hours",
        required=False,
        min_value=0,
        max_value=int(MAX_GRACE.total_seconds()) // 3600,
        help_text=f"0 to {int(MAX_GRACE.total_seconds()) // 3600} hours.",
    )

    def clean(self) -> dict[str, Any]:
        """Require the hours when the choice is a number of hours."""
        cleaned = super().clean()
        if (
            cleaned.get("grace") == "hours"
            and cleaned.get("hours") is None
            and "hours" not in self.errors
        ):
            self.add_error("hours", "Give the number of hours.")
        return cleaned

    def grace_period(self) -> timedelta:
        """Return the chosen grace period (call after ``is_valid``)."""
        choice = self.cleaned_data["grace"]
        if choice == "hours":
            return timedelta(hours=self.cleaned_data["hours"])
        return timedelta(seconds=int(choice))
