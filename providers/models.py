"""The database side of providers: their configurations and health history."""

from __future__ import annotations

from typing import Any

from django.core.validators import MaxValueValidator, RegexValidator
from django.db import models

from providers.runtime.model_catalogue import DEFAULT_ROUTING_PRIORITY
from providers.runtime.registry import ProviderSpec
from providers.secrets.box import SecretDecryptionError, decrypt_secrets, encrypt_secrets

MAX_ROUTING_PRIORITY = 1_000_000

provider_name_validator = RegexValidator(
    r"^[a-z0-9][a-z0-9_-]{0,63}$",
    "Use lowercase letters, digits, '-' and '_' (starting with a letter or digit).",
)


class ProviderConfig(models.Model):
    """One configured provider: which plugin, its settings, its secrets and routing.

    SETTINGS hold the plugin's non-secret configuration; SECRETS hold the
    fields its schema marks as secret, kept apart so that no interface shows
    them back.
    """

    name = models.CharField(
        max_length=64,
        unique=True,
        validators=[provider_name_validator],
        help_text="The provider's name in requests, e.g. 'openai' or 'openai-backup'.",
    )
    plugin = models.CharField(max_length=64, help_text="The plugin that implements it.")
    enabled = models.BooleanField(default=True)
    is_default = models.BooleanField(
        "default provider",
        default=False,
        help_text="Answers requests that name no provider. Only one provider is the default.",
    )
    fallbacks = models.JSONField(
        default=list,
        blank=True,
        help_text="Providers tried in order when this one fails; 'name' or 'name/model'.",
    )
    settings = models.JSONField(default=dict, blank=True)
    secrets_encrypted = models.TextField(
        blank=True, editable=False, help_text="The secrets, encrypted (see providers.secrets.box)."
    )
    disabled_reason = models.TextField(
        blank=True, help_text="Why the provider is disabled, when Echo disabled it."
    )
    revision = models.PositiveBigIntegerField(
        default=1,
        editable=False,
        help_text="Raised by every saved change; every worker serves the newest it has read.",
    )
    routing_priority = models.PositiveIntegerField(
        default=DEFAULT_ROUTING_PRIORITY,
        validators=[MaxValueValidator(MAX_ROUTING_PRIORITY)],
        help_text=(
            "When several providers serve a model named without a provider (gpt-4o-mini), "
            "the lowest number answers; then the default provider, then by name."
        ),
    )
    missing_secrets = models.JSONField(
        default=list,
        blank=True,
        editable=False,
        help_text=(
            "Secrets whose absence alone keeps the provider disabled (set by the YAML import"
            " when their environment variable is unset); supplying them enables it."
        ),
    )
    import_fingerprint = models.CharField(
        max_length=64,
        blank=True,
        editable=False,
        help_text="Fingerprint of the values the YAML import last wrote.",
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]
        verbose_name = "provider"
        constraints = [
            models.UniqueConstraint(
                fields=["is_default"],
                condition=models.Q(is_default=True),
                name="one_default_provider",
            )
        ]

    def __str__(self) -> str:
        return self.name

    @property
    def secrets(self) -> dict[str, Any]:
        """Return the decrypted secrets; raise ``SecretDecryptionError`` if no key opens them."""
        return decrypt_secrets(self.secrets_encrypted)

    @secrets.setter
    def secrets(self, value: dict[str, Any] | None) -> None:
        self.secrets_encrypted = encrypt_secrets(value or {})

    def readable_secrets(self) -> dict[str, Any] | None:
        """Return the decrypted secrets, or None when no key in ECHO_ENCRYPTION_KEYS opens them.

        For the code that must go on showing a provider whose secrets are lost
        (lists, forms, error redaction); what must not serve uses ``secrets``.
        """
        try:
            return self.secrets
        except SecretDecryptionError:
            return None

    @property
    def secrets_error(self) -> str:
        """Return why the stored secrets cannot be read ("" when they can)."""
        try:
            self.secrets  # noqa: B018 - decrypting is the check
        except SecretDecryptionError as exc:
            return str(exc)
        return ""

    def full_config(self) -> dict[str, Any]:
        """Return settings and secrets merged: what the plugin instance receives."""
        return {**(self.settings or {}), **(self.secrets or {})}

    def serving_spec(self) -> tuple[ProviderSpec | None, str]:
        """Return (the spec to serve, "") or (None, why it must not serve).

        Secrets that cannot be decrypted keep the provider out of service with
        a clear reason: the ciphertext is never sent upstream as a key.
        """
        if not self.enabled:
            return None, self.disabled_reason or "Disabled."
        try:
            return self.to_spec(), ""
        except SecretDecryptionError as exc:
            return None, str(exc)

    def to_spec(self) -> ProviderSpec:
        """Return the registry spec for this configuration."""
        return ProviderSpec(
            name=self.name,
            plugin=self.plugin,
            config=self.full_config(),
            fallbacks=tuple(self.fallbacks or ()),
            is_default=self.is_default,
        )


class HealthCheck(models.Model):
    """One health check of one provider: a row of its time series."""

    provider = models.ForeignKey(
        ProviderConfig, on_delete=models.CASCADE, related_name="health_checks"
    )
    available = models.BooleanField()
    response_time_ms = models.FloatField(null=True, blank=True)
    error = models.TextField(blank=True)
    checked_at = models.DateTimeField(db_index=True)
    # Declared last: the field name shadows the ``models`` module inside the class body.
    models = models.JSONField(default=list, blank=True)

    class Meta:
        ordering = ["-checked_at"]
        indexes = [models.Index(fields=["provider", "-checked_at"])]

    def __str__(self) -> str:
        state = "up" if self.available else "down"
        return f"{self.provider_id} {state} at {self.checked_at:%Y-%m-%d %H:%M:%S}"


class ProviderConfigChange(models.Model):
    """One audited change to a provider's configuration: who, when, from where, what.

    CHANGES lists ``{"field", "before", "after"}``; a secret's entry says
    ``"secret": true`` and holds only masks. Written in the same transaction
    as the change itself, so a change that rolls back leaves no entry.
    """

    ACTIONS = [
        ("created", "created"),
        ("updated", "updated"),
        ("enabled", "enabled"),
        ("disabled", "disabled"),
        ("deleted", "deleted"),
    ]

    provider_name = models.CharField(max_length=64, db_index=True)
    action = models.CharField(max_length=16, choices=ACTIONS)
    actor = models.CharField(
        max_length=150, help_text="The user, or 'key:<name>' for a client key."
    )
    source = models.CharField(max_length=32, help_text="admin, api, yaml-import, command, ...")
    remote_addr = models.GenericIPAddressField(null=True, blank=True)
    changed_at = models.DateTimeField(auto_now_add=True, db_index=True)
    changes = models.JSONField(default=list)

    class Meta:
        ordering = ["-changed_at", "-id"]
        verbose_name = "provider change"

    def __str__(self) -> str:
        return f"{self.provider_name} {self.action} by {self.actor} via {self.source}"


class UsageRecord(models.Model):
    """One answered (or failed) request: who asked, who answered, tokens, cost, timing."""

    OUTCOMES = [("ok", "ok"), ("error", "error"), ("cancelled", "cancelled")]

    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    client = models.CharField(max_length=150, db_index=True, help_text="Key name or user.")
    endpoint = models.CharField(max_length=64)
    provider = models.CharField(max_length=64, db_index=True, blank=True)
    model = models.CharField(max_length=200, db_index=True, blank=True)
    stream = models.BooleanField(default=False)
    prompt_tokens = models.PositiveIntegerField(default=0)
    completion_tokens = models.PositiveIntegerField(default=0)
    cost_usd = models.DecimalField(max_digits=14, decimal_places=8, null=True, blank=True)
    latency_ms = models.FloatField()
    ttft_ms = models.FloatField(null=True, blank=True, help_text="Time to the first chunk.")
    overhead_ms = models.FloatField(null=True, blank=True, help_text="Time Echo itself added.")
    outcome = models.CharField(max_length=16, choices=OUTCOMES)
    error_kind = models.CharField(max_length=64, blank=True)
    attempts = models.PositiveSmallIntegerField(default=1)
    fallback_path = models.JSONField(default=list, blank=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["client", "created_at"])]

    def __str__(self) -> str:
        return f"{self.client} {self.provider}/{self.model} {self.outcome}"


class ModelGroup(models.Model):
    """A public model name (``fast``, ``gpt-4o``) served by one or more deployments.

    DEPLOYMENTS is a list of ``{"provider", "model", "weight"}``: the provider
    that serves, the model it is asked for, and (for the ``weighted``
    strategy) its share of the traffic. STRATEGY picks the deployment of each
    request (``providers.runtime.model_groups``). Written only through
    ``providers.config.services``, which validates, audits and raises
    REVISION; every worker then serves the new table.
    """

    STRATEGIES = [
        ("weighted", "weighted random (by weight)"),
        ("least_busy", "least busy (fewest requests in flight in the worker)"),
        ("lowest_latency", "lowest latency (recent successful calls in the worker)"),
    ]

    name = models.CharField(
        max_length=58,
        unique=True,
        help_text="The model name clients send, e.g. 'fast' or 'gpt-4o'.",
    )
    strategy = models.CharField(max_length=32, choices=STRATEGIES, default="weighted")
    deployments = models.JSONField(
        default=list,
        help_text='[{"provider": "openai", "model": "gpt-4o-mini", "weight": 3}, ...]',
    )
    enabled = models.BooleanField(default=True)
    revision = models.PositiveBigIntegerField(
        default=1,
        editable=False,
        help_text="Raised by every saved change; every worker serves the newest it has read.",
    )
    import_fingerprint = models.CharField(
        max_length=64,
        blank=True,
        editable=False,
        help_text="Fingerprint of the values the YAML import last wrote.",
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]
        verbose_name = "model group"

    def __str__(self) -> str:
        return self.name
