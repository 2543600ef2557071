"""The chat page (``/`` and ``/chat/``): a Django template, a little JavaScript, a websocket.

The page is rendered with the provider list it starts with; from then on
the websocket keeps the picker current and carries the chat, and
``/api/conversations/`` lists and opens past conversations.
"""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.csrf import ensure_csrf_cookie

from plugins_api.chat.offered_providers import chat_provider_list


@login_required
@ensure_csrf_cookie  # the page's JavaScript deletes conversations with the CSRF token
def chat_page(request: HttpRequest) -> HttpResponse:
    """Render the chat page for the logged-in user."""
    return render(request, "chat/index.html", {"providers": chat_provider_list()})
