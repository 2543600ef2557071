"""The Django admin for client keys: issue one (its secret shown once), list, edit, revoke, rotate, delete.

Every change goes through ``plugins_api.access.key_changes`` with the admin
user as its actor (source "admin"), so the admin, ``/api/keys/`` and the
commands validate, audit and reach the workers the same way. The list shows
each key's limits, its spend this budget period against its budget (one
aggregate for the whole page, ``key_spend.spend_this_period``) and its
status: active, revoked, expired, or rotated with its former secret valid
until a moment.

A secret is shown once, in the very response of the POST that created or
rotated the key (``key_secret.html``, never cached, with a Copy button): it
goes into no message, session or log, so a reload or the back button cannot
show it again. Neither the secret nor its hash appears on any other page.

A staff user who is not a superuser sees only the keys they own, may give a
key no other owner, and cannot set a key's scope (an admin-scope key can do
everything). The key's "History" lists its ``ClientKeyChange`` entries;
"Client key changes" lists every key's, deleted keys' included, read-only.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.contrib.admin.utils import unquote
from django.contrib.auth import get_user_model
from django.core.exceptions import PermissionDenied, ValidationError
from django.core.paginator import Paginator
from django.db.models import Q, QuerySet
from django.forms import Field, ModelForm
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils import timezone
from django.utils.cache import add_never_cache_headers
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString

from plugins_api.access import client_keys
from plugins_api.access.key_changes import (
    EDITABLE_FIELDS,
    client_key_delete,
    client_key_issue,
    client_key_revoke,
    client_key_rotate,
    client_key_update,
)
from plugins_api.access.key_limits import KeyLimits
from plugins_api.access.key_model_access import ModelAccess
from plugins_api.access.key_spend import spend_this_period
from plugins_api.admin.client_key_forms import ClientKeyForm, RotateKeyForm
from plugins_api.models import ClientAPIKey, ClientKeyChange
from providers.admin.provider_admin import render_changes
from providers.admin.read_only import ReadOnlyAdmin
from providers.audit.history import SOURCE_ADMIN, Actor, actor_for_request

TEMPLATES = "admin/plugins_api/clientapikey"
HISTORY_PAGE_SIZE = 100
OVER_BUDGET_COLOUR = "#ba2121"  # the admin's error red
# The request attribute a new secret travels on from save_model to response_add, within one request.
_ISSUED_SECRET = "_echo_issued_client_key"


def _admin_actor(request: HttpRequest) -> Actor:
    return actor_for_request(request, SOURCE_ADMIN)


def _moment(value: datetime | None) -> str:
    """Return VALUE in the site's time zone, to the second, with the zone; '-' for none."""
    if value is None:
        return "-"
    return f"{timezone.localtime(value):%Y-%m-%d %H:%M:%S %Z}"


def _moment_column(value: datetime | None, absent: str) -> str:
    """Return VALUE as ``_moment`` does, the date above the time (a narrow column); ABSENT for none."""
    if value is None:
        return absent
    local = timezone.localtime(value)
    return format_html(
        '{} <br><span class="time">{}</span>', f"{local:%Y-%m-%d}", f"{local:%H:%M:%S %Z}"
    )


def usd(amount: Decimal) -> str:
    """Return AMOUNT as dollars: at least cents, down to the recorded eighth decimal."""
    text = f"{amount:,.8f}".rstrip("0")
    whole, _, fraction = text.partition(".")
    return f"${whole}.{fraction.ljust(2, '0')}"


def key_status(row: ClientAPIKey, now: datetime) -> str:
    """Say whether ROW works at NOW: active, revoked, expired, or rotated with a grace period running."""
    if row.revoked_at is not None:
        return f"revoked {_moment(row.revoked_at)}"
    if row.expires_at is not None and row.expires_at <= now:
        return f"expired {_moment(row.expires_at)}"
    grace_end = row.previous_key_expires_at
    if row.previous_key_hash and grace_end is not None and grace_end > now:
        return f"active; rotated, the former secret works until {_moment(grace_end)}"
    return "active"


def key_limits_text(row: ClientAPIKey) -> str:
    """Summarize ROW's rate limits in a few words ('unlimited' for none)."""
    parts = []
    if row.requests_per_minute is not None:
        parts.append(f"{row.requests_per_minute:,} req/min")
    if row.tokens_per_minute is not None:
        parts.append(f"{row.tokens_per_minute:,} tok/min")
    if row.max_concurrent_requests is not None:
        parts.append(f"{row.max_concurrent_requests:,} at once")
    return " · ".join(parts) or "unlimited"


def render_key_changes(changes: list[dict[str, Any]]) -> SafeString:
    """Render a key change's entries: fields before and after, and a rotation's grace period."""
    rotations = [c for c in changes if isinstance(c, dict) and "grace_seconds" in c]
    fields = [c for c in changes if not (isinstance(c, dict) and "grace_seconds" in c)]
    lines = []
    for rotation in rotations:
        until = rotation.get("former_valid_until")
        if until:
            lines.append(
                format_html(
                    "<li>new secret; the former one works until {} ({} s of grace)</li>",
                    until,
                    rotation.get("grace_seconds"),
                )
            )
        else:
            lines.append(format_html("<li>new secret; the former one stopped at once</li>"))
    if not lines:
        return render_changes(fields)
    rotation = format_html(
        '<ul class="audit-changes">{}</ul>', format_html_join("", "{}", ((line,) for line in lines))
    )
    return format_html("{}{}", render_changes(fields), rotation) if fields else rotation


def _sees_every_key(request: HttpRequest) -> bool:
    return bool(request.user.is_superuser)


class KeyStatusFilter(admin.SimpleListFilter):
    """Filter keys by what they are now: active, in a rotation's grace period, expired, revoked."""

    title = "status"
    parameter_name = "status"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [
            ("active", "active"),
            ("rotating", "rotated, former secret still valid"),
            ("expired", "expired"),
            ("revoked", "revoked"),
        ]

    def queryset(
        self, request: HttpRequest, queryset: QuerySet[ClientAPIKey]
    ) -> QuerySet[ClientAPIKey]:
        now = client_keys.clock()
        live = Q(revoked_at__isnull=True)
        unexpired = Q(expires_at__isnull=True) | Q(expires_at__gt=now)
        if self.value() == "active":
            return queryset.filter(live & unexpired)
        if self.value() == "rotating":
            return queryset.filter(
                live & unexpired, previous_key_hash__isnull=False, previous_key_expires_at__gt=now
            )
        if self.value() == "expired":
            return queryset.filter(live, expires_at__lte=now)
        if self.value() == "revoked":
            return queryset.filter(revoked_at__isnull=False)
        return queryset


@admin.register(ClientAPIKey)
class ClientAPIKeyAdmin(admin.ModelAdmin):
    """Client keys: issued, edited, revoked, rotated and deleted through ``key_changes``."""

    form = ClientKeyForm
    list_display = (
        "name",
        "key_scope",
        "owner",
        "created",
        "last_used",
        "expires",
        "limits",
        "spend",
        "status",
    )
    list_filter = ("scope", KeyStatusFilter, ("owner", admin.RelatedOnlyFieldListFilter))
    list_select_related = ("owner",)
    search_fields = ("name", "prefix")
    actions = ("revoke_keys",)
    change_form_template = f"{TEMPLATES}/change_form.html"
    change_list_template = f"{TEMPLATES}/change_list.html"

    # --- what a user sees -----------------------------------------------------

    def get_queryset(self, request: HttpRequest) -> QuerySet[ClientAPIKey]:
        """Every key for a superuser; only their own for anyone else."""
        keys = super().get_queryset(request).select_related("owner")
        if _sees_every_key(request):
            return keys
        return keys.filter(owner=request.user)

    def get_changelist_instance(self, request: HttpRequest) -> Any:
        """Build the list and give the page's keys their spend this period, in one go."""
        changelist = super().get_changelist_instance(request)
        rows = list(changelist.result_list)  # the page, evaluated once and kept by the queryset
        spent = spend_this_period(rows, client_keys.clock())
        for row in rows:
            row.period_spend = spent[row.pk]
        return changelist

    def get_readonly_fields(
        self, request: HttpRequest, obj: ClientAPIKey | None = None
    ) -> tuple[str, ...]:
        own = () if _sees_every_key(request) else ("scope",)
        if obj is None:
            return own
        return (
            "name",
            "prefix",
            "status",
            "spend",
            "created",
            "last_used",
            "rotated",
            "change_history",
            *own,
        )

    def get_fieldsets(
        self, request: HttpRequest, obj: ClientAPIKey | None = None
    ) -> list[tuple[str | None, dict[str, Any]]]:
        who = (
            ["name", "scope", "owner"]
            if obj is None
            else ["name", "prefix", "scope", "owner", "status"]
        )
        budget = ["expires_at", "budget_usd", "budget_period"] + ([] if obj is None else ["spend"])
        fieldsets: list[tuple[str | None, dict[str, Any]]] = [
            (None, {"fields": who}),
            (
                "Limits",
                {"fields": ["requests_per_minute", "tokens_per_minute", "max_concurrent_requests"]},
            ),
            ("Model access", {"fields": ["allowed_models", "default_model"]}),
            ("Expiry and budget", {"fields": budget}),
        ]
        if obj is not None:
            fieldsets.append(
                (
                    "Use and history",
                    {"fields": ["created", "last_used", "rotated", "change_history"]},
                )
            )
        return fieldsets

    def formfield_for_foreignkey(
        self, db_field: Any, request: HttpRequest, **kwargs: Any
    ) -> Field | None:
        """Offer a user who is not a superuser no owner but themselves."""
        if db_field.name == "owner" and not _sees_every_key(request):
            kwargs["queryset"] = get_user_model().objects.filter(pk=request.user.pk)
            kwargs["required"] = True
            kwargs["initial"] = request.user.pk
            kwargs["empty_label"] = None
        return super().formfield_for_foreignkey(db_field, request, **kwargs)

    # --- saving -----------------------------------------------------------------

    def save_model(
        self, request: HttpRequest, obj: ClientAPIKey, form: ModelForm, change: bool
    ) -> None:
        """Issue or update the key through ``key_changes``; a new key's secret waits for ``response_add``."""
        actor = _admin_actor(request)
        if not _sees_every_key(request):
            if obj.owner_id != request.user.pk:
                raise PermissionDenied("You may give a key no owner but yourself.")
            if not change:
                obj.scope = ClientAPIKey.SCOPE_CHAT
        if change:
            changes = {
                field: getattr(obj, field)
                for field in form.changed_data
                if field in EDITABLE_FIELDS
            }
            saved = client_key_update(name=obj.name, changes=changes, actor=actor)
        else:
            saved, raw_key = client_key_issue(
                name=obj.name,
                scope=obj.scope,
                limits=KeyLimits(
                    requests_per_minute=obj.requests_per_minute,
                    tokens_per_minute=obj.tokens_per_minute,
                    max_concurrent=obj.max_concurrent_requests,
                ),
                access=ModelAccess(
                    patterns=tuple(obj.allowed_models or ()),
                    default_model=obj.default_model or None,
                ),
                expires_at=obj.expires_at,
                budget_usd=obj.budget_usd,
                budget_period=obj.budget_period,
                owner=obj.owner,
                actor=actor,
            )
            setattr(request, _ISSUED_SECRET, raw_key)
        # The admin goes on with OBJ (its log entry, the response): give it the saved row.
        obj.pk = saved.pk
        obj.refresh_from_db()

    def response_add(
        self, request: HttpRequest, obj: ClientAPIKey, post_url_continue: str | None = None
    ) -> HttpResponse:
        """Show the new key's secret, once, in this response."""
        raw_key = getattr(request, _ISSUED_SECRET, None)
        if raw_key is None:  # nothing was issued in this request
            return super().response_add(request, obj, post_url_continue)
        delattr(request, _ISSUED_SECRET)
        return self._secret_page(request, obj, raw_key, issued=True)

    def _secret_page(
        self, request: HttpRequest, row: ClientAPIKey, raw_key: str, *, issued: bool
    ) -> HttpResponse:
        """Render RAW_KEY once, with a Copy button; nothing may keep the page."""
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": f"{'New key' if issued else 'Key rotated'}: {row.name}",
            "subtitle": None,
            "key": row,
            "secret": raw_key,
            "issued": issued,
            # A rotation's former secret, if it keeps working for a while.
            "grace_until": _moment(row.previous_key_expires_at) if row.previous_key_hash else None,
            "change_url": reverse("admin:plugins_api_clientapikey_change", args=[row.pk]),
            "changelist_url": reverse("admin:plugins_api_clientapikey_changelist"),
        }
        response = TemplateResponse(request, f"{TEMPLATES}/key_secret.html", context)
        add_never_cache_headers(response)  # Cache-Control: ... no-store ...
        response["Pragma"] = "no-cache"
        response["Referrer-Policy"] = "no-referrer"
        return response

    def delete_model(self, request: HttpRequest, obj: ClientAPIKey) -> None:
        """Delete through ``key_changes``, so that the deletion is audited."""
        client_key_delete(name=obj.name, actor=_admin_actor(request))

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[ClientAPIKey]) -> None:
        """Delete each selected key through ``key_changes`` (the bulk action), each audited."""
        actor = _admin_actor(request)
        for name in list(queryset.values_list("name", flat=True)):
            client_key_delete(name=name, actor=actor)

    # --- revoke and rotate --------------------------------------------------------

    def get_urls(self) -> list[URLPattern]:
        own = [
            path(
                "<path:object_id>/revoke/",
                self.admin_site.admin_view(self.revoke_view),
                name="plugins_api_clientapikey_revoke",
            ),
            path(
                "<path:object_id>/rotate/",
                self.admin_site.admin_view(self.rotate_view),
                name="plugins_api_clientapikey_rotate",
            ),
        ]
        return own + super().get_urls()

    def _key_to_change(self, request: HttpRequest, object_id: str) -> ClientAPIKey:
        """Return the key OBJECT_ID if this user may see and change it (404 if they may not see it)."""
        obj = self.get_object(request, unquote(object_id))
        if obj is None:
            raise Http404("No such client key.")
        if not self.has_change_permission(request, obj):
            raise PermissionDenied
        return obj

    def revoke_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        """Ask to confirm (GET), then revoke the key (POST) and go back to its page."""
        obj = self._key_to_change(request, object_id)
        change_url = reverse("admin:plugins_api_clientapikey_change", args=[obj.pk])
        if request.method == "POST":
            client_key_revoke(name=obj.name, actor=_admin_actor(request))
            self.message_user(
                request,
                f"The key {obj.name} is revoked: it is refused from now on.",
                messages.SUCCESS,
            )
            return HttpResponseRedirect(change_url)
        return self._revoke_confirmation(request, [obj], single=True, cancel_url=change_url)

    def _revoke_confirmation(
        self, request: HttpRequest, keys: list[ClientAPIKey], *, single: bool, cancel_url: str
    ) -> TemplateResponse:
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": "Revoke client keys?" if len(keys) > 1 else f"Revoke the key {keys[0].name}?",
            "subtitle": None,
            "keys": keys,
            "single": single,
            "cancel_url": cancel_url,
            "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
        }
        return TemplateResponse(request, f"{TEMPLATES}/revoke_confirmation.html", context)

    @admin.action(description="Revoke the selected keys", permissions=["change"])
    def revoke_keys(
        self, request: HttpRequest, queryset: QuerySet[ClientAPIKey]
    ) -> HttpResponse | None:
        """Ask to confirm, then revoke each selected key that is not revoked yet, each audited."""
        keys = list(queryset)
        if request.POST.get("post") != "yes":
            return self._revoke_confirmation(
                request,
                keys,
                single=False,
                cancel_url=reverse("admin:plugins_api_clientapikey_changelist"),
            )
        actor = _admin_actor(request)
        revoked = [key.name for key in keys if key.revoked_at is None]
        for name in revoked:
            client_key_revoke(name=name, actor=actor)
        if revoked:
            self.message_user(request, f"Revoked: {', '.join(revoked)}.", messages.SUCCESS)
        else:
            self.message_user(request, "Those keys were revoked already.", messages.INFO)
        return None

    def rotate_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        """Ask for the former secret's grace period (GET); rotate and show the new secret once (POST)."""
        obj = self._key_to_change(request, object_id)
        form = RotateKeyForm(request.POST if request.method == "POST" else None)
        if request.method == "POST" and form.is_valid():
            try:
                row, raw_key = client_key_rotate(
                    name=obj.name, grace=form.grace_period(), actor=_admin_actor(request)
                )
            except ValidationError as exc:
                for field, problems in exc.message_dict.items():
                    form.add_error(None, [f"{field}: {problem}" for problem in problems])
            else:
                return self._secret_page(request, row, raw_key, issued=False)
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": f"Rotate the key {obj.name}",
            "subtitle": None,
            "key": obj,
            "form": form,
            "change_url": reverse("admin:plugins_api_clientapikey_change", args=[obj.pk]),
        }
        return TemplateResponse(request, f"{TEMPLATES}/rotate.html", context)

    # --- history --------------------------------------------------------------------

    def history_view(
        self, request: HttpRequest, object_id: str, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        """List the key's audit trail (``ClientKeyChange``), newest first."""
        obj = self.get_object(request, unquote(object_id))
        if obj is None:
            raise Http404("No such client key.")
        if not self.has_view_or_change_permission(request, obj):
            raise PermissionDenied
        entries = ClientKeyChange.objects.filter(key_name=obj.name)
        page = Paginator(entries, HISTORY_PAGE_SIZE).get_page(request.GET.get("p"))
        for entry in page:
            entry.rendered_changes = render_key_changes(entry.changes or [])
        context = {
            **self.admin_site.each_context(request),
            "title": f"Change history: {obj.name}",
            "subtitle": None,
            "opts": self.opts,
            "object": obj,
            "entries": list(page),
            "page": page,
            **(extra_context or {}),
        }
        return TemplateResponse(request, f"{TEMPLATES}/key_history.html", context)

    # --- columns and read-only fields ---------------------------------------------------

    @admin.display(description="scope", ordering="scope")
    def key_scope(self, obj: ClientAPIKey) -> str:
        return obj.scope

    @admin.display(description="created", ordering="created_at")
    def created(self, obj: ClientAPIKey) -> str:
        return _moment_column(obj.created_at, "-")

    @admin.display(description="last used", ordering="last_used_at")
    def last_used(self, obj: ClientAPIKey) -> str:
        return _moment_column(obj.last_used_at, "never")

    @admin.display(description="expires", ordering="expires_at")
    def expires(self, obj: ClientAPIKey) -> str:
        return _moment_column(obj.expires_at, "never")

    @admin.display(description="rotated")
    def rotated(self, obj: ClientAPIKey) -> str:
        return "never" if obj.rotated_at is None else _moment(obj.rotated_at)

    @admin.display(description="limits")
    def limits(self, obj: ClientAPIKey) -> str:
        return key_limits_text(obj)

    @admin.display(description="status")
    def status(self, obj: ClientAPIKey) -> str:
        return key_status(obj, client_keys.clock())

    @admin.display(description="spend this period")
    def spend(self, obj: ClientAPIKey) -> str:
        """Show the recorded spend of the key's current budget period, against its budget."""
        spent = getattr(obj, "period_spend", None)
        if spent is None:  # a single key's page: one query
            spent = spend_this_period([obj], client_keys.clock())[obj.pk]
        if obj.budget_usd is None:
            return f"{usd(spent)} this {obj.budget_period} (no budget)"
        text = f"{usd(spent)} of {usd(obj.budget_usd)} / {obj.budget_period}"
        if spent >= obj.budget_usd:
            return format_html(
                '<strong style="color: {}">{} (budget spent)</strong>', OVER_BUDGET_COLOUR, text
            )
        return text

    @admin.display(description="change history")
    def change_history(self, obj: ClientAPIKey) -> str:
        """Summarize the key's audit trail and link to all of it."""
        entries = ClientKeyChange.objects.filter(key_name=obj.name)
        latest = entries.first()
        link = reverse("admin:plugins_api_clientapikey_history", args=[obj.pk])
        if latest is None:
            return format_html('no change recorded (<a href="{}">history</a>)', link)
        count = entries.count()
        return format_html(
            '{} change{}; the latest: {} {} by {} via {} (<a href="{}">see all</a>)',
            count,
            "" if count == 1 else "s",
            latest.action,
            _moment(latest.changed_at),
            latest.actor,
            latest.source,
            link,
        )


@admin.register(ClientKeyChange)
class ClientKeyChangeAdmin(ReadOnlyAdmin):
    """Every key's audit trail, deleted keys' included: read-only, as evidence must be."""

    list_display = ("changed", "key_name", "action", "actor", "source", "remote_addr")
    list_filter = ("action", "source", "changed_at")
    search_fields = ("key_name", "actor")
    date_hierarchy = "changed_at"
    fields = ("changed", "key_name", "action", "actor", "source", "remote_addr", "what_changed")
    readonly_fields = fields

    def get_queryset(self, request: HttpRequest) -> QuerySet[ClientKeyChange]:
        """Every entry for a superuser; for anyone else, those of the keys they own now."""
        entries = super().get_queryset(request)
        if _sees_every_key(request):
            return entries
        return entries.filter(key_name__in=request.user.client_keys.values_list("name", flat=True))

    @admin.display(description="changed at", ordering="changed_at")
    def changed(self, obj: ClientKeyChange) -> str:
        return _moment(obj.changed_at)

    @admin.display(description="what changed")
    def what_changed(self, obj: ClientKeyChange) -> str:
        return render_key_changes(obj.changes or [])
