"""Encrypt provider secrets at rest with the keys in ECHO_ENCRYPTION_KEYS.

The first key encrypts; every key decrypts (``cryptography``'s MultiFernet),
so keys can be rotated: add the new key first, run
``manage.py rotate_encryption_keys``, then drop the old one. A secret that
no key can decrypt raises ``SecretDecryptionError``: it is never passed on
as if the ciphertext were the key.
"""

from __future__ import annotations

import json
from functools import cache
from typing import Any

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.conf import settings
from django.core.signals import setting_changed
from django.dispatch import receiver
from django.views.decorators.debug import sensitive_variables


class SecretDecryptionError(Exception):
    """Stored secrets cannot be decrypted with the configured keys."""


DECRYPTION_FAILED = (
    "Its secrets cannot be decrypted with the keys in ECHO_ENCRYPTION_KEYS "
    "(was the key that encrypted them removed?). Add that key back, or set the secrets again."
)


@cache
def _box() -> MultiFernet:
    return MultiFernet([Fernet(key) for key in settings.ECHO_ENCRYPTION_KEYS])


@receiver(setting_changed)
def _forget_keys(*, setting: str, **kwargs: Any) -> None:
    if setting == "ECHO_ENCRYPTION_KEYS":
        _box.cache_clear()


# Error reports show no local of these: they hold the plaintext secrets.
@sensitive_variables()
def encrypt_secrets(secrets: dict[str, Any]) -> str:
    """Return SECRETS encrypted under the first key ("" for none)."""
    if not secrets:
        return ""
    return _box().encrypt(json.dumps(secrets, sort_keys=True).encode()).decode()


@sensitive_variables()
def decrypt_secrets(token: str) -> dict[str, Any]:
    """Return the secrets in TOKEN; raise ``SecretDecryptionError`` if no key opens it."""
    if not token:
        return {}
    try:
        return json.loads(_box().decrypt(token.encode()))
    except (InvalidToken, ValueError):
        raise SecretDecryptionError(DECRYPTION_FAILED) from None


def reencrypt(token: str) -> str:
    """Return TOKEN encrypted again under the first key."""
    if not token:
        return ""
    try:
        return _box().rotate(token.encode()).decode()
    except InvalidToken:
        raise SecretDecryptionError(DECRYPTION_FAILED) from None


def new_key() -> str:
    """Return a fresh key for ECHO_ENCRYPTION_KEYS."""
    return Fernet.generate_key().decode()
