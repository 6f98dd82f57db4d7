"""Runs one turn: history -> provider stream -> events, then stores the answer exactly once."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import structlog
from sqlalchemy.exc import IntegrityError

from chatplane.broker.protocol import Broker, Job, JobLost
from chatplane.chat.models import Message, Turn
from chatplane.chat.repository import TurnRepository, insert_usage
from chatplane.db.base import new_id, utcnow
from chatplane.db.engine import Database
from chatplane.errors import (
    ChatplaneError,
    DatabaseUnavailable,
    ProviderError,
    ServiceUnavailable,
)
from chatplane.knowledge.citations import resolve_citations
from chatplane.knowledge.prompt import GivenPassage
from chatplane.knowledge.retrieval import RetrievalFailed, retrieve
from chatplane.limits.service import LimitService
from chatplane.observability.metrics import (
    provider_error,
    turn_ended,
    turn_first_token,
    turn_started,
)
from chatplane.providers.protocol import (
    ChatMessage,
    CompletionRequest,
    Finish,
    Provider,
    Usage,
    open_stream,
)
from chatplane.providers.registry import ModelRegistry, ModelRoute, cost_usd
from chatplane.providers.tokens import estimate_tokens
from chatplane.settings import Settings
from chatplane.usage.models import UsageRecord

if TYPE_CHECKING:
    from chatplane.knowledge.index import KnowledgeIndex

log = structlog.get_logger("chatplane.turns")

CANCEL_POLL_S = 0.2
# While the database is unreachable a job is held (its claim kept alive) and the database
# asked again this often, for at most this long before the job is handed back.
DB_RETRY_S = 1.0
DB_WAIT_MAX_S = 300.0


class TurnCancelled(Exception):
    pass


def fit_context(messages: Sequence[ChatMessage], budget_tokens: int) -> list[ChatMessage]:
    """The newest messages that fit the budget; the last (the user's question) always stays."""
    kept: list[ChatMessage] = []
    used = 0
    for message in reversed(messages):
        cost = estimate_tokens(message.content) + 4
        if kept and used + cost > budget_tokens:
            break
        kept.append(message)
        used += cost
    kept.reverse()
    return kept


class CancelWatch:
    """The cancel requests of every turn this process runs, asked for in one broker call
    every `interval_s` instead of one call per turn: each watched turn gets a future that is
    resolved once its cancel request is seen. The loop runs only while turns are watched."""

    def __init__(self, broker: Broker, interval_s: float) -> None:
        self.broker = broker
        self.interval_s = interval_s
        self._watched: dict[asyncio.Future[None], str] = {}
        self._task: asyncio.Task[None] | None = None

    @contextlib.contextmanager
    def watch(self, turn_id: str) -> Iterator[asyncio.Future[None]]:
        cancelled: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._watched[cancelled] = turn_id
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="turn-cancel-watch")
        try:
            yield cancelled
        finally:
            del self._watched[cancelled]

    async def _run(self) -> None:
        while self._watched:
            await asyncio.sleep(self.interval_s)
            try:
                found = await self.broker.cancels_requested(set(self._watched.values()))
            except ServiceUnavailable as exc:  # the turns' own publishes report the outage
                log.warning("cancel_check_failed", error=exc.detail)
                continue
            except Exception:  # the next check may work: the watch must outlive one failure
                log.exception("cancel_check_failed")
                continue
            for cancelled, turn_id in list(self._watched.items()):
                if turn_id in found and not cancelled.done():
                    cancelled.set_result(None)


class Answer:
    """A turn's answer as its clients were sent it. A stop (a cancel, a lost claim, a
    shutdown) never lands inside a delta's publish: it waits for the publish on its way, so
    the stored partial answer is exactly what the clients got (without a task per delta)."""

    __slots__ = ("parts", "publishing", "stopping")

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.publishing = False
        self.stopping = False

    @property
    def text(self) -> str:
        return "".join(self.parts)

    def stop(self, generation: asyncio.Task[Finish]) -> None:
        """End the generation: now, or right after the publish on its way."""
        self.stopping = True
        if not self.publishing:
            generation.cancel()


class TurnRunner:
    def __init__(
        self,
        db: Database,
        broker: Broker,
        registry: ModelRegistry,
        settings: Settings,
        limits: LimitService,
        index: KnowledgeIndex | None = None,
    ) -> None:
        self.db = db
        self.broker = broker
        self.registry = registry
        self.settings = settings
        self.limits = limits
        self.index = index  # None: turns with knowledge bases fail (no index in this process)
        self.cancels = CancelWatch(broker, CANCEL_POLL_S)

    async def run(self, job: Job) -> None:
        turn_id = str(job.payload["turn_id"])
        structlog.contextvars.bind_contextvars(turn_id=turn_id)
        try:
            await self._run(turn_id, job)
        finally:
            structlog.contextvars.unbind_contextvars("turn_id")

    async def hold_until_database(self, job: Job) -> bool:
        """Wait for the database to answer again, keeping the claim on `job` alive. False
        when the claim was lost (another worker has the job) or the wait ran out."""
        interval = min(DB_RETRY_S, self.settings.job_visibility_timeout_s / 3)
        deadline = time.monotonic() + DB_WAIT_MAX_S
        while time.monotonic() < deadline:
            await asyncio.sleep(interval)
            try:
                await self.broker.heartbeat(job)
            except JobLost:
                return False
            except ServiceUnavailable:
                pass  # the broker is away too: the claim may lapse, the result is idempotent
            try:
                await self.db.ping(timeout_s=interval)
            except ServiceUnavailable:
                continue
            log.info("database_back", job_id=job.id)
            return True
        return False

    async def _settle(self, turn: Turn, payload: Mapping[str, Any], cost: float | None) -> None:
        """Settle the turn's budget reservation once the outcome is stored (only the run that
        stored it gets a cost; a second run of the same turn finds nothing to settle). The
        keys are on the turn (jobs of the release before carry them in their payload)."""
        keys = turn.budget_keys or payload.get("budget_keys")
        if cost is not None and isinstance(keys, list):
            await self.limits.settle(turn.tenant_id, turn.id, [str(k) for k in keys], cost)

    async def _run(self, turn_id: str, job: Job) -> None:
        # Whether it was cancelled while queued is asked of the broker while the database
        # starts it: one session and two statements, the start (which returns the turn)
        # and the history up to the question.
        cancel_check = asyncio.ensure_future(self.broker.cancel_requested(turn_id))
        try:
            async with self.db.session() as session:
                repo = TurnRepository(session)
                turn = await repo.start(turn_id, utcnow())
                if turn is None:
                    return  # already ended (cancelled while queued, done before) or deleted
                history = await repo.history(turn)
                await session.commit()
            cancelled = await cancel_check
        finally:
            if not cancel_check.done():
                cancel_check.cancel()
            elif not cancel_check.cancelled():
                cancel_check.exception()  # retrieved (raised above when it was awaited)
        restarted = turn.attempts > 1  # an earlier run started it and never finished
        question = next((m for m in history if m.id == turn.user_message_id), None)
        turn_started(turn, restarted=restarted)
        if restarted:
            await self.broker.publish(turn_id, "turn.restarted", {"attempt": job.attempt})
        if cancelled:
            await self._settle(turn, job.payload, await self._finish_cancelled(turn, "", job=job))
            return
        await self.broker.publish(turn_id, "turn.started", {"model": turn.model})
        log.info("turn_started", model=turn.model, attempt=job.attempt, restarted=restarted)

        answer = Answer()
        # The passages given to the model, once retrieved (None: the turn retrieves nothing).
        given: list[GivenPassage] | None = [] if turn.knowledge_base_ids else None
        query = question.content if question is not None else ""
        cost: float | None = None
        try:
            finish = await self._generate(turn, job, history, answer, query, given)
        except TurnCancelled:
            cost = await self._finish_cancelled(turn, answer.text, history, job=job)
        except JobLost:
            log.warning("turn_claim_lost")  # another worker runs it now; store nothing
        except DatabaseUnavailable:
            raise  # not the turn's fault: the worker holds the job and runs it again
        except ProviderError as exc:
            log.warning("turn_provider_error", kind=exc.kind, detail=exc.detail)
            provider_error(getattr(self.registry.get(turn.model), "kind", "unknown"), exc.kind)
            cost = await self._finish_failed(turn, exc.code, exc.detail, job=job)
        except ChatplaneError as exc:
            cost = await self._finish_failed(turn, exc.code, exc.detail, job=job)
        else:
            cost = await self._finish_completed(
                turn, answer.text, finish.usage, history, given, job=job
            )
        await self._settle(turn, job.payload, cost)

    async def _generate(
        self,
        turn: Turn,
        job: Job,
        history: Sequence[Message],
        answer: Answer,
        query: str,
        given: list[GivenPassage] | None,
    ) -> Finish:
        route = await self.registry.resolve(turn.model)
        messages = [ChatMessage(role=m.role, content=m.content) for m in history]  # type: ignore[arg-type]
        generation = asyncio.create_task(self._answer(turn, route, messages, answer, query, given))
        try:
            return await self._watch(generation, turn.id, job)
        finally:
            # Whatever ends the watch (cancel, lost claim, this task cancelled on shutdown),
            # the provider call ends with it.
            if not generation.done():
                answer.stop(generation)
                await asyncio.gather(generation, return_exceptions=True)

    async def _answer(
        self,
        turn: Turn,
        route: ModelRoute,
        messages: list[ChatMessage],
        answer: Answer,
        query: str,
        given: list[GivenPassage] | None,
    ) -> Finish:
        """Retrieve (when the turn has knowledge bases), then stream the answer. Watched
        like the generation it leads to: a cancel during retrieval stops it too."""
        budget = self.settings.context_max_tokens
        sources: list[ChatMessage] = []
        if given is not None:
            sources = [await self._retrieve(turn, query, given)]
            budget -= estimate_tokens(sources[0].content) + 4
        request = CompletionRequest(
            model=route.upstream_model,
            messages=[*sources, *fit_context(messages, budget)],
            max_tokens=self.settings.max_output_tokens,
        )
        return await self._stream(route.provider, request, turn.id, answer)

    async def _retrieve(self, turn: Turn, query: str, given: list[GivenPassage]) -> ChatMessage:
        """The system message of passages; `given` receives the passages it numbers."""
        if self.index is None:
            raise RetrievalFailed("This process has no knowledge index")
        prompt = await retrieve(
            self.index,
            self.db,
            tenant_id=turn.tenant_id,
            user_id=turn.user_id,
            kb_ids=turn.knowledge_base_ids or [],
            query=query,
            top_k=self.settings.kb_top_k,
            max_tokens=self.settings.kb_context_max_tokens,
        )
        given.extend(prompt.passages)
        log.info("turn_retrieved", passages=len(prompt.passages))
        return ChatMessage(role="system", content=prompt.message)

    async def _watch(self, generation: asyncio.Task[Finish], turn_id: str, job: Job) -> Finish:
        """Wait for the generation, or its turn's cancel request, keeping the claim alive."""
        interval = self.settings.job_visibility_timeout_s / 3
        with self.cancels.watch(turn_id) as cancelled:
            either: set[asyncio.Future[Any]] = {generation, cancelled}
            while True:
                await asyncio.wait(either, timeout=interval, return_when=asyncio.FIRST_COMPLETED)
                if generation.done():
                    return generation.result()
                if cancelled.done():
                    raise TurnCancelled
                await self.broker.heartbeat(job)  # raises JobLost when reclaimed

    async def _stream(
        self, provider: Provider, request: CompletionRequest, turn_id: str, answer: Answer
    ) -> Finish:
        """Publish each delta and add it to the answer, both or neither (`Answer.stop`
        waits for a publish on its way, then the stream ends here)."""
        async with open_stream(provider, request) as stream:
            async for item in stream:
                if isinstance(item, Finish):
                    return item
                if not item.text:
                    continue
                answer.publishing = True
                try:
                    await self.broker.publish(turn_id, "message.delta", {"text": item.text})
                finally:
                    answer.publishing = False
                answer.parts.append(item.text)
                turn_first_token()
                if answer.stopping:
                    raise asyncio.CancelledError  # the stop that waited for this publish
        raise ProviderError("The provider stream ended without finishing", kind="protocol")

    async def _usage(
        self, turn: Turn, usage: Usage | None, history: Sequence[Message], text: str
    ) -> tuple[Usage, UsageRecord]:
        """The turn's usage (estimated when the provider reported none) and its record."""
        if usage is None:
            prompt = sum(estimate_tokens(m.content) for m in history)
            usage = Usage(prompt_tokens=prompt, completion_tokens=estimate_tokens(text))
        route = await self.registry.resolve(turn.model)
        return usage, UsageRecord(
            id=new_id(),
            created_at=utcnow(),
            tenant_id=turn.tenant_id,
            user_id=turn.user_id,
            api_key_id=turn.api_key_id,
            turn_id=turn.id,
            source="chat",
            model=turn.model,
            prompt_tokens=usage.prompt_tokens,
            completion_tokens=usage.completion_tokens,
            cost_usd=cost_usd(route, usage),
            cached=False,
        )

    async def _finish_completed(
        self,
        turn: Turn,
        text: str,
        usage: Usage | None,
        history: Sequence[Message],
        given: Sequence[GivenPassage] | None = None,
        *,
        job: Job | None = None,
    ) -> float | None:
        """Store the answer (with the passages it cites, when it retrieved); its cost when
        this run stored it, else None."""
        usage, record = await self._usage(turn, usage, history, text)
        citations: list[dict[str, Any]] | None = None
        if given is not None:
            found, dropped = resolve_citations(text, given)
            citations = [citation.to_json() for citation in found]
            if dropped:
                log.info("turn_citations_dropped", dropped=dropped)
        stored, message_id = await self._store(
            turn, status="completed", text=text, usage=record, citations=citations, job=job
        )
        payload = {
            "message_id": message_id,
            "usage": {
                "prompt_tokens": usage.prompt_tokens,
                "completion_tokens": usage.completion_tokens,
                "total_tokens": usage.total_tokens,
            },
        }
        if not stored:
            return None
        if citations is not None:
            await self.broker.publish(turn.id, "turn.citations", {"citations": citations})
        await self._end(turn.id, "turn.completed", payload)
        turn_ended(turn, "completed", record)
        return record.cost_usd

    async def _finish_cancelled(
        self,
        turn: Turn,
        text: str,
        history: Sequence[Message] = (),
        *,
        job: Job | None = None,
    ) -> float | None:
        """A cancelled turn keeps its partial answer, and costs what was generated."""
        record = (await self._usage(turn, None, history, text))[1] if text else None
        stored, message_id = await self._store(
            turn, status="cancelled", text=text, usage=record, job=job
        )
        if not stored:
            return None
        await self._end(turn.id, "turn.cancelled", {"message_id": message_id})
        turn_ended(turn, "cancelled", record)
        return record.cost_usd if record is not None else 0.0

    async def _finish_failed(
        self, turn: Turn, code: str, detail: str, *, job: Job | None = None
    ) -> float | None:
        stored, _ = await self._store(turn, status="failed", text="", error=(code, detail), job=job)
        if not stored:
            return None
        await self._end(turn.id, "turn.failed", {"error": {"code": code, "message": detail}})
        turn_ended(turn, "failed", error_code=code)
        return 0.0

    async def fail_abandoned(
        self,
        turn_id: str,
        detail: str,
        payload: Mapping[str, Any] | None = None,
        *,
        code: str = "turn_abandoned",
    ) -> bool:
        """A turn whose job failed on every attempt (or, `turn_lost`, that the sweeper
        found with no job once too often) ends `failed` instead of hanging. Whether this
        call ended it (False: it had ended already, or no longer exists)."""
        async with self.db.session() as session:
            turn = await TurnRepository(session).turn(turn_id)
        if turn is None:
            return False
        cost = await self._finish_failed(turn, code, detail)
        await self._settle(turn, payload or {}, cost)
        return cost is not None

    async def _store(
        self,
        turn: Turn,
        *,
        status: str,
        text: str,
        usage: UsageRecord | None = None,
        error: tuple[str, str] | None = None,
        citations: list[dict[str, Any]] | None = None,
        job: Job | None = None,
    ) -> tuple[bool, str | None]:
        """Commit the outcome in one transaction; returns (stored, assistant message id).
        Idempotent on the turn: a second run of the same turn finds it ended (or hits the
        unique turn_id) and stores nothing. While the database is unreachable the outcome
        (already streamed to the clients) is kept and stored once it is back."""
        message_id = new_id() if text else None
        retried = False
        while True:
            try:
                return await self._store_once(
                    turn,
                    status=status,
                    text=text,
                    message_id=message_id,
                    usage=usage,
                    error=error,
                    citations=citations,
                    retried=retried,
                )
            except DatabaseUnavailable as exc:
                log.warning("turn_store_deferred", error=exc.detail)
                if job is None or not await self.hold_until_database(job):
                    raise
                retried = True

    async def _store_once(
        self,
        turn: Turn,
        *,
        status: str,
        text: str,
        message_id: str | None,
        usage: UsageRecord | None,
        error: tuple[str, str] | None,
        citations: list[dict[str, Any]] | None,
        retried: bool,
    ) -> tuple[bool, str | None]:
        now = utcnow()
        async with self.db.session() as session:
            repo = TurnRepository(session)
            ended = await repo.finish(
                turn.id,
                status=status,
                when=now,
                error_code=error[0] if error else None,
                error_message=error[1] if error else None,
                assistant_message_id=message_id,
            )
            if not ended:
                if retried:  # the connection broke during our commit: did it land?
                    stored = await repo.turn(turn.id)
                    if (
                        stored is not None
                        and stored.status == status
                        and stored.assistant_message_id == message_id
                    ):
                        return True, message_id
                return False, None
            try:  # a row another run stored first (same turn_id) stops the whole outcome
                if message_id is not None:
                    await repo.add_message(
                        {
                            "id": message_id,
                            "conversation_id": turn.conversation_id,
                            "tenant_id": turn.tenant_id,
                            "role": "assistant",
                            "content": text,
                            "turn_id": turn.id,
                            "citations": citations,
                            "created_at": now,
                        }
                    )
                if usage is not None:
                    await insert_usage(session, usage, now)
                await repo.touch_conversation(turn.conversation_id, now)
                await session.commit()
            except IntegrityError:
                await session.rollback()
                log.info("turn_already_stored")
                return False, None
        return True, message_id

    async def _end(self, turn_id: str, event: str, data: dict[str, Any]) -> None:
        await self.broker.publish(turn_id, event, data)
        await self.broker.expire(turn_id, self.settings.turn_events_ttl_s)
        log.info("turn_ended", outcome=event)
