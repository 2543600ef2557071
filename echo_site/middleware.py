"""BrowserMiddleware: Django's cookie-based middleware, skipped for API clients with a key.

Sessions, CSRF, authentication, messages and the security headers are for
people in a browser. In an async server each of those Django middleware
costs thread hops on every request; a client that authenticates with
``Authorization: Bearer`` carries no cookie for them to read, so its requests
(outside the admin) go straight to the view. Every other request runs the
whole list in ``settings.ECHO_BROWSER_MIDDLEWARE``, CSRF checks included.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction, sync_to_async
from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.utils.module_loading import import_string

ViewHook = Callable[[HttpRequest, Callable[..., Any], tuple, dict], HttpResponse | None]


def uses_bearer_key(request: HttpRequest) -> bool:
    """Return whether REQUEST is an API client's, authenticated by a key, outside the admin.

    The key comes as ``Authorization: Bearer`` or, from Anthropic's SDK, ``x-api-key``.
    """
    if request.path.startswith("/admin/"):
        return False
    authorization = request.META.get("HTTP_AUTHORIZATION", "")
    return authorization[:7].lower() == "bearer " or "HTTP_X_API_KEY" in request.META


class BrowserMiddleware:
    """Run the browser middleware, except for requests that carry a Bearer key."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[HttpRequest], Any]) -> None:
        self.get_response = get_response
        self.async_mode = iscoroutinefunction(get_response)
        chain = get_response
        instances = []
        for path in reversed(settings.ECHO_BROWSER_MIDDLEWARE):
            chain = import_string(path)(chain)
            instances.append(chain)
        self.browser_chain = chain
        # Django calls process_view hooks only for the middleware it built
        # itself, so the inner ones (CSRF's check) are called from here.
        self.view_hooks: list[ViewHook] = [
            m.process_view for m in reversed(instances) if hasattr(m, "process_view")
        ]
        if self.async_mode:
            markcoroutinefunction(self)
            self.process_view = self._aprocess_view
        else:
            self.process_view = self._process_view

    def __call__(self, request: HttpRequest) -> Any:
        if self.async_mode:
            return self.__acall__(request)
        if uses_bearer_key(request):
            return self.get_response(request)
        return self.browser_chain(request)

    async def __acall__(self, request: HttpRequest) -> HttpResponse:
        if uses_bearer_key(request):
            return await self.get_response(request)
        return await self.browser_chain(request)

    def _process_view(self, request: HttpRequest, view: Any, args: tuple, kwargs: dict) -> Any:
        if uses_bearer_key(request):
            return None
        for hook in self.view_hooks:
            response = hook(request, view, args, kwargs)
            if response is not None:
                return response
        return None

    async def _aprocess_view(
        self, request: HttpRequest, view: Any, args: tuple, kwargs: dict
    ) -> Any:
        if uses_bearer_key(request):
            return None
        for hook in self.view_hooks:
            response = await sync_to_async(hook, thread_sensitive=True)(request, view, args, kwargs)
            if response is not None:
                return response
        return None
