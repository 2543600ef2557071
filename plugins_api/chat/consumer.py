"""The browser chat's websocket consumer (``/ws/chat/``); the protocol is in ``chat_protocol``.

A connection belongs to a logged-in user (the session cookie, the chat page)
or to a client key (``Authorization: Bearer``, other clients), read and
verified by the one key authentication (``key_credentials``). It answers
one question at a time: the answer streams in an asyncio task of its own,
so that the consumer keeps reading frames meanwhile and ``cancel`` (or the
connection closing) can cancel the task, and with it the upstream call.

Limits per connection: a frame over ``ECHO_WS_MAX_FRAME_BYTES`` and frames
over ``ECHO_WS_MESSAGES_PER_MINUTE`` get an error frame and are dropped; a
client that goes on sending at twice the rate is closed (code 1008, or 4008
where the server refuses 1008: daphne accepts only 1000 and 3000-4999).
Whatever goes wrong with one frame, the client gets an ``error`` frame and
the connection stays open. A key client's chat frames are also held to the
key's own limits (``key_limits``, shared with its HTTP calls): a question
over them gets an ``error`` frame of type ``rate_limited`` with
``retry_after`` (seconds), and the socket stays open. So is its budget
(``key_budgets``): once the period's spend reaches it, a question gets an
``error`` frame of type ``budget_exceeded`` with ``retry_after`` (seconds
until the period ends) and ``resets_at``, and the socket stays open; each
answer's cost is charged to it. So is its model allow-list
(``key_model_access``): a question for a model the key may not use gets an
``error`` frame of type ``model_not_allowed`` naming it, a question naming no
model gets the key's default model, and no answer fails over to a model the
key may not use.

The page's provider list is pushed again whenever this process's registry
applies, replaces or removes a provider (``registry.subscribe``): every
worker applies each saved revision itself, so every worker's pages follow
their own registry, with no broadcast of their own and no polling.

A key client's socket closes (4401, or 4403 without the chat scope) when its
key is revoked or deleted: at once through the key's group
(``client_key_push``), and, should that message be lost, at its next frame,
which verifies the key again (cached for ``client_keys.CACHE_SECONDS``).
A key that expires mid-connection is closed (4401, an ``error`` frame of
type ``key_expired``) at its next frame: the cached identity holds the expiry.

The channel layer (Redis) carries only those group pushes, so its outage never
ends a socket: channels would close it with 1011 when the layer's receive
raises, so the consumer hands channels a receive that waits the outage out
(``_receive_from_layer``), and joins its groups again once the layer answers
(a restarted Redis has forgotten them). Chats go on meanwhile; a revoked key is
still refused at its next frame.

When the worker shuts down (``lifecycle.drain``), each socket lets the answer
under way finish until the drain's deadline (``ECHO_DRAIN_SECONDS``); one
still streaming then is stored ``interrupted`` and ends with an ``error``
frame of type ``shutting_down``. Every socket gets that frame (an idle one at
once) and closes with 1001 (going away): the page reconnects to another worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import json
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from channels.generic.websocket import AsyncWebsocketConsumer
from django.conf import settings

from plugins_api.access.client_keys import ClientIdentity, forget_cached_keys
from plugins_api.access.key_budgets import BudgetRefusal, budget_ledger
from plugins_api.access.key_credentials import Denial, aauthenticate_key, credential_headers
from plugins_api.access.key_limits import Admission, LimitRefusal, key_limiter
from plugins_api.access.request_auth import check_model_access, route_filter
from plugins_api.chat import revoked_key_sockets as client_key_push
from plugins_api.chat.conversations import (
    ChatTurn,
    ConversationNotFound,
    ConversationOwner,
    chat_turn_begin,
    chat_turn_finish,
)
from plugins_api.chat.offered_providers import chat_provider_list
from plugins_api.chat.protocol import (
    CancelFrame,
    ChatFrame,
    FrameError,
    ProvidersFrame,
    error_frame,
    failover_notes,
    frame_error_frame,
    parse_frame,
    provider_error_frame,
)
from plugins_api.edge.request_usage import RequestUsage
from plugins_api.models import ClientAPIKey, ConversationMessage
from providers.errors import ProviderError
from providers.runtime import broadcast
from providers.runtime import process as runtime
from providers.runtime.orm_threads import orm_threads
from providers.runtime.registry import ProviderChange
from providers.types import ChatRequest, StreamingChunk, Usage
from providers.usage.storable import storable_json, storable_text

logger = logging.getLogger(__name__)

USAGE_ENDPOINT = "/ws/chat/"
CLOSE_UNAUTHENTICATED = 4401
CLOSE_FORBIDDEN = 4403
CLOSE_POLICY_VIOLATION = 1008
# What daphne sends instead: its websocket library refuses codes outside 1000
# and 3000-4999 (raising before anything is sent), and 4000-4999 are ours.
CLOSE_POLICY_VIOLATION_PRIVATE = 4008
CLOSE_GOING_AWAY = 1001
SHUTTING_DOWN = "This server is shutting down; the connection is closed. Connect again."
# The stored answer's column lengths (ConversationMessage).
STORED_PROVIDER_CHARS = 64
STORED_MODEL_CHARS = 200
STORED_FINISH_REASON_CHARS = 32
RATE_WINDOW_SECONDS = 60.0

# On the ORM threads' kept connections (``providers.runtime.orm_threads``): through
# Channels' ``database_sync_to_async`` each call closed its connection and the next
# opened one (a PostgreSQL server process), two a turn: 15.6 ms of the worker's CPU and
# 55 ms of the person's wait where the same answer over SSE costs 2.5 and 4.5.
chat_turn_begin_async = functools.partial(orm_threads.run, chat_turn_begin)
chat_turn_finish_async = functools.partial(orm_threads.run, chat_turn_finish)


def _ms(since: float) -> float:
    return round((time.monotonic() - since) * 1000, 3)


def _key_refusal(
    identity: ClientIdentity | None, denial: Denial | None = None
) -> tuple[int, dict[str, Any]] | None:
    """Return None if IDENTITY may chat, else the close code and the error frame saying why.

    DENIAL, when the key was refused, says why (an expired key is told so).
    """
    if identity is None and denial is not None and denial.kind == "key_expired":
        return CLOSE_UNAUTHENTICATED, error_frame(
            "key_expired", f"{denial.message} The connection is closed."
        )
    if identity is None:
        message = "This client key is not valid (unknown or revoked); the connection is closed."
        return CLOSE_UNAUTHENTICATED, error_frame("key_revoked", message)
    if not identity.allows(ClientAPIKey.SCOPE_CHAT):
        message = "This client key may not chat (its scope); the connection is closed."
        return CLOSE_FORBIDDEN, error_frame("forbidden", message)
    return None


#: How long a stop waits for a chunk's frame to go out before it cancels the send too.
SEND_GRACE_SECONDS = 1.0


def frame_text(frame: dict[str, Any]) -> str:
    """Return FRAME as compact JSON text (orjson; what it cannot write, as ``json`` writes it)."""
    try:
        return orjson.dumps(frame, default=str).decode()
    except TypeError:  # a lone surrogate, a key that is not text, an integer beyond 64 bits
        return json.dumps(frame, separators=(",", ":"), default=str)


class ChatConsumer(AsyncWebsocketConsumer):
    """Chat over a websocket: questions in, streamed answers out, stored as conversations."""

    owner: ConversationOwner
    answering: asyncio.Task[None] | None
    socket_loop: asyncio.AbstractEventLoop

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Set here, not in connect: the layer's receive starts before connect runs.
        self.closing = False
        # The groups this socket belongs in, and those the layer has confirmed.
        self.groups_wanted: list[str] = []
        self.groups_joined: list[str] = []
        self.rejoining: asyncio.Task[None] | None = None
        # Whether this socket has logged the layer's outage under way.
        self.layer_failing = False

    async def connect(self) -> None:
        self.answering = None
        # Whether the answer under way was asked to stop: a second "cancel" must
        # not cancel the task again while it stores the first one's outcome.
        self.cancel_requested = False
        # Whether the answer's task is sending a chunk's frame, and whether it
        # was asked to stop meanwhile (it stops once the frame is out).
        self.sending_chunk = False
        self.stop_after_send = False
        self.background: set[asyncio.Task[None]] = set()
        self.frame_times: deque[float] = deque()
        self.rejected_times: deque[float] = deque()
        self.closing = False
        # Whether a provider-list push is queued: a burst of registry changes
        # (a start-up, a discovery) sends the page one list, not one per change.
        self.providers_push_queued = False
        self.subscribed = False
        # Whether the answer under way is being ended by the worker's drain.
        self.shutting_down = False
        # A key client's key headers, checked again before each frame (None: a session).
        self.key_headers: dict[str, str] | None = None
        # The key's identity as last verified (its rate limits); None for a session.
        self.key_identity: ClientIdentity | None = None
        caller = await self._authenticate()
        if isinstance(caller, int):
            await self.close(code=caller)
            return
        self.owner, self.client_label = caller
        await self.accept()
        if self.channel_layer is not None and self.owner.key_id is not None:
            self.groups_wanted.append(client_key_push.key_group(self.owner.key_id))
            await self._join_groups()
        # The loop this connection lives on: registry changes are scheduled onto it.
        self.socket_loop = asyncio.get_running_loop()
        # Held weakly by the registry, and dropped in disconnect.
        runtime.registry.subscribe(self.providers_changed)
        self.subscribed = True
        runtime.lifecycle.add_socket(self)
        await self.send_frame({"type": "providers", "providers": chat_provider_list()})

    async def _authenticate(self) -> tuple[ConversationOwner, str] | int:
        """Return the connection's owner and its name for usage rows, or the close code.

        A Bearer header wins over a session cookie: it is what the client chose to send.
        """
        headers = credential_headers(self.scope.get("headers", []))
        found = await aauthenticate_key(headers)
        if isinstance(found, ClientIdentity):
            refused = _key_refusal(found)
            if refused is not None:
                return refused[0]
            self.key_headers = headers
            self.key_identity = found
            # Named as request_usage.client_label names key clients.
            return ConversationOwner(key_id=found.key_id), f"key:{found.name}"
        if found is not None:  # a malformed header, or an unknown or revoked key
            return CLOSE_UNAUTHENTICATED
        user = self.scope.get("user")
        if user is not None and user.is_authenticated:
            return ConversationOwner(user_id=user.pk), user.get_username()
        return CLOSE_UNAUTHENTICATED

    async def disconnect(self, code: int) -> None:
        self.closing = True
        runtime.lifecycle.discard_socket(self)
        if self.subscribed:
            runtime.registry.unsubscribe(self.providers_changed)
            self.subscribed = False
        if self.rejoining is not None:
            self.rejoining.cancel()
        if self.channel_layer is not None:
            await self._leave_groups()
        self._stop_answering()
        for task in self.background:
            task.cancel()
        tasks = [t for t in [self.answering, *self.background] if t is not None]
        # The answer's task stores its partial text as cancelled before it ends.
        await asyncio.gather(*tasks, return_exceptions=True)

    async def send_frame(self, frame: dict[str, Any]) -> None:
        """Send FRAME as JSON, unless the connection is closing (the client left)."""
        if self.closing:
            return
        try:
            await self.send(text_data=frame_text(frame))
        except Exception:  # the server refuses sends once the client has gone
            self.closing = True

    def _stop_answering(self) -> None:
        """Cancel the answer under way; one sending a chunk's frame stops once the frame is out.

        The text a page was sent is the text stored: a chunk is added to the
        stored answer before its frame goes out, so a stop that cut the send
        short could store a piece the page never got. So a stop that lands
        during a chunk's send is kept until the send is over, when the answer's
        task stops itself; a send still under way after ``SEND_GRACE_SECONDS``
        (a client that reads nothing) is cancelled all the same. Done with
        ``asyncio.shield`` before, which made a task for every chunk's send:
        most of a websocket chunk's cost.
        """
        task = self.answering
        if task is None or task.done():
            return
        if not self.sending_chunk:
            task.cancel()
            return
        if not self.stop_after_send:
            self.stop_after_send = True
            asyncio.get_running_loop().call_later(SEND_GRACE_SECONDS, self._cancel_stuck_send, task)

    def _cancel_stuck_send(self, task: asyncio.Task[None]) -> None:
        """Cancel TASK if it is still sending the chunk it was asked to stop after."""
        if self.answering is task and self.sending_chunk and not task.done():
            task.cancel()

    async def _close(self, code: int) -> None:
        """Close the connection with CODE; 1008 becomes 4008 on a server that refuses 1008."""
        try:
            await self.close(code=code)
        except Exception:
            if code != CLOSE_POLICY_VIOLATION:
                raise
            await self.close(code=CLOSE_POLICY_VIOLATION_PRIVATE)

    async def _end(self, frame: dict[str, Any], code: int) -> None:
        """Send FRAME, stop the answer under way (its partial text is kept), close with CODE."""
        if self.closing:
            return
        await self.send_frame(frame)
        self.closing = True
        self._stop_answering()
        await self._close(code)

    async def shut_down(self, deadline: float) -> None:
        """Let the answer under way finish until DEADLINE (loop time), interrupt it then; close 1001."""
        answering = self.answering
        if answering is not None and not answering.done():
            wait = max(0.0, deadline - asyncio.get_running_loop().time())
            await asyncio.wait([answering], timeout=wait)
            if not answering.done():
                self.shutting_down = True
                self._stop_answering()
                # The task stores the answer as interrupted and sends the error frame.
                await asyncio.gather(answering, return_exceptions=True)
        if self.closing:
            return
        if not self.shutting_down:
            await self.send_frame(error_frame("shutting_down", SHUTTING_DOWN))
        self.closing = True
        await self._close(CLOSE_GOING_AWAY)

    # --- frames in --------------------------------------------------------

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        """Handle one frame; whatever fails, answer with an error frame and keep the connection."""
        try:
            await self._receive(text_data)
        except Exception as exc:
            logger.exception("a chat websocket frame failed")
            await self.send_frame(
                error_frame("internal_error", f"The frame failed ({type(exc).__name__}).")
            )

    async def _receive(self, text_data: str | None) -> None:
        if self.closing:  # closed by us (rate limit, key revoked): nothing more is served
            return
        retry_after = self._rate_refusal()
        if retry_after is not None:
            await self._refuse(retry_after)
            return
        if self.key_headers is not None and not await self._key_still_valid():
            return
        if text_data is None:
            await self.send_frame(error_frame("invalid_message", "Send JSON in text frames."))
            return
        limit = settings.ECHO_WS_MAX_FRAME_BYTES
        # "surrogatepass": a lone surrogate is counted here and refused by the parser.
        if len(text_data) > limit or len(text_data.encode("utf-8", "surrogatepass")) > limit:
            await self.send_frame(
                error_frame("frame_too_large", f"Frames may be at most {limit} bytes.", limit=limit)
            )
            return
        try:
            frame = parse_frame(text_data, max_message_chars=settings.ECHO_WS_MAX_MESSAGE_CHARS)
        except FrameError as exc:
            await self.send_frame(frame_error_frame(exc))
            return
        if isinstance(frame, CancelFrame):
            if self.answering is not None and not self.cancel_requested:
                self.cancel_requested = True
                self._stop_answering()
        elif isinstance(frame, ProvidersFrame):
            await self.send_frame({"type": "providers", "providers": chat_provider_list()})
        elif isinstance(frame, ChatFrame):
            await self._start_answer(frame)

    def _rate_refusal(self) -> int | None:
        """Count a frame; return None when it is within the rate limit, else the seconds to wait."""
        now = time.monotonic()
        for times in (self.frame_times, self.rejected_times):
            while times and now - times[0] >= RATE_WINDOW_SECONDS:
                times.popleft()
        if len(self.frame_times) < settings.ECHO_WS_MESSAGES_PER_MINUTE:
            self.frame_times.append(now)
            return None
        self.rejected_times.append(now)
        return max(1, round(RATE_WINDOW_SECONDS - (now - self.frame_times[0])))

    async def _refuse(self, retry_after: int) -> None:
        """Answer a frame over the rate limit; close the connection of a client that keeps on.

        Once the refused frames of the last minute reach the limit too, the
        client is not slowing down: it is closed with 1008 (policy violation).
        """
        limit = settings.ECHO_WS_MESSAGES_PER_MINUTE
        await self.send_frame(
            error_frame(
                "rate_limited",
                f"At most {limit} frames a minute; slow down.",
                retry_after=retry_after,
            )
        )
        if len(self.rejected_times) >= limit and not self.closing:
            logger.warning("closing a chat websocket that keeps exceeding the rate limit")
            self.closing = True
            await self._close(CLOSE_POLICY_VIOLATION)

    async def _key_still_valid(self) -> bool:
        """Verify the connection's key again (cached); close the connection and return False if not.

        The backstop for a lost ``client_key.changed`` message.
        """
        assert self.key_headers is not None
        found = await aauthenticate_key(self.key_headers)
        refused = _key_refusal(
            found if isinstance(found, ClientIdentity) else None,
            found if isinstance(found, Denial) else None,
        )
        if refused is None:
            self.key_identity = found if isinstance(found, ClientIdentity) else None
            return True
        await self._end(refused[1], refused[0])
        return False

    def _keep(self, task: asyncio.Task[None]) -> None:
        self.background.add(task)
        task.add_done_callback(self.background.discard)

    # --- answers ----------------------------------------------------------

    async def _start_answer(self, frame: ChatFrame) -> None:
        if self.answering is not None and not self.answering.done():
            await self.send_frame(
                error_frame("busy", "An answer is still streaming; send 'cancel' first.")
            )
            return
        received = time.monotonic()
        checked = check_model_access(
            self.key_identity, ChatRequest(messages=[], model=frame.model), frame.provider
        )
        if isinstance(checked, Denial):  # the socket stays open for another question
            await self.send_frame(error_frame(checked.kind, checked.message))
            return
        frame = dataclasses.replace(frame, model=checked.model)
        admission = await self._admit()
        if isinstance(admission, BudgetRefusal):
            await self.send_frame(
                error_frame(
                    admission.kind,
                    admission.message,
                    retry_after=admission.retry_after_seconds,
                    resets_at=admission.resets_at_text if admission.status == 429 else None,
                )
            )
            return
        if isinstance(admission, LimitRefusal):
            kind = "rate_limited" if admission.status == 429 else "limits_unavailable"
            await self.send_frame(
                error_frame(
                    kind,
                    admission.message,
                    limit=admission.limit,
                    retry_after=admission.retry_after_seconds,
                )
            )
            return
        accounting = RequestUsage(
            client=self.client_label,
            endpoint=USAGE_ENDPOINT,
            stream=True,
            admission=admission,
            identity=self.key_identity,
        )
        try:
            await self._begin_answer(frame, received, accounting)
        except BaseException:
            accounting.release()  # no answer task took the admission: give it back
            raise

    async def _admit(self) -> Admission | BudgetRefusal | LimitRefusal | None:
        """Hold the connection's key to its budget, then its rate limits; None for none or a session.

        A question refused for its budget takes no rate-limit slot.
        """
        identity = self.key_identity
        if identity is None:
            return None
        if identity.budget_usd is not None:
            refused = await budget_ledger().check(identity)
            if refused is not None:
                return refused
        if not identity.limits.any:
            return None
        return await key_limiter().admit(identity.key_id, identity.limits)

    async def _begin_answer(
        self, frame: ChatFrame, received: float, accounting: RequestUsage
    ) -> None:
        """Store the question and start the answer's task, which then finishes ACCOUNTING."""
        try:
            route = runtime.manager.resolve(
                ChatRequest(messages=[], model=frame.model), frame.provider
            )
        except ProviderError as exc:
            # Nothing is stored for a question no provider can take.
            accounting.failed(exc, provider=frame.provider or "", model=frame.model or "")
            await self.send_frame(provider_error_frame(exc))
            return
        model = route.model
        if model is None and route.provider in runtime.registry:
            model = runtime.registry.get(route.provider).config.get("default_model")
        # An admin's default model is not bounded like a client's: it must store all the same.
        model = storable_text(model, STORED_MODEL_CHARS) or None
        try:
            turn = await chat_turn_begin_async(
                owner=self.owner,
                conversation_id=frame.conversation,
                message=frame.message,
                provider=route.provider,
                model=model,
            )
        except ConversationNotFound as exc:
            accounting.release()
            await self.send_frame(error_frame("not_found", exc.message, field="conversation"))
            return
        await self.send_frame(
            {
                "type": "start",
                "conversation": turn.conversation.pk,
                "title": turn.conversation.title,
                "message_id": turn.answer.pk,
                "provider": route.provider,
                "model": model,
            }
        )
        request = ChatRequest(messages=turn.history, model=frame.model, stream=True)
        self.cancel_requested = False
        self.stop_after_send = False
        self.answering = asyncio.get_running_loop().create_task(
            self._answer(turn, request, frame.provider, received, accounting)
        )
        # Let the task take its first step before the next frame is read: a
        # task cancelled before it starts would never store its answer's end.
        await asyncio.sleep(0)

    async def _answer(
        self,
        turn: ChatTurn,
        request: ChatRequest,
        provider: str | None,
        received: float,
        accounting: RequestUsage,
    ) -> None:
        """Stream the answer of TURN to the client; store it and its usage however it ends."""
        answer = turn.answer
        parts: list[str] = []
        who = {"provider": answer.provider, "model": answer.model}
        usage: Usage | None = None
        finish_reason: str | None = None
        first_chunk_ms: float | None = None
        status = ConversationMessage.STATUS_FAILED
        error: dict[str, Any] | None = None
        ids = {"conversation": turn.conversation.pk, "message_id": answer.pk}
        first: StreamingChunk | None = None
        final: StreamingChunk | None = None
        failure: ProviderError | None = None
        try:
            stream = runtime.manager.chat_completion_stream(
                request, provider, allow=route_filter(self.key_identity)
            )
            async with contextlib.aclosing(stream):
                async for chunk in stream:
                    if first is None:
                        first = chunk
                        accounting.first_chunk()
                    who["provider"] = chunk.metadata.get("provider") or who["provider"]
                    who["model"] = chunk.metadata.get("model") or who["model"]
                    if chunk.content:
                        if first_chunk_ms is None:
                            first_chunk_ms = _ms(received)
                        parts.append(chunk.content)
                        # A stop that lands mid-send lets the piece go out all the
                        # same, so the stored answer is what the page got (``_stop_answering``).
                        self.sending_chunk = True
                        try:
                            await self.send_frame({"type": "chunk", "content": chunk.content})
                        finally:
                            self.sending_chunk = False
                        if self.stop_after_send:
                            raise asyncio.CancelledError
                    if chunk.is_final:
                        final = chunk
                        usage, finish_reason = chunk.usage, chunk.finish_reason or "stop"
                        status = ConversationMessage.STATUS_COMPLETE
                        break
            if status != ConversationMessage.STATUS_COMPLETE:
                error = error_frame("protocol_error", "The provider ended the stream early.", **ids)
        except asyncio.CancelledError:
            # Cancelled by the client (or it left): the partial answer stays, marked.
            asyncio.current_task().uncancel()  # type: ignore[union-attr]
            status, finish_reason = ConversationMessage.STATUS_CANCELLED, "cancelled"
            if self.shutting_down:  # ended by the worker's drain, not by the client
                status, finish_reason = ConversationMessage.STATUS_INTERRUPTED, "interrupted"
                error = error_frame("shutting_down", SHUTTING_DOWN, **ids)
        except ProviderError as exc:
            failure = exc
            error = provider_error_frame(exc, **ids)
        except Exception as exc:  # a bug must end this answer, not the connection
            logger.exception("chat answer %s failed", answer.pk)
            error = error_frame(
                "internal_error", f"The answer failed ({type(exc).__name__}).", **ids
            )
        latency_ms = _ms(received)
        cancelled = status in (
            ConversationMessage.STATUS_CANCELLED,
            ConversationMessage.STATUS_INTERRUPTED,
        )
        try:
            if first is None and failure is not None:
                accounting.failed(failure, provider=who["provider"], model=who["model"])
            else:
                accounting.stream_ended(
                    first=first, final=final, error=failure, cancelled=cancelled
                )
        except Exception:  # accounting must not cost the person their answer
            logger.exception("could not record the usage of chat answer %s", answer.pk)
        content = "".join(parts)
        fallback = failover_notes(final.metadata if final is not None else None)
        # What the upstream chose (its text, its model's name) is made storable:
        # PostgreSQL refuses NUL, lone surrogates and over-long names.
        finish = chat_turn_finish_async(
            answer_id=answer.pk,
            content=storable_text(content, len(content)),
            status=status,
            provider=storable_text(who["provider"], STORED_PROVIDER_CHARS),
            model=storable_text(who["model"], STORED_MODEL_CHARS),
            usage=usage,
            finish_reason=storable_text(finish_reason, STORED_FINISH_REASON_CHARS),
            error=storable_json(error["error"]) if error else None,
            first_chunk_ms=first_chunk_ms,
            latency_ms=latency_ms,
            fallback=storable_json(fallback),
        )
        try:
            # Shielded: the client leaving just after "cancel" must not lose the
            # answer's final state.
            await asyncio.shield(finish)
        except asyncio.CancelledError:
            return
        except Exception as exc:
            logger.exception("could not store chat answer %s", answer.pk)
            error = error or error_frame(
                "internal_error", f"The answer could not be stored ({type(exc).__name__}).", **ids
            )
        if error is not None:
            await self.send_frame(error)
            return
        await self.send_frame(
            {
                "type": "done",
                **ids,
                "status": status,
                "finish_reason": finish_reason,
                "usage": usage.as_dict() if usage else None,
                "provider": who["provider"],
                "model": who["model"],
                "first_chunk_ms": first_chunk_ms,
                "latency_ms": latency_ms,
                "fallback": fallback,
            }
        )

    # --- the channel layer: an outage pauses group pushes, never the socket ---

    @property
    def channel_receive(self) -> Callable[[], Awaitable[dict[str, Any]]]:
        """What channels awaits for the next channel-layer message: one that survives outages."""
        return self._receive_from_layer

    @channel_receive.setter
    def channel_receive(self, receive: Callable[[], Awaitable[dict[str, Any]]]) -> None:
        # channels' AsyncConsumer.__call__ sets the layer's own receive here.
        self._layer_receive = receive

    async def _receive_from_layer(self) -> dict[str, Any]:
        """Return the next channel-layer message; while the layer fails, retry every second or so."""
        while True:
            try:
                message = await self._layer_receive()
            except Exception:
                self._layer_failed()
                await asyncio.sleep(broadcast.retry_delay())
                continue
            self.layer_failing = False
            return message

    async def _join_groups(self) -> bool:
        """Join the wanted groups the layer has not confirmed; return whether it confirmed them all."""
        for group in self.groups_wanted:
            if group in self.groups_joined:
                continue
            try:
                async with asyncio.timeout(broadcast.LAYER_TIMEOUT_SECONDS):
                    await self.channel_layer.group_add(group, self.channel_name)
            except Exception:
                self._layer_failed()
                return False
            self.groups_joined.append(group)
        self.layer_failing = False
        return True

    def _layer_failed(self) -> None:
        """Note the layer failed: join the groups again, once it answers, until the socket closes."""
        if not self.layer_failing:
            self.layer_failing = True
            logger.warning(
                "a chat socket lost the channel layer; it keeps serving and rejoins its groups"
            )
        # A restarted Redis has lost every membership: all are joined again.
        self.groups_joined = []
        if self.groups_wanted and not self.closing:
            if self.rejoining is None or self.rejoining.done():
                self.rejoining = asyncio.get_running_loop().create_task(self._rejoin_groups())

    async def _rejoin_groups(self) -> None:
        while not self.closing:
            await asyncio.sleep(broadcast.retry_delay())
            if await self._join_groups():
                return

    async def _leave_groups(self) -> None:
        """Leave the joined groups; a failure is only logged (Redis expires memberships)."""
        groups, self.groups_joined = self.groups_joined, []
        for group in groups:
            try:
                async with asyncio.timeout(broadcast.LAYER_TIMEOUT_SECONDS):
                    await self.channel_layer.group_discard(group, self.channel_name)
            except Exception:
                logger.info("a closed chat socket could not leave group %s", group)
                return

    # --- registry and group events ---------------------------------------

    def providers_changed(self, change: ProviderChange) -> None:
        """Queue the page's provider list after the registry changed provider CHANGE.name.

        Called by the registry, on the loop that applied the change (normally
        this connection's): the push itself runs as a task on this
        connection's loop, so the registry never waits on a socket.
        """
        if self.closing or self.providers_push_queued:
            return
        self.providers_push_queued = True
        try:
            self.socket_loop.call_soon_threadsafe(self._start_providers_push)
        except RuntimeError:  # the connection's loop has closed: nobody to tell
            self.providers_push_queued = False

    def _start_providers_push(self) -> None:
        self._keep(self.socket_loop.create_task(self._push_providers()))

    async def client_key_changed(self, event: dict[str, Any]) -> None:
        """Close this connection if its key (EVENT["key_id"]) was revoked or may no longer chat."""
        if self.owner.key_id != event.get("key_id"):
            return
        # This worker's cached verification is out of date too (another worker changed the key).
        forget_cached_keys()
        identity = None
        if not event.get("revoked"):
            identity = ClientIdentity(
                key_id=self.owner.key_id,
                name=self.client_label.removeprefix("key:"),
                scope=str(event.get("scope")),
            )
        refused = _key_refusal(identity)
        if refused is not None:
            await self._end(refused[1], refused[0])

    async def _push_providers(self) -> None:
        """Send the page the provider list as this process's registry has it now."""
        # Cleared before the list is read: a change from here on queues another push.
        self.providers_push_queued = False
        try:
            providers = chat_provider_list()
        except Exception:  # the page keeps its list; the next change or ask sends one
            logger.exception("could not list the providers for a chat page")
            return
        await self.send_frame({"type": "providers", "providers": providers})
