"""The OpenAI-compatible gateway: `/v1/chat/completions` and `/v1/models`.

A direct path with no queue. The routes are plain ASGI apps (no pydantic, no dependency
chain, no per-chunk objects): OpenAI-compatible upstreams are streamed through byte for
byte; other providers are written in OpenAI's wire format from pre-built chunk parts.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import orjson
import structlog
from fastapi import FastAPI
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from chatplane.auth.deps import (
    bearer_token,
    bind_principal,
    count_request,
    require_scope,
    saw_user,
)
from chatplane.auth.principal import Principal
from chatplane.container import Services
from chatplane.db.base import new_id
from chatplane.errors import ChatplaneError, ProviderError, Unauthorized
from chatplane.gateway import caching
from chatplane.gateway.caching import CachedAnswer, StreamCapture
from chatplane.gateway.request import GatewayRequest, parse_request
from chatplane.gateway.sources import CitedStream, cite_completion
from chatplane.gateway.stream import (
    CONTENT_KEY,
    DONE,
    TAIL_BYTES,
    ChunkWriter,
    error_event,
    usage_from_json,
    usage_from_tail,
)
from chatplane.http.problems import error_response
from chatplane.knowledge.citations import resolve_citations
from chatplane.knowledge.prompt import GivenPassage
from chatplane.knowledge.retrieval import retrieve
from chatplane.knowledge.service import retrieval_prompt_bound
from chatplane.limits.middleware import pending_address
from chatplane.limits.service import Admission, remember
from chatplane.observability import metrics
from chatplane.ops.drain import Drain
from chatplane.providers.openai import OpenAIProvider
from chatplane.providers.protocol import Finish, StreamItem, TextDelta, Usage
from chatplane.providers.registry import ModelRoute, cost_usd
from chatplane.providers.tokens import (
    estimate_prompt_tokens,
    estimate_tokens,
    prompt_tokens_bound,
)

log = structlog.get_logger("chatplane.gateway")

SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]
JSON_HEADERS = [(b"content-type", b"application/json")]


async def _authenticate(services: Services, scope: Scope) -> Principal:
    for name, value in scope["headers"]:
        if name == b"authorization":
            token = bearer_token(value.decode("latin-1"))
            if token:
                principal = await services.auth.authenticate_bearer(token)
                saw_user(services, principal)
                return require_scope(bind_principal(principal), "chat")
    raise Unauthorized("Send an API key as 'Authorization: Bearer cp_...'", code="missing_api_key")


async def _read_body(receive: Receive) -> bytes:
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise asyncio.CancelledError
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


async def _until_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def _send_error(scope: Scope, receive: Receive, send: Send, exc: ChatplaneError) -> None:
    await error_response("/v1/", exc)(scope, receive, send)


async def _abort_on_disconnect(receive: Receive, work: Awaitable[None]) -> None:
    """Run `work`; if the client goes away first, cancel it (and with it the upstream).

    The work has a task of its own (a chunk's wake-up resumes only its frames, not the
    request's whole middleware stack); the watcher cancels it from a done callback, with
    no `asyncio.wait` per request. A cancellation from outside (a server shutting down)
    still propagates."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_until_disconnect(receive))
    left = False

    def on_watcher_done(done: asyncio.Future[None]) -> None:
        nonlocal left
        if done.cancelled():
            return
        done.exception()  # retrieved: a receive that fails is a client gone too
        left = True
        task.cancel()

    watcher.add_done_callback(on_watcher_done)
    try:
        await task
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if not left or (current is not None and current.cancelling()):
            raise
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()


async def _admit(
    services: Services,
    principal: Principal,
    request: GatewayRequest,
    route: ModelRoute,
    scope: Scope,
) -> Admission:
    """Requests and tokens per minute, a concurrency slot, and a budget reservation of the
    worst case: the prompt's token bound and every token the reply may have; with the
    per-address check `LimitMiddleware` left to it, in the same store call."""

    async def measure() -> tuple[int, float]:
        settings = services.settings
        max_out = request.max_tokens or settings.max_output_tokens
        bound, estimate = (
            prompt_tokens_bound(request.messages),
            estimate_prompt_tokens(request.messages),
        )
        if request.knowledge_base_ids:  # the passages are not retrieved yet: their worst case
            bound += retrieval_prompt_bound(settings)
            estimate += settings.kb_context_max_tokens
        worst = cost_usd(route, Usage(bound, max_out))
        return estimate + max_out, worst

    return await services.limits.admit(
        principal,
        lease_id=new_id(),
        zone="gateway",
        measure=measure,
        count_request=True,
        address=pending_address(scope),
    )


class ChatCompletions:
    """`POST /v1/chat/completions`."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        services: Services = scope["app"].state.services
        drain: Drain = scope["app"].state.drain
        try:
            principal = await _authenticate(services, scope)
            request = parse_request(await _read_body(receive))
            drain.refuse_new_work()
            route = await services.registry.resolve(request.model)
            cache_key = None
            if request.may_cache:  # the common request skips the cache at one attribute
                cache_key = await _cache_key(services, principal, request)
            if cache_key is not None:
                cached = await caching.look_up(services.response_cache, cache_key)
                if cached is not None:
                    await _answer_from_cache(services, principal, request, route, cached, scope)
                    await _send_cached(send, request, cached)
                    return
            admission = await _admit(services, principal, request, route, scope)
        except ChatplaneError as exc:
            await _send_error(scope, receive, send, exc)
            return
        remember(scope.setdefault("state", {}), admission.decision)
        call = _Call(services, principal, request, route, send, admission, cache_key)
        if request.stream:
            metrics.gateway_stream_started()
        runner: Callable[[], Awaitable[None]]
        if route.kind == "openai" and isinstance(route.provider, OpenAIProvider):
            runner = call.passthrough
        else:
            runner = call.translated
        kb_ids = request.knowledge_base_ids
        work = runner() if kb_ids is None else call.with_sources(kb_ids, runner)
        try:
            with drain.call():  # a drain waits for it to finish
                await _abort_on_disconnect(receive, work)
        except ChatplaneError as exc:
            if isinstance(exc, ProviderError):
                metrics.provider_error(route.kind, exc.kind)
            if not call.started:
                await _send_error(scope, receive, send, exc)
        finally:
            if request.stream:
                metrics.gateway_stream_ended()
            if not call.recorded and call.started:
                call.record_partial()  # the client left mid-stream: what it was sent counts
            await admission.finish(call.cost)


async def _cache_key(
    services: Services, principal: Principal, request: GatewayRequest
) -> str | None:
    """The response cache's key of a request that may be cached, when the request asked
    for the cache or its key or tenant opted in."""
    if request.cache is None:
        policy = await services.limits.policy(principal.tenant_id)
        if not caching.opted_in(policy, principal):
            return None
    return caching.cache_key(principal.tenant_id, request)


async def _answer_from_cache(
    services: Services,
    principal: Principal,
    request: GatewayRequest,
    route: ModelRoute,
    cached: CachedAnswer,
    scope: Scope,
) -> None:
    """A hit counts against the requests/minute limits (429 when over), takes no
    concurrency slot and reserves no budget: it calls no model and costs nothing. Its usage
    is recorded at zero cost, marked cached."""
    remember(
        scope.setdefault("state", {}),
        await services.limits.check_requests(principal, "gateway", address=pending_address(scope)),
    )
    services.usage.record(
        tenant_id=principal.tenant_id,
        user_id=principal.user_id,
        api_key_id=principal.api_key_id,
        model=route.name,
        prompt_tokens=cached.usage.prompt_tokens,
        completion_tokens=cached.usage.completion_tokens,
        cost_usd=0.0,
        cached=True,
    )


async def _send_cached(send: Send, request: GatewayRequest, cached: CachedAnswer) -> None:
    headers = SSE_HEADERS if request.stream else JSON_HEADERS
    body = cached.replay(stream=request.stream, include_usage=request.include_usage)
    await send({"type": "http.response.start", "status": 200, "headers": [*headers, caching.HIT]})
    await send({"type": "http.response.body", "body": body})


class _Call:
    def __init__(
        self,
        services: Services,
        principal: Principal,
        request: GatewayRequest,
        route: ModelRoute,
        send: Send,
        admission: Admission,
        cache_key: str | None = None,
    ) -> None:
        self.services = services
        self.principal = principal
        self.request = request
        self.route = route
        self._send = send
        self.admission = admission
        # Set when the answer may be kept in the response cache (and the call collects it).
        self.cache_key = cache_key
        self.started = False
        self.recorded = False
        self.cost = 0.0
        self.sent_deltas = 0  # content events sent so far: the estimate if the client leaves
        # The passages given to the model (None: the call retrieves nothing).
        self.given: list[GivenPassage] | None = None
        self._began = time.perf_counter()
        self._ttft_s: float | None = None

    async def _start(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        if self.cache_key is not None:
            headers = [*headers, caching.MISS]
        self.started = True
        await self._send({"type": "http.response.start", "status": status, "headers": headers})

    async def _body(self, body: bytes, *, more: bool) -> None:
        if self._ttft_s is None and body:
            self._ttft_s = time.perf_counter() - self._began
        await self._send({"type": "http.response.body", "body": body, "more_body": more})

    def _record(self, usage: Usage | None) -> None:
        if usage is None:  # the upstream reported none: estimate it
            usage = Usage(
                prompt_tokens=estimate_prompt_tokens(self.request.messages),
                completion_tokens=self.sent_deltas,
            )
        self.recorded = True
        self.cost = cost_usd(self.route, usage)
        metrics.observe_gateway_call(
            self.route.name, self.principal.tenant_id, usage, self.cost, self._ttft_s
        )
        self.services.usage.record(
            tenant_id=self.principal.tenant_id,
            user_id=self.principal.user_id,
            api_key_id=self.principal.api_key_id,
            model=self.route.name,
            prompt_tokens=usage.prompt_tokens,
            completion_tokens=usage.completion_tokens,
            cost_usd=self.cost,
        )

    async def _keep(self, answer: CachedAnswer | None) -> None:
        """Keep a complete answer in the response cache (before the response ends: a
        client that leaves after the last byte must not cancel the write)."""
        if self.cache_key is not None:
            await caching.keep(self.services.response_cache, self.cache_key, answer)

    def record_partial(self) -> None:
        """Usage of a stream that ended early (the client left, the upstream failed): the
        prompt, and about a token per content event sent (one token per event, give or
        take)."""
        self._record(None)

    # The `chatplane.knowledge_base_ids` extension: retrieve, answer, cite.

    async def with_sources(self, kb_ids: list[str], answer: Callable[[], Awaitable[None]]) -> None:
        """Add the passages of the knowledge bases to the request, then answer (the answer
        ends with the citations). Every knowledge base must be readable by the key's user."""
        services = self.services
        kb_ids = await services.knowledge.readable(self.principal, kb_ids)
        prompt = await retrieve(
            services.index,
            services.db,
            tenant_id=self.principal.tenant_id,
            user_id=self.principal.user_id,
            kb_ids=kb_ids,
            query=self.request.last_user_message(),
            top_k=services.settings.kb_top_k,
            max_tokens=services.settings.kb_context_max_tokens,
        )
        self.request = self.request.with_sources(prompt.message)
        self.given = prompt.passages
        await answer()

    def _citations(self, text: str) -> dict[str, Any]:
        citations, _ = resolve_citations(text, self.given or [])
        return {"citations": [citation.to_json() for citation in citations]}

    # OpenAI-compatible upstreams: bytes through, usage from the last event.

    def _upstream_body(self) -> bytes:
        body = {k: v for k, v in self.request.body.items() if k != "chatplane"}
        body["model"] = self.route.upstream_model
        if self.admission.reservation is not None and self.request.max_tokens is None:
            # The reservation assumed this many reply tokens: hold the upstream to it.
            body["max_tokens"] = self.services.settings.max_output_tokens
        if self.request.stream and not self.request.include_usage:
            # Needed for accounting; the SDKs skip the extra usage chunk.
            body["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}
        return orjson.dumps(body)

    async def passthrough(self) -> None:
        assert isinstance(self.route.provider, OpenAIProvider)
        response = await self.route.provider.open_chat_completions(self._upstream_body())
        try:
            content_type = response.headers.get("content-type", "application/json").encode()
            await self._start(response.status, [(b"content-type", content_type), *SSE_HEADERS[1:]])
            if not self.request.stream or response.status != 200:
                body = await response.read()
                if self.given is not None and response.status == 200:
                    body = cite_completion(body, self._citations)
                if self.cache_key is not None and response.status == 200:
                    await self._keep(caching.answer_from_completion(body))
                await self._body(body, more=False)
                if response.status == 200:
                    self._record(usage_from_json(body))
                return
            if self.given is not None:
                await self._cited_stream(response.content.iter_any())
                return
            # Byte for byte; read beside only when the answer may go to the response cache.
            capture = (
                StreamCapture(self.route.upstream_model) if self.cache_key is not None else None
            )
            # One send per read; the last bytes are kept (trimmed now and then, not copied
            # per read) for the usage event, the only one parsed.
            tail = bytearray()
            read = response.content.readany
            while chunk := await read():
                await self._body(chunk, more=True)
                if capture is not None:
                    capture.feed(chunk)
                self.sent_deltas += chunk.count(CONTENT_KEY)
                tail += chunk
                if len(tail) > 2 * TAIL_BYTES:
                    del tail[:-TAIL_BYTES]
            if capture is not None:
                await self._keep(capture.answer())
            await self._body(b"", more=False)
            self._record(usage_from_tail(bytes(tail[-TAIL_BYTES:])))
        finally:
            response.release()

    async def _cited_stream(self, chunks: AsyncIterator[bytes]) -> None:
        stream = CitedStream()
        tail = b""
        async for chunk in chunks:
            data = stream.feed(chunk)
            self.sent_deltas = stream.deltas
            if data:
                await self._body(data, more=True)
                tail = (tail + data)[-TAIL_BYTES:]
        data = stream.flush()
        self.sent_deltas = stream.deltas
        citations = stream.citations_chunk(self.request.model, self._citations)
        await self._body(data + citations + DONE, more=False)
        self._record(usage_from_tail(tail + data))

    # Other providers: written in OpenAI's format here.

    async def translated(self) -> None:
        writer = ChunkWriter(self.request.model)
        completion = self.request.completion(self.route.upstream_model)
        items = self.route.provider.stream(completion)
        if not self.request.stream:
            await self._complete(writer, items)
            return
        text_len = 0
        finish = Finish()
        keeps = self.given is not None or self.cache_key is not None
        parts: list[str] | None = [] if keeps else None
        try:
            async for item in items:
                if isinstance(item, TextDelta):
                    data = writer.delta(item.text)
                    if not self.started:
                        await self._start(200, SSE_HEADERS)
                        data = writer.role() + data  # one write, as the first token comes
                    text_len += len(item.text)
                    if parts is not None:
                        parts.append(item.text)
                    await self._body(data, more=True)
                    self.sent_deltas += 1
                elif isinstance(item, Finish):
                    finish = item
        except ProviderError as exc:
            if not self.started:
                raise
            log.warning("gateway_stream_failed", kind=exc.kind, detail=exc.detail)
            await self._body(error_event(exc.code, exc.detail) + DONE, more=False)
            self.record_partial()
            return
        if not self.started:
            await self._start(200, SSE_HEADERS)
            await self._body(writer.role(), more=True)
        usage = finish.usage or self._estimate(text_len)
        tail = writer.finish(finish.reason)
        if self.request.include_usage:
            tail += writer.usage(usage)
        if parts is not None and self.given is not None:
            tail += writer.extension(self._citations("".join(parts)))
        if parts is not None and self.cache_key is not None:
            await self._keep(CachedAnswer("".join(parts), finish.reason, writer.model, usage))
        await self._body(tail + DONE, more=False)
        self._record(usage)

    async def _complete(self, writer: ChunkWriter, items: AsyncIterator[StreamItem]) -> None:
        parts: list[str] = []
        finish = Finish()
        async for item in items:
            if isinstance(item, TextDelta):
                parts.append(item.text)
            elif isinstance(item, Finish):
                finish = item
        text = "".join(parts)
        usage = finish.usage or self._estimate(len(text), text)
        await self._keep(CachedAnswer(text, finish.reason, writer.model, usage))
        await self._start(200, JSON_HEADERS)
        extension = None if self.given is None else self._citations(text)
        await self._body(writer.completion(text, finish.reason, usage, extension), more=False)
        self._record(usage)

    def _estimate(self, text_len: int, text: str | None = None) -> Usage:
        completion = estimate_tokens(text) if text is not None else max(1, (text_len + 3) // 4)
        return Usage(
            prompt_tokens=estimate_prompt_tokens(self.request.messages),
            completion_tokens=completion if text_len else 0,
        )


class Models:
    """`GET /v1/models`."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        services: Services = scope["app"].state.services
        try:
            await count_request(services, await _authenticate(services, scope), scope)
        except ChatplaneError as exc:
            await _send_error(scope, receive, send, exc)
            return
        data = [
            {"id": route.name, "object": "model", "created": 0, "owned_by": route.owned_by}
            for route in services.registry.models()
        ]
        body = orjson.dumps({"object": "list", "data": data})
        await send({"type": "http.response.start", "status": 200, "headers": JSON_HEADERS})
        await send({"type": "http.response.body", "body": body})


def install_gateway(app: FastAPI) -> list[Route]:
    """The routes, first in the route list (matching a request against every API route
    first cost 0.1-0.2 ms per /v1 request); returned for the app to serve them directly."""
    routes = [
        Route("/v1/chat/completions", ChatCompletions(), methods=["POST"]),
        Route("/v1/models", Models(), methods=["GET"]),
    ]
    app.router.routes[0:0] = routes
    return routes
