"""Hostile bodies against every route: the fuzz of ``test_hostile_input_fuzz.py``, its second half.

Each route gets the hand-written hostile bodies, and, where its valid body is
known, that body with every field replaced in turn by a value of the wrong
type (see that module's text). A file of its own so that ``--dist loadfile``
runs its two route fuzzers (about fifty seconds each) on two workers, not
one after the other at the end of the suite.
"""

from __future__ import annotations

import json
import time

import pytest

from tests.test_hostile_input_fuzz import (  # noqa: F401 (``site`` and ``fuzzer`` are fixtures)
    BODY_METHODS,
    HOSTILE_BODIES,
    JSON,
    VALID_BODIES,
    Fuzzer,
    Rotation,
    _report,
    _send_and_restore,
    allowed_methods,
    every_route,
    fuzzer,
    mutated_bodies,
    site,
    still_serves,
)

# Slow: it fuzzes every route.
pytestmark = pytest.mark.slow


async def test_every_route_survives_hostile_bodies(fuzzer: Fuzzer) -> None:  # noqa: F811 (the fixture)
    started = time.monotonic()
    routes = every_route()
    allowed = await allowed_methods(fuzzer, routes)
    by_name = {route.name: route for route in routes}
    missing = {name for name, _ in VALID_BODIES} - set(by_name)
    assert not missing, f"VALID_BODIES names routes that no longer exist: {missing}"
    for number, route in enumerate(routes):
        body_methods = [m for m in allowed[route] if m in BODY_METHODS]
        if not body_methods:
            continue
        url = route.url({})
        # Every hostile body goes to the route; the personas it lets in (the ones whose
        # body is parsed) and the methods take turns, so each persona meets several
        # bodies on every route and every body meets each persona across the routes.
        admitted = []
        for persona in fuzzer.personas:
            status = await _send_and_restore(fuzzer, route, body_methods[0], url, persona, "probe")
            if status not in (None, 301, 302, 401, 403):
                admitted.append(persona)
        methods = Rotation(body_methods, number)
        personas = Rotation(admitted or list(fuzzer.personas), number)
        for label, content_type, body in HOSTILE_BODIES:
            await _send_and_restore(
                fuzzer, route, methods.next(), url, personas.next(), label, body, content_type
            )
    for (name, method), valid in VALID_BODIES.items():
        route = by_name[name]
        url = route.url({})
        body = json.dumps(valid).encode()
        # The personas this route lets through: the ones whose fields get validated.
        admitted = []
        for persona in fuzzer.personas:
            status = await _send_and_restore(
                fuzzer, route, method, url, persona, "valid", body, JSON
            )
            if status not in (None, 401, 403):
                admitted.append(persona)
        assert admitted, f"no persona may call {route} {method} with its valid body"
        calls = Rotation(admitted)
        for label, mutated in mutated_bodies(valid):
            await _send_and_restore(fuzzer, route, method, url, calls.next(), label, mutated, JSON)
    await still_serves(fuzzer)
    assert not fuzzer.failures, _report(fuzzer, started)
