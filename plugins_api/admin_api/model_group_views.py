"""``/api/model-groups/``: model groups over REST (list, create, read, change, delete, history).

A model group is a public model name (``fast``, ``gpt-4o``) that clients
send as ``model``, served by deployments (provider + model + weight) picked
by the group's strategy. Every write goes through
``providers.config.services`` (validated field by field, audited with the
caller as actor and source ``api``, served by every worker once committed);
these views only parse and render. A group's name cannot change; a name
may hold ``/`` (``meta-llama/llama-3``), so the detail route takes the rest
of the path, and the audit trail is ``/api/model-groups/history/?name=``.
Like the rest of ``/api/``, this needs an admin-scoped key or a staff session.
"""

from __future__ import annotations

from typing import Any

from django.db.models import QuerySet
from drf_spectacular.utils import extend_schema, extend_schema_field, extend_schema_view
from rest_framework import serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response

from plugins_api.admin_api.serializers import ErrorSerializer, ProviderConfigChangeSerializer
from plugins_api.edge.bounded_json_parser import BoundedJSONParser
from providers.audit.history import SOURCE_API, Actor, actor_for_request
from providers.config import selectors
from providers.config.services import (
    MAX_DEPLOYMENTS,
    MAX_WEIGHT,
    model_group_create,
    model_group_delete,
    model_group_update,
)
from providers.models import ModelGroup
from providers.runtime import process as runtime
from providers.runtime.model_groups import STRATEGIES, WEIGHTED


class DeploymentSerializer(serializers.Serializer):
    """The OpenAPI shape of one deployment (the services validate what is sent)."""

    provider = serializers.CharField(help_text="A configured provider's name.")
    model = serializers.CharField(help_text="The model to ask that provider for.")
    weight = serializers.IntegerField(
        min_value=1,
        max_value=MAX_WEIGHT,
        required=False,
        default=1,
        help_text="Its share of the traffic under the 'weighted' strategy.",
    )


class ModelGroupSerializer(serializers.Serializer):
    """A model group as stored, and whether this worker serves it."""

    name = serializers.CharField(
        max_length=58, help_text="The model name clients send, e.g. 'fast' or 'gpt-4o'."
    )
    strategy = serializers.ChoiceField(
        choices=list(STRATEGIES),
        required=False,
        default=WEIGHTED,
        help_text="weighted (random by weight), least_busy (fewest requests in flight in the "
        "worker) or lowest_latency (lowest recent latency in the worker).",
    )
    # Passed to the services as sent: they name each mistake (deployments.0.weight).
    deployments = serializers.JSONField(
        help_text=f"1 to {MAX_DEPLOYMENTS} of {{provider, model, weight}}; the weight is a "
        f"whole number from 1 to {MAX_WEIGHT} (1 when left out)."
    )
    enabled = serializers.BooleanField(required=False, default=True)
    serving = serializers.SerializerMethodField(
        help_text="Whether this worker serves the group now."
    )
    revision = serializers.IntegerField(read_only=True)
    created_at = serializers.DateTimeField(read_only=True)
    updated_at = serializers.DateTimeField(read_only=True)

    @extend_schema_field(serializers.BooleanField())
    def get_serving(self, group: ModelGroup) -> bool:
        return runtime.manager.groups.get(group.name) is not None

    def validate_deployments(self, value: Any) -> Any:
        # The shape only; the services check the values and name the field of each mistake.
        if not isinstance(value, list):
            raise serializers.ValidationError(
                "Must be a list of {provider, model, weight} objects."
            )
        return value


class ModelGroupChangeSerializer(ModelGroupSerializer):
    """A change to a model group: any of strategy, deployments, enabled (the name cannot change)."""

    name = serializers.CharField(max_length=58, required=False)
    strategy = serializers.ChoiceField(choices=list(STRATEGIES), required=False)
    deployments = serializers.JSONField(required=False)
    enabled = serializers.BooleanField(required=False)


class HistoryQuerySerializer(serializers.Serializer):
    """The query of ``/api/model-groups/history/``."""

    name = serializers.CharField(max_length=58, help_text="The model group's name.")


ERRORS = dict.fromkeys((400, 401, 403, 404, 415), ErrorSerializer)


@extend_schema_view(
    list=extend_schema(
        summary="List the model groups",
        responses={200: ModelGroupSerializer(many=True), **ERRORS},
    ),
    create=extend_schema(
        summary="Create a model group",
        request=ModelGroupSerializer,
        responses={201: ModelGroupSerializer, **ERRORS},
    ),
    retrieve=extend_schema(
        summary="Return one model group", responses={200: ModelGroupSerializer, **ERRORS}
    ),
    update=extend_schema(
        summary="Change a model group",
        request=ModelGroupChangeSerializer,
        responses={200: ModelGroupSerializer, **ERRORS},
    ),
    partial_update=extend_schema(
        summary="Change part of a model group",
        request=ModelGroupChangeSerializer,
        responses={200: ModelGroupSerializer, **ERRORS},
    ),
    destroy=extend_schema(summary="Delete a model group", responses={204: None, **ERRORS}),
)
@extend_schema(tags=["model-groups"])
class ModelGroupViewSet(viewsets.ModelViewSet):
    """Model groups, by name."""

    serializer_class = ModelGroupSerializer
    lookup_field = "name"
    # A name may hold '/': the detail route takes the rest of the path.
    lookup_value_regex = ".+"
    parser_classes = [BoundedJSONParser]

    def get_queryset(self) -> QuerySet[ModelGroup]:
        return selectors.model_group_list()

    def _actor(self) -> Actor:
        return actor_for_request(self.request, SOURCE_API)

    def create(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        """Create a group from the body; 400 naming the field of any mistake."""
        incoming = ModelGroupSerializer(data=_body(request))
        incoming.is_valid(raise_exception=True)
        data = incoming.validated_data
        group = model_group_create(
            name=data["name"],
            strategy=data["strategy"],
            deployments=data["deployments"],
            enabled=data["enabled"],
            actor=self._actor(),
        )
        return Response(ModelGroupSerializer(group).data, status=status.HTTP_201_CREATED)

    def update(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        """Change the group's strategy, deployments or enabled flag (PUT and PATCH alike)."""
        group = self.get_object()
        incoming = ModelGroupChangeSerializer(data=_body(request))
        incoming.is_valid(raise_exception=True)
        changes = dict(incoming.validated_data)
        name = changes.pop("name", group.name)
        if name != group.name:
            raise serializers.ValidationError({"name": ["A model group cannot be renamed."]})
        if not kwargs.get("partial") and "deployments" not in changes:
            raise serializers.ValidationError({"deployments": ["This field is required."]})
        saved = model_group_update(group=group, changes=changes, actor=self._actor())
        return Response(ModelGroupSerializer(saved).data)

    def perform_destroy(self, instance: ModelGroup) -> None:
        model_group_delete(group=instance, actor=self._actor())

    @extend_schema(
        summary="List a model group's audited changes, newest first",
        parameters=[HistoryQuerySerializer],
        responses={200: ProviderConfigChangeSerializer(many=True), **ERRORS},
    )
    @action(detail=False, methods=["get"], url_path="history")
    def history(self, request: Request) -> Response:
        """The audit trail of one group (``group:<name>``), also after its deletion."""
        query = HistoryQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        changes = selectors.model_group_history(name=query.validated_data["name"])
        page = self.paginate_queryset(changes)
        rows = ProviderConfigChangeSerializer(page if page is not None else changes, many=True)
        if page is not None:
            return self.get_paginated_response(rows.data)
        return Response(rows.data)


def _body(request: Request) -> dict[str, Any]:
    """Return the request's JSON body, which must be an object."""
    data = request.data
    if not isinstance(data, dict):
        raise serializers.ValidationError({"body": ["Must be a JSON object."]})
    return data
