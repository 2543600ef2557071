"""The OpenAPI description of ``/v1`` and ``/metrics`` (``openapi_compat``), and who sees the docs.

The schema is generated as CI does (``spectacular --validate --fail-on-warn``)
and read as a client would: each path with its methods, request fields and
statuses. Its request examples go through Echo's own parsers, its documented
fields are each refused by those parsers when sent wrong (so none is one Echo
ignores), and real answers from the echo provider match the documented
response schemas. A browser that opens ``/api/docs/`` logged out is sent to
the admin login, in Django's client and in Chromium.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Iterator
from typing import Any

import jsonschema
import pytest
import yaml
from django.core.management import call_command
from django.test import Client

from plugins_api.compat.anthropic_api import parse_messages_call
from plugins_api.compat.count_tokens import parse_count_request
from plugins_api.compat.openai_api import parse_completion_call, parse_embeddings_call
from plugins_api.compat.responses_api import parse_responses_call
from plugins_api.edge.chat_requests import RequestFieldError
from providers.models import ProviderConfig
from providers.runtime import process as runtime

BROWSER = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"

PATHS = {
    "/v1/chat/completions": {"post"},
    "/v1/models": {"get"},
    "/v1/models/{model_id}": {"get"},
    "/v1/embeddings": {"post"},
    "/v1/messages": {"post"},
    "/v1/messages/count_tokens": {"post"},
    "/v1/responses": {"post"},
    "/v1/responses/{response_id}": {"get", "delete"},
    "/metrics": {"get"},
}
CHAT_STATUSES = {"200", "400", "401", "403", "404", "409", "413", "422", "429", "502", "503", "504"}

#: Each documented request body, the parser Echo runs on it, and a valid body to vary.
BODIES: dict[str, tuple[str, Callable[[dict[str, Any]], Any], dict[str, Any]]] = {
    "/v1/chat/completions": (
        "OpenAIChatCompletionRequest",
        parse_completion_call,
        {"model": "echo/echo-1", "messages": [{"role": "user", "content": "hi"}]},
    ),
    "/v1/messages": (
        "AnthropicMessagesRequest",
        parse_messages_call,
        {"model": "echo/echo-1", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]},
    ),
    "/v1/messages/count_tokens": (
        "AnthropicCountTokensRequest",
        parse_count_request,
        {"model": "echo/echo-1", "messages": [{"role": "user", "content": "hi"}]},
    ),
    "/v1/responses": (
        "ResponsesRequest",
        parse_responses_call,
        {"model": "echo/echo-1", "input": "hi"},
    ),
    "/v1/embeddings": (
        "OpenAIEmbeddingRequest",
        parse_embeddings_call,
        {"model": "echo/echo-1", "input": "hi"},
    ),
}


@pytest.fixture(scope="module")
def schema(tmp_path_factory, django_db_blocker) -> dict:
    """Generate the schema once, failing on any drf-spectacular warning or invalid OpenAPI."""
    path = tmp_path_factory.mktemp("openapi") / "schema.yaml"
    with django_db_blocker.unblock():
        call_command("spectacular", "--validate", "--fail-on-warn", "--file", str(path))
    return yaml.safe_load(path.read_text())


def component(schema: dict, name: str) -> dict:
    return schema["components"]["schemas"][name]


def as_json_schema(schema: dict, node: Any) -> Any:
    """Return NODE as plain JSON Schema: ``$ref`` inlined, OpenAPI's ``nullable`` as a null type."""
    if isinstance(node, list):
        return [as_json_schema(schema, item) for item in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        return as_json_schema(schema, component(schema, node["$ref"].rsplit("/", 1)[1]))
    plain = {key: as_json_schema(schema, value) for key, value in node.items() if key != "example"}
    if plain.pop("nullable", False):
        return {"anyOf": [plain, {"type": "null"}]}
    return plain


def conforms(schema: dict, name: str, value: Any) -> None:
    """Raise unless VALUE matches the component NAME."""
    jsonschema.Draft7Validator(as_json_schema(schema, component(schema, name))).validate(value)


def request_examples(schema: dict, path: str) -> dict[str, Any]:
    media = schema["paths"][path]["post"]["requestBody"]["content"]["application/json"]
    examples = {name: example["value"] for name, example in media.get("examples", {}).items()}
    if not examples:
        examples = {"example": component(schema, BODIES[path][0])["example"]}
    return examples


# --- the schema ---------------------------------------------------------------------


def test_every_path_is_documented_with_its_methods_and_tags(schema):
    tags = {tag["name"] for tag in schema["tags"]}
    assert {"openai", "anthropic", "metrics"} <= tags
    for path, methods in PATHS.items():
        assert set(schema["paths"][path]) == methods, path
        for method in methods:
            operation = schema["paths"][path][method]
            expected = (
                "metrics"
                if path == "/metrics"
                else ("anthropic" if "messages" in path else "openai")
            )
            assert operation["tags"] == [expected], path
            assert operation["operationId"] and operation["summary"], path
    # What drf-spectacular documents itself is still there.
    assert {"/chat", "/api/providers/", "/plugins/{name}/reload"} <= set(schema["paths"])


def test_chat_completions_documents_every_field_echo_reads(schema):
    request = component(schema, "OpenAIChatCompletionRequest")
    assert request["required"] == ["model", "messages"]
    assert request["additionalProperties"] is True  # unknown fields are ignored
    assert {
        "model",
        "messages",
        "stream",
        "stream_options",
        "n",
        "temperature",
        "top_p",
        "max_tokens",
        "max_completion_tokens",
        "stop",
        "tools",
        "tool_choice",
        "response_format",
        "seed",
        "presence_penalty",
        "frequency_penalty",
        "logprobs",
        "top_logprobs",
        "logit_bias",
        "parallel_tool_calls",
        "user",
        "top_k",
        "thinking",
    } == set(request["properties"])
    for option in ("seed", "presence_penalty", "logprobs", "logit_bias", "parallel_tool_calls"):
        assert "unsupported_option" in request["properties"][option]["description"], option
    operation = schema["paths"]["/v1/chat/completions"]["post"]
    assert "data: [DONE]" in operation["description"]
    assert set(operation["responses"]) == CHAT_STATUSES
    ok = operation["responses"]["200"]["content"]
    assert ok["application/json"]["schema"] == {"$ref": "#/components/schemas/OpenAIChatCompletion"}
    event = ok["text/event-stream"]["schema"]["properties"]["data"]["oneOf"]
    assert {"$ref": "#/components/schemas/OpenAIChatCompletionChunk"} in event
    assert {"type": "string", "enum": ["[DONE]"]} in event
    assert operation["security"] == [{"bearerKey": []}, {"xApiKey": []}]


def test_messages_documents_anthropics_fields_and_event_sequence(schema):
    request = component(schema, "AnthropicMessagesRequest")
    assert request["required"] == ["model", "max_tokens", "messages"]
    assert {"top_k", "thinking", "metadata", "stop_sequences", "system", "tool_choice"} <= set(
        request["properties"]
    )
    assert request["properties"]["metadata"]["additionalProperties"] is False
    assert set(request["properties"]["metadata"]["properties"]) == {"user_id"}
    operation = schema["paths"]["/v1/messages"]["post"]
    description = operation["description"]
    order = ["message_start", "content_block_start", "content_block_delta", "message_delta"]
    positions = [description.index(f"event: {name}") for name in [*order, "message_stop"]]
    assert positions == sorted(positions)
    assert set(operation["responses"]) == CHAT_STATUSES
    assert {"xApiKey": []} in operation["security"]
    assert schema["components"]["securitySchemes"]["xApiKey"] == {
        "type": "apiKey",
        "in": "header",
        "name": "x-api-key",
        "description": "An Echo client key, as Anthropic's SDK sends it.",
    }
    count = component(schema, "AnthropicCountTokensRequest")
    assert count["additionalProperties"] is False
    assert set(count["properties"]) == {"model", "system", "messages", "tools", "tool_choice"}


def test_responses_and_the_rest_document_their_bodies_and_statuses(schema):
    request = component(schema, "ResponsesRequest")
    assert request["required"] == ["model", "input"]
    assert request["additionalProperties"] is False  # Echo refuses what it does not read
    detail = schema["paths"]["/v1/responses/{response_id}"]
    assert {"200", "401", "404"} <= set(detail["get"]["responses"])
    assert {"200", "401", "404"} <= set(detail["delete"]["responses"])
    assert [p["name"] for p in detail["get"]["parameters"]] == ["response_id"]
    models = schema["paths"]["/v1/models/{model_id}"]["get"]
    assert [p["name"] for p in models["parameters"]] == ["model_id"]
    assert {"200", "401", "404"} <= set(models["responses"])
    embeddings = component(schema, "OpenAIEmbeddingRequest")
    assert embeddings["required"] == ["model", "input"]
    metrics = schema["paths"]["/metrics"]["get"]
    assert set(metrics["responses"]) == {"200", "401", "403"}
    assert "text/plain" in metrics["responses"]["200"]["content"]
    assert {"staffSession": []} in metrics["security"]


def test_each_api_keeps_its_own_error_shape(schema):
    for path in PATHS:
        for method, operation in schema["paths"][path].items():
            for status, response in operation["responses"].items():
                if status.startswith(("4", "5")):
                    shape = response["content"]["application/json"]["schema"]["$ref"]
                    if path == "/metrics":
                        assert shape.endswith("/Error"), (path, status)
                    elif "messages" in path:
                        assert shape.endswith("/AnthropicError"), (path, status)
                    else:
                        assert shape.endswith("/OpenAIError"), (path, method, status)
    openai = component(schema, "OpenAIError")["properties"]["error"]
    assert openai["required"] == ["message", "type", "param", "code"]
    anthropic = component(schema, "AnthropicError")
    assert anthropic["required"] == ["type", "error"]
    assert anthropic["properties"]["error"]["required"] == ["type", "message"]


def test_every_reference_resolves(schema):
    refs = {
        ref.rsplit("/", 1)[1]
        for ref in json.dumps(schema).split('"$ref": "')[1:]
        for ref in [ref.split('"', 1)[0]]
    }
    assert refs <= set(schema["components"]["schemas"])


# --- the schema against Echo's parsers ------------------------------------------------


@pytest.mark.parametrize("path", list(BODIES))
def test_request_examples_pass_echos_parser_and_the_schema(schema, path):
    name, parse, _ = BODIES[path]
    examples = request_examples(schema, path)
    assert examples, path
    for label, example in examples.items():
        conforms(schema, name, example)
        parse(copy.deepcopy(example))  # raises RequestFieldError if Echo would refuse it
        assert label


@pytest.mark.parametrize("path", list(BODIES))
def test_every_documented_field_is_read_by_the_parser(schema, path):
    """Each documented field sent with a value of the wrong type is refused, naming it.

    A field the schema lists but the parser ignored would pass silently: the
    schema would promise something Echo does not do.
    """
    name, parse, valid = BODIES[path]
    for field in component(schema, name)["properties"]:
        wrong = [{"no": ["such"]}]  # no documented field takes a list of such objects
        with pytest.raises(RequestFieldError) as refused:
            parse({**copy.deepcopy(valid), field: wrong})
        assert refused.value.field and refused.value.field.split(".")[0] == field, (field, refused)


def test_additional_properties_say_what_the_parsers_do(schema):
    extra = {"some_future_field": True}
    for path, (name, parse, valid) in BODIES.items():
        tolerated = component(schema, name)["additionalProperties"]
        if tolerated:
            parse({**copy.deepcopy(valid), **extra})
        else:
            with pytest.raises(RequestFieldError) as refused:
                parse({**copy.deepcopy(valid), **extra})
            assert refused.value.field == "some_future_field", path
    for path, (name, parse, valid) in BODIES.items():
        for field in component(schema, name)["required"]:
            body = copy.deepcopy(valid)
            del body[field]
            with pytest.raises(RequestFieldError) as refused:
                parse(body)
            assert refused.value.field == field, (path, field)


# --- the schema against Echo's answers ------------------------------------------------


@pytest.fixture
def api(echo_config: ProviderConfig, chat_key: tuple[Any, str]) -> Client:
    error = runtime.run_in_serving_loop(
        runtime.apply_config_state, echo_config.name, echo_config.to_spec(), ""
    )
    assert error is None, error
    return Client(headers={"Authorization": f"Bearer {chat_key[1]}"})


def post(client: Client, path: str, body: Any) -> Any:
    return client.post(path, data=json.dumps(body), content_type="application/json")


def test_real_answers_match_the_documented_schemas(schema, api):
    cases = [
        ("/v1/chat/completions", "OpenAIChatCompletion"),
        ("/v1/messages", "AnthropicMessage"),
        ("/v1/messages/count_tokens", "AnthropicTokenCount"),
        ("/v1/responses", "Response"),
    ]
    for path, answer in cases:
        response = post(api, path, BODIES[path][2])
        assert response.status_code == 200, (path, response.content)
        conforms(schema, answer, response.json())
    listed = api.get("/v1/models")
    assert listed.status_code == 200
    conforms(schema, "OpenAIModelList", listed.json())
    model = api.get("/v1/models/echo/echo-1")
    assert model.status_code == 200
    conforms(schema, "OpenAIModel", model.json())
    stored = post(api, "/v1/responses", BODIES["/v1/responses"][2]).json()["id"]
    conforms(schema, "Response", api.get(f"/v1/responses/{stored}").json())
    conforms(schema, "ResponseDeleted", api.delete(f"/v1/responses/{stored}").json())


@pytest.mark.parametrize(
    ("path", "body", "shape"),
    [
        ("/v1/chat/completions", {"model": "echo/echo-1", "messages": "x\x00"}, "OpenAIError"),
        (
            "/v1/chat/completions",
            {"model": "echo/echo-1", "messages": [], "seed": []},
            "OpenAIError",
        ),
        ("/v1/responses", {"model": "echo/echo-1", "input": "hi", "reasoning": {}}, "OpenAIError"),
        ("/v1/embeddings", {"model": "echo/echo-1", "input": [[1, 2]]}, "OpenAIError"),
        ("/v1/messages", {"model": "echo/echo-1", "messages": [{}] * 3}, "AnthropicError"),
        ("/v1/messages/count_tokens", {"model": "echo/echo-1", "thinking": {}}, "AnthropicError"),
    ],
)
def test_refusals_have_the_documented_error_shape(schema, api, path, body, shape):
    response = post(api, path, body)
    assert response.status_code == 400, response.content
    conforms(schema, shape, response.json())
    unauthenticated = post(Client(), path, body)
    assert unauthenticated.status_code == 401
    conforms(schema, shape, unauthenticated.json())


def test_unsupported_option_is_a_400_naming_it(schema, api):
    # The echo provider honours no logit_bias: refused as documented, not dropped.
    body = {**BODIES["/v1/chat/completions"][2], "logit_bias": {"50256": -100}}
    response = post(api, "/v1/chat/completions", body)
    if response.status_code == 200:
        pytest.fail("the echo provider now honours logit_bias: pick another option here")
    assert response.status_code == 400
    conforms(schema, "OpenAIError", response.json())
    assert response.json()["error"]["param"] == "logit_bias"
    assert response.json()["error"]["code"] == "unsupported_option"


# --- who sees the docs ------------------------------------------------------------------


def test_a_logged_out_browser_is_sent_to_the_login(db):
    response = Client().get("/api/docs/", HTTP_ACCEPT=BROWSER)
    assert response.status_code == 302
    assert response["Location"] == "/admin/login/?next=/api/docs/"


@pytest.mark.parametrize(
    ("url", "headers"),
    [
        ("/api/schema/", {}),
        ("/api/schema/", {"HTTP_ACCEPT": "application/json"}),
        ("/api/schema/?format=json", {"HTTP_ACCEPT": BROWSER}),
        ("/api/docs/", {}),
        # A client offering a key is an API client, whatever it accepts.
        ("/api/docs/", {"HTTP_ACCEPT": BROWSER, "HTTP_AUTHORIZATION": "Bearer not-a-key"}),
    ],
)
def test_api_clients_still_get_the_json_401(db, url, headers):
    response = Client().get(url, **headers)
    assert response.status_code == 401
    assert response["Content-Type"] == "application/json"
    assert response.json()["error"]["type"] in ("authentication_required", "authentication_failed")


def test_a_logged_in_non_staff_user_gets_a_403_page(db, django_user_model):
    user = django_user_model.objects.create_user("<b>mallory</b>", password="pw-user-123")
    browser = Client()
    browser.force_login(user)
    page = browser.get("/api/docs/", HTTP_ACCEPT=BROWSER)
    assert page.status_code == 403
    assert page["Content-Type"].startswith("text/html")
    html = page.content.decode()
    assert "403 Forbidden" in html
    assert "&lt;b&gt;mallory&lt;/b&gt;" in html and "<b>mallory" not in html
    assert 'href="/admin/login/?next=%2Fapi%2Fdocs%2F"' in html
    # Its API calls still get JSON.
    api = browser.get("/api/schema/")
    assert api.status_code == 403
    assert api.json()["error"]["type"] == "permission_denied"


def test_staff_browsers_get_the_docs(db, admin_user):
    browser = Client()
    browser.force_login(admin_user)
    page = browser.get("/api/docs/", HTTP_ACCEPT=BROWSER)
    assert page.status_code == 200
    assert "swagger-ui" in page.content.decode()
    served = browser.get("/api/schema/?format=json")
    assert "/v1/chat/completions" in served.json()["paths"]


@pytest.fixture
def chromium(transactional_db, admin_user, live_echo) -> Iterator[Any]:
    """Chromium, started after the live server (and stopped before it)."""
    from tests.test_chat_page_browser import CHROMIUM, CHROMIUM_ARGS, require_chromium

    require_chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True
        )
        yield browser
        browser.close()


@pytest.mark.slow
def test_chromium_logs_in_and_reads_the_compatible_api(chromium, live_echo):
    from playwright.sync_api import expect

    from tests.test_chat_page_browser import PASSWORD

    page = chromium.new_page()
    page.goto(f"{live_echo.url}/api/docs/")
    assert page.url == f"{live_echo.url}/admin/login/?next=/api/docs/"
    page.fill("#id_username", "admin")
    page.fill("#id_password", PASSWORD)
    page.click("[type=submit]")
    page.wait_for_url(f"{live_echo.url}/api/docs/")
    for path in ("/v1/chat/completions", "/v1/messages", "/v1/responses", "/metrics"):
        expect(page.locator(f'.opblock-summary-path[data-path="{path}"]').first).to_be_visible()
    expect(page.locator(".opblock-tag", has_text="anthropic")).to_be_visible()
