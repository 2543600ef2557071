"""``/api/conversations/``: the browser chat's conversations over REST (list, read, delete).

Each caller sees only its own: a logged-in user the chat page's, a client
key those it chatted over the websocket. Another owner's conversation is a
404, as if it did not exist. The list has one line per conversation; one
conversation comes with its messages.
"""

from __future__ import annotations

from typing import Any

from django.db.models import QuerySet
from drf_spectacular.utils import extend_schema, extend_schema_view
from rest_framework import mixins, serializers, viewsets
from rest_framework.exceptions import NotFound

from plugins_api.access.authentication import IsChatClient
from plugins_api.access.client_keys import ClientIdentity
from plugins_api.chat.conversations import (
    ConversationNotFound,
    ConversationOwner,
    conversation_delete,
    conversation_get,
    conversation_list,
)
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


def request_owner(request: Any) -> ConversationOwner:
    """Return whose conversations REQUEST may see: its key's, or its user's."""
    if isinstance(request.auth, ClientIdentity):
        return ConversationOwner(key_id=request.auth.key_id)
    return ConversationOwner(user_id=request.user.pk)


@extend_schema_view(
    list=extend_schema(summary="List your chat conversations, the latest first"),
    retrieve=extend_schema(summary="Return one of your conversations with its messages"),
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
        return conversation_list(owner=request_owner(self.request))

    def get_object(self) -> Conversation:
        try:
            return conversation_get(
                owner=request_owner(self.request), conversation_id=int(self.kwargs["pk"])
            )
        except ConversationNotFound as exc:
            raise NotFound(exc.message) from None

    def perform_destroy(self, instance: Conversation) -> None:
        conversation_delete(owner=request_owner(self.request), conversation_id=instance.pk)
