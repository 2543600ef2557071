"""Shared fixtures: a clean provider runtime per test, and the usual personas."""

from __future__ import annotations

import os

import pytest

from providers import runtime

IN_CI = os.environ.get("CI", "").lower() == "true"


@pytest.fixture(autouse=True)
def clean_runtime():
    """Give every test an empty process registry with only the built-in plugins."""
    runtime.registry.__init__()
    runtime.register_builtin_plugins()
    runtime.set_serving_loop(None)
    yield runtime.registry
    runtime.registry.__init__()
    runtime.set_serving_loop(None)


@pytest.fixture
def admin_user(django_user_model):
    """A superuser, as the admin at 2 a.m. is."""
    return django_user_model.objects.create_superuser("admin", "admin@example.com", "pw-admin-123")


@pytest.fixture
def echo_config(db):
    """The echo provider configured as the default, as `make run` leaves it."""
    from providers.services import provider_config_create

    return provider_config_create(
        name="echo", plugin="echo", settings={"prefix": "Echo: "}, is_default=True
    )
