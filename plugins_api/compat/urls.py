"""URLs of the OpenAI- and Anthropic-compatible API under ``/v1``.

An OpenAI SDK takes ``base_url=<echo>/v1``; an Anthropic SDK takes
``base_url=<echo>`` and adds ``/v1/messages`` itself. An unknown ``/v1``
path is a JSON 404, whatever DEBUG says.
"""

from django.urls import path, re_path

from plugins_api.compat import anthropic_api as anthropic_compat
from plugins_api.compat import count_tokens as count_tokens_compat
from plugins_api.compat import openai_api as openai_compat
from plugins_api.compat import responses_api as responses_compat
from plugins_api.compat.unknown_paths import v1_not_found

urlpatterns = [
    path("v1/chat/completions", openai_compat.chat_completions, name="openai-chat-completions"),
    path("v1/models", openai_compat.models, name="openai-models"),
    path("v1/models/<path:model_id>", openai_compat.model_detail, name="openai-model-detail"),
    path("v1/embeddings", openai_compat.embeddings, name="openai-embeddings"),
    path("v1/messages", anthropic_compat.messages, name="anthropic-messages"),
    path(
        "v1/messages/count_tokens",
        count_tokens_compat.count_tokens,
        name="anthropic-count-tokens",
    ),
    path("v1/responses", responses_compat.responses, name="openai-responses"),
    path(
        "v1/responses/<str:response_id>",
        responses_compat.response_detail,
        name="openai-response-detail",
    ),
    # Any other /v1 path: the JSON 404 an SDK can read, with DEBUG on too
    # (Django then shows its HTML page instead of calling handler404).
    re_path(r"^v1/", v1_not_found, name="v1-not-found"),
]
