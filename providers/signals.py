"""Reload providers after their configuration commits, here and in every other worker.

Signals only connect: they hand the committed state to the runtime (this
process) and to the broadcast (the other processes). Saves from the admin,
the API and the YAML import all pass through here.
"""

from __future__ import annotations

import logging
from typing import Any

from django.db import transaction

from providers import broadcast
from providers.runtime import apply_config_state, run_in_serving_loop

logger = logging.getLogger(__name__)


def provider_config_saved(sender: Any, instance: Any, **kwargs: Any) -> None:
    """After commit, reload (or disable) the saved provider and tell the other workers."""
    name = instance.name
    spec, reason = instance.serving_spec()
    transaction.on_commit(lambda: _apply_and_publish(name, spec, reason))


def provider_config_deleted(sender: Any, instance: Any, **kwargs: Any) -> None:
    """After commit, remove the deleted provider here and in the other workers."""
    name = instance.name
    transaction.on_commit(lambda: _apply_and_publish(name, None, ""))


def _apply_and_publish(name: str, spec: Any, reason: str) -> None:
    run_in_serving_loop(apply_config_state, name, spec, reason)
    broadcast.publish_provider_changed(name)
