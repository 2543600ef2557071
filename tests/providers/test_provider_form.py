"""The Add provider form (issue 19): its order, kept secrets, plain messages, checked fallbacks, Test connection.

Forms are posted as a browser would (``tests.providers.test_admin.form_data``
reads the rendered controls back). Fallbacks are refused alike by the admin,
``/api/providers/`` and the guide's ``PUT /plugins/{name}/config``, with the
row unchanged and no audit entry. A Test connection post starts the
provider the form describes, checks its health and saves nothing; a provider
added is checked at once after its creation commits.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
from django.contrib.auth.models import Permission
from django.test import Client
from django.urls import reverse
from rest_framework.test import APIClient

from providers.admin.provider_form import TEST_BUTTON, human_message
from providers.base import AbstractAIProvider, PluginMetadata
from providers.config.services import provider_config_create, provider_config_update
from providers.errors import AuthenticationError, ProviderConfigError
from providers.models import HealthCheck, ProviderConfig, ProviderConfigChange
from providers.runtime import process as runtime
from providers.types import ChatRequest, ChatResponse, HealthStatus
from tests.providers.test_admin import form_data

GOOD_KEY = "sk-good-0123456789abcdef"
TYPED_KEY = "sk-typed-fedcba9876543210"
BAD_KEY = "sk-bad-aaaabbbbccccdddd"
ADD = reverse("admin:providers_providerconfig_add")
CONNTEST_ADD = f"{ADD}?plugin=conntest"


class ConntestProvider(AbstractAIProvider):
    """A provider whose upstream knows one key; its health check says the refused key (careless)."""

    @property
    def metadata(self) -> PluginMetadata:
        return PluginMetadata(
            name="Conntest", version="0.1", requires_api_key=True, models=["conn-1", "conn-2"]
        )

    def get_config_schema(self) -> dict[str, Any]:
        return {
            "type": "object",
            "properties": {
                "api_key": {"type": "string", "title": "API key", "writeOnly": True},
                "region": {"type": "string", "title": "Region", "default": "eu"},
                "base_url": {
                    "type": "string",
                    "title": "Base URL",
                    "pattern": "^https?://",
                    "default": "https://conn.example.com/v1",
                },
                "timeout": {"type": "number", "title": "Read timeout (seconds)", "default": 60},
                "tier": {"type": "string", "title": "Tier", "enum": ["free", "paid"]},
                "label": {"type": "string", "title": "Label", "minLength": 1, "maxLength": 5},
                "size": {"type": "integer", "title": "Size", "minimum": 1, "maximum": 9},
            },
            "required": ["api_key"],
        }

    async def initialize(self) -> None:
        pass

    async def chat_completion(self, request: ChatRequest) -> ChatResponse:
        return ChatResponse(content="ok", model="conn-1", provider=self.name)

    async def health_check(self) -> HealthStatus:
        if self.config["api_key"] != GOOD_KEY:
            raise AuthenticationError(f"key {self.config['api_key']} refused by the upstream")
        return HealthStatus(available=True, models=["conn-1", "conn-2"], response_time_ms=12.5)

    async def list_models(self) -> list[str]:
        return ["conn-1", "conn-2"]


@pytest.fixture
def staff(client, admin_user):
    client.force_login(admin_user)
    return client


@pytest.fixture
def conntest(db) -> None:
    runtime.registry.register(ConntestProvider, "conntest")


@pytest.fixture
def live_conn(conntest) -> ProviderConfig:
    """A live conntest provider, its good key stored."""
    config = provider_config_create(name="conn", plugin="conntest", secrets={"api_key": GOOD_KEY})
    assert runtime.run_in_serving_loop(runtime.load_provider_from_database, "conn") is None
    return config


@pytest.fixture
def live_echo_config(echo_config) -> ProviderConfig:
    assert runtime.run_in_serving_loop(runtime.load_provider_from_database, "echo") is None
    return echo_config


@pytest.fixture
def api_admin(admin_key) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {admin_key[1]}")
    return client


def change_url(config: ProviderConfig) -> str:
    return reverse("admin:providers_providerconfig_change", args=[config.pk])


def field_names(html: str) -> list[str]:
    """Return the names of the form's controls, in page order (each once)."""
    form = html[html.index('id="providerconfig_form"') :]
    return list(dict.fromkeys(re.findall(r'<(?:input|select|textarea)[^>]*\bname="([^"]+)"', form)))


def advanced_section(html: str) -> str:
    """Return the HTML of the form's "Advanced" fieldset."""
    start = html.index('-heading" class="fieldset-heading">Advanced<')
    start = html.rindex("<fieldset", 0, start)
    return html[start : html.index("</fieldset>", start)]


def row_state(name: str) -> tuple[Any, ...]:
    row = ProviderConfig.objects.get(name=name)
    return (row.settings, row.secrets, row.fallbacks, row.revision, row.updated_at)


# --- the order, and the collapsed section -------------------------------------------


@pytest.mark.parametrize("plugin", ["conntest", "openai", "anthropic"])
def test_name_plugin_key_and_url_come_first_and_advanced_is_collapsed(
    staff, conntest, plugin
) -> None:
    html = staff.get(f"{ADD}?plugin={plugin}").content.decode()

    names = [n for n in field_names(html) if n != "csrfmiddlewaretoken"]
    assert names[:4] == ["name", "plugin", "setting__api_key", "setting__base_url"]
    advanced = advanced_section(html)
    assert 'class="module aligned collapse"' in advanced and "<details>" in advanced
    for field in ("fallbacks", "routing_priority", "setting__max_retries", "setting__timeout"):
        assert f'name="{field}"' in advanced, field
        assert names.index(field) > names.index("setting__base_url")
    for field in ("setting__breaker_failure_threshold", "setting__deadline_seconds"):
        assert f'name="{field}"' in advanced
    assert 'name="setting__api_key"' not in advanced and 'name="name"' not in advanced
    # The Test connection button sits after Save, so Enter still saves.
    assert html.index('name="_save"') < html.index(f'name="{TEST_BUTTON}"')


def test_an_error_in_the_advanced_section_shows_it_open(staff, conntest) -> None:
    page = staff.get(CONNTEST_ADD)
    response = staff.post(
        CONNTEST_ADD,
        form_data(page, name="conn", setting__api_key=GOOD_KEY, setting__max_retries="99"),
    )

    assert response.status_code == 200
    advanced = advanced_section(response.content.decode())
    assert "<details>" not in advanced
    assert "Retries before failover must be at most 10." in advanced
    assert not ProviderConfig.objects.filter(name="conn").exists()


# --- typed secrets: kept in the form after an error, never after a save --------------


def test_a_typed_key_survives_a_failed_add_and_not_the_save(
    staff, conntest, django_capture_on_commit_callbacks
) -> None:
    page = staff.get(CONNTEST_ADD)
    assert TYPED_KEY not in page.content.decode()
    data = form_data(page, name="conn", setting__api_key=TYPED_KEY, setting__base_url="ftp://x")

    refused = staff.post(CONNTEST_ADD, data)

    assert refused.status_code == 200
    html = refused.content.decode()
    assert refused.context["adminform"].form.errors["setting__base_url"] == [
        "Enter a URL starting with http:// or https:// in Base URL."
    ]
    assert html.count(TYPED_KEY) == 1
    assert f'type="password" name="setting__api_key" value="{TYPED_KEY}"' in html
    assert not ProviderConfig.objects.filter(name="conn").exists()

    # Corrected and saved: the key is stored, and no page shows it again.
    fixed = form_data(refused, setting__base_url="https://conn.example.com/v2")
    assert fixed["setting__api_key"] == TYPED_KEY  # the browser sends the kept key back
    with django_capture_on_commit_callbacks(execute=True):
        saved = staff.post(CONNTEST_ADD, fixed)
    assert saved.status_code == 302
    row = ProviderConfig.objects.get(name="conn")
    assert row.secrets == {"api_key": TYPED_KEY}
    for shown in (saved["Location"], change_url(row)):
        assert TYPED_KEY not in staff.get(shown).content.decode()
    assert "sk-...3210" in staff.get(change_url(row)).content.decode()  # masked only


def test_a_stored_key_is_never_put_in_the_page(staff, live_conn) -> None:
    url = change_url(live_conn)
    assert GOOD_KEY not in staff.get(url).content.decode()

    refused = staff.post(url, form_data(staff.get(url), setting__base_url="nope"))

    assert refused.status_code == 200
    html = refused.content.decode()
    assert GOOD_KEY not in html
    assert 'name="setting__api_key" value=' not in html  # left blank: stays blank


# --- plain messages -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        (
            "setting__base_url",
            "api.example.com",
            "Enter a URL starting with http:// or https:// in Base URL.",
        ),
        ("setting__size", "0", "Size must be at least 1."),
        ("setting__size", "10", "Size must be at most 9."),
        ("setting__size", "many", "Size must be a whole number."),
        ("setting__timeout", "soon", "Read timeout (seconds) must be a number."),
        ("setting__label", "toolong", "Label must be at most 5 characters long."),
    ],
)
def test_errors_are_plain_sentences_naming_the_field(
    staff, live_conn, field, value, message
) -> None:
    url = change_url(live_conn)
    before = row_state("conn")

    response = staff.post(url, form_data(staff.get(url), **{field: value}))

    assert response.status_code == 200
    assert response.context["adminform"].form.errors[field] == [message]
    assert row_state("conn") == before


@pytest.mark.parametrize(
    ("config", "field", "message"),
    [
        (
            {"base_url": "ftp://x"},
            "base_url",
            "Enter a URL starting with http:// or https:// in Base URL.",
        ),
        ({"size": 0}, "size", "Size must be at least 1."),
        ({"size": 99}, "size", "Size must be at most 9."),
        ({"size": "two"}, "size", "Size must be a whole number."),
        ({"timeout": "x"}, "timeout", "Read timeout (seconds) must be a number."),
        ({"tier": "gold"}, "tier", "Tier must be one of: 'free', 'paid'."),
        ({"label": ""}, "label", "Enter Label."),
        ({"label": "sixsix"}, "label", "Label must be at most 5 characters long."),
        ({"region": 7}, "region", "Region must be text."),
    ],
)
def test_each_schema_rule_reads_as_a_sentence(conntest, config, field, message) -> None:
    # The plugin's own schema messages, as the services report them, then in the form's words.
    errors = ConntestProvider.check_config({"api_key": GOOD_KEY, **config})
    label = ConntestProvider.config_schema()["properties"][field]["title"]
    assert [human_message(m, label=label) for m in errors[field]] == [message]


def test_other_messages_are_left_as_they_are() -> None:
    assert human_message("This field is required.", label="API key") == "This field is required."
    assert human_message("Must name a host.", label="Base URL") == "Must name a host."


# --- fallbacks: configured providers and the models they serve ------------------------


@pytest.fixture
def providers(db, live_echo_config) -> None:
    """echo (live), backup (live), openai (live on a closed port), paused (disabled)."""
    provider_config_create(name="backup", plugin="echo", settings={"models": ["echo-1", "big-1"]})
    provider_config_create(
        name="openai",
        plugin="openai",
        settings={"base_url": "http://127.0.0.1:9/v1"},
        secrets={"api_key": GOOD_KEY},
    )
    provider_config_create(name="paused", plugin="echo", enabled=False)
    for name in ("backup", "openai"):
        assert runtime.run_in_serving_loop(runtime.load_provider_from_database, name) is None


def audit_count() -> int:
    return ProviderConfigChange.objects.count()


@pytest.mark.parametrize(
    ("item", "says"),
    [
        ("nosuchprovider", "'nosuchprovider': no provider named 'nosuchprovider' is configured."),
        ("openai/gpt-9", "'openai/gpt-9': the provider 'openai' is not known to serve the model"),
        ("backup/echo-9", "'backup/echo-9': the provider 'backup' is not known to serve"),
    ],
)
def test_the_admin_refuses_an_unknown_fallback(staff, providers, item, says) -> None:
    url = change_url(ProviderConfig.objects.get(name="echo"))
    before, audits = row_state("echo"), audit_count()

    response = staff.post(url, form_data(staff.get(url), fallbacks=f"backup\n{item}"))

    assert response.status_code == 200
    errors = response.context["adminform"].form.errors["fallbacks"]
    assert len(errors) == 1 and errors[0].startswith(says), errors
    assert row_state("echo") == before and audit_count() == audits


def test_a_refused_model_suggests_what_the_provider_serves(providers) -> None:
    with pytest.raises(ProviderConfigError) as refused:
        provider_config_update(
            config=ProviderConfig.objects.get(name="echo"),
            changes={"fallbacks": ["backup/big-2"]},
            check_fallback_targets=True,
        )
    assert "Models it serves include: big-1" in refused.value.errors["fallbacks"][0]


@pytest.mark.parametrize(
    "fallbacks",
    [
        ["backup", "openai"],
        ["openai/gpt-4o-mini", "openai/gpt-4o-2024-08-06"],  # listed, and a dated variant
        ["backup/big-1"],
        ["paused/any-model-at-all"],  # disabled: its list is unknown, any model goes
    ],
)
def test_the_admin_accepts_known_fallbacks(
    staff, providers, fallbacks, django_capture_on_commit_callbacks
) -> None:
    url = change_url(ProviderConfig.objects.get(name="echo"))
    with django_capture_on_commit_callbacks(execute=True):
        response = staff.post(url, form_data(staff.get(url), fallbacks="\n".join(fallbacks)))

    assert response.status_code == 302, response.context["adminform"].form.errors
    assert ProviderConfig.objects.get(name="echo").fallbacks == fallbacks


def test_a_new_provider_in_the_admin_gets_its_fallbacks_checked(staff, providers) -> None:
    page = staff.get(f"{ADD}?plugin=echo")
    response = staff.post(f"{ADD}?plugin=echo", form_data(page, name="third", fallbacks="ghost"))

    assert response.status_code == 200
    assert "'ghost': no provider named" in response.context["adminform"].form.errors["fallbacks"][0]
    assert not ProviderConfig.objects.filter(name="third").exists()


@pytest.mark.parametrize("item", ["nosuchprovider", "openai/gpt-9"])
def test_the_rest_api_refuses_an_unknown_fallback(api_admin, providers, item) -> None:
    before, audits = row_state("echo"), audit_count()

    patched = api_admin.patch("/api/providers/echo/", {"fallbacks": [item]}, format="json")
    created = api_admin.post(
        "/api/providers/", {"name": "third", "plugin": "echo", "fallbacks": [item]}, format="json"
    )

    for response in (patched, created):
        assert response.status_code == 400, response.content
        body = response.content.decode()
        assert "fallbacks" in body and item in body
    assert row_state("echo") == before and audit_count() == audits
    assert not ProviderConfig.objects.filter(name="third").exists()


@pytest.mark.parametrize("item", ["nosuchprovider", "openai/gpt-9"])
def test_the_guide_api_refuses_an_unknown_fallback(api_admin, providers, item) -> None:
    before, audits = row_state("echo"), audit_count()

    response = api_admin.put("/plugins/echo/config", {"fallbacks": [item]}, format="json")

    assert response.status_code == 400, response.content
    body = response.content.decode()
    assert "fallbacks" in body and item in body
    assert row_state("echo") == before and audit_count() == audits


def test_the_guide_api_sets_known_fallbacks(
    api_admin, providers, django_capture_on_commit_callbacks
) -> None:
    with django_capture_on_commit_callbacks(execute=True):
        response = api_admin.put(
            "/plugins/echo/config", {"fallbacks": ["backup/big-1"], "prefix": "E: "}, format="json"
        )

    assert response.status_code == 200, response.content
    row = ProviderConfig.objects.get(name="echo")
    assert row.fallbacks == ["backup/big-1"] and row.settings["prefix"] == "E: "


@pytest.mark.parametrize(
    "fallbacks",
    [
        5,
        "backup",
        {"backup": 1},
        [["backup"]],
        [None],
        ["back\x00up"],
        ["Backup"],
        ["x" * 100_000],
        ["backup/" + "m" * 100_000],
        [f"ghost-{i}" for i in range(500)],
    ],
    ids=[
        "number",
        "text",
        "object",
        "nested",
        "null",
        "nul",
        "uppercase",
        "huge-name",
        "huge-model",
        "many-unknown",
    ],
)
def test_hostile_fallbacks_get_400_naming_the_field_and_change_nothing(
    api_admin, providers, fallbacks
) -> None:
    before, audits = row_state("echo"), audit_count()

    for response in (
        api_admin.patch("/api/providers/echo/", {"fallbacks": fallbacks}, format="json"),
        api_admin.put("/plugins/echo/config", {"fallbacks": fallbacks}, format="json"),
    ):
        assert response.status_code == 400, response.content[:500]
        body = response.content.decode()
        assert "fallbacks" in body
        assert len(body) < 20_000  # a refused item is quoted, not echoed whole
    assert row_state("echo") == before and audit_count() == audits


def test_a_stored_fallback_is_not_checked_again(providers) -> None:
    # One whose provider went away since must not block an unrelated change.
    echo = ProviderConfig.objects.get(name="echo")
    provider_config_update(config=echo, changes={"fallbacks": ["paused"]})
    ProviderConfig.objects.filter(name="paused").delete()

    saved = provider_config_update(
        config=echo, changes={"settings": {"prefix": "E: "}}, check_fallback_targets=True
    )
    assert saved.fallbacks == ["paused"] and saved.settings["prefix"] == "E: "


def test_the_yaml_import_may_name_providers_it_creates_later(db) -> None:
    # Its providers name one another (openai -> anthropic -> openai): not checked there.
    from providers.audit.history import SOURCE_YAML_IMPORT, Actor

    created = provider_config_create(
        name="first",
        plugin="echo",
        fallbacks=["second"],
        actor=Actor(name="sync_providers", source=SOURCE_YAML_IMPORT),
    )
    assert created.fallbacks == ["second"]


# --- Test connection ------------------------------------------------------------------


def test_connection_with_the_stored_key_saves_nothing(staff, live_conn) -> None:
    url = change_url(live_conn)
    before, audits, checks = row_state("conn"), audit_count(), HealthCheck.objects.count()
    data = form_data(staff.get(url), setting__region="us")
    data[TEST_BUTTON] = "Test connection"

    response = staff.post(url, data)

    assert response.status_code == 200
    result = response.context["adminform"].form.connection_result
    assert result.available and result.models == ("conn-1", "conn-2")
    html = response.content.decode()
    assert 'id="connection-test-result"' in html and "Connection works." in html
    assert "12.5 ms" in html and "conn-1, conn-2" in html
    assert "Please correct" not in html
    assert GOOD_KEY not in html
    assert row_state("conn") == before and audit_count() == audits
    assert HealthCheck.objects.count() == checks
    assert runtime.registry.get("conn").config["region"] == "eu"  # the live one untouched


def test_connection_with_a_typed_bad_key_shows_the_error_masked(staff, conntest) -> None:
    data = form_data(staff.get(CONNTEST_ADD), name="conn", setting__api_key=BAD_KEY)
    data[TEST_BUTTON] = "Test connection"

    response = staff.post(CONNTEST_ADD, data)

    assert response.status_code == 200
    result = response.context["adminform"].form.connection_result
    assert not result.available and "refused by the upstream" in result.error
    assert BAD_KEY not in result.error
    html = response.content.decode()
    assert "Connection failed." in html and "sk-...dddd" in html
    # The key appears once: in its own input, for the Save that follows.
    assert html.count(BAD_KEY) == 1
    assert f'type="password" name="setting__api_key" value="{BAD_KEY}"' in html
    assert not ProviderConfig.objects.filter(name="conn").exists()
    assert "conn" not in runtime.registry


def test_connection_with_a_typed_good_key_then_save(
    staff, conntest, serving_loop, django_capture_on_commit_callbacks
) -> None:
    data = form_data(staff.get(CONNTEST_ADD), name="conn", setting__api_key=GOOD_KEY)
    tested = staff.post(CONNTEST_ADD, {**data, TEST_BUTTON: "Test connection"})
    assert tested.context["adminform"].form.connection_result.available
    assert not ProviderConfig.objects.filter(name="conn").exists()

    with django_capture_on_commit_callbacks(execute=True):
        saved = staff.post(CONNTEST_ADD, form_data(tested))
    assert saved.status_code == 302
    assert ProviderConfig.objects.get(name="conn").secrets == {"api_key": GOOD_KEY}


def test_an_invalid_form_is_not_tested(staff, live_conn) -> None:
    url = change_url(live_conn)
    data = form_data(staff.get(url), setting__base_url="nope")
    data[TEST_BUTTON] = "Test connection"

    response = staff.post(url, data)

    form = response.context["adminform"].form
    assert "setting__base_url" in form.errors and form.connection_result is None
    assert 'id="connection-test-result"' not in response.content.decode()


def test_a_viewer_cannot_test_and_a_post_without_csrf_is_refused(
    live_conn, admin_user, django_user_model
) -> None:
    viewer = django_user_model.objects.create_user(
        "viewer", password="pw-viewer-123", is_staff=True
    )
    viewer.user_permissions.add(Permission.objects.get(codename="view_providerconfig"))
    client = Client()
    client.force_login(viewer)
    url = change_url(live_conn)
    page = client.get(url).content.decode()
    assert f'name="{TEST_BUTTON}"' not in page
    assert client.post(url, {TEST_BUTTON: "Test connection"}).status_code == 403

    strict = Client(enforce_csrf_checks=True)
    strict.force_login(admin_user)
    assert strict.post(url, {TEST_BUTTON: "Test connection"}).status_code == 403


# --- a new provider is checked at once -----------------------------------------------------


def test_a_provider_added_in_the_admin_is_checked_at_once(
    transactional_db, staff, serving_loop
) -> None:
    # Real commits: the check runs when the add view's transaction commits, before its response.
    page = staff.get(f"{ADD}?plugin=echo")
    response = staff.post(f"{ADD}?plugin=echo", form_data(page, name="fresh"))

    assert response.status_code == 302
    check = HealthCheck.objects.get(provider__name="fresh")
    assert check.available and check.models == ["echo-1"]
    followed = staff.get(response["Location"]).content.decode()  # the list, with the messages
    assert "Fresh is up (" in followed  # the admin capitalizes its messages
    assert "never checked" not in followed


def test_a_disabled_new_provider_is_not_checked(
    staff, db, serving_loop, django_capture_on_commit_callbacks
) -> None:
    page = staff.get(f"{ADD}?plugin=echo")
    data = form_data(page, name="quiet", enabled=None)
    with django_capture_on_commit_callbacks(execute=True):
        assert staff.post(f"{ADD}?plugin=echo", data).status_code == 302
    assert not HealthCheck.objects.filter(provider__name="quiet").exists()
