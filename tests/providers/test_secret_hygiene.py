"""Secret hygiene: no control characters in keys or headers, redaction by any 8-character run,
safe error pages, and a keyed import fingerprint.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import override_settings
from django.urls import path, reverse
from rest_framework.test import APIClient

from providers.config.services import (
    provider_config_create,
    provider_config_errors,
    provider_config_update,
)
from providers.config.yaml_import import ImportedValues
from providers.errors import ProviderConfigError
from providers.health.monitor import ProviderHealth, _row
from providers.http_provider import HTTPProvider
from providers.models import ProviderConfig
from providers.runtime import process as runtime
from providers.secrets.log_redaction import redact_record
from providers.secrets.masking import WINDOW, redact
from providers.testing.fake_openai import FakeOpenAI

KEY = "sk-live-0123456789abcdefghijKLMNOPQRSTuvwxyz"
CRLF_KEY = KEY + "\r\nX-Injected: 1"
CONTROL = [
    "\r\nX-Injected: 1",
    "\n",
    "\x00",
    "\t",
    "\x7f",
    "\x85",
    "\x1b[2J",
]


def windows(secret: str) -> set[str]:
    return {secret[i : i + WINDOW] for i in range(len(secret) - WINDOW + 1)}


def leaks(text: str, secret: str = KEY) -> list[str]:
    """Return the 8-character runs of SECRET that TEXT holds."""
    return sorted(w for w in windows(secret) if w in text)


# --- masking: any 8-character run ------------------------------------------------


@pytest.mark.parametrize(
    "quoted",
    [
        KEY,  # whole
        KEY[:-1],  # minus its last character
        KEY[:WINDOW],  # a prefix
        KEY[-WINDOW:],  # a suffix
        KEY[10:30],  # a middle slice
        KEY[3:-3],  # minus a few at both ends
        ("error: " + "z" * 180 + KEY)[:200],  # a 200-character cut
        repr(("Bearer " + CRLF_KEY).encode()),  # an HTTP library quoting the header
        json.dumps({"key": CRLF_KEY}),  # a JSON body quoting it
        KEY + "\r\n",
    ],
)
def test_every_run_of_eight_characters_is_redacted(quoted: str) -> None:
    text = f"upstream said: {quoted} (request 42)"
    redacted = redact(text, [KEY, CRLF_KEY])
    assert leaks(redacted) == [] and leaks(redacted, CRLF_KEY) == []
    assert redacted.startswith("upstream said: ") and redacted.endswith(" (request 42)")


def test_a_whole_key_shows_its_mask_and_a_part_shows_stars() -> None:
    assert redact(f"bad key {KEY}.", [KEY]) == f"bad key sk-...{KEY[-4:]}."
    assert redact(f"bad key {KEY[:-1]}.", [KEY]) == "bad key ****."


def test_seven_characters_are_not_redacted() -> None:
    text = f"model {KEY[:7]} and {KEY[20:27]} here"
    assert redact(text, [KEY]) == text


def test_short_secrets_are_replaced_only_whole() -> None:
    assert redact("pin 12345 and 1234", ["12345"]) == "pin **** and 1234"


def test_redaction_is_linear_enough_for_long_texts() -> None:
    text = "lorem ipsum dolor sit amet " * 40_000 + KEY
    started = time.perf_counter()
    redacted = redact(text, [KEY, CRLF_KEY])
    assert time.perf_counter() - started < 1.0
    assert leaks(redacted) == [] and redacted.startswith("lorem ipsum")


# --- control characters: refused on every write path, naming the field ------------


@pytest.fixture
def fake():
    with FakeOpenAI() as upstream:
        yield upstream


@pytest.mark.parametrize("bad", CONTROL)
def test_the_service_refuses_control_characters_in_a_key(db, bad: str) -> None:
    with pytest.raises(ProviderConfigError) as raised:
        provider_config_create(name="openai", plugin="openai", secrets={"api_key": KEY + bad})
    assert list(raised.value.errors) == ["api_key"]
    assert leaks(raised.value.message) == []
    assert not ProviderConfig.objects.exists()


@pytest.mark.parametrize(
    ("plugin", "field"), [("openai", "organization"), ("anthropic", "anthropic_version")]
)
def test_header_bound_settings_refuse_control_characters(db, plugin: str, field: str) -> None:
    errors = provider_config_errors(
        plugin=plugin, settings={field: "v1\r\nX-Injected: 1"}, secrets={"api_key": KEY}
    )
    assert list(errors) == [field]


def test_free_text_settings_may_hold_a_line_break(db) -> None:
    assert provider_config_errors(plugin="echo", settings={"prefix": "Echo:\n"}, secrets={}) == {}


class TenantProvider(HTTPProvider):
    """A plugin whose unmarked, innocently named setting goes into a header."""

    @property
    def metadata(self) -> Any:
        from providers.base import PluginMetadata

        return PluginMetadata(name="Tenant", version="1")

    def get_config_schema(self) -> dict[str, Any]:
        return {
            "type": "object",
            "properties": {
                "base_url": {"type": "string", "default": "https://example.com"},
                "tenant": {"type": "string"},
                "greeting": {"type": "string"},
            },
        }

    def auth_headers(self) -> dict[str, str]:
        return {"X-Tenant": str(self.config.get("tenant", ""))}

    async def chat_completion(self, request: Any) -> Any:
        raise NotImplementedError

    async def health_check(self) -> Any:
        raise NotImplementedError

    async def list_models(self) -> list[str]:
        return []


def test_a_setting_the_plugin_sends_as_a_header_is_found_by_its_headers(db) -> None:
    runtime.registry.register(TenantProvider, "tenant")
    bad = provider_config_errors(plugin="tenant", settings={"tenant": "a\r\nb"}, secrets={})
    fine = provider_config_errors(plugin="tenant", settings={"greeting": "a\r\nb"}, secrets={})
    assert list(bad) == ["tenant"] and fine == {}


def _error(response: Any) -> dict[str, Any]:
    body = response.json()
    assert set(body) == {"error"}, body
    return body["error"]


@pytest.fixture
def admin_api(admin_key) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {admin_key[1]}")
    return client


@pytest.fixture
def live_openai(db, fake) -> ProviderConfig:
    config = provider_config_create(
        name="openai",
        plugin="openai",
        settings={"base_url": fake.base_url, "max_retries": 0},
        secrets={"api_key": KEY},
    )
    assert runtime.run_in_serving_loop(runtime.load_provider_from_database, "openai") is None
    return config


def _unchanged(config: ProviderConfig) -> None:
    row = ProviderConfig.objects.get(pk=config.pk)
    assert row.secrets == {"api_key": KEY} and "organization" not in row.settings
    assert runtime.registry.get("openai").config["api_key"] == KEY


def test_the_rest_api_refuses_a_crlf_key_with_400(admin_api, fake) -> None:
    body = {
        "name": "openai",
        "plugin": "openai",
        "settings": {"base_url": fake.base_url},
        "secrets": {"api_key": CRLF_KEY},
    }
    response = admin_api.post("/api/providers/", body, format="json")
    assert response.status_code == 400
    assert "api_key" in _error(response)["field"]
    assert leaks(response.content.decode()) == []
    assert not ProviderConfig.objects.exists()


def test_the_rest_api_refuses_a_crlf_header_setting_on_patch(admin_api, live_openai) -> None:
    patch = {"settings": {"organization": "org-1\r\nX-Injected: 1"}}
    response = admin_api.patch("/api/providers/openai/", patch, format="json")
    assert response.status_code == 400
    assert "organization" in _error(response)["field"]
    _unchanged(live_openai)


@pytest.mark.parametrize("change", [{"api_key": CRLF_KEY}, {"organization": "o\nX: 1"}])
def test_put_plugin_config_refuses_control_characters(admin_api, live_openai, change) -> None:
    response = admin_api.put("/plugins/openai/config", change, format="json")
    assert response.status_code == 400
    assert _error(response)["field"] == next(iter(change))
    assert leaks(response.content.decode()) == []
    _unchanged(live_openai)


def test_reload_with_config_refuses_a_crlf_key(admin_api, live_openai, fake) -> None:
    body = {"config": {"base_url": fake.base_url, "api_key": CRLF_KEY}}
    response = admin_api.post("/plugins/openai/reload", body, format="json")
    assert response.status_code == 400
    assert _error(response)["field"] == "api_key"
    _unchanged(live_openai)


def test_the_admin_form_refuses_a_crlf_key(client, admin_user) -> None:
    client.force_login(admin_user)
    url = reverse("admin:providers_providerconfig_add") + "?plugin=openai"
    page = client.get(url)
    assert page.status_code == 200
    data = {"name": "openai", "enabled": "on", "setting__api_key": CRLF_KEY, "_save": "Save"}
    response = client.post(url, data)
    assert response.status_code == 200
    assert "setting__api_key" in response.context["adminform"].form.errors
    assert leaks(response.content.decode()) == []
    assert not ProviderConfig.objects.exists()


def test_the_yaml_import_refuses_a_crlf_key(db, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("OPENAI_CRLF_KEY", CRLF_KEY)
    file = tmp_path / "providers.yaml"
    file.write_text("ai_providers:\n  openai:\n    api_key: ${OPENAI_CRLF_KEY}\n")
    out = io.StringIO()
    with pytest.raises(CommandError):  # an entry it could not import
        call_command("sync_providers", "--file", str(file), stdout=out, stderr=out)
    assert "api_key" in out.getvalue() and "control characters" in out.getvalue()
    assert leaks(out.getvalue()) == []
    assert not ProviderConfig.objects.exists()


# --- logs and stored rows ------------------------------------------------------------


def test_log_records_lose_every_run_of_a_live_key(live_openai, caplog) -> None:
    logger = logging.getLogger("tests.secret_hygiene")
    with caplog.at_level(logging.INFO, logger="tests.secret_hygiene"):
        logger.info("upstream said %s", f"bad key {KEY[:-1]}")
        logger.warning(f"cut at 200: {('x' * 190 + KEY)[:200]}")
        try:
            raise RuntimeError(f"h11 refused {repr(CRLF_KEY.encode())}")
        except RuntimeError:
            logger.exception("call failed")
    assert len(caplog.records) == 3
    for record in caplog.records:
        formatted = logging.Formatter("%(message)s").format(record)
        assert leaks(formatted) == [] and leaks(repr(vars(record))) == []
    assert "Traceback" in caplog.records[2].exc_text


def test_a_key_rotated_or_a_provider_removed_changes_what_log_records_lose(live_openai) -> None:
    logger = logging.getLogger("tests.secret_hygiene")
    assert KEY in runtime.registry.all_secret_values()
    assert runtime.registry.all_secret_values() is runtime.registry.all_secret_values()  # kept
    rotated = "sk-rotated-" + "Q" * 30
    provider_config_update(config=live_openai, changes={"secrets": {"api_key": rotated}})
    assert runtime.run_in_serving_loop(runtime.load_provider_from_database, "openai") is None
    assert rotated in runtime.registry.all_secret_values()
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    logger.addHandler(handler)
    try:
        logger.warning("upstream quoted %s", rotated)
        runtime.run_in_serving_loop(runtime.apply_config_state, "openai", None, "removed")
        assert runtime.registry.all_secret_values() == ()
        logger.warning("after removal %s", "plain text")
    finally:
        logger.removeHandler(handler)
    assert rotated[8:20] not in records[0].getMessage()
    assert records[1].getMessage() == "after removal plain text"


def test_redact_record_covers_extra_attributes() -> None:
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "a %s", (KEY,), None)
    record.upstream_body = f"echo {KEY[5:20]}"
    redact_record(record, [KEY])
    assert leaks(record.getMessage()) == [] and leaks(record.upstream_body) == []


def test_a_redactor_is_reused_only_for_the_same_tuple_of_secrets() -> None:
    from providers.secrets.masking import secret_redactor

    other = "sk-other-9876543210zyxwvutsrqpo"
    listed = [KEY]
    assert leaks(secret_redactor(listed)(f"x {KEY}")) == []
    listed[0] = other  # a list may change under the same object: never reused
    assert secret_redactor(listed)(f"x {KEY}") == f"x {KEY}"
    assert leaks(secret_redactor(listed)(f"x {other}"), other) == []
    kept = (KEY,)
    assert secret_redactor(kept) is secret_redactor(kept)
    assert leaks(secret_redactor((other,))(f"{KEY} {other}"), other) == []
    assert leaks(secret_redactor(kept)(f"{KEY} {other}")) == []


def test_the_handler_filter_redacts_what_came_after_the_factory(live_openai) -> None:
    """Extras, a message another filter rewrote, and records the factory never made."""
    from providers.secrets.log_redaction import SecretRedactingFilter

    def quote_the_key(record: logging.LogRecord) -> bool:  # a filter that rewrites a message
        if record.getMessage() == "rewrite me":
            record.msg = f"rewritten with {KEY}"
        return True

    lines: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = lines.append
    handler.addFilter(quote_the_key)
    handler.addFilter(SecretRedactingFilter())
    log = logging.getLogger("echo.tests.filter")
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        log.info("plain %s", "text", extra={"path": f"/v1/models?key={KEY}"})
        log.info("quoting %s", KEY[3:30])
        log.info("rewrite me")
        handler.handle(logging.makeLogRecord({"msg": f"made by hand {KEY}", "args": ()}))
    finally:
        log.removeHandler(handler)
    assert lines[0].getMessage() == "plain text"
    assert [leaks(line.getMessage()) for line in lines] == [[], [], [], []]
    assert leaks(lines[0].path) == []  # type: ignore[attr-defined]
    assert "rewritten with sk-" in lines[2].getMessage()


def test_a_stored_health_row_is_redacted(live_openai) -> None:
    health = ProviderHealth(name="openai", available=False, error=f"401: {KEY[:-2]}")
    assert leaks(_row(live_openai, health).error) == []


# --- error pages -------------------------------------------------------------------


def raising_view(request: Any) -> Any:
    config = ProviderConfig.objects.get(name="openai")
    decrypted = config.secrets["api_key"]
    harmless_name = decrypted[:-1]
    headers = {"Authorization": f"Bearer {decrypted}"}
    raise RuntimeError(f"upstream refused {harmless_name} with {headers}")


urlpatterns = [path("boom/", raising_view)]


@pytest.mark.urls(__name__)
def test_the_debug_page_shows_no_run_of_a_decrypted_key(db, client, settings) -> None:
    provider_config_create(name="openai", plugin="openai", secrets={"api_key": KEY})
    settings.DEBUG = True
    client.raise_request_exception = False
    response = client.get("/boom/", HTTP_AUTHORIZATION=f"Bearer {KEY}")
    page = response.content.decode()
    assert response.status_code == 500 and "RuntimeError" in page and "harmless_name" in page
    assert leaks(page) == []
    text = client.get("/boom/", HTTP_ACCEPT="text/plain").content.decode()
    assert "RuntimeError" in text and leaks(text) == []


def _settings_in_subprocess(env: dict[str, str], expression: str) -> str:
    environ = {k: v for k, v in os.environ.items() if k not in {"ECHO_DEBUG", "DEBUG"}}
    code = f"import django; django.setup(); from django.conf import settings; print({expression})"
    result = subprocess.run(
        [sys.executable, "-c", code],
        env={**environ, "DJANGO_SETTINGS_MODULE": "echo_site.settings", **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return result.stdout.strip()


@pytest.mark.slow
def test_development_runs_without_debug_unless_asked(tmp_path: Path) -> None:
    env = {"ECHO_ENV": "development", "ECHO_VAR_DIR": str(tmp_path)}
    assert _settings_in_subprocess(env, "settings.DEBUG") == "False"
    assert _settings_in_subprocess({**env, "ECHO_DEBUG": "1"}, "settings.DEBUG") == "True"
    hosts = _settings_in_subprocess(env, "settings.ALLOWED_HOSTS")
    assert "127.0.0.1" in hosts and "localhost" in hosts


@pytest.mark.slow
def test_static_files_and_the_admin_serve_with_debug_off(live_echo, settings) -> None:
    import httpx

    assert settings.DEBUG is False
    css = httpx.get(f"{live_echo.url}/static/admin/css/base.css", timeout=10)
    assert css.status_code == 200 and "body" in css.text
    login = httpx.get(f"{live_echo.url}/admin/login/", timeout=10)
    assert login.status_code == 200 and "/static/admin/css/" in login.text


# --- the import fingerprint --------------------------------------------------------


def _values(secret: str = KEY) -> ImportedValues:
    return ImportedValues(
        plugin="openai",
        enabled=True,
        is_default=False,
        fallbacks=[],
        settings={"timeout": 30},
        secrets={"api_key": secret},
        disabled_reason="",
    )


def test_the_fingerprint_is_keyed_not_a_plain_hash_of_the_key() -> None:
    values = _values()
    fingerprint = values.fingerprint()
    plain = {
        hashlib.sha256(values.canonical()).hexdigest(),
        hashlib.sha256(json.dumps({"api_key": KEY}).encode()).hexdigest(),
        hashlib.sha256(json.dumps(values.secrets, sort_keys=True).encode()).hexdigest(),
        hashlib.sha256(KEY.encode()).hexdigest(),
    }
    assert all(p not in fingerprint for p in plain)
    assert fingerprint == _values().fingerprint()  # stable
    assert fingerprint != _values(KEY + "x").fingerprint()
    with override_settings(SECRET_KEY="another-server-secret-" + "x" * 40):
        assert _values().fingerprint() != fingerprint
        assert not _values().matches(fingerprint)
        with override_settings(SECRET_KEY_FALLBACKS=[settings_secret_key()]):
            assert _values().matches(fingerprint)  # rotating SECRET_KEY keeps ownership


def settings_secret_key() -> str:
    from echo_site import settings as module

    return module.SECRET_KEY


class FingerprintRows:
    YAML = "ai_providers:\n  openai:\n    api_key: {key}\n    timeout: {timeout}\n"


def _sync(tmp_path: Path, timeout: int) -> str:
    file = tmp_path / "providers.yaml"
    file.write_text(FingerprintRows.YAML.format(key=KEY, timeout=timeout))
    out = io.StringIO()
    call_command("sync_providers", "--file", str(file), stdout=out, stderr=out)
    return out.getvalue()


def _legacy(row: ProviderConfig) -> str:
    return hashlib.sha256(ImportedValues.from_row(row).canonical()).hexdigest()


def test_an_old_unkeyed_fingerprint_still_counts_as_the_imports_own(db, tmp_path) -> None:
    _sync(tmp_path, 30)
    row = ProviderConfig.objects.get(name="openai")
    ProviderConfig.objects.filter(pk=row.pk).update(import_fingerprint=_legacy(row))

    output = _sync(tmp_path, 40)  # the file changed; no one edited the row

    row = ProviderConfig.objects.get(name="openai")
    assert row.settings["timeout"] == 40, output
    assert row.import_fingerprint == ImportedValues.from_row(row).fingerprint()


def test_an_old_fingerprint_of_edited_values_is_a_conflict_and_leaves(db, tmp_path) -> None:
    _sync(tmp_path, 30)
    row = ProviderConfig.objects.get(name="openai")
    legacy = _legacy(row)
    ProviderConfig.objects.filter(pk=row.pk).update(
        import_fingerprint=legacy, settings={**row.settings, "timeout": 35}
    )

    output = _sync(tmp_path, 40)

    row = ProviderConfig.objects.get(name="openai")
    assert row.settings["timeout"] == 35 and "conflict" in output.lower()
    assert row.import_fingerprint not in ("", legacy)
    assert not ImportedValues.from_row(row).matches(row.import_fingerprint)


def test_a_new_key_in_a_failing_write_is_hidden_from_the_debug_page(live_openai, monkeypatch):
    # The new key is neither live nor stored yet: only the marked locals keep it off the page.
    import secrets
    import sys

    from django.test import RequestFactory
    from django.views.debug import technical_500_response

    from providers.config import services

    new_key = "sk-new-" + secrets.token_hex(16)  # not a literal: the page shows source lines

    def crash(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("the database is gone")

    # The write's candidate started with the new key; then its save failed.
    monkeypatch.setattr(ProviderConfig, "save", crash)
    try:
        services.provider_config_update(
            config=live_openai, changes={"secrets": {"api_key": new_key}}
        )
    except RuntimeError:
        page = technical_500_response(RequestFactory().get("/"), *sys.exc_info()).content.decode()
    assert "provider_config_update" in page
    assert (
        "ProviderConfigPlan(name=&#x27;openai&#x27;" in page
    )  # shown, its settings and secrets not
    assert leaks(page, KEY) == []  # the stored key, in the audit snapshot taken before
    assert leaks(page, new_key) == []
