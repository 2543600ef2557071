"""After a provider's configuration commits, apply it here and announce it to every worker.

Signals only connect: every save or delete of a ``ProviderConfig`` (admin,
API, YAML import, management commands) schedules ``config_sync.after_commit``
for when its transaction commits, so that no write path publishes by itself
and a rolled-back change is never applied. The hook is robust: whatever it
raises is logged by Django and never becomes the error of a request whose
change has committed (``after_commit`` itself logs and swallows, too).
"""

from __future__ import annotations

from typing import Any

from django.db import transaction

from providers.runtime import config_sync


def provider_config_saved(
    sender: Any, instance: Any, using: str | None = None, **kwargs: Any
) -> None:
    """After commit, apply the saved provider and tell the other workers."""
    _after_commit(instance.name, using)


def provider_config_deleted(
    sender: Any, instance: Any, using: str | None = None, **kwargs: Any
) -> None:
    """After commit, remove the deleted provider here and tell the other workers."""
    _after_commit(instance.name, using)


def _after_commit(name: str, using: str | None) -> None:
    transaction.on_commit(lambda: config_sync.after_commit(name), using=using, robust=True)
