# ruff: noqa: F811 - the hot path tests' fixtures, imported by name
"""The hot path adds the middleware's effects itself, where they are known, and answers exactly as the chain would.

Each case is served both ways (the hot path, and Django's own handler with
its middleware chain) with the settings varied; the answers must be equal,
header order included. Where the effects are not known (another middleware
list, refused user agents) or a request could be answered otherwise (a bad
host), the hot path runs Django's chain, and the answers are still equal.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from asgiref.sync import async_to_sync
from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler
from django.core.handlers.asgi import ASGIHandler
from django.http import JsonResponse
from django.urls import ResolverMatch

from echo_site.hot_path import HotPath, HotPathHandler
from echo_site.middleware_effects import MiddlewareEffects
from echo_site.request_body_limit import RequestBodyLimit
from tests.echo_site.test_hot_path import (  # noqa: F401 - fixtures among them
    CASES,
    DJANGO,
    HOT,
    KEYED,
    REQUEST_ID,
    both_ways,
    keys,
    providers,
    serve_async,
    started,
)


def built_anew() -> tuple[Any, Any, HotPathHandler]:
    """Both ways, built after the settings changed, as a worker would build them at start-up."""
    django = ASGIStaticFilesHandler(ASGIHandler())
    handler = HotPathHandler()
    return RequestBodyLimit(HotPath(django, handler)), RequestBodyLimit(django), handler


def assert_same(hot, django) -> None:
    assert hot.normalized() == django.normalized()
    assert [name.lower() for name, _ in hot.headers] == [
        name.lower() for name, _ in django.headers
    ], "the headers come in another order"


@pytest.mark.parametrize(("path", "case"), KEYED)
def test_every_case_is_answered_alike_headers_in_the_same_order(
    providers, keys, started, path: str, case: str
) -> None:
    hot, django, _ = both_ways(
        started, path, json.dumps(CASES[path][case][0]).encode(), keys["bearer"]
    )
    assert_same(hot, django)
    assert hot.header(b"x-request-id") == REQUEST_ID.encode()


SETTINGS = {
    "hsts, subdomains, preload": {
        "SECURE_HSTS_SECONDS": 31536000,
        "SECURE_HSTS_INCLUDE_SUBDOMAINS": True,
        "SECURE_HSTS_PRELOAD": True,
        "SECURE_PROXY_SSL_HEADER": ("HTTP_X_FORWARDED_PROTO", "https"),
    },
    "frames from the same origin": {"X_FRAME_OPTIONS": "SAMEORIGIN"},
    "a referrer policy list, no COOP, no nosniff": {
        "SECURE_REFERRER_POLICY": ["origin", "strict-origin"],
        "SECURE_CROSS_ORIGIN_OPENER_POLICY": None,
        "SECURE_CONTENT_TYPE_NOSNIFF": False,
    },
}


@pytest.mark.parametrize("variant", list(SETTINGS))
@pytest.mark.parametrize("secure", [False, True])
@pytest.mark.parametrize(
    ("path", "case"),
    [("/chat", "json"), ("/v1/chat/completions", "stream"), ("/v1/messages", "bad field")],
)
def test_the_settings_headers_follow_the_settings(
    providers, keys, started, settings, variant: str, secure: bool, path: str, case: str
) -> None:
    for name, value in SETTINGS[variant].items():
        setattr(settings, name, value)
    settings.SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    hot_app, django_app, handler = built_anew()
    headers = {**keys["bearer"], **({"X-Forwarded-Proto": "https"} if secure else {})}

    hot, django, hot_started = both_ways(
        started, path, json.dumps(CASES[path][case][0]).encode(), headers, (hot_app, django_app)
    )

    assert handler.effects is not None, "Echo's own middleware list: its effects are known"
    assert hot_started == 0
    assert_same(hot, django)
    if variant == "hsts, subdomains, preload" and secure:
        assert (
            hot.header(b"strict-transport-security")
            == b"max-age=31536000; includeSubDomains; preload"
        )
    if variant == "frames from the same origin":
        assert hot.header(b"x-frame-options") == b"SAMEORIGIN"


def test_another_middleware_list_runs_djangos_chain(providers, keys, started, settings) -> None:
    settings.MIDDLEWARE = [*settings.MIDDLEWARE, "django.middleware.gzip.GZipMiddleware"]
    hot_app, django_app, handler = built_anew()

    hot, django, hot_started = both_ways(
        started,
        "/chat",
        json.dumps(CASES["/chat"]["json"][0]).encode(),
        keys["bearer"],
        (hot_app, django_app),
    )

    assert handler.effects is None
    assert hot_started == 0  # still the hot path, with the chain
    assert_same(hot, django)


def test_refused_user_agents_run_djangos_chain(providers, keys, started, settings) -> None:
    settings.DISALLOWED_USER_AGENTS = [re.compile("^BadBot")]
    hot_app, django_app, handler = built_anew()
    headers = {**keys["bearer"], "User-Agent": "BadBot/1.0"}

    hot, django, _ = both_ways(
        started,
        "/chat",
        json.dumps(CASES["/chat"]["json"][0]).encode(),
        headers,
        (hot_app, django_app),
    )

    assert handler.effects is None
    assert hot.status == 403
    assert_same(hot, django)


def test_a_host_that_is_not_allowed_is_refused_alike(providers, keys, started) -> None:
    body = json.dumps(CASES["/chat"]["json"][0]).encode()

    async def both() -> tuple[Any, Any]:
        answers = []
        for app in (HOT, DJANGO):
            answers.append(
                await serve_async(app, "/chat", body, {**keys["bearer"], "Host": "evil.example"})
            )
        return answers[0], answers[1]

    hot, django = async_to_sync(both)()

    assert hot.status == 400
    assert hot.normalized() == django.normalized()


def test_atomic_requests_send_views_through_djangos_view_machinery(monkeypatch) -> None:
    from django.conf import settings

    monkeypatch.setitem(settings.DATABASES["default"], "ATOMIC_REQUESTS", True)
    assert not HotPathHandler().views_called_directly


def test_echos_own_settings_call_the_views_directly() -> None:
    handler = HotPathHandler()
    assert handler.effects is not None
    assert handler.views_called_directly


def test_a_view_that_raises_gets_djangos_500_with_the_middlewares_headers(
    providers, keys, started
) -> None:
    handler = HotPathHandler()

    async def broken(request) -> JsonResponse:
        raise RuntimeError("a bug in a view")

    handler.routes["/chat"] = ResolverMatch(broken, (), {})
    app = RequestBodyLimit(HotPath(ASGIStaticFilesHandler(ASGIHandler()), handler))

    answer = async_to_sync(serve_async)(app, "/chat", b'{"prompt": "hi"}', keys["bearer"])

    assert answer.status == 500
    assert answer.header(b"x-request-id") == REQUEST_ID.encode()
    assert answer.header(b"x-frame-options") == b"DENY"
    assert answer.header(b"x-content-type-options") == b"nosniff"
    assert int(answer.header(b"content-length")) == len(answer.body)


def test_the_effects_are_the_hooks_own() -> None:
    effects = MiddlewareEffects()
    assert [name for name, _ in effects.frame[False]] == ["X-Frame-Options"]
    assert [name for name, _ in effects.security[False]] == [
        "X-Content-Type-Options",
        "Referrer-Policy",
        "Cross-Origin-Opener-Policy",
    ]


def test_headers_a_view_set_in_any_case_are_not_added_again(providers, keys, started) -> None:
    """As the hooks' ``setdefault`` would: the view's own win, but the request id is the middleware's."""
    handler = HotPathHandler()

    async def own_headers(request) -> JsonResponse:
        response = JsonResponse({"ok": True})
        response["x-frame-options"] = "SAMEORIGIN"
        response["REFERRER-POLICY"] = "no-referrer"
        response["x-request-id"] = "the-views-own"
        return response

    handler.routes["/chat"] = ResolverMatch(own_headers, (), {})
    app = RequestBodyLimit(HotPath(ASGIStaticFilesHandler(ASGIHandler()), handler))

    answer = async_to_sync(serve_async)(app, "/chat", b'{"prompt": "hi"}', keys["bearer"])

    names = [name.lower() for name, _ in answer.headers]
    assert answer.status == 200
    assert sorted(set(names)) == sorted(names), "a header was sent twice"
    assert answer.header(b"x-frame-options") == b"SAMEORIGIN"
    assert answer.header(b"referrer-policy") == b"no-referrer"
    assert answer.header(b"x-request-id") == REQUEST_ID.encode()
    assert answer.header(b"x-content-type-options") == b"nosniff"
    assert int(answer.header(b"content-length")) == len(answer.body)
