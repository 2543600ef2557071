"""``/api/conversations/``: the browser chat's conversations over REST (list, search, read, rename, delete).

Each caller sees only its own: a logged-in user the chat page's, a client
key those it chatted over the websocket. Another owner's conversation is a
404, as if it did not exist. The list has one line per conversation, in
pages, and ``?q=`` keeps those whose title or messages contain the text; one
conversation comes with its messages. ``PATCH`` with ``{"title": ...}``
renames one; any other field, or a wrong title, is a 400 naming the field.
"""

from __future__ import annotations

from typing import Any

from django.db.models import QuerySet
from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_view
from rest_framework import mixins, serializers, viewsets
from rest_framework.exceptions import NotFound, ValidationError
from rest_framework.request import Request
from rest_framework.response import Response

from plugins_api.access.authentication import IsChatClient
from plugins_api.access.client_keys import ClientIdentity
from plugins_api.chat.conversations import (
    SEARCH_MAX_CHARS,
    TITLE_MAX_CHARS,
    ConversationInputError,
    ConversationNotFound,
    ConversationOwner,
    conversation_delete,
    conversation_get,
    conversation_list,
    conversation_rename,
    conversation_search_text,
)
from plugins_api.chat.protocol import CONVERSATION_ID_MAX
from plugins_api.models import Conversation, ConversationMessage


class ConversationMessageSerializer(serializers.ModelSerializer):
    """One message; an answer says who wrote it, how it ended, its usage and timing."""

    class Meta:
        model = ConversationMessage
        fields = [
            "id",
            "role",
            "content",
            "status",
            "provider",
            "model",
            "prompt_tokens",
            "completion_tokens",
            "finish_reason",
            "error",
            "first_chunk_ms",
            "latency_ms",
            "fallback_path",
            "created_at",
            "completed_at",
        ]
        read_only_fields = fields


class ConversationSerializer(serializers.ModelSerializer):
    """A conversation as listed: its title, times and number of messages."""

    message_count = serializers.IntegerField(read_only=True)

    class Meta:
        model = Conversation
        fields = ["id", "title", "created_at", "updated_at", "message_count"]
        read_only_fields = fields


class ConversationDetailSerializer(ConversationSerializer):
    """A conversation with its messages, oldest first."""

    messages = ConversationMessageSerializer(many=True, read_only=True)

    class Meta(ConversationSerializer.Meta):
        fields = [*ConversationSerializer.Meta.fields, "messages"]
        read_only_fields = fields


class ConversationRenameSerializer(serializers.Serializer):
    """What ``PATCH`` takes: the new title (documentation; the view checks the body itself)."""

    title = serializers.CharField(max_length=TITLE_MAX_CHARS)


def request_owner(request: Any) -> ConversationOwner:
    """Return whose conversations REQUEST may see: its key's, or its user's."""
    if isinstance(request.auth, ClientIdentity):
        return ConversationOwner(key_id=request.auth.key_id)
    return ConversationOwner(user_id=request.user.pk)


@extend_schema_view(
    list=extend_schema(
        summary="List your chat conversations, the latest first",
        parameters=[
            OpenApiParameter(
                "q",
                str,
                description=(
                    "Keep the conversations whose title or messages contain this text"
                    f" (any case; at most {SEARCH_MAX_CHARS} characters)."
                ),
            )
        ],
    ),
    retrieve=extend_schema(summary="Return one of your conversations with its messages"),
    partial_update=extend_schema(
        summary="Rename one of your conversations",
        request=ConversationRenameSerializer,
        responses=ConversationSerializer,
    ),
    destroy=extend_schema(summary="Delete one of your conversations and its messages"),
)
@extend_schema(tags=["conversations"])
class ConversationViewSet(
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    mixins.DestroyModelMixin,
    viewsets.GenericViewSet,
):
    """The caller's own chat conversations (chat or admin key, or a logged-in user)."""

    permission_classes = [IsChatClient]
    queryset = Conversation.objects.none()  # tells the schema the model; get_queryset filters
    lookup_value_regex = r"[0-9]+"

    def get_serializer_class(self) -> type[serializers.Serializer]:
        if self.action == "retrieve":
            return ConversationDetailSerializer
        return ConversationSerializer

    def get_queryset(self) -> QuerySet[Conversation]:
        search = ""
        if self.action == "list":
            try:
                search = conversation_search_text(self.request.query_params.get("q", ""))
            except ConversationInputError as exc:
                raise ValidationError({exc.field: [exc.message]}) from None
        return conversation_list(owner=request_owner(self.request), search=search)

    def conversation_id(self) -> int:
        """Return the URL's conversation id; one past the database's bigint is a 404."""
        conversation_id = int(self.kwargs["pk"])
        if conversation_id > CONVERSATION_ID_MAX:
            raise NotFound(ConversationNotFound(conversation_id).message)
        return conversation_id

    def get_object(self) -> Conversation:
        try:
            return conversation_get(
                owner=request_owner(self.request), conversation_id=self.conversation_id()
            )
        except ConversationNotFound as exc:
            raise NotFound(exc.message) from None

    def perform_destroy(self, instance: Conversation) -> None:
        conversation_delete(owner=request_owner(self.request), conversation_id=instance.pk)

    def partial_update(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        """Rename the conversation: the body is ``{"title": "..."}`` and nothing else."""
        body = request.data
        if not isinstance(body, dict):
            raise ValidationError({"title": ["Send a JSON object with the new title."]})
        unknown = sorted(str(name) for name in body if name != "title")
        if unknown:
            raise ValidationError({unknown[0]: ["Unknown field; only 'title' can be changed."]})
        if "title" not in body:
            raise ValidationError({"title": ["This field is required."]})
        owner = request_owner(request)
        conversation_id = self.conversation_id()
        try:
            conversation_rename(owner=owner, conversation_id=conversation_id, title=body["title"])
        except ConversationInputError as exc:
            raise ValidationError({exc.field: [exc.message]}) from None
        except ConversationNotFound as exc:
            raise NotFound(exc.message) from None
        renamed = conversation_list(owner=owner).get(pk=conversation_id)
        return Response(ConversationSerializer(renamed).data)
