"""Time one API request and record its usage when it ends (``providers.usage.recorder``).

Shared by every endpoint that chats (``/chat``, the compatible ``/v1``
endpoints, the websocket), so that each records the same facts the same way.
A call admitted under its key's rate limits (``key_limits.Admission``) is
finished here too, however it ends: the tokens its answer used are charged
to the key's tokens per minute and its concurrency slot is given back. The
answer's cost (as the recorder prices it) is charged to the key's budget
(``key_budgets``), when its key has one. The recording and the charge run
once the answer is written (``after_answer``), where the server defers them:
the client does not wait for Echo's bookkeeping.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from decimal import Decimal
from typing import Any

from plugins_api.access.client_keys import ClientIdentity
from plugins_api.access.key_budgets import budget_ledger
from plugins_api.access.key_limits import Admission
from plugins_api.edge.after_answer import after_answer
from providers.errors import ProviderError
from providers.runtime import process as runtime
from providers.types import ChatResponse, StreamingChunk
from providers.usage.recorder import UsageEvent


async def client_label(request: Any) -> str:
    """Return who is calling: ``key:<name>`` for a client key, else the user's name.

    Call it after authentication: the session user is then already loaded.
    """
    identity = getattr(request, "client", None)
    if identity is not None:
        return f"key:{identity.name}"
    user = await request.auser()
    return user.get_username() if user.is_authenticated else "anonymous"


class RequestUsage:
    """The clock and usage of one request; IDENTITY, the calling key, pays for it if it has a budget."""

    def __init__(
        self,
        *,
        client: str,
        endpoint: str,
        stream: bool,
        admission: Admission | None = None,
        identity: ClientIdentity | None = None,
    ) -> None:
        self.admission = admission
        self.identity = identity
        self.client = client
        self.endpoint = endpoint
        self.stream = stream
        self.started = time.perf_counter()
        self.first_chunk_at: float | None = None

    def _elapsed_ms(self, since: float | None = None) -> float:
        return (time.perf_counter() - (since or self.started)) * 1000

    def release(self, tokens: int = 0) -> None:
        """Finish the call's admission, charging TOKENS (once; later calls do nothing)."""
        if self.admission is not None:
            self.admission.finish(tokens)

    def charge(self, cost: Decimal | None) -> None:
        """Charge COST (USD; None: no known price) to the key's budget, if it has one."""
        if self.identity is not None and self.identity.budget_usd is not None:
            budget_ledger().charge(self.identity, cost)

    def _account(self, make_event: Callable[[], UsageEvent], *, charged: bool = True) -> None:
        """Record the event MAKE_EVENT makes, once the answer is written; CHARGED: its cost goes to the key's budget.

        The event is made then too, with the rest of the bookkeeping: what it
        says must already be fixed (the clock read, the answer whole).
        """

        def account() -> None:
            cost = runtime.usage_recorder.record(make_event())
            if charged:
                self.charge(cost)

        after_answer(account)

    def first_chunk(self) -> None:
        """Note that the first chunk arrived now."""
        if self.first_chunk_at is None:
            self.first_chunk_at = time.perf_counter()

    @staticmethod
    def _overhead(total_ms: float, metadata: dict[str, Any]) -> float | None:
        """Return the time Echo itself added: TOTAL_MS less the upstream calls (every attempt) and the retries' waits."""
        upstream = metadata.get("upstream_ms")
        waited = metadata.get("retry_wait_ms", 0)
        # Provider-supplied metadata: anything but a number is no measurement.
        if not all(
            isinstance(v, int | float) and not isinstance(v, bool) for v in (upstream, waited)
        ):
            return None
        return max(0.0, total_ms - upstream - waited)

    def answered(self, response: ChatResponse) -> float | None:
        """Record a whole answer; return the milliseconds Echo itself added.

        Only the clock is read on the client's wait: the usage event is made
        with the rest of the bookkeeping, once the answer is written.
        """
        total = self._elapsed_ms()
        overhead = self._overhead(total, response.metadata)
        usage = response.usage
        self.release(usage.prompt_tokens + usage.completion_tokens)

        def event() -> UsageEvent:
            metadata = response.metadata
            return UsageEvent(
                client=self.client,
                endpoint=self.endpoint,
                provider=response.provider,
                model=response.model,
                stream=False,
                latency_ms=total,
                prompt_tokens=usage.prompt_tokens,
                completion_tokens=usage.completion_tokens,
                overhead_ms=overhead,
                attempts=metadata.get("attempts", 1),
                fallback_path=metadata.get("fallback_path", []),
                retries=metadata.get("retries", []),
            )

        self._account(event)
        return overhead

    def failed(self, exc: ProviderError, *, provider: str = "", model: str = "") -> None:
        """Record a request that failed before any answer."""
        self.release()
        event = UsageEvent(
            client=self.client,
            endpoint=self.endpoint,
            provider=exc.provider or provider,
            model=model,
            stream=self.stream,
            latency_ms=self._elapsed_ms(),
            outcome="error",
            error_kind=exc.kind,
            attempts=0,
        )
        self._account(lambda: event, charged=False)

    def stream_ended(
        self,
        *,
        first: StreamingChunk | None,
        final: StreamingChunk | None,
        error: ProviderError | None = None,
        cancelled: bool = False,
    ) -> None:
        """Record a stream that ended: complete (FINAL), failed (ERROR) or CANCELLED."""
        meta = (final or first).metadata if (final or first) is not None else {}
        usage = final.usage if final is not None else None
        self.release(usage.prompt_tokens + usage.completion_tokens if usage else 0)
        ttft = None
        if self.first_chunk_at is not None:
            ttft = (self.first_chunk_at - self.started) * 1000
        outcome = "cancelled" if cancelled else "error" if error or final is None else "ok"
        event = UsageEvent(
            client=self.client,
            endpoint=self.endpoint,
            provider=str(meta.get("provider") or (error.provider if error else "") or ""),
            model=str(meta.get("model") or ""),
            stream=True,
            latency_ms=self._elapsed_ms(),
            outcome=outcome,
            prompt_tokens=usage.prompt_tokens if usage else 0,
            completion_tokens=usage.completion_tokens if usage else 0,
            ttft_ms=ttft,
            overhead_ms=self._overhead(ttft, meta) if ttft is not None and final else None,
            error_kind=error.kind if error else "",
            attempts=meta.get("attempts", 1),
            fallback_path=meta.get("fallback_path", []),
            retries=meta.get("retries", []),
        )
        self._account(lambda: event)
