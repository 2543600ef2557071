"""The OpenAPI schema (``/api/schema/``) and the browsable docs (``/api/docs/``)."""

from __future__ import annotations

import re

import pytest
import yaml
from django.core.management import call_command
from rest_framework.test import APIClient

from tests.plugins_api.test_plugin_views import error_of

DOCUMENTED = {
    "/chat": {"post"},
    "/plugins/": {"get"},
    "/plugins/instances": {"get"},
    "/plugins/metadata": {"get"},
    "/plugins/health": {"get"},
    "/plugins/discover": {"post"},
    "/plugins/{name}": {"delete"},
    "/plugins/{name}/status": {"get"},
    "/plugins/{name}/reload": {"post"},
    "/plugins/{name}/config": {"put"},
    "/plugins/{name}/config-schema": {"get"},
    "/plugins/{name}/metadata": {"get"},
    "/plugins/{name}/models": {"get"},
    "/plugins/{name}/models/{model}": {"get"},
    "/health": {"get"},
    "/health/{name}": {"get"},
    "/api/providers/": {"get", "post"},
    "/api/providers/{name}/": {"get", "put", "patch", "delete"},
    "/api/health-checks/": {"get"},
    "/api/health-checks/{id}/": {"get"},
    "/api/providers/{name}/history/": {"get"},
    "/api/providers/{name}/history/export/": {"get"},
    "/api/history/": {"get"},
    "/api/history/export/": {"get"},
}


@pytest.fixture(scope="module")
def schema(tmp_path_factory, django_db_blocker) -> dict:
    """Generate the schema once, failing on any drf-spectacular warning or invalid OpenAPI."""
    path = tmp_path_factory.mktemp("openapi") / "schema.yaml"
    with django_db_blocker.unblock():
        call_command("spectacular", "--validate", "--fail-on-warn", "--file", str(path))
    return yaml.safe_load(path.read_text())


def test_schema_documents_every_endpoint(schema):
    assert schema["openapi"].startswith("3.")
    for path, methods in DOCUMENTED.items():
        assert path in schema["paths"], path
        assert methods <= set(schema["paths"][path]), path


def test_schema_documents_bodies_and_errors(schema):
    components = schema["components"]["schemas"]
    reload = schema["paths"]["/plugins/{name}/reload"]["post"]
    assert reload["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ReloadRequest"
    }
    assert set(components["ReloadRequest"]["properties"]) == {"provider_name", "config", "replace"}
    assert reload["responses"]["409"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/Error"
    }
    health = schema["paths"]["/plugins/health"]["get"]["responses"]["200"]
    assert health["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ProviderHealthMap"
    }
    assert components["ProviderHealthMap"]["additionalProperties"] == {
        "$ref": "#/components/schemas/ProviderHealth"
    }
    assert {"available", "models", "response_time_ms", "last_error"} <= set(
        components["ProviderHealth"]["properties"]
    )
    # Every $ref points at a component that exists.
    refs = set(re.findall(r"#/components/schemas/(\w+)", yaml.safe_dump(schema)))
    assert refs <= set(components)


def test_schema_documents_the_history_exports(schema):
    export = schema["paths"]["/api/providers/{name}/history/export/"]["get"]
    assert set(export["responses"]["200"]["content"]) == {"application/json", "text/csv"}
    fmt = next(p for p in export["parameters"] if p["name"] == "format")
    assert fmt["schema"]["enum"] == ["csv", "json"]
    listed = schema["paths"]["/api/history/"]["get"]
    assert {"provider", "actor", "source", "action", "since", "until", "page"} <= {
        p["name"] for p in listed["parameters"]
    }
    entry = schema["components"]["schemas"]["ProviderConfigChange"]["properties"]
    assert {"changed_at", "actor", "source", "remote_addr", "changes"} <= set(entry)


def test_schema_marks_the_public_health_check_and_the_auth_schemes(schema):
    schemes = schema["components"]["securitySchemes"]
    assert schemes["bearerKey"] == {
        "type": "http",
        "scheme": "bearer",
        "description": "An Echo client key; the management API needs an admin-scoped one.",
    }
    assert "security" not in schema["paths"]["/health"]["get"]
    assert {"bearerKey": []} in schema["paths"]["/plugins/"]["get"]["security"]


@pytest.fixture
def admin(admin_key) -> dict[str, str]:
    return {"HTTP_AUTHORIZATION": f"Bearer {admin_key[1]}"}


def test_schema_is_served_to_admins(admin):
    response = APIClient().get("/api/schema/?format=json", **admin)
    assert response.status_code == 200
    assert "/plugins/{name}/reload" in response.json()["paths"]


def test_docs_use_only_local_assets(admin):
    response = APIClient().get("/api/docs/", **admin)
    assert response.status_code == 200
    html = response.content.decode()
    assert "/static/drf_spectacular_sidecar/swagger-ui-dist/swagger-ui-bundle.js" in html
    assert "/api/schema/" in html
    assert not re.search(r"https?://", html), re.findall(r"https?://\S+", html)


@pytest.mark.parametrize("url", ["/api/schema/", "/api/docs/"])
def test_schema_and_docs_need_an_admin(url, chat_key):
    anonymous = APIClient().get(url)
    assert anonymous.status_code == 401
    assert error_of(anonymous)["type"] == "authentication_required"
    chat = APIClient().get(url, HTTP_AUTHORIZATION=f"Bearer {chat_key[1]}")
    assert chat.status_code == 403
    assert error_of(chat)["type"] == "permission_denied"
