"""The chat page (``/``, ``/chat/`` and ``/chat/c/<id>``): a Django template, a little JavaScript, a websocket.

The page is rendered with the provider list it starts with and the limits
its composer checks before sending; from then on the websocket keeps the
picker current and carries the chat, and ``/api/conversations/`` lists and
opens past conversations. ``/chat/c/<id>`` opens one conversation of the
logged-in user; any other id (another user's, one that does not exist, one
that is not a number) gets the page with a "not found" notice and a 404,
never a word of someone else's conversation.
"""

from __future__ import annotations

from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.csrf import ensure_csrf_cookie

from plugins_api.chat.conversations import ConversationOwner, conversation_owned
from plugins_api.chat.offered_providers import chat_provider_list
from plugins_api.chat.protocol import CONVERSATION_ID_MAX

#: Longest id text looked at: a bigint has at most 19 digits.
ID_MAX_DIGITS = 19


def _page(
    request: HttpRequest, *, conversation_id: int | None = None, missing: bool = False
) -> HttpResponse:
    context = {
        "providers": chat_provider_list(),
        "conversation_id": conversation_id,
        "conversation_missing": missing,
        "max_message_chars": settings.ECHO_WS_MAX_MESSAGE_CHARS,
        "max_frame_bytes": settings.ECHO_WS_MAX_FRAME_BYTES,
    }
    return render(request, "chat/index.html", context, status=404 if missing else 200)


@login_required
@ensure_csrf_cookie  # the page's JavaScript renames and deletes conversations with the CSRF token
def chat_page(request: HttpRequest) -> HttpResponse:
    """Render the chat page for the logged-in user, with a new conversation."""
    return _page(request)


@login_required
@ensure_csrf_cookie
def chat_conversation_page(request: HttpRequest, conversation_id: str) -> HttpResponse:
    """Render the chat page opening the logged-in user's conversation CONVERSATION_ID.

    The page's JavaScript reads the conversation from ``/api/conversations/``;
    this view only tells it which, once it knows the conversation is theirs.
    """
    text = conversation_id
    if not (text.isascii() and text.isdigit() and len(text) <= ID_MAX_DIGITS):
        return _page(request, missing=True)
    number = int(text)
    owner = ConversationOwner(user_id=request.user.pk)
    if not 1 <= number <= CONVERSATION_ID_MAX or not conversation_owned(
        owner=owner, conversation_id=number
    ):
        return _page(request, missing=True)
    return _page(request, conversation_id=number)
