"""Model groups across worker processes: one created through the API is served by another worker.

Two daphne workers share a scratch PostgreSQL database and Redis, as in
``test_multi_worker_reload.py`` (whose fixture and helpers this reuses): a
group saved on one worker reaches the other through the broadcast, with no
restart, and so does its deletion.
"""

from __future__ import annotations

import httpx
import pytest

from tests.server_processes import django_shell, start_daphne, stop_all
from tests.test_multi_worker_reload import shared_env, wait_until  # noqa: F401 - the fixture

pytestmark = pytest.mark.slow


def completion(url: str, key: str, model: str) -> httpx.Response:
    return httpx.post(
        f"{url}/v1/chat/completions",
        json={"model": model, "messages": [{"role": "user", "content": "hi"}]},
        headers={"Authorization": f"Bearer {key}"},
        timeout=10,
    )


def answers(url: str, key: str, model: str, content: str) -> bool:
    response = completion(url, key, model)
    return (
        response.status_code == 200
        and response.json()["choices"][0]["message"]["content"] == content
    )


def test_a_group_created_on_one_worker_is_served_by_another(shared_env) -> None:  # noqa: F811
    output = django_shell(
        shared_env,
        "from providers.config.services import provider_config_create as c;"
        "c(name='echo', plugin='echo', is_default=True);"
        "c(name='b', plugin='echo', settings={'prefix': 'B: ', 'models': ['b-1']});"
        "from plugins_api.access.key_changes import client_key_issue as k;"
        "print(k(name='mw-admin', scope='admin')[1]);"
        "print(k(name='mw-chat', scope='chat')[1])",
    )
    admin_key, chat_key = output.strip().splitlines()[-2:]
    workers = []
    try:
        for _ in range(2):
            port, proc = start_daphne(shared_env)
            workers.append((f"http://127.0.0.1:{port}", proc))
        (first, _), (second, _) = workers
        for url, _ in workers:
            assert wait_until(lambda url=url: answers(url, chat_key, "b-1", "B: hi")), url

        created = httpx.post(
            f"{first}/api/model-groups/",
            json={"name": "fast", "deployments": [{"provider": "b", "model": "b-1"}]},
            headers={"Authorization": f"Bearer {admin_key}"},
            timeout=10,
        )
        assert created.status_code == 201, created.text
        assert answers(first, chat_key, "fast", "B: hi")  # the saving worker: at once
        assert wait_until(lambda: answers(second, chat_key, "fast", "B: hi"), timeout=10)

        deleted = httpx.delete(
            f"{second}/api/model-groups/fast/",
            headers={"Authorization": f"Bearer {admin_key}"},
            timeout=10,
        )
        assert deleted.status_code == 204, deleted.text
        assert wait_until(
            lambda: completion(first, chat_key, "fast").status_code == 404, timeout=10
        )
    finally:
        stop_all([proc for _, proc in workers])
