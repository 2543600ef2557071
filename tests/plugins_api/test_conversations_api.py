"""``/api/conversations/``: each caller lists, reads and deletes its own conversations only."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client

from plugins_api.access.key_changes import client_key_issue
from plugins_api.models import ClientAPIKey, Conversation, ConversationMessage


def conversation_of(title: str, **owner: Any) -> Conversation:
    """Store a conversation of OWNER with a question and a cancelled partial answer."""
    conversation = Conversation.objects.create(title=title, **owner)
    ConversationMessage.objects.create(conversation=conversation, role="user", content=title)
    ConversationMessage.objects.create(
        conversation=conversation,
        role="assistant",
        content="Echo: part",
        status="cancelled",
        provider="echo",
        model="echo-1",
        finish_reason="cancelled",
        first_chunk_ms=3.5,
        latency_ms=12.0,
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
    """Alice, logged in, as the chat page is."""
    client = Client(enforce_csrf_checks=True)
    client.force_login(alice)
    return client


@pytest.fixture
def key_api(chat_key: tuple[ClientAPIKey, str]) -> Client:
    return Client(headers={"Authorization": f"Bearer {chat_key[1]}"})


def test_a_user_lists_only_their_own_conversations(
    browser: Client, alice: Any, bob: Any, chat_key: tuple[ClientAPIKey, str]
) -> None:
    older = conversation_of("first", user=alice)
    newer = conversation_of("second", user=alice)
    conversation_of("bob's", user=bob)
    conversation_of("a script's", client_key=chat_key[0])

    response = browser.get("/api/conversations/")

    assert response.status_code == 200
    page = response.json()
    assert page["count"] == 2
    assert [c["id"] for c in page["results"]] == [newer.pk, older.pk]  # latest first
    assert page["results"][0] == {
        "id": newer.pk,
        "title": "second",
        "created_at": page["results"][0]["created_at"],
        "updated_at": page["results"][0]["updated_at"],
        "message_count": 2,
    }


def test_one_conversation_comes_with_its_messages(browser: Client, alice: Any) -> None:
    conversation = conversation_of("hello", user=alice)

    response = browser.get(f"/api/conversations/{conversation.pk}/")

    assert response.status_code == 200
    body = response.json()
    assert body["title"] == "hello"
    question, reply = body["messages"]
    assert (question["role"], question["content"], question["status"]) == (
        "user",
        "hello",
        "complete",
    )
    assert reply["role"] == "assistant"
    assert (reply["content"], reply["status"], reply["finish_reason"]) == (
        "Echo: part",
        "cancelled",
        "cancelled",
    )
    assert (reply["provider"], reply["model"]) == ("echo", "echo-1")
    assert (reply["first_chunk_ms"], reply["latency_ms"]) == (3.5, 12.0)


def test_another_users_conversation_is_404_to_read_and_to_delete(browser: Client, bob: Any) -> None:
    theirs = conversation_of("bob's secret", user=bob)

    assert browser.get(f"/api/conversations/{theirs.pk}/").status_code == 404
    response = browser.delete(
        f"/api/conversations/{theirs.pk}/", headers={"X-CSRFToken": csrf_token(browser)}
    )
    assert response.status_code == 404
    assert response.json()["error"]["type"] == "not_found"
    assert Conversation.objects.filter(pk=theirs.pk).exists()


def csrf_token(client: Client) -> str:
    """Return the CSRF token the chat page would give CLIENT's JavaScript."""
    page = client.get("/")
    assert page.status_code == 200
    return client.cookies["csrftoken"].value


def test_a_user_deletes_their_conversation_with_the_csrf_token(browser: Client, alice: Any) -> None:
    conversation = conversation_of("to forget", user=alice)

    refused = browser.delete(f"/api/conversations/{conversation.pk}/")
    assert refused.status_code == 403  # a session write needs the CSRF token
    response = browser.delete(
        f"/api/conversations/{conversation.pk}/", headers={"X-CSRFToken": csrf_token(browser)}
    )

    assert response.status_code == 204
    assert not Conversation.objects.filter(pk=conversation.pk).exists()
    assert not ConversationMessage.objects.filter(conversation_id=conversation.pk).exists()


def test_a_key_sees_its_own_conversations_and_no_users(
    key_api: Client, chat_key: tuple[ClientAPIKey, str], alice: Any
) -> None:
    mine = conversation_of("from a script", client_key=chat_key[0])
    users = conversation_of("alice's", user=alice)
    other_key, _ = client_key_issue(name="other", scope="chat")
    others = conversation_of("other key's", client_key=other_key)

    page = key_api.get("/api/conversations/").json()
    assert [c["id"] for c in page["results"]] == [mine.pk]
    assert key_api.get(f"/api/conversations/{users.pk}/").status_code == 404
    assert key_api.get(f"/api/conversations/{others.pk}/").status_code == 404
    assert key_api.delete(f"/api/conversations/{mine.pk}/").status_code == 204


def test_an_admin_key_sees_only_its_own_conversations_too(
    admin_key: tuple[ClientAPIKey, str], alice: Any
) -> None:
    conversation_of("alice's", user=alice)
    api = Client(headers={"Authorization": f"Bearer {admin_key[1]}"})
    assert api.get("/api/conversations/").json()["count"] == 0


def test_without_a_login_or_key_it_is_401(db: Any) -> None:
    response = Client().get("/api/conversations/")
    assert response.status_code == 401
    assert response.json()["error"]["type"] == "authentication_required"


def test_a_missing_conversation_is_404_in_the_api_shape(browser: Client) -> None:
    response = browser.get("/api/conversations/999999/")
    assert response.status_code == 404
    assert response.json()["error"] == {"type": "not_found", "message": "No conversation 999999."}


def test_conversations_cannot_be_written_over_rest(browser: Client, alice: Any) -> None:
    conversation = conversation_of("fixed", user=alice)
    token = csrf_token(browser)
    assert (
        browser.post(
            "/api/conversations/", {"title": "x"}, headers={"X-CSRFToken": token}
        ).status_code
        == 405
    )
    assert (
        browser.put(
            f"/api/conversations/{conversation.pk}/",
            {"title": "x"},
            content_type="application/json",
            headers={"X-CSRFToken": token},
        ).status_code
        == 405
    )
