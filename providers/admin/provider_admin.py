"""The Django admin for providers and their health history.

Adding a provider takes two pages and no JavaScript: ``add/`` lists the
installed plugins, and each links to ``add/?plugin=<name>``, whose form shows
that plugin's settings as fields (``providers.admin.provider_form``). The plugin, and
the name, are fixed once the provider exists: a different plugin has
different settings, and renaming is not supported.

The form puts what every new provider needs first (name, plugin, its
secrets such as the API key, its URL, enabled, default), then the plugin's
other settings, and keeps the rest (fallbacks, routing priority, retries,
the circuit breaker, timeouts, extra settings) in a collapsed "Advanced"
section, opened by itself when one of its fields has an error. Its **Test
connection** button checks the settings as typed without saving them
(``provider_form.connection_test``), and a provider added is checked at
once after its creation commits, its result recorded like the "Check
health now" action's, rather than "never checked" until the next round.

Saves go through ``providers.config.services`` like every other interface, so the
same validation applies, a new default replaces the old one, and the
post-save signal reloads the provider once the change commits.

Health history is drawn on the server as inline SVG (no JavaScript, nothing
fetched from elsewhere): a latency line with a red dot per failed check, small
in the list and larger on the provider's page, beside this worker's circuit
breaker state. Every text that reaches the page goes through ``format_html``,
and errors have the provider's secrets masked.

Each save and delete names its actor (the admin user, source "admin", the
request's address) for the audit trail, which the provider's "History" page
lists (``history_view``) and exports as CSV and JSON; all changes, deleted
providers' included, are under "Provider changes", read-only. A provider
whose secrets no key decrypts is shown with that reason instead of masks,
and typing its secrets again replaces them.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from django.conf import settings
from django.contrib import admin, messages
from django.contrib.admin.options import IncorrectLookupParameters
from django.contrib.admin.utils import unquote
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.db import transaction
from django.db.models import Count, Prefetch, QuerySet
from django.forms import ModelForm
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseBadRequest
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils import timezone
from django.utils.decorators import method_decorator
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString, mark_safe
from django.utils.text import Truncator
from django.utils.timesince import timesince
from django.views.decorators.debug import sensitive_post_parameters

from providers.admin.provider_form import (
    ADVANCED_SETTINGS,
    EXTRA_SETTINGS,
    TEST_BUTTON,
    ProviderConfigForm,
    clear_field_name,
    is_url_setting,
    provider_config_form,
    setting_field_name,
)
from providers.admin.read_only import ReadOnlyAdmin
from providers.audit.export import change_record, export_filename, records_csv, records_json
from providers.audit.history import SOURCE_ADMIN, Actor, actor_for_request
from providers.config import selectors
from providers.config.services import (
    provider_config_create,
    provider_config_delete,
    provider_config_update,
)
from providers.health.monitor import ProviderHealth
from providers.health.status import breaker_state
from providers.models import HealthCheck, ProviderConfig, ProviderConfigChange
from providers.runtime import config_sync
from providers.runtime import process as runtime
from providers.secrets.masking import mask_secret, redact

ROUTING_FIELDS = ["name", "plugin", "enabled", "is_default", "fallbacks", "routing_priority"]
ADVANCED_DESCRIPTION = (
    "Fallbacks, routing priority, retries, the circuit breaker, timeouts and extra settings. "
    "The defaults suit most providers."
)
# How many checks the list's sparkline and the provider page's chart draw.
LIST_HISTORY_CHECKS = 20
PAGE_HISTORY_CHECKS = 50
LATENCY_COLOUR = "#417690"  # the admin's own blue
DOWN_COLOUR = "#ba2121"  # the admin's error red
HALF_OPEN_COLOUR = "#b86e00"
HISTORY_PAGE_SIZE = 100
HISTORY_URL = "admin:providers_providerconfig_history"
HISTORY_EXPORT_URL = "admin:providers_providerconfig_history_export"


def _safe_text(config: ProviderConfig, text: str | None) -> str:
    """Return TEXT with CONFIG's secrets masked, in case a plugin put one in an error."""
    return redact(text or "", selectors.provider_secret_values(name=config.name, config=config))


def _recent_health(config: ProviderConfig, count: int) -> list[HealthCheck]:
    """Return CONFIG's latest COUNT health checks, newest first (prefetched for the list)."""
    prefetched = getattr(config, "recent_health_checks", None)
    # Fewer rows than the prefetch window means the prefetch holds them all.
    if prefetched is not None and (
        count <= LIST_HISTORY_CHECKS or len(prefetched) < LIST_HISTORY_CHECKS
    ):
        return list(prefetched[:count])
    return list(config.health_checks.order_by("-checked_at", "-pk")[:count])


def _latest_health(config: ProviderConfig) -> HealthCheck | None:
    recent = _recent_health(config, 1)
    return recent[0] if recent else None


def _local(moment: Any) -> str:
    """Return MOMENT in the site's time zone, to the second, naming the zone."""
    return f"{timezone.localtime(moment):%Y-%m-%d %H:%M:%S %Z}"


def _shown_value(value: Any) -> str:
    return "(unset)" if value is None else json.dumps(value, ensure_ascii=False, sort_keys=True)


def render_changes(changes: list[dict[str, Any]]) -> SafeString:
    """Render an audit entry's field changes as a list: field, before, after.

    A secret's values are masks already; they are labelled as such.
    """
    if not changes:
        return format_html("{}", "-")
    items = []
    for change in changes:
        if change.get("secret"):
            before = change.get("before") or "(unset)"
            after = change.get("after") or "(unset)"
            items.append(
                format_html(
                    "<li><code>{}</code>: {} &rarr; {} <em>(secret, masked)</em></li>",
                    change.get("field", ""),
                    before,
                    after,
                )
            )
        else:
            items.append(
                format_html(
                    "<li><code>{}</code>: {} &rarr; {}</li>",
                    change.get("field", ""),
                    _shown_value(change.get("before")),
                    _shown_value(change.get("after")),
                )
            )
    return format_html('<ul class="audit-changes">{}</ul>', mark_safe("".join(items)))


def _admin_actor(request: HttpRequest) -> Actor:
    return actor_for_request(request, SOURCE_ADMIN)


def _download(body: str, content_type: str, filename: str) -> HttpResponse:
    response = HttpResponse(body, content_type=content_type)
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    return response


def health_sparkline(
    checks: Sequence[HealthCheck], *, config: ProviderConfig, width: int, height: int
) -> SafeString:
    """Draw CHECKS (oldest first) as inline SVG: a latency line, a red dot per failed check.

    The line joins the available checks' latencies, scaled to the slowest of
    them: a failed check's latency is often its timeout, which would flatten
    the rest. Failed checks sit on the baseline, their error (secrets masked)
    in a tooltip.
    """
    if not checks:
        return format_html("{}", "no checks yet")
    pad = 3.0
    step = (width - 2 * pad) / (len(checks) - 1) if len(checks) > 1 else 0.0
    latencies = [
        c.response_time_ms for c in checks if c.available and c.response_time_ms is not None
    ]
    slowest = max(latencies, default=0.0) or 1.0
    points: list[str] = []
    failures: list[tuple[str, str, str]] = []
    for index, check in enumerate(checks):
        x = pad + index * step if len(checks) > 1 else width / 2
        if not check.available:
            error = Truncator(_safe_text(config, check.error) or "unavailable").chars(120)
            failures.append(
                (f"{x:.1f}", f"{height - pad:.1f}", f"{_local(check.checked_at)} {error}")
            )
        elif check.response_time_ms is not None:
            y = height - pad - (check.response_time_ms / slowest) * (height - 2 * pad)
            points.append(f"{x:.1f},{y:.1f}")
    down = len(failures)
    summary = f"{len(checks)} checks, {down} down"
    if latencies:
        summary += f", latency {min(latencies):g} to {max(latencies):g} ms"
    line = (
        format_html(
            '<polyline points="{}" fill="none" stroke="{}" stroke-width="1.5" '
            'stroke-linejoin="round" stroke-linecap="round"/>',
            " ".join(points),
            LATENCY_COLOUR,
        )
        if points
        else ""
    )
    dots = format_html_join(
        "",
        '<circle cx="{}" cy="{}" r="2.5" fill="{}"><title>{}</title></circle>',
        ((x, y, DOWN_COLOUR, title) for x, y, title in failures),
    )
    return format_html(
        '<svg xmlns="http://www.w3.org/2000/svg" class="health-sparkline" width="{}" '
        'height="{}" viewBox="0 0 {} {}" role="img" aria-label="{}">'
        "<title>{}</title>{}{}</svg>",
        width,
        height,
        width,
        height,
        summary,
        summary,
        line,
        dots,
    )


async def _check_providers(names: list[str]) -> dict[str, ProviderHealth]:
    """Check the live providers NAMES concurrently, updating their latest state and breakers.

    The action records its own rows (disabled providers included), so the monitor records none.
    """
    return await runtime.monitor.check_all(
        timeout=settings.ECHO_HEALTH_TIMEOUT_SECONDS, names=names, record=False
    )


@admin.register(ProviderConfig)
class ProviderConfigAdmin(admin.ModelAdmin):
    """Providers: settings from the plugin's schema, masked secrets, live state and health."""

    form = ProviderConfigForm
    list_display = (
        "name",
        "plugin",
        "enabled",
        "is_default",
        "live_state",
        "last_health",
        "health_trend",
        "breaker",
    )
    list_filter = ("enabled", "is_default", "plugin")
    search_fields = ("name", "plugin")
    actions = ("check_health_now", "reload_providers")
    choose_plugin_template = "admin/providers/providerconfig/choose_plugin.html"

    def get_queryset(self, request: HttpRequest) -> QuerySet[ProviderConfig]:
        recent = HealthCheck.objects.order_by("-checked_at", "-pk")[:LIST_HISTORY_CHECKS]
        return (
            super()
            .get_queryset(request)
            .prefetch_related(Prefetch("health_checks", recent, to_attr="recent_health_checks"))
        )

    # --- the add page's plugin choice ----------------------------------------

    def add_view(
        self, request: HttpRequest, form_url: str = "", extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        """Show the form for ``?plugin=<name>``; without a known plugin, ask for one first."""
        plugin = request.GET.get("plugin")
        if plugin not in runtime.registry.plugins():
            return self.choose_plugin_view(request, unknown=plugin)
        return super().add_view(request, form_url, extra_context)

    def choose_plugin_view(self, request: HttpRequest, unknown: str | None = None) -> HttpResponse:
        """List the installed plugins, each linking to the add form for it."""
        if not self.has_add_permission(request):
            raise PermissionDenied
        plugins = []
        for name, entry in sorted(runtime.registry.plugins().items()):
            query = request.GET.copy()
            query["plugin"] = name
            plugins.append(
                {
                    "name": name,
                    "description": _plugin_description(entry.cls),
                    "url": f"?{query.urlencode()}",
                }
            )
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": "Add provider: choose its plugin",
            "plugins": plugins,
            "unknown": unknown,
            "has_view_permission": self.has_view_permission(request),
        }
        return TemplateResponse(request, self.choose_plugin_template, context)

    def _plugin_for(self, request: HttpRequest, obj: ProviderConfig | None) -> str | None:
        return obj.plugin if obj is not None else request.GET.get("plugin")

    # --- the form ---------------------------------------------------------

    def get_form(
        self,
        request: HttpRequest,
        obj: ProviderConfig | None = None,
        change: bool = False,
        **kwargs: Any,
    ) -> type[ModelForm]:
        form = provider_config_form(self._plugin_for(request, obj), obj)
        # As ModelAdmin does for self.form: a read-only field must not stay a declared form field.
        readonly = self.get_readonly_fields(request, obj)
        form = type(
            form.__name__, (form,), dict.fromkeys(f for f in readonly if f in form.declared_fields)
        )
        return super().get_form(request, obj, change=change, form=form, **kwargs)

    def get_readonly_fields(
        self, request: HttpRequest, obj: ProviderConfig | None = None
    ) -> tuple[str, ...]:
        if obj is None:
            return ()
        return (
            "name",
            "plugin",
            "disabled_reason",
            "live_state",
            "last_health",
            "breaker",
            "health_history",
            "updated_at",
            "change_history",
            "settings_summary",
            "secrets_summary",
        )

    def get_fieldsets(
        self, request: HttpRequest, obj: ProviderConfig | None = None
    ) -> list[tuple[str | None, dict[str, Any]]]:
        """Lay the form out: what a provider needs first, its other settings, then "Advanced", collapsed.

        First: name, plugin, the plugin's secrets (the API key) and its URL
        settings, enabled, default. The advanced section holds fallbacks,
        routing priority, the settings every provider shares (retries,
        breaker, deadline, timeouts, pool: ``ADVANCED_SETTINGS``) and the
        extra settings.
        """
        plugin = self._plugin_for(request, obj)
        form = provider_config_form(plugin, obj)
        status = (
            "Status",
            {
                "fields": [
                    "live_state",
                    "last_health",
                    "breaker",
                    "health_history",
                    "updated_at",
                    "change_history",
                ]
            },
        )
        if obj is not None and not self.has_change_permission(request, obj):
            # Read-only visitors get no form fields to show values in: summarize instead.
            routing = list(ROUTING_FIELDS)
            if not obj.enabled:
                routing.insert(routing.index("enabled") + 1, "disabled_reason")
            return [
                (None, {"fields": routing}),
                status,
                ("Settings", {"fields": ["settings_summary", "secrets_summary"]}),
            ]
        properties = (form.schema or {}).get("properties") or {}
        urls = [p for p in form.setting_props if is_url_setting(p, properties.get(p) or {})]
        advanced_settings = [p for p in form.setting_props if p in ADVANCED_SETTINGS]
        other_settings = [p for p in form.setting_props if p not in {*urls, *advanced_settings}]
        first: list[str] = ["name", "plugin"]
        for prop in form.secret_props:
            first.append(setting_field_name(prop))
            if prop in form.clearable_props:
                first.append(clear_field_name(prop))
        first += [setting_field_name(p) for p in urls]
        first.append("enabled")
        if obj is not None and not obj.enabled:
            first.append("disabled_reason")
        first.append("is_default")
        description: Any = None
        if form.secret_props and obj is None:
            description = "Secrets are stored encrypted and, once saved, shown only masked."
        elif form.secret_props:
            description = (
                "Stored secrets are never shown, only masked. "
                "Leave a secret blank to keep the stored one."
            )
            if obj.secrets_error:
                description = format_html(
                    '<strong class="errornote">{}</strong> Type the secrets again: they replace '
                    "the stored ones.",
                    obj.secrets_error,
                )
        fieldsets: list[tuple[str | None, dict[str, Any]]] = [
            (None, {"fields": first, **({"description": description} if description else {})})
        ]
        if obj is not None:
            fieldsets.append(status)
        if form.schema is None:
            fieldsets.append(
                (
                    "Settings",
                    {
                        "fields": [],
                        "description": format_html(
                            "The plugin {} is not installed, so its settings cannot be edited.",
                            plugin or "",
                        ),
                    },
                )
            )
        elif other_settings:
            fieldsets.append(
                (
                    f"Settings of the {plugin} plugin",
                    {
                        "fields": [setting_field_name(p) for p in other_settings],
                        "description": "A blank field uses the plugin's default.",
                    },
                )
            )
        advanced = ["fallbacks", "routing_priority"]
        advanced += [setting_field_name(p) for p in advanced_settings]
        if form.has_extra_settings:
            advanced.append(EXTRA_SETTINGS)
        fieldsets.append(
            (
                "Advanced",
                {"fields": advanced, "classes": ["collapse"], "description": ADVANCED_DESCRIPTION},
            )
        )
        return fieldsets

    # --- Test connection, and the first check of a new provider -----------------

    @method_decorator(sensitive_post_parameters())
    def changeform_view(
        self,
        request: HttpRequest,
        object_id: str | None = None,
        form_url: str = "",
        extra_context: dict[str, Any] | None = None,
    ) -> HttpResponse:
        """The add and change form; its posts carry secrets, kept out of any error report.

        A post of the Test connection button (``TEST_BUTTON``) is validated and
        tested by the form, which then refuses to be saved: the admin's own
        view shows the form again, with the result (``render_change_form``).
        """
        return super().changeform_view(request, object_id, form_url, extra_context)

    def render_change_form(
        self,
        request: HttpRequest,
        context: dict[str, Any],
        add: bool = False,
        change: bool = False,
        form_url: str = "",
        obj: ProviderConfig | None = None,
    ) -> HttpResponse:
        """Render the form with the Test connection button and, after a test, its result."""
        form = getattr(context.get("adminform"), "form", None)
        context["test_button"] = TEST_BUTTON
        context["connection_result"] = getattr(form, "connection_result", None)
        context["connection_tested"] = bool(getattr(form, "testing", False))
        return super().render_change_form(request, context, add, change, form_url, obj)

    def save_model(
        self, request: HttpRequest, obj: ProviderConfig, form: Any, change: bool
    ) -> None:
        """Save through the provider services: the one write path, which keeps one default.

        The audit entry names the admin user, source "admin" and the request's address.
        """
        actor = _admin_actor(request)
        # The change the form's validation checked (its candidate started):
        # saved as is, unless another write moved the row in between.
        checked = getattr(form, "checked_change", None)
        if change:
            saved = provider_config_update(
                config=obj, changes=form.update_changes(), actor=actor, checked=checked
            )
        else:
            saved = provider_config_create(**form.create_arguments(), actor=actor, checked=checked)
            # After the commit, once this worker serves it (config sync's hook runs first).
            transaction.on_commit(lambda: self._check_new_provider(request, saved.pk), robust=True)
        # The admin goes on with OBJ (log entry, redirect): give it the saved row.
        obj.pk = saved.pk
        obj.refresh_from_db()

    def _check_new_provider(self, request: HttpRequest, pk: int) -> None:
        """Check a provider just added and record the result, as "Check health now" would.

        A disabled one is not checked: down on purpose is no outage (the
        health monitor records none for it either).
        """
        config = ProviderConfig.objects.filter(pk=pk).first()
        if config is not None and config.enabled:
            self._check_and_record(request, [config])

    def delete_model(self, request: HttpRequest, obj: ProviderConfig) -> None:
        """Delete through the services, so that the deletion is audited."""
        provider_config_delete(config=obj, actor=_admin_actor(request))

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[ProviderConfig]) -> None:
        """Delete each selected provider through the services (the bulk action), each audited."""
        actor = _admin_actor(request)
        for config in queryset:
            provider_config_delete(config=config, actor=actor)

    def get_deleted_objects(
        self, objs: Sequence[ProviderConfig] | QuerySet[ProviderConfig], request: HttpRequest
    ) -> tuple[list[Any], dict[str, int], set[str], list[Any]]:
        """Say what deleting OBJS takes with it: each provider's health checks, counted, not listed.

        The health history is read-only in the admin (nobody deletes one check
        by hand), so Django's default would refuse every deletion of a provider
        that has been checked, for want of a permission nobody has. The checks
        belong to their provider and go with it; its change history stays.
        """
        configs = list(objs)
        counts = dict(
            HealthCheck.objects.filter(provider__in=configs)
            .values("provider")
            .annotate(count=Count("id"))
            .values_list("provider", "count")
        )
        deleted: list[Any] = []
        for config in configs:
            checks = counts.get(config.pk, 0)
            deleted.append(
                format_html(
                    'Provider: <a href="{}">{}</a>',
                    reverse("admin:providers_providerconfig_change", args=[config.pk]),
                    config.name,
                )
            )
            deleted.append(
                [
                    f"{checks} health check{'' if checks == 1 else 's'} (its check history)",
                    "Kept: its change history (Provider changes), and its recorded usage",
                ]
            )
        model_count = {ProviderConfig._meta.verbose_name_plural: len(configs)}
        if sum(counts.values()):
            model_count[HealthCheck._meta.verbose_name_plural] = sum(counts.values())
        return deleted, model_count, set(), []

    # --- the audit trail ----------------------------------------------------

    def get_urls(self) -> list[URLPattern]:
        own = [
            path(
                "<path:object_id>/history/export.<str:extension>",
                self.admin_site.admin_view(self.history_export_view),
                name=HISTORY_EXPORT_URL.removeprefix("admin:"),
            ),
        ]
        return own + super().get_urls()

    def _history_object(self, request: HttpRequest, object_id: str) -> ProviderConfig:
        obj = self.get_object(request, unquote(object_id))
        if obj is None:
            raise Http404(f"No provider with id {object_id!r}.")
        if not self.has_view_or_change_permission(request, obj):
            raise PermissionDenied
        return obj

    def history_view(
        self, request: HttpRequest, object_id: str, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        """List the provider's audit trail, newest first, with links to export it."""
        obj = self._history_object(request, object_id)
        entries = selectors.provider_change_list(provider=obj.name)
        page = Paginator(entries, HISTORY_PAGE_SIZE).get_page(request.GET.get("p"))
        for entry in page:
            entry.rendered_changes = render_changes(entry.changes)
        context = {
            **self.admin_site.each_context(request),
            "title": f"Change history: {obj.name}",
            "subtitle": None,
            "opts": self.opts,
            "object": obj,
            "entries": list(page),
            "page": page,
            "export_csv_url": reverse(HISTORY_EXPORT_URL, args=[obj.pk, "csv"]),
            "export_json_url": reverse(HISTORY_EXPORT_URL, args=[obj.pk, "json"]),
            **(extra_context or {}),
        }
        return TemplateResponse(
            request, "admin/providers/providerconfig/change_history.html", context
        )

    def history_export_view(
        self, request: HttpRequest, object_id: str, extension: str
    ) -> HttpResponse:
        """Download the provider's whole audit trail as CSV or JSON."""
        obj = self._history_object(request, object_id)
        records = (change_record(c) for c in selectors.provider_change_list(provider=obj.name))
        filename = export_filename(obj.name, extension)
        if extension == "csv":
            return _download(records_csv(records), "text/csv; charset=utf-8", filename)
        if extension == "json":
            return _download(records_json(records), "application/json", filename)
        raise Http404("Export as .csv or .json.")

    @admin.display(description="change history")
    def change_history(self, obj: ProviderConfig) -> str:
        """Summarize the audit trail: how many changes, the latest, links to all of it."""
        entries = selectors.provider_change_list(provider=obj.name)
        latest = entries.first()
        links = format_html(
            '<a href="{}">see all</a>, export <a href="{}">CSV</a> or <a href="{}">JSON</a>',
            reverse(HISTORY_URL, args=[obj.pk]),
            reverse(HISTORY_EXPORT_URL, args=[obj.pk, "csv"]),
            reverse(HISTORY_EXPORT_URL, args=[obj.pk, "json"]),
        )
        if latest is None:
            return format_html("no change recorded ({})", links)
        count = entries.count()
        return format_html(
            "{} change{}; the latest: {} {} by {} via {} ({})",
            count,
            "" if count == 1 else "s",
            latest.action,
            _local(latest.changed_at),
            latest.actor,
            latest.source,
            links,
        )

    # --- read-only summaries -------------------------------------------------

    @admin.display(description="settings")
    def settings_summary(self, obj: ProviderConfig) -> str:
        """List the stored settings, one per line (the plugin's defaults apply to the rest)."""
        lines = [
            f"{key}: {json.dumps(value)}" for key, value in sorted((obj.settings or {}).items())
        ]
        return format_html_join(mark_safe("<br>"), "{}", ((line,) for line in lines)) or "-"

    @admin.display(description="secrets")
    def secrets_summary(self, obj: ProviderConfig) -> str:
        """List the stored secrets, masked, or say that they cannot be decrypted."""
        stored = obj.readable_secrets()
        if stored is None:
            return format_html('<span class="errornote">{}</span>', obj.secrets_error)
        lines = [f"{key}: {mask_secret(value)}" for key, value in sorted(stored.items())]
        return format_html_join(mark_safe("<br>"), "{}", ((line,) for line in lines)) or "-"

    # --- columns ------------------------------------------------------------

    @admin.display(description="live")
    def live_state(self, obj: ProviderConfig) -> str:
        """Say whether this process serves the provider, and why not."""
        if not obj.enabled:
            return format_html(
                "disabled: {}", _safe_text(obj, obj.disabled_reason) or "no reason given"
            )
        status = runtime.registry.status(obj.name)
        if obj.secrets_error and not status["loaded"]:
            # Said from the row itself: true whatever this worker last tried to load.
            return format_html("not serving: {}", obj.secrets_error)
        error = _safe_text(obj, status.get("last_error"))
        if status["loaded"]:
            if error:
                return format_html("live (last reload failed: {})", error)
            return "live"
        return format_html("not loaded: {}", error or "not loaded yet")

    @admin.display(description="last health")
    def last_health(self, obj: ProviderConfig) -> str:
        """Show the latest health check: up or down, latency, how long ago."""
        check = _latest_health(obj)
        if check is None:
            return "never checked"
        ago = f"{timesince(check.checked_at)} ago"
        if check.available:
            latency = (
                f"{check.response_time_ms:g} ms, " if check.response_time_ms is not None else ""
            )
            return format_html("up ({}{})", latency, ago)
        error = _safe_text(obj, check.error)
        return format_html(
            '<span title="{}">down: {} ({})</span>', error, Truncator(error).chars(80), ago
        )

    @admin.display(description="health history")
    def health_trend(self, obj: ProviderConfig) -> str:
        """Draw the latest checks as a small sparkline."""
        checks = _recent_health(obj, LIST_HISTORY_CHECKS)[::-1]
        return health_sparkline(checks, config=obj, width=100, height=20)

    @admin.display(description="health history")
    def health_history(self, obj: ProviderConfig) -> str:
        """Draw the latest checks as a chart: latency over time, failed checks in red."""
        checks = _recent_health(obj, PAGE_HISTORY_CHECKS)[::-1]
        if not checks:
            return "no checks yet"
        chart = health_sparkline(checks, config=obj, width=400, height=60)
        return format_html(
            '{}<div class="help">The last {} checks, oldest on the left, from {} to {}: '
            "latency of the available ones, a red dot per failed one (hover for the error). "
            "The slowest is at the top.</div>",
            chart,
            len(checks),
            _local(checks[0].checked_at),
            _local(checks[-1].checked_at),
        )

    @admin.display(description="breaker")
    def breaker(self, obj: ProviderConfig) -> str:
        """Show this worker's circuit breaker: closed, open (until when, why) or half-open."""
        if not obj.enabled:
            return "-"
        state = breaker_state(obj.name, obj)
        failures = state.get("consecutive_failures") or 0
        if state.get("state") == "open":
            last = state.get("last_failure")
            return format_html(
                '<strong style="color: {}">open</strong>: a probe in {} s; {} failures in a row{}',
                DOWN_COLOUR,
                f"{state.get('retry_in_seconds', 0):g}",
                failures,
                format_html("; last: {}", Truncator(last).chars(120)) if last else "",
            )
        if state.get("state") == "half_open":
            return format_html(
                '<strong style="color: {}">half-open</strong>: the next call is a probe',
                HALF_OPEN_COLOUR,
            )
        if failures:
            return format_html("closed ({} failures in a row)", failures)
        return "closed"

    # --- actions ------------------------------------------------------------

    @admin.action(description="Check health now")
    def check_health_now(self, request: HttpRequest, queryset: QuerySet[ProviderConfig]) -> None:
        """Check the selected providers, record each result, and say how each went."""
        self._check_and_record(request, list(queryset))

    def _check_and_record(self, request: HttpRequest, configs: list[ProviderConfig]) -> None:
        """Check CONFIGS, write a ``HealthCheck`` row for each, and tell the admin how each went."""
        live = [c.name for c in configs if c.name in runtime.registry]
        statuses = runtime.run_in_serving_loop(_check_providers, live) if live else {}
        for config in configs:
            status = statuses.get(config.name)
            if status is None:
                reason = runtime.registry.last_error(config.name) or (
                    "Disabled." if not config.enabled else "Not loaded."
                )
                status = ProviderHealth(name=config.name, available=False, error=reason)
            error = _safe_text(config, status.error)
            HealthCheck.objects.create(
                provider=config,
                available=bool(status.available),
                response_time_ms=status.response_time_ms,
                models=list(status.models),
                error=error,
                checked_at=timezone.now(),
            )
            if status.available:
                latency = status.response_time_ms
                detail = f" ({latency:g} ms)" if latency is not None else ""
                self.message_user(request, f"{config.name} is up{detail}.", messages.SUCCESS)
            else:
                self.message_user(request, f"{config.name} is down: {error}", messages.WARNING)

    @admin.action(description="Reload from the saved configuration")
    def reload_providers(self, request: HttpRequest, queryset: QuerySet[ProviderConfig]) -> None:
        """Rebuild the selected providers from the database, here and in the other workers."""
        for config in queryset:
            # A new instance from the row here, and a forced re-read in every other worker.
            error = config_sync.request_reload_everywhere(config.name)
            if not config.enabled:
                self.message_user(
                    request,
                    f"{config.name} is disabled: it stays out of service.",
                    messages.WARNING,
                )
            elif error:
                self.message_user(
                    request,
                    f"{config.name} was not reloaded: {_safe_text(config, error)}",
                    messages.ERROR,
                )
            else:
                self.message_user(request, f"{config.name} reloaded.", messages.SUCCESS)


def _plugin_description(cls: type) -> str:
    """Return what a plugin says of itself, from its metadata or else its docstring."""
    try:
        return cls.plugin_metadata().description
    except Exception:
        return (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""


@admin.register(HealthCheck)
class HealthCheckAdmin(ReadOnlyAdmin):
    """The health history, read-only: rows are written by the checks themselves."""

    list_display = ("provider", "available", "response_time_ms", "checked_at", "error")
    list_filter = ("provider", "available")
    list_select_related = ("provider",)
    date_hierarchy = "checked_at"


@admin.register(ProviderConfigChange)
class ProviderConfigChangeAdmin(ReadOnlyAdmin):
    """The audit trail of every provider, deleted ones included: read-only, as evidence must be."""

    list_display = ("when", "provider_name", "action", "actor", "source", "remote_addr")
    list_filter = ("provider_name", "action", "source", "actor", "changed_at")
    search_fields = ("provider_name", "actor")
    date_hierarchy = "changed_at"
    fields = (
        "changed_at",
        "provider_name",
        "action",
        "actor",
        "source",
        "remote_addr",
        "what_changed",
    )
    readonly_fields = fields

    @admin.display(description="when", ordering="changed_at")
    def when(self, obj: ProviderConfigChange) -> str:
        """The moment of the change, to the second, in the site's time zone, named."""
        return _local(obj.changed_at)

    def get_urls(self) -> list[URLPattern]:
        own = [
            path(
                "export.<str:extension>",
                self.admin_site.admin_view(self.export_view),
                name="providers_providerconfigchange_export",
            ),
        ]
        return own + super().get_urls()

    def export_view(self, request: HttpRequest, extension: str) -> HttpResponse:
        """Download the changes the list shows (its filters and search applied) as CSV or JSON."""
        if not self.has_view_permission(request):
            raise PermissionDenied
        if extension not in ("csv", "json"):
            raise Http404("Export as .csv or .json.")
        try:
            shown = self.get_changelist_instance(request).get_queryset(request)
        except IncorrectLookupParameters:
            return HttpResponseBadRequest("Those filters are not this list's.")
        records = (change_record(change) for change in shown.order_by("-changed_at", "-id"))
        filename = export_filename(None, extension)
        if extension == "csv":
            return _download(records_csv(records), "text/csv; charset=utf-8", filename)
        return _download(records_json(records), "application/json", filename)

    def changelist_view(
        self, request: HttpRequest, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        """The list, with links exporting what it shows."""
        query = request.GET.urlencode()
        base = reverse("admin:providers_providerconfigchange_export", args=["csv"])[: -len("csv")]
        context = {
            "export_csv_url": f"{base}csv" + (f"?{query}" if query else ""),
            "export_json_url": f"{base}json" + (f"?{query}" if query else ""),
            **(extra_context or {}),
        }
        return super().changelist_view(request, context)

    @admin.display(description="what changed")
    def what_changed(self, obj: ProviderConfigChange) -> str:
        """Show the field-by-field diff (secrets as masks)."""
        return render_changes(obj.changes or [])
