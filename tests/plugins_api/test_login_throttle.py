"""Login throttling (``plugins_api.access.login_throttle``): password guessing is refused at both logins."""

from __future__ import annotations

import time
import uuid

import pytest
from django.core.cache import cache
from django.core.cache.backends.redis import RedisCache
from django.core.exceptions import PermissionDenied
from django.test import Client

from plugins_api.access import login_throttle
from tests.services import require_redis

ADMIN_PASSWORD = "pw-admin-123"
LOGINS = ["/admin/login/", "/accounts/login/"]


@pytest.fixture(autouse=True)
def fresh_counts():
    """The throttle's counts live in the process cache: one test's must not lock the next."""
    cache.clear()
    yield
    cache.clear()


def attempt(client: Client, url: str, password: str, *, address: str = "203.0.113.7", **extra):
    return client.post(
        url,
        {"username": "admin", "password": password, "next": "/"},
        REMOTE_ADDR=address,
        **extra,
    )


def logged_in(client: Client) -> bool:
    return "_auth_user_id" in client.session


@pytest.mark.parametrize("url", LOGINS)
def test_twenty_wrong_passwords_then_the_right_one_is_refused(url, admin_user, client):
    for _ in range(20):
        attempt(client, url, "guess")
    response = attempt(client, url, ADMIN_PASSWORD)

    assert response.status_code == 429
    assert int(response["Retry-After"]) > 0
    assert "Too many failed login attempts" in response.content.decode()
    assert not logged_in(client)


@pytest.mark.parametrize("url", LOGINS)
def test_the_limit_is_the_configured_number_of_failures(url, admin_user, client, settings):
    settings.ECHO_LOGIN_FAILURES_PER_USERNAME = 3
    for _ in range(2):
        assert attempt(client, url, "guess").status_code == 200  # the form, with its error
    assert attempt(client, url, ADMIN_PASSWORD).status_code == 302  # under the limit: in
    client.logout()
    for _ in range(3):
        assert attempt(client, url, "guess").status_code == 200
    assert attempt(client, url, ADMIN_PASSWORD).status_code == 429


@pytest.mark.slow
def test_after_the_lockout_the_right_password_works_again(admin_user, client, settings):
    settings.ECHO_LOGIN_FAILURES_PER_USERNAME = 2
    settings.ECHO_LOGIN_LOCKOUT_SECONDS = 1
    for _ in range(3):
        attempt(client, "/accounts/login/", "guess")
    assert attempt(client, "/accounts/login/", ADMIN_PASSWORD).status_code == 429

    time.sleep(1.2)
    response = attempt(client, "/accounts/login/", ADMIN_PASSWORD)
    assert response.status_code == 302
    assert logged_in(client)


def test_failures_count_per_username_across_addresses(admin_user, client, settings):
    settings.ECHO_LOGIN_FAILURES_PER_USERNAME = 5
    for n in range(5):
        attempt(client, "/admin/login/", "guess", address=f"198.51.100.{n}")
    # A sixth address, never seen: the username is locked wherever it is tried from.
    response = attempt(client, "/admin/login/", ADMIN_PASSWORD, address="192.0.2.99")
    assert response.status_code == 429
    assert not logged_in(client)


def test_failures_count_per_address_across_usernames(
    admin_user, django_user_model, client, settings
):
    django_user_model.objects.create_user("alice", password="pw-alice-123")
    settings.ECHO_LOGIN_FAILURES_PER_ADDRESS = 4
    for n in range(4):  # a different username each time: no username reaches its limit
        client.post(
            "/accounts/login/",
            {"username": f"user{n}", "password": "guess"},
            REMOTE_ADDR="203.0.113.50",
        )
    response = client.post(
        "/accounts/login/",
        {"username": "alice", "password": "pw-alice-123"},
        REMOTE_ADDR="203.0.113.50",
    )
    assert response.status_code == 429
    # The same user from elsewhere is not held up by that address.
    elsewhere = client.post(
        "/accounts/login/",
        {"username": "alice", "password": "pw-alice-123"},
        REMOTE_ADDR="203.0.113.51",
    )
    assert elsewhere.status_code == 302


def test_a_forged_forwarded_for_does_not_change_the_address(admin_user, client, settings):
    settings.ECHO_LOGIN_FAILURES_PER_ADDRESS = 3
    settings.ECHO_LOGIN_FAILURES_PER_USERNAME = 100
    for n in range(3):
        client.post(
            "/accounts/login/",
            {"username": f"user{n}", "password": "guess"},
            REMOTE_ADDR="203.0.113.60",
            HTTP_X_FORWARDED_FOR=f"10.0.0.{n}",  # no trusted proxy: ignored
        )
    response = attempt(
        client,
        "/accounts/login/",
        ADMIN_PASSWORD,
        address="203.0.113.60",
        HTTP_X_FORWARDED_FOR="10.9.9.9",
    )
    assert response.status_code == 429


def test_a_trusted_proxy_names_the_client(admin_user, client, settings):
    settings.ECHO_TRUSTED_PROXY_COUNT = 1
    settings.ECHO_LOGIN_FAILURES_PER_ADDRESS = 3
    settings.ECHO_LOGIN_FAILURES_PER_USERNAME = 100
    proxy = "10.0.0.2"
    for n in range(3):  # one client behind the proxy; its forged left-hand entries vary
        client.post(
            "/accounts/login/",
            {"username": f"user{n}", "password": "guess"},
            REMOTE_ADDR=proxy,
            HTTP_X_FORWARDED_FOR=f"1.2.3.{n}, 203.0.113.70",
        )
    locked = attempt(
        client,
        "/accounts/login/",
        ADMIN_PASSWORD,
        address=proxy,
        HTTP_X_FORWARDED_FOR="203.0.113.70",
    )
    assert locked.status_code == 429
    other_client = attempt(
        client,
        "/accounts/login/",
        ADMIN_PASSWORD,
        address=proxy,
        HTTP_X_FORWARDED_FOR="203.0.113.71",
    )
    assert other_client.status_code == 302


def test_good_logins_do_not_count_against_a_shared_address(admin_user, client, settings):
    settings.ECHO_LOGIN_FAILURES_PER_ADDRESS = 3
    for _ in range(10):  # a busy office behind one address, all with the right password
        assert attempt(client, "/accounts/login/", ADMIN_PASSWORD).status_code == 302
        client.logout()


def test_the_lockout_holds_across_workers_sharing_redis(admin_user, settings, rf, monkeypatch):
    """Two cache clients, as two worker processes have, see the same counts and locks."""
    import redis

    url = require_redis()
    prefix = f"echo-test-{uuid.uuid4().hex[:8]}"
    worker_a = RedisCache(url, {"KEY_PREFIX": prefix})
    worker_b = RedisCache(url, {"KEY_PREFIX": prefix})
    settings.ECHO_LOGIN_FAILURES_PER_USERNAME = 5
    try:
        monkeypatch.setattr(login_throttle, "cache", worker_a)
        for _ in range(5):
            assert (
                login_throttle.login_attempt_admit(username="admin", address="203.0.113.80") is None
            )
        # Worker B never saw those attempts in its own memory; Redis did.
        monkeypatch.setattr(login_throttle, "cache", worker_b)
        refusal = login_throttle.login_attempt_admit(username="admin", address="192.0.2.1")
        assert refusal is not None and refusal.retry_after > 0
        # Through the backend on worker B, the right password is refused as well.
        request = rf.post("/admin/login/", REMOTE_ADDR="192.0.2.2")
        with pytest.raises(PermissionDenied):
            login_throttle.ThrottledModelBackend().authenticate(
                request, username="admin", password=ADMIN_PASSWORD
            )
        assert login_throttle.login_refusal(request) is not None
    finally:
        worker_a.close()
        worker_b.close()
        with redis.Redis.from_url(url) as direct:  # only this test's keys: others share the db
            for key in direct.scan_iter(f"{prefix}:*"):
                direct.delete(key)
