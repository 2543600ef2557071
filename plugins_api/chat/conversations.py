"""Conversations of the browser chat: who owns them, reads (selectors) and writes (services).

Every read and write takes the OWNER (a user, or a client key) and touches
only that owner's conversations: another owner's conversation is "not
found", never "forbidden", so that its existence does not leak. These
functions are sync and transactional; the websocket consumer calls them on
the ORM threads (``providers.runtime.orm_threads``), whose connections are kept.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.db import transaction
from django.db.models import Count, Exists, OuterRef, Prefetch, Q, QuerySet
from django.utils import timezone

from plugins_api.models import Conversation, ConversationMessage
from providers.types import ChatMessage, Usage

TITLE_LENGTH = 80
#: Longest title a person may give a conversation (the stored column's length).
TITLE_MAX_CHARS = 200
#: Longest search text: enough for a phrase, short enough to keep a scan cheap.
SEARCH_MAX_CHARS = 200
# Control characters (line breaks and tabs included) have no place in a title or a search.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


class ConversationNotFound(LookupError):
    """The conversation does not exist, or belongs to someone else."""

    def __init__(self, conversation_id: int) -> None:
        super().__init__(f"No conversation {conversation_id}.")
        self.message = f"No conversation {conversation_id}."


class ConversationInputError(ValueError):
    """A title or search text is wrong; FIELD names it, MESSAGE says why."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


@dataclass(frozen=True, slots=True)
class ConversationOwner:
    """Whose conversations: a user's (USER_ID) or a client key's (KEY_ID), exactly one."""

    user_id: int | None = None
    key_id: int | None = None

    def __post_init__(self) -> None:
        if (self.user_id is None) == (self.key_id is None):
            raise ValueError("A conversation owner is a user or a client key, not both or neither.")

    def lookup(self) -> Q:
        """Return the filter for this owner's conversations."""
        if self.user_id is not None:
            return Q(user_id=self.user_id)
        return Q(client_key_id=self.key_id)

    def fields(self) -> dict[str, Any]:
        """Return the owner fields of a new conversation."""
        return {"user_id": self.user_id, "client_key_id": self.key_id}


@dataclass(slots=True)
class ChatTurn:
    """One question and its answer under way: the conversation, what to send, the answer's row."""

    conversation: Conversation
    history: list[ChatMessage]
    answer: ConversationMessage


# --- selectors ------------------------------------------------------------


def conversation_search_text(value: Any) -> str:
    """Return the search text VALUE (a query parameter) trimmed; raise ``ConversationInputError``.

    At most ``SEARCH_MAX_CHARS`` characters, no control characters; blank
    means no search.
    """
    if not isinstance(value, str):
        raise ConversationInputError("q", "Must be a string.")
    if len(value) > SEARCH_MAX_CHARS:
        raise ConversationInputError("q", f"Must be at most {SEARCH_MAX_CHARS} characters.")
    if _CONTROL.search(value):
        raise ConversationInputError("q", "Must not contain control characters.")
    return value.strip()


def conversation_list(*, owner: ConversationOwner, search: str = "") -> QuerySet[Conversation]:
    """Return OWNER's conversations, the latest first, with their message count.

    SEARCH (checked by ``conversation_search_text``), when not empty, keeps
    those whose title or any message contains it, ignoring case. Messages
    are matched by a subquery, so that no conversation is listed twice and
    its message count stays right.
    """
    conversations = Conversation.objects.filter(owner.lookup())
    if search:
        in_messages = ConversationMessage.objects.filter(
            conversation=OuterRef("pk"), content__icontains=search
        )
        conversations = conversations.filter(Q(title__icontains=search) | Exists(in_messages))
    return (
        conversations.annotate(message_count=Count("messages"))
        # Explicit: Meta.ordering is dropped from queries that aggregate.
        .order_by("-updated_at", "-id")
    )


def conversation_get(*, owner: ConversationOwner, conversation_id: int) -> Conversation:
    """Return OWNER's conversation CONVERSATION_ID with its messages; raise ``ConversationNotFound``."""
    messages = Prefetch("messages", queryset=ConversationMessage.objects.order_by("id"))
    found = (
        conversation_list(owner=owner).prefetch_related(messages).filter(pk=conversation_id).first()
    )
    if found is None:
        raise ConversationNotFound(conversation_id)
    return found


def conversation_owned(*, owner: ConversationOwner, conversation_id: int) -> bool:
    """Return whether OWNER has conversation CONVERSATION_ID (its messages are not read)."""
    return Conversation.objects.filter(owner.lookup(), pk=conversation_id).exists()


def conversation_history(*, conversation: Conversation) -> list[ChatMessage]:
    """Return CONVERSATION's messages as the provider is sent them, oldest first.

    A cancelled or failed answer's partial text was shown to the person, so
    it stays part of the context; answers with no text, and answers still
    streaming (on another connection), are left out.
    """
    history = []
    for row in conversation.messages.order_by("id"):
        if row.role == ConversationMessage.ROLE_ASSISTANT and (
            row.status == ConversationMessage.STATUS_STREAMING or not row.content
        ):
            continue
        history.append(ChatMessage(role=row.role, content=row.content))
    return history


# --- services -------------------------------------------------------------


@transaction.atomic
def chat_turn_begin(
    *,
    owner: ConversationOwner,
    conversation_id: int | None,
    message: str,
    provider: str | None,
    model: str | None,
) -> ChatTurn:
    """Store MESSAGE in OWNER's conversation (a new one when None) and open its answer.

    Return the turn: its history (every earlier message and MESSAGE, for the
    provider) and the answer's row, ``streaming`` until ``chat_turn_finish``.
    PROVIDER and MODEL are who should answer; the finish records who did.
    Raise ``ConversationNotFound`` for a conversation OWNER does not have.
    """
    if conversation_id is None:
        conversation = Conversation.objects.create(
            title=" ".join(message.split())[:TITLE_LENGTH], **owner.fields()
        )
        history: list[ChatMessage] = []  # nothing earlier to read
    else:
        conversation = (
            Conversation.objects.select_for_update()
            .filter(owner.lookup(), pk=conversation_id)
            .first()
        )
        if conversation is None:
            raise ConversationNotFound(conversation_id)
        conversation.save(update_fields=["updated_at"])  # the list shows it first
        history = conversation_history(conversation=conversation)
    # The question and its opened answer in one INSERT, in that order (their ids too):
    # this runs before the first token, and each query was about half a millisecond.
    _question, answer = ConversationMessage.objects.bulk_create(
        [
            ConversationMessage(
                conversation=conversation, role=ConversationMessage.ROLE_USER, content=message
            ),
            ConversationMessage(
                conversation=conversation,
                role=ConversationMessage.ROLE_ASSISTANT,
                status=ConversationMessage.STATUS_STREAMING,
                provider=provider or "",
                model=model or "",
            ),
        ]
    )
    history.append(ChatMessage(role=ConversationMessage.ROLE_USER, content=message))
    return ChatTurn(conversation=conversation, history=history, answer=answer)


def chat_turn_finish(
    *,
    answer_id: int,
    content: str,
    status: str,
    provider: str | None,
    model: str | None,
    usage: Usage | None = None,
    finish_reason: str | None = None,
    error: dict[str, Any] | None = None,
    first_chunk_ms: float | None = None,
    latency_ms: float | None = None,
    fallback: list[dict[str, Any]] | None = None,
) -> None:
    """Settle answer ANSWER_ID: its text (partial when cancelled or failed), who wrote it, how.

    FALLBACK lists the routes given up on before it (``protocol.failover_notes``).
    """
    fields: dict[str, Any] = {
        "fallback_path": list(fallback or []),
        "content": content,
        "status": status,
        "finish_reason": finish_reason or "",
        "error": error,
        "first_chunk_ms": first_chunk_ms,
        "latency_ms": latency_ms,
        "completed_at": timezone.now(),
        "prompt_tokens": usage.prompt_tokens if usage else None,
        "completion_tokens": usage.completion_tokens if usage else None,
    }
    if provider:
        fields["provider"] = provider
    if model:
        fields["model"] = model
    ConversationMessage.objects.filter(pk=answer_id).update(**fields)


def chat_answers_interrupt_orphaned(*, started_before: datetime) -> int:
    """Mark answers still ``streaming`` that started before STARTED_BEFORE ``interrupted``; count them.

    Run at start-up for the answers of a worker that died mid-stream. Other
    workers may be streaming right now, and their rows say nothing of whose
    they are, so only answers older than any live stream can be are settled.
    """
    return ConversationMessage.objects.filter(
        status=ConversationMessage.STATUS_STREAMING, created_at__lt=started_before
    ).update(
        status=ConversationMessage.STATUS_INTERRUPTED,
        finish_reason="interrupted",
        completed_at=timezone.now(),
    )


def conversation_title(value: Any) -> str:
    """Return the title VALUE trimmed; raise ``ConversationInputError`` naming ``title``.

    A title is a non-blank string of at most ``TITLE_MAX_CHARS`` characters,
    on one line, with no control characters.
    """
    if not isinstance(value, str):
        raise ConversationInputError("title", "Must be a string.")
    title = value.strip()
    if not title:
        raise ConversationInputError("title", "Must not be blank.")
    if len(title) > TITLE_MAX_CHARS:
        raise ConversationInputError("title", f"Must be at most {TITLE_MAX_CHARS} characters.")
    if _CONTROL.search(title):
        raise ConversationInputError("title", "Must be one line, with no control characters.")
    return title


@transaction.atomic
def conversation_rename(*, owner: ConversationOwner, conversation_id: int, title: Any) -> str:
    """Give OWNER's conversation CONVERSATION_ID the title TITLE; return the title as stored.

    Raise ``ConversationInputError`` for a wrong title (nothing changes) and
    ``ConversationNotFound`` for a conversation OWNER does not have. The
    conversation keeps its place in the list (its ``updated_at``).
    """
    checked = conversation_title(title)
    renamed = Conversation.objects.filter(owner.lookup(), pk=conversation_id).update(title=checked)
    if not renamed:
        raise ConversationNotFound(conversation_id)
    return checked


@transaction.atomic
def conversation_delete(*, owner: ConversationOwner, conversation_id: int) -> None:
    """Delete OWNER's conversation CONVERSATION_ID and its messages; raise ``ConversationNotFound``."""
    deleted, _ = Conversation.objects.filter(owner.lookup(), pk=conversation_id).delete()
    if not deleted:
        raise ConversationNotFound(conversation_id)
