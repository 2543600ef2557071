"""The Django admin for model groups: public model names served by weighted deployments.

The form takes one deployment per line, ``provider/model`` and an optional
weight (``openai/gpt-4o-mini 3``), and checks everything through
``providers.config.services.model_group_errors``, the one set of rules the
API and the YAML import use too. Saves and deletions go through the
services, so each is audited (under ``group:<name>`` in the provider
changes) and served by every worker once committed.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from django import forms
from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest
from django.urls import reverse
from django.utils.html import format_html, format_html_join

from providers.audit.history import SOURCE_ADMIN, actor_for_request
from providers.config.services import (
    MAX_DEPLOYMENTS,
    group_audit_name,
    model_group_create,
    model_group_delete,
    model_group_errors,
    model_group_update,
)
from providers.models import ModelGroup
from providers.runtime import process as runtime

#: Characters in the deployments box; far more than MAX_DEPLOYMENTS lines need.
MAX_DEPLOYMENT_TEXT = 20_000


def deployments_text(deployments: list[dict[str, Any]]) -> str:
    """Return DEPLOYMENTS as the form's lines: ``provider/model weight``."""
    return "\n".join(
        f"{d.get('provider')}/{d.get('model')} {d.get('weight', 1)}"
        for d in deployments or []
        if isinstance(d, dict)
    )


def parse_deployment_lines(text: str) -> tuple[list[dict[str, Any]], list[str]]:
    """Return (the deployments of TEXT's lines, the mistakes, each naming its line).

    A line is ``provider/model`` followed by an optional whole-number weight;
    blank lines are skipped. What the values may be is the services' to say.
    """
    deployments: list[dict[str, Any]] = []
    problems: list[str] = []
    lines = [line.strip() for line in text.splitlines()]
    for number, line in enumerate(lines, start=1):
        if not line:
            continue
        parts = line.split()
        if len(parts) > 2:
            problems.append(f"Line {number}: write 'provider/model' and an optional weight.")
            continue
        route = parts[0]
        provider, slash, model = route.partition("/")
        if not slash or not provider or not model:
            problems.append(f"Line {number}: {route[:60]!r} is not 'provider/model'.")
            continue
        weight: Any = 1
        if len(parts) == 2:
            weight = int(parts[1]) if parts[1].isdigit() else parts[1][:20]
        deployments.append({"provider": provider, "model": model, "weight": weight})
    return deployments, problems


class ModelGroupForm(forms.ModelForm):
    """A model group, its deployments as lines; validated by the services' rules."""

    deployments_lines = forms.CharField(
        label="Deployments",
        widget=forms.Textarea(attrs={"rows": 6, "cols": 60}),
        max_length=MAX_DEPLOYMENT_TEXT,
        help_text=(
            "One per line: 'provider/model' and an optional weight (a whole number, 1 when "
            f"left out), e.g. 'openai/gpt-4o-mini 3'. At most {MAX_DEPLOYMENTS}."
        ),
    )

    class Meta:
        model = ModelGroup
        fields = ["name", "strategy", "enabled"]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.instance.pk is not None:
            self.initial["deployments_lines"] = deployments_text(self.instance.deployments)

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean()
        text = cleaned.get("deployments_lines")
        if text is None:
            return cleaned
        deployments, problems = parse_deployment_lines(text)
        for problem in problems:
            self.add_error("deployments_lines", problem)
        if problems:
            return cleaned
        adding = self.instance.pk is None
        normalized, errors = model_group_errors(
            name=cleaned.get("name") if adding else None,
            strategy=cleaned.get("strategy", self.instance.strategy),
            deployments=deployments,
            enabled=bool(cleaned.get("enabled", self.instance.enabled)),
        )
        for key, messages in errors.items():
            field = key if key in ("name", "strategy", "enabled") else "deployments_lines"
            if field in self.errors and field != "deployments_lines":
                continue  # Django's own message for the same input says it already
            prefix = ""
            if key.startswith("deployments."):
                index, _, attribute = key[len("deployments.") :].partition(".")
                prefix = f"Line {int(index) + 1}{f' ({attribute})' if attribute else ''}: "
            for message in messages:
                self.add_error(field, f"{prefix}{message}")
        cleaned["deployments"] = normalized
        return cleaned


@admin.register(ModelGroup)
class ModelGroupAdmin(admin.ModelAdmin):
    """Model groups: what each public name is served by, how it is picked, and its history."""

    form = ModelGroupForm
    list_display = ("name", "strategy", "deployment_list", "enabled", "serving")
    list_filter = ("strategy", "enabled")
    search_fields = ("name",)

    def get_fields(self, request: HttpRequest, obj: ModelGroup | None = None) -> list[str]:
        fields = ["name", "strategy", "deployments_lines", "enabled"]
        if obj is not None:
            fields += ["serving", "revision", "updated_at", "change_history"]
        return fields

    def get_readonly_fields(
        self, request: HttpRequest, obj: ModelGroup | None = None
    ) -> tuple[str, ...]:
        if obj is None:
            return ()
        return ("name", "serving", "revision", "updated_at", "change_history")

    @admin.display(description="deployments")
    def deployment_list(self, obj: ModelGroup) -> str:
        """Each deployment as ``provider/model ×weight``, one per line."""
        return format_html_join(
            "",
            "<div>{}/{} ×{}</div>",
            (
                (d.get("provider"), d.get("model"), d.get("weight", 1))
                for d in obj.deployments or []
                if isinstance(d, dict)
            ),
        )

    @admin.display(description="served here")
    def serving(self, obj: ModelGroup) -> str:
        """Whether this worker serves the group now (a change reaches it within seconds)."""
        served = runtime.manager.groups.get(obj.name) is not None
        if served:
            return "yes"
        return "no (disabled)" if not obj.enabled else "not yet"

    @admin.display(description="history")
    def change_history(self, obj: ModelGroup) -> str:
        """A link to the group's audited changes in the provider changes list."""
        url = reverse("admin:providers_providerconfigchange_changelist")
        query = urlencode({"provider_name": group_audit_name(obj.name)})
        return format_html('<a href="{}?{}">Changes of this group</a>', url, query)

    def save_model(self, request: HttpRequest, obj: ModelGroup, form: Any, change: bool) -> None:
        """Save through the services: validated, audited (source "admin"), served everywhere."""
        actor = actor_for_request(request, SOURCE_ADMIN)
        cleaned = form.cleaned_data
        if change:
            saved = model_group_update(
                group=obj,
                changes={
                    "strategy": cleaned["strategy"],
                    "deployments": cleaned["deployments"],
                    "enabled": cleaned["enabled"],
                },
                actor=actor,
            )
        else:
            saved = model_group_create(
                name=cleaned["name"],
                strategy=cleaned["strategy"],
                deployments=cleaned["deployments"],
                enabled=cleaned["enabled"],
                actor=actor,
            )
        obj.pk = saved.pk
        obj.refresh_from_db()

    def delete_model(self, request: HttpRequest, obj: ModelGroup) -> None:
        """Delete through the services, so that the deletion is audited and served."""
        model_group_delete(group=obj, actor=actor_for_request(request, SOURCE_ADMIN))

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[ModelGroup]) -> None:
        """Delete each selected group through the services (the bulk action), each audited."""
        actor = actor_for_request(request, SOURCE_ADMIN)
        for group in queryset:
            model_group_delete(group=group, actor=actor)
