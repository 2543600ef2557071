"""Client API keys (who may call Echo, and for what) and the browser chat's conversations."""

from __future__ import annotations

from decimal import Decimal

from django.conf import settings
from django.core.validators import MinValueValidator
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

    PERIOD_DAY = "day"
    PERIOD_WEEK = "week"
    PERIOD_MONTH = "month"
    BUDGET_PERIODS = [
        (PERIOD_DAY, "day (UTC)"),
        (PERIOD_WEEK, "week (Monday, UTC)"),
        (PERIOD_MONTH, "month (UTC)"),
    ]

    name = models.CharField(max_length=100, unique=True)
    scope = models.CharField(max_length=10, choices=SCOPES, default=SCOPE_CHAT)
    prefix = models.CharField(max_length=16, editable=False)
    key_hash = models.CharField(max_length=64, unique=True, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True, editable=False)
    revoked_at = models.DateTimeField(null=True, blank=True)
    # Limits (plugins_api.access.key_limits); null is unlimited.
    requests_per_minute = models.PositiveIntegerField(
        null=True, blank=True, validators=[MinValueValidator(1)]
    )
    tokens_per_minute = models.PositiveIntegerField(
        null=True, blank=True, validators=[MinValueValidator(1)]
    )
    max_concurrent_requests = models.PositiveIntegerField(
        null=True, blank=True, validators=[MinValueValidator(1)]
    )
    # Model access (plugins_api.access.key_model_access): ``provider/model`` patterns
    # (empty: every model) and the model used when a call names none.
    allowed_models = models.JSONField(default=list, blank=True)
    default_model = models.CharField(max_length=200, blank=True)
    # After this moment the key is refused like a revoked one (null: never).
    expires_at = models.DateTimeField(null=True, blank=True)
    # Who the key belongs to: that user sees it and its usage (null: admins only).
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="client_keys",
    )
    # Spend cap in USD per period (plugins_api.access.key_budgets); null is none.
    budget_usd = models.DecimalField(
        "budget (USD)",
        max_digits=14,
        decimal_places=6,
        null=True,
        blank=True,
        validators=[MinValueValidator(Decimal("0.000001"))],
    )
    budget_period = models.CharField(max_length=8, choices=BUDGET_PERIODS, default=PERIOD_MONTH)
    # A rotated key's former secret, still accepted until previous_key_expires_at.
    previous_key_hash = models.CharField(
        max_length=64, null=True, blank=True, unique=True, editable=False
    )
    previous_key_expires_at = models.DateTimeField(null=True, blank=True, editable=False)
    rotated_at = models.DateTimeField(null=True, blank=True, editable=False)

    class Meta:
        ordering = ["name"]
        verbose_name = "client API key"

    def __str__(self) -> str:
        return f"{self.name} ({self.scope}, {self.prefix}...)"


class ClientKeyChange(models.Model):
    """One audited change to a client key: who, when, from where, what.

    Like ``providers.models.ProviderConfigChange``: CHANGES lists ``{"field",
    "before", "after"}``, written in the change's own transaction. Neither a
    key nor its hash is ever part of it; a rotation says only that it happened
    and how long the former secret stays valid.
    """

    ACTIONS = [
        ("created", "created"),
        ("updated", "updated"),
        ("rotated", "rotated"),
        ("revoked", "revoked"),
        ("deleted", "deleted"),
    ]

    key_name = models.CharField(max_length=100, db_index=True)
    action = models.CharField(max_length=16, choices=ACTIONS)
    actor = models.CharField(
        max_length=150, help_text="The user, or 'key:<name>' for a client key."
    )
    source = models.CharField(max_length=32, help_text="admin, api, command, ...")
    remote_addr = models.GenericIPAddressField(null=True, blank=True)
    changed_at = models.DateTimeField(auto_now_add=True, db_index=True)
    changes = models.JSONField(default=list)

    class Meta:
        ordering = ["-changed_at", "-id"]
        verbose_name = "client key change"

    def __str__(self) -> str:
        return f"{self.key_name} {self.action} by {self.actor} via {self.source}"


class Conversation(models.Model):
    """A chat of one owner: a logged-in user (the chat page) or a client key (other clients).

    Exactly one of USER and CLIENT_KEY is set; nobody else sees the conversation.
    """

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="conversations",
    )
    client_key = models.ForeignKey(
        ClientAPIKey,
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="conversations",
    )
    title = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True, db_index=True)

    class Meta:
        ordering = ["-updated_at", "-id"]
        constraints = [
            models.CheckConstraint(
                condition=(
                    models.Q(user__isnull=False, client_key__isnull=True)
                    | models.Q(user__isnull=True, client_key__isnull=False)
                ),
                name="conversation_has_one_owner",
            )
        ]

    def __str__(self) -> str:
        return self.title or f"Conversation {self.pk}"


class ConversationMessage(models.Model):
    """One message of a conversation: the person's, or an answer and how it came about.

    An answer is written when it starts (``streaming``) and settled when it
    ends: ``complete``, or ``cancelled``/``failed`` with the partial text kept,
    or ``interrupted``: its worker shut down (or crashed) before it ended.
    PROVIDER and MODEL name who wrote it (after any failover); the timings
    are measured from the moment the question arrived.
    """

    ROLE_USER = "user"
    ROLE_ASSISTANT = "assistant"
    ROLES = [(ROLE_USER, "user"), (ROLE_ASSISTANT, "assistant")]

    STATUS_STREAMING = "streaming"
    STATUS_COMPLETE = "complete"
    STATUS_CANCELLED = "cancelled"
    STATUS_FAILED = "failed"
    STATUS_INTERRUPTED = "interrupted"
    STATUSES = [
        (STATUS_STREAMING, "streaming"),
        (STATUS_COMPLETE, "complete"),
        (STATUS_CANCELLED, "cancelled"),
        (STATUS_FAILED, "failed"),
        (STATUS_INTERRUPTED, "interrupted"),
    ]

    conversation = models.ForeignKey(
        Conversation, on_delete=models.CASCADE, related_name="messages"
    )
    role = models.CharField(max_length=16, choices=ROLES)
    content = models.TextField(blank=True)
    status = models.CharField(max_length=16, choices=STATUSES, default=STATUS_COMPLETE)
    provider = models.CharField(max_length=64, blank=True)
    model = models.CharField(max_length=200, blank=True)
    prompt_tokens = models.PositiveIntegerField(null=True, blank=True)
    completion_tokens = models.PositiveIntegerField(null=True, blank=True)
    finish_reason = models.CharField(max_length=32, blank=True)
    error = models.JSONField(null=True, blank=True, help_text="The error frame's body, if failed.")
    first_chunk_ms = models.FloatField(null=True, blank=True, help_text="Time to first chunk.")
    latency_ms = models.FloatField(null=True, blank=True, help_text="Time to the whole answer.")
    fallback_path = models.JSONField(
        default=list,
        blank=True,
        help_text="The routes given up on before this answer: {provider, model, error, attempts}.",
    )
    created_at = models.DateTimeField(auto_now_add=True)
    completed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["conversation", "id"]

    def __str__(self) -> str:
        return f"{self.role} #{self.pk} in conversation {self.conversation_id}"


class StoredResponse(models.Model):
    """A response of ``POST /v1/responses`` kept for ``previous_response_id`` and retrieval.

    Exactly one owner is set, as for ``Conversation``: the client key or the
    logged-in user that created it; nobody else can read, continue or delete
    it. ITEMS is the whole conversation in the Responses API's item shape
    (the earlier turns, this call's input and its output), so that a follow-up
    loads one row, not a chain; RESPONSE is the response object as answered.
    SIZE_BYTES is their JSON size, bounded (``responses_store``), and rows
    older than the retention are neither served nor kept.
    """

    id = models.CharField(primary_key=True, max_length=64, editable=False)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="stored_responses",
    )
    client_key = models.ForeignKey(
        ClientAPIKey,
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="stored_responses",
    )
    model = models.CharField(max_length=200, blank=True)
    previous_response_id = models.CharField(max_length=64, blank=True)
    items = models.JSONField(default=list)
    response = models.JSONField(default=dict)
    size_bytes = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.CheckConstraint(
                condition=(
                    models.Q(user__isnull=False, client_key__isnull=True)
                    | models.Q(user__isnull=True, client_key__isnull=False)
                ),
                name="stored_response_has_one_owner",
            )
        ]

    def __str__(self) -> str:
        return self.id
