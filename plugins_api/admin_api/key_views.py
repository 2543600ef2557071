"""``/api/keys/``: client keys over REST (list, create, edit, rotate, revoke, delete, history).

Every change goes through ``plugins_api.access.key_changes`` (validated,
audited with the caller as actor, source ``api``, and dropped from the
verification caches); these views only check the caller, parse and render.

Who may do what:

- An admin-scoped key or a superuser's session manages every key.
- Any other signed-in user (a session) may list and read the keys they own,
  read-only; another user's key is a 404, as if it did not exist. A staff
  user who is not a superuser is such a user here, as in the admin, where
  they see only their own keys.
- A chat-scoped key gets 403, and no credential 401.

A key's secret is in exactly two responses, each with ``Cache-Control:
no-store``: its creation (``POST /api/keys/``) and its rotation (``POST
/api/keys/{name}/rotate/``). The hash is never shown. A key's name cannot
change: its usage and budget are recorded under ``key:<name>``.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import IntegrityError
from django.db.models import Q, QuerySet
from django.utils import timezone
from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_view
from rest_framework import generics, permissions, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import NotFound
from rest_framework.exceptions import ValidationError as APIValidationError
from rest_framework.request import Request
from rest_framework.response import Response

from plugins_api.access import client_keys
from plugins_api.access.client_keys import ClientIdentity
from plugins_api.access.key_changes import (
    client_key_delete,
    client_key_issue,
    client_key_revoke,
    client_key_rotate,
    client_key_update,
)
from plugins_api.access.key_limits import KeyLimits
from plugins_api.access.key_model_access import ModelAccess
from plugins_api.access.key_spend import spend_this_period
from plugins_api.admin_api.key_serializers import (
    STATUS_ACTIVE,
    STATUS_EXPIRED,
    STATUS_REVOKED,
    ClientKeyChangeSerializer,
    ClientKeyCreateSerializer,
    ClientKeyFilterSerializer,
    ClientKeyHistoryFilterSerializer,
    ClientKeyRotateSerializer,
    ClientKeySecretSerializer,
    ClientKeySerializer,
    ClientKeyUpdateSerializer,
    EmptyBodySerializer,
    quoted,
)
from plugins_api.admin_api.serializers import ErrorSerializer
from plugins_api.edge.bounded_json_parser import BoundedJSONParser
from plugins_api.edge.error_responses import error_body
from plugins_api.models import ClientAPIKey, ClientKeyChange
from providers.audit.history import SOURCE_API, Actor, actor_for_request

KEYS_TAGS = ["keys"]
#: Longest name a key can have (the column's length): anything longer is no key.
MAX_NAME_CHARS = 100
NO_STORE = {"Cache-Control": "no-store"}
NAME = OpenApiParameter("name", str, OpenApiParameter.PATH, description="A key's name.")


def manages_every_key(request: Any) -> bool:
    """Return whether REQUEST comes from an admin-scoped key or a superuser's session."""
    if isinstance(request.auth, ClientIdentity):
        return request.auth.allows(ClientAPIKey.SCOPE_ADMIN)
    user = getattr(request, "user", None)
    return bool(user and user.is_authenticated and user.is_superuser)


def _signed_in_user(request: Any) -> bool:
    """Return whether REQUEST comes from a signed-in user's session (not a key)."""
    user = getattr(request, "user", None)
    return (
        not isinstance(request.auth, ClientIdentity) and user is not None and user.is_authenticated
    )


class ManagesClientKeys(permissions.BasePermission):
    """Allow an admin-scoped key or a superuser's session."""

    message = "Managing client keys needs an admin-scoped API key or a superuser login."

    def has_permission(self, request: Any, view: Any) -> bool:
        return manages_every_key(request)


class ReadsOwnClientKeys(permissions.BasePermission):
    """Allow key managers everything; a signed-in user to read (list, retrieve) their own keys."""

    message = (
        "Managing client keys needs an admin-scoped API key or a superuser login; "
        "a signed-in user may only list and read their own keys."
    )

    def has_permission(self, request: Any, view: Any) -> bool:
        if manages_every_key(request):
            return True
        return (
            _signed_in_user(request)
            and request.method in permissions.SAFE_METHODS
            and getattr(view, "action", None) in ("list", "retrieve")
        )


def client_key_list(
    *,
    now: Any,
    owner_id: int | None = None,
    scope: str | None = None,
    status: str | None = None,
    owner: str | None = None,
) -> QuerySet[ClientAPIKey]:
    """Return the keys, by name, filtered by each given value (OWNER_ID: only that user's)."""
    keys = ClientAPIKey.objects.select_related("owner").order_by("name")
    if owner_id is not None:
        keys = keys.filter(owner_id=owner_id)
    if scope:
        keys = keys.filter(scope=scope)
    if owner:
        keys = keys.filter(**{f"owner__{get_user_model().USERNAME_FIELD}": owner})
    if status == STATUS_REVOKED:
        keys = keys.filter(revoked_at__isnull=False)
    elif status == STATUS_EXPIRED:
        keys = keys.filter(revoked_at__isnull=True, expires_at__lte=now)
    elif status == STATUS_ACTIVE:
        keys = keys.filter(revoked_at__isnull=True).filter(
            Q(expires_at__isnull=True) | Q(expires_at__gt=now)
        )
    return keys


def client_key_change_list(
    *,
    key: str | None = None,
    actor: str | None = None,
    source: str | None = None,
    action: str | None = None,
    since: Any = None,
    until: Any = None,
) -> QuerySet[ClientKeyChange]:
    """Return audited key changes, newest first, filtered by each given value (both ends included)."""
    changes = ClientKeyChange.objects.order_by("-changed_at", "-id")
    exact = {"key_name": key, "actor": actor, "source": source, "action": action}
    changes = changes.filter(**{field: value for field, value in exact.items() if value})
    if since is not None:
        changes = changes.filter(changed_at__gte=since)
    if until is not None:
        changes = changes.filter(changed_at__lte=until)
    return changes


def _refusal(exc: DjangoValidationError) -> Exception:
    """Return the API's answer to a key service's ``ValidationError``: the same fields, 1:1."""
    if not hasattr(exc, "error_dict"):
        return APIValidationError({"non_field_errors": exc.messages})
    detail = {
        ("non_field_errors" if field == "__all__" else field): messages
        for field, messages in exc.message_dict.items()
    }
    return APIValidationError(detail)


def _is_duplicate_name(exc: DjangoValidationError, name: str) -> bool:
    """Return whether EXC refuses NAME because a key has it (``validate_key`` keeps no codes)."""
    return (
        "name" in getattr(exc, "error_dict", {}) and ClientAPIKey.objects.filter(name=name).exists()
    )


def _duplicate(name: str) -> Response:
    message = f"A key named {quoted(name)!r} already exists; choose another name."
    return Response(error_body("conflict", message, field="name"), status=status.HTTP_409_CONFLICT)


KEY_ERRORS = {401: ErrorSerializer, 403: ErrorSerializer, 404: ErrorSerializer}
WRITE_ERRORS = {400: ErrorSerializer, **KEY_ERRORS, 415: ErrorSerializer}


@extend_schema_view(
    list=extend_schema(
        operation_id="keys_list",
        summary="List client keys (a signed-in user: their own), by name",
        parameters=[ClientKeyFilterSerializer],
        responses={200: ClientKeySerializer(many=True), 400: ErrorSerializer, **KEY_ERRORS},
    ),
    retrieve=extend_schema(
        operation_id="keys_retrieve",
        summary="Return one client key (never its secret)",
        parameters=[NAME],
        responses={200: ClientKeySerializer, **KEY_ERRORS},
    ),
    create=extend_schema(
        operation_id="keys_create",
        summary="Create a client key; the response holds the key, shown this once",
        request=ClientKeyCreateSerializer,
        responses={201: ClientKeySecretSerializer, 409: ErrorSerializer, **WRITE_ERRORS},
    ),
    partial_update=extend_schema(
        operation_id="keys_partial_update",
        summary="Change what a key may do (scope, owner, limits, models, expiry, budget)",
        description="The name cannot change. Fields left out stay as they are.",
        parameters=[NAME],
        request=ClientKeyUpdateSerializer,
        responses={200: ClientKeySerializer, **WRITE_ERRORS},
    ),
    destroy=extend_schema(
        operation_id="keys_destroy",
        summary="Delete a client key (its history and recorded usage stay)",
        parameters=[NAME],
        responses={204: None, **KEY_ERRORS},
    ),
)
@extend_schema(tags=KEYS_TAGS)
class ClientKeyViewSet(viewsets.GenericViewSet):
    """Client keys, by name."""

    permission_classes = [ReadsOwnClientKeys]
    parser_classes = [BoundedJSONParser]
    serializer_class = ClientKeySerializer
    queryset = ClientAPIKey.objects.none()  # tells the schema the model; get_queryset filters
    lookup_field = "name"
    # Any name reaches the view, so that an unknown one gets a JSON 404, not the site's page.
    lookup_value_regex = "[^/]+"

    def _actor(self) -> Actor:
        return actor_for_request(self.request, SOURCE_API)

    def get_queryset(self) -> QuerySet[ClientAPIKey]:
        if manages_every_key(self.request):
            return client_key_list(now=client_keys.clock())
        return client_key_list(now=client_keys.clock(), owner_id=self.request.user.pk)

    def get_object(self) -> ClientAPIKey:
        name = self.kwargs["name"]
        row = None
        if len(name) <= MAX_NAME_CHARS and "\x00" not in name:
            row = self.get_queryset().filter(name=name).first()
        if row is None:
            raise NotFound(f"No key named {quoted(name)!r}.")
        return row

    def _render(
        self, row: ClientAPIKey, *, raw_key: str | None = None, code: int = status.HTTP_200_OK
    ) -> Response:
        context = {"spend": spend_this_period([row], timezone.now()), "raw_key": raw_key}
        if raw_key is None:
            return Response(ClientKeySerializer(row, context=context).data, status=code)
        data = ClientKeySecretSerializer(row, context=context).data
        return Response(data, status=code, headers=NO_STORE)

    def list(self, request: Request) -> Response:
        filters = ClientKeyFilterSerializer(data=request.query_params)
        filters.is_valid(raise_exception=True)
        owner_id = None if manages_every_key(request) else request.user.pk
        keys = client_key_list(now=client_keys.clock(), owner_id=owner_id, **filters.validated_data)
        page = self.paginate_queryset(keys)
        rows = list(page if page is not None else keys)
        spend = spend_this_period(rows, timezone.now())
        data = ClientKeySerializer(rows, many=True, context={"spend": spend}).data
        return self.get_paginated_response(data) if page is not None else Response(data)

    def retrieve(self, request: Request, name: str) -> Response:
        return self._render(self.get_object())

    def create(self, request: Request) -> Response:
        given = ClientKeyCreateSerializer(data=request.data)
        given.is_valid(raise_exception=True)
        data = dict(given.validated_data)
        name = data.pop("name")
        try:
            row, raw_key = client_key_issue(
                name=name,
                scope=data.get("scope", ClientAPIKey.SCOPE_CHAT),
                limits=KeyLimits(
                    requests_per_minute=data.get("requests_per_minute"),
                    tokens_per_minute=data.get("tokens_per_minute"),
                    max_concurrent=data.get("max_concurrent_requests"),
                ),
                access=ModelAccess(
                    patterns=tuple(data.get("allowed_models", ())),
                    default_model=data.get("default_model") or None,
                ),
                expires_at=data.get("expires_at"),
                budget_usd=data.get("budget_usd"),
                budget_period=data.get("budget_period", ClientAPIKey.PERIOD_MONTH),
                owner=data.get("owner"),
                actor=self._actor(),
            )
        except DjangoValidationError as exc:
            if _is_duplicate_name(exc, name):
                return _duplicate(name)
            raise _refusal(exc) from None
        except IntegrityError:
            # Another request took the name between the check and the insert.
            return _duplicate(name)
        return self._render(row, raw_key=raw_key, code=status.HTTP_201_CREATED)

    def partial_update(self, request: Request, name: str) -> Response:
        row = self.get_object()
        given = ClientKeyUpdateSerializer(data=request.data)
        given.is_valid(raise_exception=True)
        try:
            row = client_key_update(
                name=row.name, changes=dict(given.validated_data), actor=self._actor()
            )
        except DjangoValidationError as exc:
            raise _refusal(exc) from None
        except ClientAPIKey.DoesNotExist:
            raise NotFound(f"No key named {quoted(name)!r}.") from None
        return self._render(row)

    def destroy(self, request: Request, name: str) -> Response:
        row = self.get_object()
        try:
            client_key_delete(name=row.name, actor=self._actor())
        except ClientAPIKey.DoesNotExist:
            raise NotFound(f"No key named {quoted(name)!r}.") from None
        return Response(status=status.HTTP_204_NO_CONTENT)

    @extend_schema(
        operation_id="keys_rotate",
        summary="Give a key a new secret; the former one works for the grace period",
        description=(
            "The response holds the new key, shown this once. A grace period already "
            "running for an earlier secret ends now. A revoked key cannot be rotated."
        ),
        parameters=[NAME],
        request=ClientKeyRotateSerializer,
        responses={200: ClientKeySecretSerializer, **WRITE_ERRORS},
    )
    @action(detail=True, methods=["post"], permission_classes=[ManagesClientKeys])
    def rotate(self, request: Request, name: str) -> Response:
        row = self.get_object()
        given = ClientKeyRotateSerializer(data=request.data)
        given.is_valid(raise_exception=True)
        grace = timedelta(seconds=given.validated_data["grace_seconds"])
        try:
            row, raw_key = client_key_rotate(name=row.name, grace=grace, actor=self._actor())
        except DjangoValidationError as exc:
            raise _refusal(exc) from None
        except ClientAPIKey.DoesNotExist:
            raise NotFound(f"No key named {quoted(name)!r}.") from None
        return self._render(row, raw_key=raw_key)

    @extend_schema(
        operation_id="keys_revoke",
        summary="Revoke a key (and a former secret still in its grace period) at once",
        description="Revoking a revoked key changes nothing.",
        parameters=[NAME],
        request=None,
        responses={200: ClientKeySerializer, **WRITE_ERRORS},
    )
    @action(detail=True, methods=["post"], permission_classes=[ManagesClientKeys])
    def revoke(self, request: Request, name: str) -> Response:
        row = self.get_object()
        EmptyBodySerializer(data=request.data or {}).is_valid(raise_exception=True)
        try:
            row = client_key_revoke(name=row.name, actor=self._actor())
        except ClientAPIKey.DoesNotExist:
            raise NotFound(f"No key named {quoted(name)!r}.") from None
        return self._render(row)

    @extend_schema(
        operation_id="keys_history",
        summary="List a key's audited changes, newest first",
        description="The history stays after the key is deleted.",
        parameters=[NAME],
        responses={200: ClientKeyChangeSerializer(many=True), **KEY_ERRORS},
    )
    @action(detail=True, methods=["get"], permission_classes=[ManagesClientKeys])
    def history(self, request: Request, name: str) -> Response:
        missing = NotFound(f"No key named {quoted(name)!r} exists or has a history.")
        if len(name) > MAX_NAME_CHARS or "\x00" in name:
            raise missing
        changes = client_key_change_list(key=name)
        if not changes.exists() and not ClientAPIKey.objects.filter(name=name).exists():
            raise missing
        page = self.paginate_queryset(changes)
        return self.get_paginated_response(ClientKeyChangeSerializer(page, many=True).data)


@extend_schema_view(
    get=extend_schema(
        tags=KEYS_TAGS,
        operation_id="keys_history_list",
        summary="List audited changes of every client key, newest first",
        description=(
            "Who created, changed, rotated, revoked or deleted which key, when, from where "
            "(admin, api, command). Never a secret."
        ),
        parameters=[ClientKeyHistoryFilterSerializer],
        responses={200: ClientKeyChangeSerializer(many=True), 400: ErrorSerializer, **KEY_ERRORS},
    )
)
class ClientKeyHistoryView(generics.ListAPIView):
    """The audit trail of every client key, filtered."""

    permission_classes = [ManagesClientKeys]
    serializer_class = ClientKeyChangeSerializer

    def get_queryset(self) -> QuerySet[ClientKeyChange]:
        filters = ClientKeyHistoryFilterSerializer(data=self.request.query_params)
        filters.is_valid(raise_exception=True)
        return client_key_change_list(**filters.validated_data)
