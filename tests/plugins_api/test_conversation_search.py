"""``/api/conversations/``: renaming a conversation (``PATCH``) and searching the list (``?q=``).

Each caller renames and finds only its own conversations; a wrong title or
search text is a 400 naming the field and changes nothing.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from plugins_api.chat.conversations import SEARCH_MAX_CHARS, TITLE_MAX_CHARS
from plugins_api.models import ClientAPIKey, Conversation, ConversationMessage


def conversation_of(title: str, *texts: str, **owner: Any) -> Conversation:
    """Store a conversation of OWNER titled TITLE with a question and an answer per text."""
    conversation = Conversation.objects.create(title=title, **owner)
    for text in texts:
        ConversationMessage.objects.create(conversation=conversation, role="user", content=text)
        ConversationMessage.objects.create(
            conversation=conversation,
            role="assistant",
            content=f"Echo: {text}",
            provider="echo",
            model="echo-1",
        )
    return conversation


@pytest.fixture
def alice(django_user_model: Any) -> Any:
    return django_user_model.objects.create_user("alice", password="pw-alice-123")


@pytest.fixture
def bob(django_user_model: Any) -> Any:
    return django_user_model.objects.create_user("bob", password="pw-bob-123")


@pytest.fixture
def browser(alice: Any) -> Client:
    """Alice, logged in, as the chat page is (CSRF enforced)."""
    client = Client(enforce_csrf_checks=True)
    client.force_login(alice)
    return client


@pytest.fixture
def token(browser: Client) -> str:
    """The CSRF token the chat page gives its JavaScript."""
    assert browser.get("/").status_code == 200
    return browser.cookies["csrftoken"].value


def rename(client: Client, conversation_id: int, body: Any, token: str | None = None) -> Any:
    headers = {"X-CSRFToken": token} if token else {}
    data = body if isinstance(body, str | bytes) else json.dumps(body)
    return client.patch(
        f"/api/conversations/{conversation_id}/",
        data,
        content_type="application/json",
        headers=headers,
    )


def titles(response: Any) -> list[str]:
    assert response.status_code == 200, response.content
    return [c["title"] for c in response.json()["results"]]


# --- rename -------------------------------------------------------------------


def test_a_user_renames_their_conversation_and_it_keeps_its_place(
    browser: Client, token: str, alice: Any
) -> None:
    older = conversation_of("older", "one", user=alice)
    newer = conversation_of("newer", "two", user=alice)
    before = Conversation.objects.get(pk=older.pk).updated_at

    response = rename(browser, older.pk, {"title": "  Trip to Lisbon  "}, token)

    assert response.status_code == 200
    assert response.json() == {
        "id": older.pk,
        "title": "Trip to Lisbon",
        "created_at": response.json()["created_at"],
        "updated_at": response.json()["updated_at"],
        "message_count": 2,
    }
    stored = Conversation.objects.get(pk=older.pk)
    assert (stored.title, stored.updated_at) == ("Trip to Lisbon", before)
    # Renaming is not a new message: the list keeps its order.
    assert titles(browser.get("/api/conversations/")) == ["newer", "Trip to Lisbon"]
    assert Conversation.objects.get(pk=newer.pk).title == "newer"


def test_a_title_of_the_longest_length_is_kept_whole(
    browser: Client, token: str, alice: Any
) -> None:
    conversation = conversation_of("short", user=alice)
    title = "é" * TITLE_MAX_CHARS
    assert rename(browser, conversation.pk, {"title": title}, token).status_code == 200
    assert Conversation.objects.get(pk=conversation.pk).title == title


@pytest.mark.parametrize(
    ("body", "field", "message"),
    [
        ({"title": ""}, "title", "Must not be blank."),
        ({"title": "   \u3000 "}, "title", "Must not be blank."),
        ({"title": "x" * (TITLE_MAX_CHARS + 1)}, "title", "Must be at most 200 characters."),
        ({"title": "two\nlines"}, "title", "Must be one line, with no control characters."),
        ({"title": "bell\x07"}, "title", "Must be one line, with no control characters."),
        ({"title": "nul\x00"}, "title", None),
        ({"title": "\ud800"}, "title", None),
        ({"title": 42}, "title", "Must be a string."),
        ({"title": None}, "title", "Must be a string."),
        ({"title": ["a"]}, "title", "Must be a string."),
        ({"title": {"text": "a"}}, "title", "Must be a string."),
        ({}, "title", "This field is required."),
        ({"title": "ok", "user": 2}, "user", "Unknown field; only 'title' can be changed."),
        ({"messages": []}, "messages", "Unknown field; only 'title' can be changed."),
        (["title", "x"], "title", "Send a JSON object with the new title."),
        ("a string", "title", "Send a JSON object with the new title."),
    ],
    ids=[
        "empty",
        "blank",
        "201-chars",
        "newline",
        "control",
        "nul",
        "lone-surrogate",
        "number",
        "null",
        "list",
        "object",
        "missing",
        "owner-field",
        "messages-field",
        "array-body",
        "string-body",
    ],
)
def test_a_wrong_title_is_a_400_naming_the_field_and_changes_nothing(
    browser: Client, token: str, alice: Any, body: Any, field: str, message: str | None
) -> None:
    conversation = conversation_of("kept", "hello", user=alice)
    # Surrogates and NUL cannot go through json.dumps as text the parser then reads:
    # they are written as JSON escapes, as a hostile client would send them.
    raw = json.dumps(body, ensure_ascii=True)

    response = rename(browser, conversation.pk, raw, token)

    assert response.status_code == 400, response.content
    error = response.json()["error"]
    assert error["field"] == field
    if message is not None:
        assert error["message"] == message
    assert Conversation.objects.get(pk=conversation.pk).title == "kept"


@pytest.mark.parametrize(
    "raw",
    [
        "{",
        '{"title": ' + "[" * 100_000 + "]" * 100_000 + "}",
        '{"title": NaN}',
        b'{"title": "\xff\xfe"}',
    ],
    ids=["truncated", "deeply-nested", "nan", "not-utf8"],
)
def test_a_broken_body_is_a_400_and_changes_nothing(
    browser: Client, token: str, alice: Any, raw: str | bytes
) -> None:
    conversation = conversation_of("kept", user=alice)
    response = rename(browser, conversation.pk, raw, token)
    assert response.status_code == 400, response.content
    assert response.json()["error"]["type"] in ("invalid_json", "invalid_request")
    assert Conversation.objects.get(pk=conversation.pk).title == "kept"


def test_a_huge_body_is_refused_and_changes_nothing(
    browser: Client, token: str, alice: Any, settings: Any
) -> None:
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 64 * 1024
    conversation = conversation_of("kept", user=alice)
    response = rename(browser, conversation.pk, {"title": "x" * 100_000}, token)
    assert response.status_code in (400, 413), response.content
    assert Conversation.objects.get(pk=conversation.pk).title == "kept"


def test_another_owners_conversation_cannot_be_renamed_and_is_not_found(
    browser: Client, token: str, bob: Any, chat_key: tuple[ClientAPIKey, str]
) -> None:
    bobs = conversation_of("bob's", "secret plans", user=bob)
    scripts = conversation_of("a script's", client_key=chat_key[0])

    for other in (bobs, scripts):
        response = rename(browser, other.pk, {"title": "mine now"}, token)
        assert response.status_code == 404
        assert response.json()["error"] == {
            "type": "not_found",
            "message": f"No conversation {other.pk}.",
        }
    assert rename(browser, 999_999, {"title": "x"}, token).status_code == 404
    assert rename(browser, 2**63, {"title": "x"}, token).status_code == 404  # past bigint
    assert set(Conversation.objects.values_list("title", flat=True)) == {"bob's", "a script's"}


def test_a_key_renames_its_own_conversations_only(
    chat_key: tuple[ClientAPIKey, str], alice: Any
) -> None:
    client = Client(headers={"Authorization": f"Bearer {chat_key[1]}"})
    own = conversation_of("from a script", client_key=chat_key[0])
    alices = conversation_of("alice's", user=alice)

    assert rename(client, own.pk, {"title": "renamed by key"}).status_code == 200
    assert rename(client, alices.pk, {"title": "renamed by key"}).status_code == 404
    assert Conversation.objects.get(pk=own.pk).title == "renamed by key"
    assert Conversation.objects.get(pk=alices.pk).title == "alice's"


def test_renaming_needs_the_csrf_token_and_a_login(browser: Client, alice: Any) -> None:
    conversation = conversation_of("kept", user=alice)
    assert rename(browser, conversation.pk, {"title": "no token"}).status_code == 403
    assert rename(Client(), conversation.pk, {"title": "anonymous"}).status_code == 401
    assert Conversation.objects.get(pk=conversation.pk).title == "kept"


def test_a_conversation_is_renamed_only_through_patch(
    browser: Client, token: str, alice: Any
) -> None:
    conversation = conversation_of("kept", user=alice)
    response = browser.put(
        f"/api/conversations/{conversation.pk}/",
        json.dumps({"title": "put"}),
        content_type="application/json",
        headers={"X-CSRFToken": token},
    )
    assert response.status_code == 405
    assert Conversation.objects.get(pk=conversation.pk).title == "kept"


# --- search -------------------------------------------------------------------


def test_search_finds_titles_and_message_text_in_any_case(browser: Client, alice: Any) -> None:
    conversation_of("Lisbon trip", "where to eat", user=alice)
    conversation_of("Groceries", "milk, eggs and a LISBON cake", user=alice)
    conversation_of("Taxes", "forms", user=alice)

    assert titles(browser.get("/api/conversations/", {"q": "lisbon"})) == [
        "Groceries",
        "Lisbon trip",
    ]
    assert titles(browser.get("/api/conversations/", {"q": "Echo: FORMS"})) == ["Taxes"]
    assert titles(browser.get("/api/conversations/", {"q": "nowhere"})) == []
    # Blank search text lists everything.
    assert len(titles(browser.get("/api/conversations/", {"q": "   "}))) == 3


def test_search_counts_each_conversation_once_with_its_message_count(
    browser: Client, alice: Any
) -> None:
    conversation_of("weather", "rain today", "rain tomorrow", "more rain", user=alice)

    page = browser.get("/api/conversations/", {"q": "rain"}).json()

    assert page["count"] == 1
    assert [(c["title"], c["message_count"]) for c in page["results"]] == [("weather", 6)]


def test_search_takes_wildcards_literally(browser: Client, alice: Any) -> None:
    conversation_of("100% sure", user=alice)
    conversation_of("1000 sure", user=alice)
    conversation_of("snake_case", user=alice)
    conversation_of("snakeXcase", user=alice)

    assert titles(browser.get("/api/conversations/", {"q": "100%"})) == ["100% sure"]
    assert titles(browser.get("/api/conversations/", {"q": "snake_"})) == ["snake_case"]


def test_search_never_finds_another_owners_conversations(
    browser: Client, alice: Any, bob: Any, chat_key: tuple[ClientAPIKey, str]
) -> None:
    conversation_of("mine", "the word is banana", user=alice)
    conversation_of("bob's banana", "banana bread", user=bob)
    conversation_of("script banana", "banana", client_key=chat_key[0])

    assert titles(browser.get("/api/conversations/", {"q": "banana"})) == ["mine"]
    key_client = Client(headers={"Authorization": f"Bearer {chat_key[1]}"})
    assert titles(key_client.get("/api/conversations/", {"q": "banana"})) == ["script banana"]


def test_search_results_come_in_pages_that_keep_the_search(browser: Client, alice: Any) -> None:
    for number in range(55):
        conversation_of(f"match {number}", user=alice)
    conversation_of("other", user=alice)

    first = browser.get("/api/conversations/", {"q": "match"}).json()
    assert first["count"] == 55 and len(first["results"]) == 50
    assert "q=match" in first["next"]
    second = browser.get(first["next"]).json()
    assert len(second["results"]) == 5
    assert all(c["title"].startswith("match") for c in first["results"] + second["results"])


def test_search_is_one_query_whatever_it_matches(browser: Client, alice: Any) -> None:
    for number in range(5):
        conversation_of(f"match {number}", "match in a message", user=alice)
    with CaptureQueriesContext(connection) as queries:
        assert len(titles(browser.get("/api/conversations/", {"q": "match"}))) == 5
    searching = [q["sql"] for q in queries.captured_queries if "LIKE" in q["sql"].upper()]
    assert len(searching) == 2, searching  # the page and its count, nothing per row


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("x" * (SEARCH_MAX_CHARS + 1), "Must be at most 200 characters."),
        ("nul\x00", None),  # refused before the view (echo_site.middleware), q named all the same
        ("line\nbreak", "Must not contain control characters."),
        ("\x1b[31m", "Must not contain control characters."),
    ],
    ids=["201-chars", "nul", "newline", "escape"],
)
def test_a_wrong_search_is_a_400_naming_q(
    browser: Client, alice: Any, query: str, message: str | None
) -> None:
    conversation_of("anything", user=alice)
    response = browser.get("/api/conversations/", {"q": query})
    assert response.status_code == 400
    assert response.json()["error"]["field"] == "q"
    if message is not None:
        assert response.json()["error"]["message"] == message


def test_a_search_of_the_longest_length_is_answered(browser: Client, alice: Any) -> None:
    text = "ü" * SEARCH_MAX_CHARS
    conversation_of(text, user=alice)
    assert titles(browser.get("/api/conversations/", {"q": text})) == [text]


def test_a_search_in_a_wrong_encoding_is_not_a_server_error(browser: Client, alice: Any) -> None:
    conversation_of("anything", user=alice)
    response = browser.get("/api/conversations/?q=%ff%fe%ed%a0%80")
    assert response.status_code in (200, 400)
