"""Schemathesis against Echo's own OpenAPI schema: no 5xx, and every answer as the schema says.

The schema is read from ``/api/schema/`` with an admin key, and every
``/plugins``, ``/api`` and ``/chat`` operation is called in-process (Django's
WSGI application, no sockets) with examples generated from it, valid and
invalid, bounded so that the whole run takes well under a minute (the same
examples each run: ``derandomize``). The path parameter ``name`` is always
``echo``, a provider that exists (put back before each call, since DELETE
removes it), so that calls reach the views' validation rather than stopping
at a 404.
"""

from __future__ import annotations

import pytest
import schemathesis
from django.core.signals import request_finished, request_started
from django.db import close_old_connections
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import response_schema_conformance, status_code_conformance

from echo_site.wsgi import application
from providers.config.services import provider_config_create
from providers.models import ProviderConfig
from providers.runtime import process as runtime

# Slow: schemathesis generates requests for every operation of the schema.
pytestmark = pytest.mark.slow

# Six per operation (positive and negative, derandomized): the API has grown past 100
# operations, and the suite must stay under five minutes on two cores.
EXAMPLES_PER_OPERATION = 6
# The browser chat's endpoints (another part of the app) are held to no 5xx and
# schema-shaped answers; ours also to documenting every status they answer with.
NOT_OURS = ("/api/conversations",)


@pytest.fixture
def admin_headers(admin_key) -> dict[str, str]:
    return {"Authorization": f"Bearer {admin_key[1]}"}


@pytest.fixture
def keep_test_connection():
    """Stop requests from closing the test's database connection, as Django's test client does.

    Schemathesis calls the WSGI application directly, so the request signals
    would close the connection that holds the test's transaction.
    """
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    yield
    request_started.connect(close_old_connections)
    request_finished.connect(close_old_connections)


@pytest.fixture
def echo_schema(db, admin_headers, keep_test_connection):
    """The app's schema, loaded through its own endpoint, set for bounded in-process runs."""
    loaded = schemathesis.openapi.from_wsgi(
        "/api/schema/?format=json", application, headers=admin_headers
    )
    loaded.config.update(headers=admin_headers, parameters={"path.name": "echo"})
    loaded.config.generation.update(
        max_examples=EXAMPLES_PER_OPERATION,
        modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE],
    )
    return loaded


def _echo_exists() -> None:
    if not ProviderConfig.objects.filter(name="echo").exists():
        provider_config_create(
            name="echo", plugin="echo", settings={"prefix": "Echo: "}, is_default=True
        )
        runtime.run_in_serving_loop(runtime.load_provider_from_database, "echo")


schema = (
    schemathesis.pytest.from_fixture("echo_schema")
    .include(
        path_regex=r"^/(plugins/|api/|chat$|health)",
        method=["GET", "PUT", "POST", "PATCH", "DELETE"],
    )
    # Discovery imports code from disk: not for random input. The schema itself is
    # checked by `spectacular --validate` (tests/plugins_api/test_openapi.py) and is
    # slow to build: a third of the run for nothing.
    .exclude(path=["/plugins/discover", "/api/schema/"])
)


# Served through WSGI here, a streamed chat is read whole; Echo serves it over ASGI.
@pytest.mark.filterwarnings("ignore:StreamingHttpResponse must consume asynchronous iterators")
@settings(
    max_examples=EXAMPLES_PER_OPERATION,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
    database=None,
)
@schema.parametrize()
def test_the_api_answers_as_its_schema_says(case) -> None:
    _echo_exists()
    checks = [not_a_server_error, response_schema_conformance]
    if not case.path.startswith(NOT_OURS):
        checks.append(status_code_conformance)
    case.call_and_validate(checks=checks)
