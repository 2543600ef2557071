"""The provider admin: schema fields, masked secrets, errors by the field, columns, actions.

Forms are posted as a browser would: the test reads the rendered form's
controls and sends them back with its changes. Saves run their on-commit
callbacks (``django_capture_on_commit_callbacks``) so that the signal's
reload of the provider really happens.
"""

from __future__ import annotations

import datetime as dt
import re
from html.parser import HTMLParser
from typing import Any

import pytest
from django.contrib.auth.models import Permission
from django.urls import reverse
from django.utils import timezone

from providers.base import AbstractAIProvider, PluginMetadata
from providers.config.services import provider_config_create
from providers.models import HealthCheck, ProviderConfig, ProviderConfigChange
from providers.runtime import process as runtime
from providers.types import ChatRequest, ChatResponse, HealthStatus

SECRET = "sk-live-0123456789abcdef"
OTHER_SECRET = "sk-live-fedcba9876543210"
TOKEN = "tok-0000111122223333"


class SecuretestProvider(AbstractAIProvider):
    """A plugin with secrets, a patterned setting and free-form extras."""

    @property
    def metadata(self) -> PluginMetadata:
        return PluginMetadata(name="Securetest", version="0.1", description="Has secrets.")

    def get_config_schema(self) -> dict[str, Any]:
        return {
            "type": "object",
            "properties": {
                "api_key": {
                    "type": "string",
                    "title": "API key",
                    "writeOnly": True,
                    "required": True,
                },
                "org_token": {"type": "string", "title": "Organisation token"},
                "region": {
                    "type": "string",
                    "pattern": "^[a-z]+-[0-9]$",
                    "default": "eu-1",
                    "required": True,
                },
                "tier": {"type": "string", "enum": ["free", "paid"], "default": "free"},
                "verbose": {"type": "boolean", "default": False},
            },
        }

    async def initialize(self) -> None:
        pass

    async def chat_completion(self, request: ChatRequest) -> ChatResponse:
        return ChatResponse(content="ok", model="m", provider=self.name)

    async def health_check(self) -> HealthStatus:
        return HealthStatus(available=True, models=["m"])

    async def list_models(self) -> list[str]:
        return ["m"]


class _FormControls(HTMLParser):
    """Collect what a browser would submit from the form with id FORM_ID."""

    def __init__(self, form_id: str) -> None:
        super().__init__()
        self.form_id = form_id
        self.inside = False
        self.data: dict[str, list[str]] = {}
        self._textarea: str | None = None
        self._select: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "form":
            self.inside = a.get("id") == self.form_id
        if not self.inside or "disabled" in a:
            return
        name = a.get("name")
        if tag == "input" and name:
            kind = a.get("type", "text")
            if kind in ("submit", "button", "file"):
                return
            if kind in ("checkbox", "radio") and "checked" not in a:
                return
            self.data.setdefault(name, []).append(
                a.get("value") or ("on" if kind == "checkbox" else "")
            )
        elif tag == "textarea" and name:
            self._textarea = name
            self.data.setdefault(name, []).append("")
        elif tag == "select" and name:
            self._select = name
        elif tag == "option" and self._select and "selected" in a:
            self.data.setdefault(self._select, []).append(a.get("value") or "")

    def handle_endtag(self, tag: str) -> None:
        if tag == "form":
            self.inside = False
        elif tag == "textarea":
            self._textarea = None
        elif tag == "select":
            self._select = None

    def handle_data(self, data: str) -> None:
        if self._textarea:
            self.data[self._textarea][-1] += data


def form_data(response: Any, **changes: Any) -> dict[str, Any]:
    """Return the controls of the admin form in RESPONSE, with CHANGES applied (None unticks)."""
    parser = _FormControls("providerconfig_form")
    parser.feed(response.content.decode())
    data: dict[str, Any] = {k: v if len(v) > 1 else v[0] for k, v in parser.data.items()}
    for key, value in data.items():
        # A browser drops the one newline that follows <textarea>.
        if isinstance(value, str) and value.startswith("\n"):
            data[key] = value[1:]
    for key, value in changes.items():
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
    data["_save"] = "Save"
    return data


@pytest.fixture
def staff(client, admin_user):
    client.force_login(admin_user)
    return client


@pytest.fixture
def live_echo_config(echo_config):
    """The echo row, loaded in the registry as the running server would have it."""
    assert runtime.run_in_serving_loop(runtime.load_provider_from_database, "echo") is None
    return echo_config


@pytest.fixture
def securetest(db):
    """The secrets plugin registered (after the per-test registry reset) and a live provider of it."""
    runtime.registry.register(SecuretestProvider, "securetest")
    config = provider_config_create(
        name="secure",
        plugin="securetest",
        settings={"region": "eu-1"},
        secrets={"api_key": SECRET, "org_token": TOKEN},
    )
    assert runtime.run_in_serving_loop(runtime.load_provider_from_database, "secure") is None
    return config


def change_url(config: ProviderConfig) -> str:
    return reverse("admin:providers_providerconfig_change", args=[config.pk])


CHANGELIST = "admin:providers_providerconfig_changelist"


def snapshot(name: str) -> tuple[Any, ...]:
    row = ProviderConfig.objects.get(name=name)
    return (row.settings, row.secrets, row.enabled, row.is_default, row.fallbacks, row.updated_at)


# --- the change form --------------------------------------------------------


def test_change_form_shows_the_plugin_schema_as_fields(staff, live_echo_config) -> None:
    response = staff.get(change_url(live_echo_config))

    assert response.status_code == 200
    html = response.content.decode()
    assert 'name="setting__prefix"' in html and 'value="Echo: "' in html
    assert 'type="number" name="setting__delay_ms"' in html and 'min="0"' in html
    assert "Reply prefix" in html and "Pause between streamed words" in html
    assert "<textarea" in html and 'name="setting__models"' in html
    assert 'name="settings"' not in html and 'name="secrets"' not in html
    controls = form_data(response)
    assert controls["setting__models"] == "echo-1"
    assert "name" not in controls and "plugin" not in controls  # fixed after creation


def test_editing_a_setting_saves_and_reloads_the_provider(
    staff, live_echo_config, django_capture_on_commit_callbacks
) -> None:
    url = change_url(live_echo_config)
    data = form_data(staff.get(url), setting__prefix="Hi: ", setting__delay_ms="5")

    with django_capture_on_commit_callbacks(execute=True):
        response = staff.post(url, data)

    assert response.status_code == 302
    # Only what the admin changed is stored; untouched fields keep following the defaults.
    assert ProviderConfig.objects.get(name="echo").settings == {"prefix": "Hi: ", "delay_ms": 5}
    live = runtime.registry.get("echo")
    assert live.config["prefix"] == "Hi: " and live.config["delay_ms"] == 5


def test_a_blank_setting_goes_back_to_the_default(
    staff, live_echo_config, django_capture_on_commit_callbacks
) -> None:
    url = change_url(live_echo_config)
    data = form_data(staff.get(url), setting__prefix="", setting__models="echo-1\necho-2\n")

    with django_capture_on_commit_callbacks(execute=True):
        assert staff.post(url, data).status_code == 302

    assert ProviderConfig.objects.get(name="echo").settings == {"models": ["echo-1", "echo-2"]}
    assert runtime.registry.get("echo").config["prefix"] == "Echo: "
    assert runtime.registry.get("echo").config["models"] == ["echo-1", "echo-2"]


@pytest.mark.parametrize("bad", ["-5", "abc", "10001"])
def test_a_bad_value_is_reported_by_its_field_and_changes_nothing(
    staff, live_echo_config, django_capture_on_commit_callbacks, bad
) -> None:
    url = change_url(live_echo_config)
    data = form_data(staff.get(url), setting__prefix="Changed: ", setting__delay_ms=bad)
    before = snapshot("echo")

    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        response = staff.post(url, data)

    assert response.status_code == 200
    form = response.context["adminform"].form
    assert list(form.errors) == ["setting__delay_ms"]
    assert 'class="form-row errors field-setting__delay_ms"' in response.content.decode()
    assert callbacks == []
    assert snapshot("echo") == before
    assert runtime.registry.get("echo").config["prefix"] == "Echo: "


def test_a_schema_error_is_reported_by_its_field(staff, securetest) -> None:
    url = change_url(securetest)
    before = snapshot("secure")

    response = staff.post(url, form_data(staff.get(url), setting__region="Mars"))

    assert response.status_code == 200
    # In the admin's words (issue 19), naming the field; the pattern stays for the exact rule.
    assert response.context["adminform"].form.errors["setting__region"] == [
        "Region is not in the expected form (it must match ^[a-z]+-[0-9]$)."
    ]
    assert snapshot("secure") == before


def test_falling_back_to_itself_is_reported_by_fallbacks(staff, live_echo_config) -> None:
    url = change_url(live_echo_config)
    response = staff.post(url, form_data(staff.get(url), fallbacks="echo/echo-2"))

    assert response.status_code == 200
    assert response.context["adminform"].form.errors["fallbacks"] == [
        "A provider cannot fall back to itself."
    ]


def test_name_is_not_editable_after_creation(
    staff, live_echo_config, django_capture_on_commit_callbacks
) -> None:
    url = change_url(live_echo_config)
    data = form_data(staff.get(url), name="renamed", plugin="securetest")
    with django_capture_on_commit_callbacks(execute=True):
        assert staff.post(url, data).status_code == 302
    row = ProviderConfig.objects.get(pk=live_echo_config.pk)
    assert (row.name, row.plugin) == ("echo", "echo")


def test_making_a_provider_default_clears_the_old_default(
    staff, live_echo_config, securetest, django_capture_on_commit_callbacks
) -> None:
    url = change_url(securetest)
    with django_capture_on_commit_callbacks(execute=True):
        response = staff.post(url, form_data(staff.get(url), is_default="on"))

    assert response.status_code == 302
    assert list(ProviderConfig.objects.filter(is_default=True).values_list("name", flat=True)) == [
        "secure"
    ]
    assert runtime.registry.default_name == "secure"


# --- adding -----------------------------------------------------------------


def test_add_asks_for_the_plugin_first(staff, db) -> None:
    response = staff.get(reverse("admin:providers_providerconfig_add"))

    assert response.status_code == 200
    html = response.content.decode()
    assert 'href="?plugin=echo"' in html
    assert "Offline provider that answers with the last user message." in html


def test_add_with_a_plugin_creates_a_live_provider(
    staff, db, django_capture_on_commit_callbacks
) -> None:
    url = reverse("admin:providers_providerconfig_add") + "?plugin=echo"
    page = staff.get(url)
    assert 'name="setting__prefix"' in page.content.decode()
    data = form_data(page, name="echo-two", setting__prefix="Two: ")

    with django_capture_on_commit_callbacks(execute=True):
        response = staff.post(url, data)

    assert response.status_code == 302
    row = ProviderConfig.objects.get(name="echo-two")
    assert (row.plugin, row.settings) == ("echo", {"prefix": "Two: "})
    # A serving worker applies it after commit; this test process has no serving
    # loop, so it starts nothing by itself (providers.runtime.config_sync.after_commit).
    assert runtime.run_in_serving_loop(runtime.load_provider_from_database, "echo-two") is None
    assert runtime.registry.get("echo-two").config["prefix"] == "Two: "


def test_add_requires_a_required_secret(staff, db) -> None:
    runtime.registry.register(SecuretestProvider, "securetest")
    url = reverse("admin:providers_providerconfig_add") + "?plugin=securetest"

    response = staff.post(url, form_data(staff.get(url), name="sec"))

    assert response.status_code == 200
    assert "setting__api_key" in response.context["adminform"].form.errors
    assert not ProviderConfig.objects.filter(name="sec").exists()


def test_add_stores_required_settings_and_typed_secrets(
    staff, db, django_capture_on_commit_callbacks
) -> None:
    runtime.registry.register(SecuretestProvider, "securetest")
    url = reverse("admin:providers_providerconfig_add") + "?plugin=securetest"
    data = form_data(staff.get(url), name="sec", setting__api_key=SECRET)

    with django_capture_on_commit_callbacks(execute=True):
        response = staff.post(url, data)

    assert response.status_code == 302
    row = ProviderConfig.objects.get(name="sec")
    # The required region is stored although it equals its default; optional defaults are not.
    assert (row.settings, row.secrets) == ({"region": "eu-1"}, {"api_key": SECRET})
    assert runtime.run_in_serving_loop(runtime.load_provider_from_database, "sec") is None
    assert runtime.registry.get("sec").config["api_key"] == SECRET


# --- secrets ----------------------------------------------------------------


def test_secrets_are_password_inputs_shown_only_masked(staff, securetest) -> None:
    response = staff.get(change_url(securetest))

    html = response.content.decode()
    assert 'type="password" name="setting__api_key"' in html
    assert "Current: sk-...cdef. Leave blank to keep it." in html
    assert 'placeholder="sk-...cdef"' in html
    assert SECRET not in html and TOKEN not in html
    assert form_data(response)["setting__api_key"] == ""


def test_a_read_only_visitor_sees_settings_and_masked_secrets(
    client, django_user_model, securetest
) -> None:
    visitor = django_user_model.objects.create_user("visitor", is_staff=True)
    visitor.user_permissions.add(Permission.objects.get(codename="view_providerconfig"))
    client.force_login(visitor)

    html = client.get(change_url(securetest)).content.decode()

    assert "region: &quot;eu-1&quot;" in html and "api_key: sk-...cdef" in html
    assert SECRET not in html and TOKEN not in html
    assert client.get(reverse("admin:providers_providerconfig_add")).status_code == 403


def test_a_blank_secret_keeps_the_stored_one(
    staff, securetest, django_capture_on_commit_callbacks
) -> None:
    url = change_url(securetest)
    with django_capture_on_commit_callbacks(execute=True):
        response = staff.post(url, form_data(staff.get(url), setting__tier="paid"))

    assert response.status_code == 302
    row = ProviderConfig.objects.get(name="secure")
    assert row.secrets == {"api_key": SECRET, "org_token": TOKEN}
    assert row.settings == {"region": "eu-1", "tier": "paid"}
    assert runtime.registry.get("secure").config["api_key"] == SECRET


def test_a_typed_secret_replaces_and_remove_deletes(
    staff, securetest, django_capture_on_commit_callbacks
) -> None:
    url = change_url(securetest)
    data = form_data(staff.get(url), setting__api_key=OTHER_SECRET, clear_secret__org_token="on")
    with django_capture_on_commit_callbacks(execute=True):
        response = staff.post(url, data)

    assert response.status_code == 302
    assert ProviderConfig.objects.get(name="secure").secrets == {"api_key": OTHER_SECRET}
    assert runtime.registry.get("secure").config["api_key"] == OTHER_SECRET
    page = staff.get(url).content.decode()
    assert OTHER_SECRET not in page and "Current: sk-...3210" in page


def test_removing_a_required_secret_is_refused(staff, securetest) -> None:
    url = change_url(securetest)
    before = snapshot("secure")

    response = staff.post(url, form_data(staff.get(url), clear_secret__api_key="on"))

    assert response.status_code == 200
    assert response.context["adminform"].form.errors["setting__api_key"] == [
        "This field is required."
    ]
    assert snapshot("secure") == before


def test_a_secret_typed_into_a_failing_form_is_kept_in_its_input_only(staff, securetest) -> None:
    # Issue 19 overrides the old rule (never sent back): the key typed into a form that
    # fails on another field comes back in its password input, so that a wrong region does
    # not cost the key; the stored secret never appears, and nothing is saved.
    url = change_url(securetest)
    data = form_data(staff.get(url), setting__api_key=OTHER_SECRET, setting__region="Mars")

    response = staff.post(url, data)

    assert response.status_code == 200
    html = response.content.decode()
    assert html.count(OTHER_SECRET) == 1
    assert re.search(rf'type="password" name="setting__api_key" value="{OTHER_SECRET}"', html)
    assert SECRET not in html and TOKEN not in html
    assert ProviderConfig.objects.get(name="secure").secrets["api_key"] == SECRET


def test_extra_settings_are_edited_as_json_but_never_hold_secrets(
    staff, securetest, django_capture_on_commit_callbacks
) -> None:
    url = change_url(securetest)
    assert 'id="id_extra_settings">\n</textarea>' in staff.get(url).content.decode()
    refused = staff.post(url, form_data(staff.get(url), extra_settings='{"session_token": "x"}'))
    assert "extra_settings" in refused.context["adminform"].form.errors

    with django_capture_on_commit_callbacks(execute=True):
        saved = staff.post(url, form_data(staff.get(url), extra_settings='{"timeout": 30}'))

    assert saved.status_code == 302
    assert ProviderConfig.objects.get(name="secure").settings == {"region": "eu-1", "timeout": 30}


# --- the list and its actions ------------------------------------------------


def test_list_shows_state_default_and_last_health(staff, live_echo_config, securetest) -> None:
    HealthCheck.objects.create(
        provider=live_echo_config, available=True, response_time_ms=1.5, checked_at=timezone.now()
    )
    provider_config_create(
        name="paused", plugin="echo", enabled=False, disabled_reason="Paused for billing."
    )
    # A plugin that puts its own key in an error message still has it masked.
    HealthCheck.objects.create(
        provider=securetest, available=False, error=f"boom {SECRET}", checked_at=timezone.now()
    )

    response = staff.get(reverse(CHANGELIST))

    html = response.content.decode()
    for header in ("Name", "Plugin", "Enabled", "Default provider", "Live", "Last health"):
        assert f">{header}<" in html, header
    assert "up (1.5 ms," in html
    assert "disabled: Paused for billing." in html
    assert "never checked" in html
    assert SECRET not in html and "boom sk-...cdef" in html


def test_check_health_now_records_a_row_per_provider(staff, live_echo_config, securetest) -> None:
    down = provider_config_create(name="paused", plugin="echo", enabled=False)
    runtime.run_in_serving_loop(runtime.load_provider_from_database, "paused")
    selected = [live_echo_config.pk, down.pk]

    response = staff.post(
        reverse(CHANGELIST),
        {"action": "check_health_now", "_selected_action": selected},
        follow=True,
    )

    up = HealthCheck.objects.get(provider=live_echo_config)
    assert up.available and up.models == ["echo-1"] and up.response_time_ms is not None
    off = HealthCheck.objects.get(provider=down)
    assert not off.available and off.error == "Disabled."
    shown = [str(m) for m in response.context["messages"]]
    assert any(m.startswith("echo is up") for m in shown)
    assert "paused is down: Disabled." in shown
    assert not HealthCheck.objects.filter(provider=securetest).exists()


def test_reload_rebuilds_from_the_database_and_reports_errors(staff, live_echo_config) -> None:
    # An update that skips the signal: only the reload action brings it live.
    ProviderConfig.objects.filter(name="echo").update(settings={"prefix": "Reloaded: "})
    broken = ProviderConfig.objects.create(name="broken", plugin="not-installed")

    response = staff.post(
        reverse(CHANGELIST),
        {"action": "reload_providers", "_selected_action": [live_echo_config.pk, broken.pk]},
        follow=True,
    )

    assert runtime.registry.get("echo").config["prefix"] == "Reloaded: "
    shown = {str(m): m.level_tag for m in response.context["messages"]}
    assert shown["echo reloaded."] == "success"
    assert (
        shown["broken was not reloaded: No plugin named 'not-installed' is installed."] == "error"
    )


def test_a_provider_whose_plugin_is_missing_still_opens(staff, db) -> None:
    broken = ProviderConfig.objects.create(name="broken", plugin="not-installed")
    response = staff.get(change_url(broken))
    assert response.status_code == 200
    assert "The plugin not-installed is not installed" in response.content.decode()


# --- health history ----------------------------------------------------------


def test_health_history_is_read_only(staff, live_echo_config) -> None:
    check = HealthCheck.objects.create(
        provider=live_echo_config, available=False, error="timed out", checked_at=timezone.now()
    )

    listing = staff.get(reverse("admin:providers_healthcheck_changelist") + "?available__exact=0")
    assert listing.status_code == 200 and "timed out" in listing.content.decode()
    assert staff.get(reverse("admin:providers_healthcheck_add")).status_code == 403
    url = reverse("admin:providers_healthcheck_change", args=[check.pk])
    assert staff.post(url, {"available": "on"}).status_code == 403
    assert not HealthCheck.objects.get(pk=check.pk).available


def sparklines(html: str) -> list[str]:
    """Return the health sparklines (inline SVG) of a page, in order."""
    return re.findall(r'<svg [^>]*class="health-sparkline".*?</svg>', html, re.S)


def latency_points(svg: str) -> list[tuple[float, float]]:
    match = re.search(r'<polyline points="([^"]*)"', svg)
    if match is None:
        return []
    return [tuple(map(float, point.split(","))) for point in match.group(1).split()]


def record_history(config: ProviderConfig, pattern: str, *, error: str = "timed out") -> None:
    """Record one check per character of PATTERN, oldest first: 'u' up, 'd' down."""
    start = timezone.now() - dt.timedelta(minutes=len(pattern))
    HealthCheck.objects.bulk_create(
        HealthCheck(
            provider=config,
            available=state == "u",
            response_time_ms=10.0 + index,
            error="" if state == "u" else error,
            checked_at=start + dt.timedelta(minutes=index),
        )
        for index, state in enumerate(pattern)
    )


def test_list_draws_a_sparkline_and_the_breaker_state(staff, live_echo_config, securetest) -> None:
    record_history(live_echo_config, "uuduuud")
    record_history(securetest, "ud", error=f"key {SECRET} refused")
    breaker = runtime.manager.breaker("secure")
    breaker.configure(failure_threshold=1, cooldown_seconds=60)
    breaker.record_failure(f"chat failed: key {SECRET} refused")
    provider_config_create(name="paused", plugin="echo", enabled=False)

    html = staff.get(reverse(CHANGELIST)).content.decode()

    assert ">Health history<" in html and ">Breaker<" in html
    echo_svg, secure_svg = sparklines(html)  # the paused provider has no checks yet
    assert len(latency_points(echo_svg)) == 5  # one per available check
    assert echo_svg.count("<circle") == 2  # a red dot per failed check
    assert 'aria-label="7 checks, 2 down, latency 10 to 15 ms"' in echo_svg
    # Oldest on the left: x grows along the line, and a slower check sits higher.
    xs = [x for x, _ in latency_points(echo_svg)]
    assert xs == sorted(xs)
    assert latency_points(echo_svg)[-1][1] < latency_points(echo_svg)[0][1]
    assert "key sk-...cdef refused" in secure_svg
    assert "no checks yet" in html
    assert ">open</strong>: a probe in" in html
    assert "chat failed: key sk-...cdef refused" in html
    assert '<td class="field-breaker">closed</td>' in html  # echo's
    assert '<td class="field-breaker">-</td>' in html  # disabled: no traffic to break
    assert SECRET not in html


def test_change_page_charts_the_last_fifty_checks(staff, live_echo_config) -> None:
    record_history(live_echo_config, "u" * 55 + "d" * 5)

    html = staff.get(change_url(live_echo_config)).content.decode()

    (chart,) = [svg for svg in sparklines(html) if 'width="400"' in svg]
    assert len(latency_points(chart)) == 45  # the last 50: 45 up, 5 down
    assert chart.count("<circle") == 5
    assert "The last 50 checks, oldest on the left" in html
    assert "field-breaker" in html and "closed" in html


def test_a_sparkline_is_safe_html(live_echo_config) -> None:
    from providers.admin.provider_admin import health_sparkline

    record_history(live_echo_config, "d", error='<script>alert("x")</script>')
    checks = list(HealthCheck.objects.filter(provider=live_echo_config))

    svg = health_sparkline(checks, config=live_echo_config, width=100, height=20)

    assert "<script>" not in svg
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in svg


# --- the audit trail --------------------------------------------------------


def admin_entries(name: str) -> list[ProviderConfigChange]:
    """Return the entries of NAME made in the admin, oldest first."""
    return list(
        ProviderConfigChange.objects.filter(provider_name=name, source="admin").order_by("id")
    )


def test_a_form_post_is_audited_once_with_the_user_and_a_masked_diff(
    staff, securetest, django_capture_on_commit_callbacks
) -> None:
    url = change_url(securetest)
    data = form_data(staff.get(url), setting__tier="paid", setting__api_key=OTHER_SECRET)
    with django_capture_on_commit_callbacks(execute=True):
        assert staff.post(url, data, REMOTE_ADDR="192.0.2.7").status_code == 302

    (entry,) = admin_entries("secure")
    assert (entry.action, entry.actor, entry.source, entry.remote_addr) == (
        "updated",
        "admin",
        "admin",
        "192.0.2.7",
    )
    assert entry.changes == [
        {"field": "settings.tier", "before": None, "after": "paid"},
        {
            "field": "secrets.api_key",
            "before": "sk-...cdef",
            "after": "sk-...3210",
            "secret": True,
            "changed": True,
        },
    ]


def test_a_refused_form_post_writes_no_entry(staff, securetest) -> None:
    url = change_url(securetest)
    response = staff.post(
        url, form_data(staff.get(url), setting__api_key=OTHER_SECRET, setting__region="Mars")
    )
    assert response.status_code == 200
    assert admin_entries("secure") == []


def test_adding_and_deleting_in_the_admin_are_audited(
    staff, db, django_capture_on_commit_callbacks
) -> None:
    url = reverse("admin:providers_providerconfig_add") + "?plugin=echo"
    with django_capture_on_commit_callbacks(execute=True):
        staff.post(url, form_data(staff.get(url), name="echo-two", setting__prefix="Two: "))
    row = ProviderConfig.objects.get(name="echo-two")
    delete_url = reverse("admin:providers_providerconfig_delete", args=[row.pk])
    with django_capture_on_commit_callbacks(execute=True):
        assert staff.post(delete_url, {"post": "yes"}).status_code == 302

    assert [e.action for e in admin_entries("echo-two")] == ["created", "deleted"]
    assert "echo-two" not in runtime.registry


def test_the_bulk_delete_action_audits_each_provider(
    staff, live_echo_config, securetest, django_capture_on_commit_callbacks
) -> None:
    changelist = reverse(CHANGELIST)
    data = {
        "action": "delete_selected",
        "_selected_action": [live_echo_config.pk, securetest.pk],
        "post": "yes",
    }
    with django_capture_on_commit_callbacks(execute=True):
        assert staff.post(changelist, data).status_code == 302

    assert not ProviderConfig.objects.exists()
    assert [e.action for e in admin_entries("echo")] == ["deleted"]
    assert [e.action for e in admin_entries("secure")] == ["deleted"]


def test_the_history_page_lists_every_change_with_export_links(staff, securetest) -> None:
    from providers.audit.history import Actor
    from providers.config.services import provider_config_update

    provider_config_update(
        config=securetest,
        changes={"secrets": {"api_key": OTHER_SECRET}},
        actor=Actor("key:ops", "api", "10.0.0.2"),
    )
    response = staff.get(reverse("admin:providers_providerconfig_history", args=[securetest.pk]))

    assert response.status_code == 200
    html = response.content.decode()
    table = html[html.index('id="provider-change-history"') :]
    assert "key:ops" in table and "10.0.0.2" in table and "api" in table
    assert "secrets.api_key" in table and "sk-...cdef" in table and "sk-...3210" in table
    assert SECRET not in html and OTHER_SECRET not in html and TOKEN not in html
    change_page = staff.get(change_url(securetest)).content.decode()
    assert "2 changes; the latest: updated" in change_page

    csv_url = re.search(r'id="history-export-csv" href="([^"]+)"', html).group(1)
    exported = staff.get(csv_url)
    assert exported["Content-Type"].startswith("text/csv")
    text = exported.content.decode()
    assert text.startswith("changed_at,provider,action,actor,source,remote_addr,field,")
    assert "key:ops" in text and SECRET not in text and OTHER_SECRET not in text
    json_url = re.search(r'id="history-export-json" href="([^"]+)"', html).group(1)
    records = staff.get(json_url).json()
    assert [r["action"] for r in records] == ["updated", "created"]


def test_provider_changes_are_listed_filterable_and_read_only(staff, securetest) -> None:
    entry = ProviderConfigChange.objects.get(provider_name="secure")
    listing = staff.get(
        reverse("admin:providers_providerconfigchange_changelist")
        + "?provider_name=secure&action__exact=created&source=system"
    )
    assert listing.status_code == 200
    assert "secure" in listing.content.decode()
    assert staff.get(reverse("admin:providers_providerconfigchange_add")).status_code == 403
    detail = staff.get(reverse("admin:providers_providerconfigchange_change", args=[entry.pk]))
    assert detail.status_code == 200
    assert "secrets.api_key" in detail.content.decode()
    assert SECRET not in detail.content.decode()
    deleting = reverse("admin:providers_providerconfigchange_delete", args=[entry.pk])
    assert staff.post(deleting, {"post": "yes"}).status_code == 403
    assert ProviderConfigChange.objects.filter(pk=entry.pk).exists()


# --- secrets that no key decrypts -----------------------------------------------


@pytest.fixture
def lost_key(settings, securetest) -> ProviderConfig:
    """SECURETEST, after the key that encrypted its secrets left ECHO_ENCRYPTION_KEYS."""
    from providers.secrets.box import new_key

    settings.ECHO_ENCRYPTION_KEYS = [new_key()]
    runtime.run_in_serving_loop(runtime.load_provider_from_database, "secure")
    return securetest


def test_unreadable_secrets_show_a_note_in_the_list_and_the_form(staff, lost_key) -> None:
    listing = staff.get(reverse(CHANGELIST))
    assert listing.status_code == 200
    assert "cannot be decrypted" in listing.content.decode()

    page = staff.get(change_url(lost_key))
    assert page.status_code == 200
    html = page.content.decode()
    assert "cannot be decrypted" in html
    assert "Current: " not in html  # no mask of a value nobody can read
    assert (
        staff.get(reverse("admin:providers_providerconfig_history", args=[lost_key.pk])).status_code
        == 200
    )


def test_typing_the_secrets_again_replaces_unreadable_ones(
    staff, lost_key, django_capture_on_commit_callbacks
) -> None:
    url = change_url(lost_key)
    refused = staff.post(url, form_data(staff.get(url), setting__tier="paid"))
    assert refused.status_code == 200
    assert "cannot be decrypted" in str(refused.context["adminform"].form.non_field_errors())

    data = form_data(staff.get(url), setting__api_key=OTHER_SECRET)
    with django_capture_on_commit_callbacks(execute=True):
        assert staff.post(url, data).status_code == 302

    assert ProviderConfig.objects.get(name="secure").secrets == {"api_key": OTHER_SECRET}
    assert runtime.registry.get("secure").config["api_key"] == OTHER_SECRET
    (entry,) = admin_entries("secure")
    assert entry.changes[-1]["before"] == "(cannot be decrypted)"


def test_only_health_checks_go_with_a_deleted_provider() -> None:
    # get_deleted_objects names the health checks alone: a new relation must be added there.
    related = {rel.related_model for rel in ProviderConfig._meta.related_objects}
    assert related == {HealthCheck}


@pytest.mark.parametrize("how", ["change page", "list action"])
def test_a_checked_provider_can_be_deleted_saying_what_goes_with_it(
    staff, live_echo_config, django_capture_on_commit_callbacks, how
) -> None:
    for available in (True, False, True):
        HealthCheck.objects.create(
            provider=live_echo_config, available=available, checked_at=timezone.now()
        )
    if how == "change page":
        url = reverse("admin:providers_providerconfig_delete", args=[live_echo_config.pk])
        confirm, data = staff.get(url), {"post": "yes"}
    else:
        url = reverse(CHANGELIST)
        data = {"action": "delete_selected", "_selected_action": [live_echo_config.pk]}
        confirm = staff.post(url, data)
        data = {**data, "post": "yes"}
    page = confirm.content.decode()
    assert confirm.status_code == 200
    assert "permission" not in page  # no "your account doesn't have permission to delete"
    assert "3 health checks (its check history)" in page
    assert "Kept: its change history" in page

    with django_capture_on_commit_callbacks(execute=True):
        assert staff.post(url, data).status_code == 302

    assert not ProviderConfig.objects.filter(name="echo").exists()
    assert not HealthCheck.objects.exists()
    assert [e.action for e in admin_entries("echo")] == ["deleted"]
    assert "echo" not in runtime.registry


def test_a_staff_user_without_delete_permission_still_cannot_delete(
    client, django_user_model, live_echo_config
) -> None:
    viewer = django_user_model.objects.create_user("viewer", password="pw", is_staff=True)
    viewer.user_permissions.add(Permission.objects.get(codename="view_providerconfig"))
    client.force_login(viewer)
    url = reverse("admin:providers_providerconfig_delete", args=[live_echo_config.pk])
    assert client.post(url, {"post": "yes"}).status_code == 403
    assert ProviderConfig.objects.filter(name="echo").exists()


def test_the_changes_list_shows_seconds_and_zone_and_exports_what_it_shows(
    staff, securetest
) -> None:
    import json as json_module

    from providers.audit.history import Actor
    from providers.config.services import provider_config_update

    provider_config_update(
        config=securetest,
        changes={"secrets": {"api_key": OTHER_SECRET}},
        actor=Actor("key:ops", "api", "10.0.0.2"),
    )
    changelist = reverse("admin:providers_providerconfigchange_changelist")
    page = staff.get(changelist).content.decode()
    latest = ProviderConfigChange.objects.first()
    shown = f"{timezone.localtime(latest.changed_at):%Y-%m-%d %H:%M:%S %Z}"
    assert shown in page and re.search(r"\d\d:\d\d:\d\d [A-Z]{2,5}", shown)

    csv_url = re.search(r'href="([^"]+)" id="changes-export-csv"', page).group(1)
    exported = staff.get(csv_url)
    assert exported.status_code == 200 and exported["Content-Type"].startswith("text/csv")
    body = exported.content.decode()
    assert "key:ops" in body and "sk-...3210" in body
    assert SECRET not in body and OTHER_SECRET not in body

    filtered = staff.get(changelist, {"source": "api"}).content.decode()
    json_url = re.search(r'href="([^"]+)" id="changes-export-json"', filtered).group(1)
    assert "source=api" in json_url
    records = json_module.loads(staff.get(json_url.replace("&amp;", "&")).content)
    assert [r["source"] for r in records] == ["api"]
    assert records[0]["changed_at"].endswith("Z")

    assert staff.get(csv_url.replace("export.csv", "export.xml")).status_code == 404
    assert staff.get(csv_url + "?nosuchfield__gt=1").status_code == 400


def test_exporting_every_change_needs_the_view_permission(
    client, django_user_model, securetest
) -> None:
    nobody = django_user_model.objects.create_user("nobody", password="pw", is_staff=True)
    client.force_login(nobody)
    url = reverse("admin:providers_providerconfigchange_export", args=["csv"])
    assert client.get(url).status_code == 403
