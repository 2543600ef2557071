"""Client API keys: who may call Echo, and for what."""

from __future__ import annotations

from django.db import models


class ClientAPIKey(models.Model):
    """A key a client sends as ``Authorization: Bearer <key>``.

    Only the SHA-256 of the key is stored (keys are long random tokens, so a
    fast hash is safe and lets a lookup be one indexed query); PREFIX keeps
    the first characters so that people can tell their keys apart.
    """

    SCOPE_CHAT = "chat"
    SCOPE_ADMIN = "admin"
    SCOPES = [
        (SCOPE_CHAT, "chat: call /chat and the model endpoints"),
        (SCOPE_ADMIN, "admin: everything, including provider management"),
    ]

    name = models.CharField(max_length=100, unique=True)
    scope = models.CharField(max_length=10, choices=SCOPES, default=SCOPE_CHAT)
    prefix = models.CharField(max_length=16, editable=False)
    key_hash = models.CharField(max_length=64, unique=True, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True, editable=False)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["name"]
        verbose_name = "client API key"

    def __str__(self) -> str:
        return f"{self.name} ({self.scope}, {self.prefix}...)"

    @property
    def is_active(self) -> bool:
        return self.revoked_at is None
