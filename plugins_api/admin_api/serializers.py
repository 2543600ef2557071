"""Serializers of the management API: input validation, output shapes and their OpenAPI schema.

Writes never happen here directly: ``ProviderConfigSerializer`` only
translates its validated data into a change for ``providers.config.services``,
which merges it (``merge_provider_config``), validates it against the
plugin's schema, starts a candidate instance and saves (the post-save
signal then applies it in every worker); the view passes the request's
``actor`` to ``save()`` for the audit trail.
Secrets are accepted in clear and always rendered masked; secrets that no
key decrypts render as ``{}`` with the reason in ``secrets_error``.
"""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from providers.audit.export import change_record
from providers.audit.history import SYSTEM
from providers.config import selectors
from providers.config.services import provider_config_create, provider_config_update
from providers.models import (
    MAX_ROUTING_PRIORITY,
    HealthCheck,
    ProviderConfig,
    ProviderConfigChange,
)
from providers.runtime import config_sync
from providers.secrets.masking import mask_secret


@extend_schema_field(
    {
        "type": "object",
        "additionalProperties": {"type": "string"},
        "description": (
            "Write: the secret values in clear (a null value removes one; values not "
            "sent are kept). Read: the same keys, masked like 'sk-...f3a9'."
        ),
    }
)
class MaskedSecretsField(serializers.DictField):
    """A dict of secrets: accepted in clear, rendered masked."""

    def get_attribute(self, instance: Any) -> Any:
        if isinstance(instance, ProviderConfig):
            # Unreadable secrets show as none; ``secrets_error`` says why.
            return instance.readable_secrets() or {}
        return super().get_attribute(instance)

    def to_representation(self, value: Any) -> dict[str, str]:
        return {key: mask_secret(item) for key, item in (value or {}).items()}


class LiveStatusSerializer(serializers.Serializer):
    """What this worker's registry knows of a provider."""

    loaded = serializers.BooleanField(help_text="Whether a live instance serves requests.")
    last_error = serializers.CharField(
        allow_null=True, help_text="The last load or reload error; the old instance may serve."
    )
    config = serializers.DictField(
        allow_null=True, help_text="The live instance's config, defaults applied, secrets masked."
    )
    loaded_at = serializers.DateTimeField(allow_null=True)
    generation = serializers.IntegerField(allow_null=True)
    active_requests = serializers.IntegerField()


class RevisionSerializer(serializers.Serializer):
    """The revision this worker serves against the database's."""

    serving = serializers.IntegerField(allow_null=True)
    database = serializers.IntegerField()


class ProviderConfigSerializer(serializers.ModelSerializer):
    """A configured provider: stored configuration (secrets masked) and live status.

    PATCH merges ``settings`` and ``secrets`` key by key (a null removes a
    key); PUT replaces ``settings`` and still merges ``secrets``, so that a
    client that never saw them cannot wipe them. A secret sent back in its
    masked form is left unchanged. ``revision`` says which revision this
    worker serves and which the database holds, so that drift shows.
    """

    settings = serializers.DictField(
        required=False, help_text="The plugin's non-secret settings (validated by its schema)."
    )
    secrets = MaskedSecretsField(required=False)
    fallbacks = serializers.ListField(
        child=serializers.CharField(),
        required=False,
        help_text="Providers tried in order when this one fails: 'name' or 'name/model'.",
    )
    # Declared, so that DRF does not derive a uniqueness validator from the
    # one-default constraint: the service moves the default flag instead.
    is_default = serializers.BooleanField(required=False)
    enabled = serializers.BooleanField(required=False)
    routing_priority = serializers.IntegerField(
        required=False,
        min_value=0,
        max_value=MAX_ROUTING_PRIORITY,
        help_text="When several providers serve a model named without a provider, the lowest "
        "number answers (then the default provider, then by name). Default 100.",
    )
    secrets_error = serializers.SerializerMethodField(
        help_text="Why the stored secrets cannot be shown masked: no key in "
        "ECHO_ENCRYPTION_KEYS decrypts them, and the provider cannot serve until they are "
        "sent again (they then replace the stored ones). Null when they are readable."
    )
    capabilities = serializers.SerializerMethodField()
    live = serializers.SerializerMethodField()
    revision = serializers.SerializerMethodField(
        help_text="'serving': the revision this worker serves (null: none yet); "
        "'database': the saved one. They differ only while a change is being applied."
    )

    class Meta:
        model = ProviderConfig
        fields = [
            "name",
            "plugin",
            "enabled",
            "is_default",
            "fallbacks",
            "routing_priority",
            "settings",
            "secrets",
            "secrets_error",
            "disabled_reason",
            "capabilities",
            "live",
            "revision",
            "created_at",
            "updated_at",
        ]
        read_only_fields = ["created_at", "updated_at"]

    @extend_schema_field(serializers.CharField(allow_null=True))
    def get_secrets_error(self, config: ProviderConfig) -> str | None:
        return config.secrets_error or None

    @extend_schema_field(serializers.ListField(child=serializers.CharField()))
    def get_capabilities(self, config: ProviderConfig) -> list[str]:
        return selectors.provider_capabilities(config)

    @extend_schema_field(LiveStatusSerializer)
    def get_live(self, config: ProviderConfig) -> dict[str, Any]:
        return LiveStatusSerializer(
            selectors.provider_live_status(name=config.name, config=config)
        ).data

    @extend_schema_field(RevisionSerializer)
    def get_revision(self, config: ProviderConfig) -> dict[str, int | None]:
        return {"serving": config_sync.served_revision(config.name), "database": config.revision}

    def validate_name(self, value: str) -> str:
        if self.instance is not None and value != self.instance.name:
            raise serializers.ValidationError("A provider cannot be renamed.")
        return value

    def create(self, validated_data: dict[str, Any]) -> ProviderConfig:
        return provider_config_create(**validated_data)

    def update(self, instance: ProviderConfig, validated_data: dict[str, Any]) -> ProviderConfig:
        actor = validated_data.pop("actor", SYSTEM)
        changes = {k: v for k, v in validated_data.items() if k != "name"}
        if not self.partial and "settings" in changes:
            changes["replace_settings"] = True  # PUT: the settings sent are the whole settings
        return provider_config_update(config=instance, changes=changes, actor=actor)


class BreakerStateSerializer(serializers.Serializer):
    """The OpenAPI shape of a circuit breaker's state (``CircuitBreaker.as_dict``)."""

    state = serializers.ChoiceField(
        choices=["closed", "open", "half_open"],
        help_text="open: no traffic until the cooldown ends; half_open: one probe may go.",
    )
    consecutive_failures = serializers.IntegerField()
    failure_threshold = serializers.IntegerField()
    cooldown_seconds = serializers.FloatField()
    retry_in_seconds = serializers.FloatField(help_text="Seconds until a probe may go (0: now).")
    last_failure = serializers.CharField(allow_null=True, help_text="Secrets masked.")


@extend_schema_field(BreakerStateSerializer)
class BreakerStateField(serializers.DictField):
    """A breaker's state, passed through whole: the breaker owns its fields."""


class ProviderHealthSerializer(serializers.Serializer):
    """The health of one provider.

    ``error`` is what this check found; ``last_error`` is the provider's last
    load or reload error, or why it is disabled. ``available`` and
    ``checked_at`` are null for a provider this worker has not checked yet.
    """

    name = serializers.CharField()
    available = serializers.BooleanField(allow_null=True)
    models = serializers.ListField(child=serializers.CharField())
    response_time_ms = serializers.FloatField(allow_null=True)
    error = serializers.CharField(allow_null=True)
    last_error = serializers.CharField(allow_null=True)
    checked_at = serializers.DateTimeField(allow_null=True)
    breaker = BreakerStateField(help_text="This worker's circuit breaker for the provider.")


class ProviderStatusSerializer(ProviderConfigSerializer):
    """A configured provider with the result of a fresh health check and its breaker state."""

    available = serializers.BooleanField(read_only=True)
    models = serializers.ListField(child=serializers.CharField(), read_only=True)
    response_time_ms = serializers.FloatField(allow_null=True, read_only=True)
    error = serializers.CharField(allow_null=True, read_only=True)
    last_error = serializers.CharField(allow_null=True, read_only=True)
    checked_at = serializers.DateTimeField(read_only=True)
    breaker = BreakerStateField(
        read_only=True, help_text="This worker's circuit breaker for the provider."
    )

    class Meta(ProviderConfigSerializer.Meta):
        fields = ProviderConfigSerializer.Meta.fields + [
            "available",
            "models",
            "response_time_ms",
            "error",
            "last_error",
            "checked_at",
            "breaker",
        ]
        read_only_fields = fields


class HealthQuerySerializer(serializers.Serializer):
    """The query of ``GET /plugins/health``."""

    refresh = serializers.BooleanField(
        required=False,
        default=False,
        help_text="Check every provider now (each within the health timeout, concurrently) "
        "and record the results, instead of returning the latest state.",
    )


class ClassKeyMixin:
    """Serialize the declared field ``class_`` under the key ``class`` (a Python keyword)."""

    def get_fields(self) -> dict[str, serializers.Field]:
        fields = super().get_fields()  # type: ignore[misc]
        fields["class"] = fields.pop("class_")
        return fields


class PluginSerializer(ClassKeyMixin, serializers.Serializer):
    """An installed plugin class."""

    name = serializers.CharField()
    class_ = serializers.CharField(help_text="The plugin's dotted class path.")
    source = serializers.ChoiceField(choices=["builtin", "manual", "file", "entry_point"])
    origin = serializers.CharField()


class PluginListSerializer(serializers.Serializer):
    """``GET /plugins/``: the configured providers and the installed plugins."""

    providers = ProviderConfigSerializer(many=True)
    plugins = PluginSerializer(many=True)


class InstanceSerializer(ClassKeyMixin, serializers.Serializer):
    """A live provider instance in this worker."""

    plugin = serializers.CharField()
    class_ = serializers.CharField(help_text="The instance's dotted class path.")
    is_default = serializers.BooleanField()
    fallbacks = serializers.ListField(child=serializers.CharField())
    config = serializers.DictField(help_text="Defaults applied, secrets masked.")
    loaded_at = serializers.DateTimeField()
    generation = serializers.IntegerField()
    active_requests = serializers.IntegerField()
    last_error = serializers.CharField(allow_null=True)


class MetadataSerializer(serializers.Serializer):
    """A plugin's metadata (the guide's ``PluginMetadata``)."""

    name = serializers.CharField()
    version = serializers.CharField()
    description = serializers.CharField()
    author = serializers.CharField()
    capabilities = serializers.ListField(child=serializers.CharField())
    models = serializers.ListField(child=serializers.CharField())
    homepage = serializers.CharField()
    requires_api_key = serializers.BooleanField()


class DiscoveryResultSerializer(ClassKeyMixin, serializers.Serializer):
    """What discovery did with one plugin file or entry point."""

    name = serializers.CharField()
    origin = serializers.CharField()
    status = serializers.ChoiceField(choices=["registered", "updated", "unchanged", "failed"])
    error = serializers.CharField(allow_null=True)
    class_ = serializers.CharField(allow_null=True, help_text="The provider class found.")


class DiscoveryReportSerializer(serializers.Serializer):
    """``POST /plugins/discover``: the directories scanned and one result per file or entry point."""

    directories = serializers.ListField(child=serializers.CharField())
    results = DiscoveryResultSerializer(many=True)


class ReloadRequestSerializer(serializers.Serializer):
    """``POST /plugins/{name}/reload``."""

    provider_name = serializers.CharField(
        required=False, help_text="Must be the provider named in the URL, when given."
    )
    config = serializers.DictField(
        required=False,
        help_text=(
            "A flat configuration (settings and secrets together), merged into the stored "
            "one as PUT /plugins/{name}/config does: keys left out are kept, a null value "
            "removes one. Without it, every worker reloads the stored configuration."
        ),
    )
    replace = serializers.BooleanField(
        required=False,
        default=False,
        help_text=(
            "With `config`: the settings sent replace the stored settings whole (those left "
            "out are removed, back to their defaults). Stored secrets left out are kept."
        ),
    )


class ConfigSchemaSerializer(serializers.Serializer):
    """``GET /plugins/{name}/config-schema``."""

    name = serializers.CharField()
    plugin = serializers.CharField()
    schema = serializers.DictField(help_text="The plugin's JSON Schema.")
    secret_fields = serializers.ListField(
        child=serializers.CharField(), help_text="Write-only fields: shown masked, never whole."
    )


class ModelListSerializer(serializers.Serializer):
    """``GET /plugins/{name}/models``."""

    provider = serializers.CharField()
    models = serializers.ListField(child=serializers.CharField())


class ModelInfoSerializer(serializers.Serializer):
    """``GET /plugins/{name}/models/{model}``."""

    provider = serializers.CharField()
    model = serializers.CharField()
    info = serializers.DictField(help_text="What the provider knows of the model.")


class HealthSummarySerializer(serializers.Serializer):
    """``GET /health``: minimal, for load balancers."""

    status = serializers.ChoiceField(choices=["ok", "degraded", "down"])
    providers = serializers.DictField(child=serializers.BooleanField())


class NameMapSerializer(serializers.Serializer):
    """A JSON object whose values are ``child_class`` entries, keyed by provider name."""

    child_class: type[serializers.Serializer]

    def to_representation(self, instance: dict[str, Any]) -> dict[str, Any]:
        return {name: self.child_class(value).data for name, value in instance.items()}


class ProviderHealthMapSerializer(NameMapSerializer):
    """The health of each provider, by name."""

    child_class = ProviderHealthSerializer


class InstanceMapSerializer(NameMapSerializer):
    """This worker's live instances, by provider name."""

    child_class = InstanceSerializer


class MetadataMapSerializer(NameMapSerializer):
    """The metadata of each live provider, by name."""

    child_class = MetadataSerializer


class ErrorDetailSerializer(serializers.Serializer):
    """What went wrong."""

    type = serializers.CharField(help_text="A stable identifier, e.g. 'invalid_config'.")
    message = serializers.CharField()
    field = serializers.CharField(required=False, help_text="The input field at fault.")
    provider = serializers.CharField(required=False)
    errors = serializers.DictField(
        child=serializers.ListField(child=serializers.CharField()),
        required=False,
        help_text="Every field at fault, with its messages.",
    )


class ErrorSerializer(serializers.Serializer):
    """Echo's one error shape."""

    error = ErrorDetailSerializer()


class HealthCheckSerializer(serializers.ModelSerializer):
    """One recorded health check."""

    provider = serializers.SlugRelatedField(slug_field="name", read_only=True)

    class Meta:
        model = HealthCheck
        fields = [
            "id",
            "provider",
            "available",
            "response_time_ms",
            "models",
            "error",
            "checked_at",
        ]
        read_only_fields = fields


class HealthCheckFilterSerializer(serializers.Serializer):
    """The query filters of ``/api/health-checks/``."""

    provider = serializers.CharField(required=False, help_text="A provider name.")
    since = serializers.DateTimeField(
        required=False, help_text="ISO 8601, e.g. 2025-01-31T12:00:00Z."
    )
    until = serializers.DateTimeField(
        required=False, help_text="ISO 8601, e.g. 2025-01-31T13:00:00Z."
    )

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        since, until = attrs.get("since"), attrs.get("until")
        if since and until and since > until:
            raise serializers.ValidationError({"until": ["Must not be before 'since'."]})
        return attrs


class FieldChangeSerializer(serializers.Serializer):
    """One changed field of an audited change."""

    field = serializers.CharField(
        help_text="'plugin', 'enabled', 'is_default', 'fallbacks', 'disabled_reason', "
        "'settings.<key>' or 'secrets.<key>'."
    )
    before = serializers.JSONField(allow_null=True, help_text="Null: not set before.")
    after = serializers.JSONField(allow_null=True, help_text="Null: not set after.")
    secret = serializers.BooleanField(
        required=False, help_text="True for a secret: BEFORE and AFTER are masks, never values."
    )
    changed = serializers.BooleanField(required=False)


class ProviderConfigChangeSerializer(serializers.Serializer):
    """One audited change to a provider's configuration (``providers.audit.export`` record)."""

    id = serializers.IntegerField()
    changed_at = serializers.DateTimeField()
    provider = serializers.CharField()
    action = serializers.ChoiceField(choices=[a for a, _ in ProviderConfigChange.ACTIONS])
    actor = serializers.CharField(help_text="The user, or 'key:<name>' for an API key.")
    source = serializers.CharField(
        help_text="admin, api (/api/), plugins-api (/plugins/), yaml-import, command or system."
    )
    remote_addr = serializers.CharField(allow_null=True, help_text="The client's address.")
    changes = FieldChangeSerializer(many=True)

    def to_representation(self, instance: ProviderConfigChange) -> dict[str, Any]:
        # The exports and the admin's downloads use the very same record.
        return change_record(instance)


class HistoryFilterSerializer(serializers.Serializer):
    """The query filters of ``/api/history/``."""

    provider = serializers.CharField(required=False, help_text="A provider name.")
    actor = serializers.CharField(
        required=False, help_text="A user name, or 'key:<name>' for an API key."
    )
    source = serializers.CharField(required=False, help_text="e.g. admin, api, yaml-import.")
    action = serializers.ChoiceField(
        required=False, choices=[a for a, _ in ProviderConfigChange.ACTIONS]
    )
    since = serializers.DateTimeField(
        required=False, help_text="ISO 8601, e.g. 2025-01-31T12:00:00Z; included."
    )
    until = serializers.DateTimeField(
        required=False, help_text="ISO 8601, e.g. 2025-01-31T13:00:00Z; included."
    )

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        since, until = attrs.get("since"), attrs.get("until")
        if since and until and since > until:
            raise serializers.ValidationError({"until": ["Must not be before 'since'."]})
        return attrs


class ExportFormatSerializer(serializers.Serializer):
    """The ``format`` of a history export."""

    format = serializers.ChoiceField(
        choices=["csv", "json"],
        required=False,
        default="json",
        help_text="csv: one row per changed field (changed_at, provider, action, actor, "
        "source, remote_addr, field, before, after, secret; before/after as JSON); "
        "json: an array of entries. `Accept: text/csv` works too.",
    )
