"""The database goes away mid-load and comes back: readiness says so, new writes get a
clear retryable 503, the gateway keeps answering keys it has seen, nothing is half-written
or stored twice, and every process recovers by itself.

A TCP proxy in the test process stands between chatplane and the local PostgreSQL: a cut
resets every open connection and refuses new ones; a restore accepts them again."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from sqlalchemy import Insert, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import ORMExecuteState, Session

from chatplane.auth.principal import Principal
from chatplane.chat.models import Message
from chatplane.chat.worker import TurnWorker
from chatplane.container import Services, build_services
from chatplane.db import migrate
from chatplane.db.base import new_id
from chatplane.db.engine import Database, create_engine
from chatplane.errors import DatabaseUnavailable
from chatplane.usage.recorder import UsageRecorder
from tests.api.sse import Frame, read_events
from tests.conftest import make_settings
from tests.scale.procs import Cluster, Proc, free_port
from tests.scale.test_processes import WORDS, client

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

RECOVERY_S = 30.0
GATEWAY_BODY = {"model": "mock-echo", "messages": [{"role": "user", "content": "still here"}]}


class TcpProxy:
    """Forwards 127.0.0.1:`port` to the upstream port, until it is cut (connections reset
    and refused) or blackholed (connections accepted, nothing answered, as on a network
    that drops packets)."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.port = free_port()
        self._server: asyncio.Server | None = None
        self._transports: set[asyncio.BaseTransport] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self.blackholed = False

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)

    async def cut(self) -> None:
        """Refuse new connections and reset every open one, both ways."""
        if self._server is not None:
            self._server.close()
            self._server = None
        for transport in list(self._transports):
            transport.abort()
        self._transports.clear()

    def blackhole(self) -> None:
        """From now on nothing reaches the database and nothing comes back."""
        self.blackholed = True

    async def restore(self) -> None:
        if self.blackholed:
            await self.cut()  # what was swallowed leaves these connections useless
            self.blackholed = False
        await self.start()

    async def close(self) -> None:
        await self.cut()
        if self._tasks:  # each ends on its own once its connections are reset
            await asyncio.wait(set(self._tasks), timeout=10)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        if self.blackholed:
            self._transports.add(writer.transport)
            try:
                await self._pipe(reader, None)
            finally:
                self._transports.discard(writer.transport)
                writer.transport.abort()
                self._tasks.discard(task)
            return
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            writer.transport.abort()
            self._tasks.discard(task)
            return
        self._transports.update({writer.transport, up_writer.transport})
        try:
            await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
        finally:
            for side in (writer, up_writer):
                self._transports.discard(side.transport)
                side.transport.abort()
            self._tasks.discard(task)

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter | None
    ) -> None:
        with contextlib.suppress(OSError):
            while data := await reader.read(65536):
                if writer is not None and not self.blackholed:
                    writer.write(data)
                    await writer.drain()
        if writer is not None:
            writer.transport.abort()


@pytest.fixture
async def proxy(postgres_url: str) -> AsyncIterator[TcpProxy]:
    url = make_url(postgres_url)
    tcp = TcpProxy(url.port or 5432)
    await tcp.start()
    yield tcp
    await tcp.close()


def through(postgres_url: str, proxy: TcpProxy) -> str:
    return make_url(postgres_url).set(port=proxy.port).render_as_string(hide_password=False)


async def eventually(check: Callable[[], Awaitable[bool]], what: str) -> None:
    deadline = time.monotonic() + RECOVERY_S
    while not await check():
        assert time.monotonic() < deadline, f"not within {RECOVERY_S} s: {what}"
        await asyncio.sleep(0.1)


async def status_is(http: httpx.AsyncClient, path: str, status: int) -> bool:
    try:
        return (await http.get(path)).status_code == status
    except httpx.TransportError:
        return False


class GatewayLoad:
    """Gateway calls in a loop, alternating between the API processes."""

    def __init__(self, clients: list[httpx.AsyncClient]) -> None:
        self.clients = clients
        self.statuses: list[int] = []
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        n = 0
        while not self._stop.is_set():
            answer = await self.clients[n % 2].post("/v1/chat/completions", json=GATEWAY_BODY)
            self.statuses.append(answer.status_code)
            n += 1
            await asyncio.sleep(0.05)  # pacing, not waiting for anything

    async def stop(self) -> None:
        self._stop.set()
        assert self._task is not None
        await self._task


def answer_of(frames: list[Frame]) -> str:
    """The text of the last run of the turn (a run started again streams it anew)."""
    starts = [i for i, frame in enumerate(frames) if frame.event == "turn.started"]
    return "".join(
        f.data["text"] for f in frames[starts[-1] if starts else 0 :] if f.event == "message.delta"
    )


async def post_turn(http: httpx.AsyncClient, content: str) -> tuple[str, dict[str, str]]:
    """A new conversation and its first message: (conversation id, the 202's body)."""
    conversation = (await http.post("/api/conversations", json={})).json()
    accepted = await http.post(
        f"/api/conversations/{conversation['id']}/messages", json={"content": content}
    )
    assert accepted.status_code == 202, accepted.text
    return conversation["id"], accepted.json()


async def start_api_and_workers(cluster: Cluster, url: str) -> tuple[Proc, Proc, list[Proc]]:
    env = {"CHATPLANE_DATABASE_URL": url, "CHATPLANE_DB_CONNECT_TIMEOUT_S": "2"}
    first, second = cluster.api("api-1", **env), cluster.api("api-2", **env)
    workers = [cluster.worker(f"worker-{n}", **env) for n in (1, 2)]
    await asyncio.gather(
        first.wait_ready(),
        second.wait_ready(),
        *[w.wait_for_log("worker_started") for w in workers],
    )
    return first, second, workers


async def caught(workers: list[Proc], turn_ids: Iterable[str]) -> bool:
    waiting = [
        line
        for worker in workers
        for line in worker.log().splitlines()
        if "turn_store_deferred" in line or "job_waits_for_database" in line
    ]
    return all(any(turn_id in line for line in waiting) for turn_id in turn_ids)


async def stored(postgres_url: str, query: str, *args: Any) -> list[asyncpg.Record]:
    dsn = make_url(postgres_url).set(drivername="postgresql").render_as_string(False)
    connection = await asyncpg.connect(dsn, timeout=5)
    try:
        return list(await connection.fetch(query, *args))
    finally:
        await connection.close()


async def test_a_database_outage_mid_load(
    cluster: Cluster, user_key: str, postgres_url: str, proxy: TcpProxy
) -> None:
    first, second, workers = await start_api_and_workers(cluster, through(postgres_url, proxy))
    async with client(first.base_url, user_key) as one, client(second.base_url, user_key) as two:
        # Both processes have seen the key and know its principal.
        for http in (one, two):
            assert (await http.post("/v1/chat/completions", json=GATEWAY_BODY)).status_code == 200
        gateway = GatewayLoad([one, two])
        gateway.start()
        accepted: list[tuple[str, str, str]] = []  # (conversation, turn, message) with a 202
        events: dict[str, str] = {}
        for n in range(6):
            conversation_id, body = await post_turn((one, two)[n % 2], WORDS)
            accepted.append((conversation_id, body["turn_id"], body["message_id"]))
            events[body["turn_id"]] = body["events_url"]
        # The turns are mid-answer (about 1.6 s each) when the database goes away.
        await proxy.cut()

        for http in (one, two):
            await eventually(lambda h=http: status_is(h, "/readyz", 503), "readyz says 503")
            ready = (await http.get("/readyz")).json()
            assert ready["checks"]["database"].startswith("The database is unreachable")
            assert ready["checks"]["broker"] == "ok"
        refused = await one.post(
            f"/api/conversations/{accepted[0][0]}/messages", json={"content": "during"}
        )
        assert refused.status_code == 503, refused.text
        assert refused.json()["code"] == "database_unavailable"
        assert int(refused.headers["retry-after"]) >= 1
        read = await two.get(f"/api/conversations/{accepted[1][0]}")
        assert read.status_code == 503
        assert read.json()["code"] == "database_unavailable"
        # The gateway answers a key it has seen: principal, limits and models are not in the
        # database.
        for http in (one, two):
            assert (await http.get("/v1/models")).status_code == 200
            answer = await http.post("/v1/chat/completions", json=GATEWAY_BODY)
            assert answer.status_code == 200, answer.text
            assert answer.json()["choices"][0]["message"]["content"] == "still here"
        # Every turn is caught by the outage: it finished answering and waits to store the
        # answer, or it waits to start.
        await eventually(lambda: caught(workers, events), "every turn waits for the database")
        await proxy.restore()

        for http in (one, two):
            await eventually(lambda h=http: status_is(h, "/readyz", 200), "readyz says 200")
        await gateway.stop()
        after_id, body = await post_turn(two, "after the outage")
        after_turn = body["turn_id"]
        accepted.append((after_id, after_turn, body["message_id"]))
        events[after_turn] = body["events_url"]

        for _, turn_id, _ in accepted:
            async with asyncio.timeout(RECOVERY_S):
                frames = await read_events(one, events[turn_id])
            assert frames[-1].event == "turn.completed", frames[-5:]
            expected = "after the outage" if turn_id == after_turn else WORDS
            assert answer_of(frames) == expected

    # Straight from PostgreSQL: every turn ended completed, with exactly one answer; every
    # accepted message is stored; gateway usage from the outage arrived, none twice.
    turn_ids = [turn_id for _, turn_id, _ in accepted]
    turns = await stored(
        postgres_url, "SELECT id, status, api_key_id FROM turns WHERE id = ANY($1)", turn_ids
    )
    assert sorted(t["id"] for t in turns) == sorted(turn_ids)
    assert {t["status"] for t in turns} == {"completed"}
    answers = await stored(
        postgres_url,
        "SELECT turn_id, count(*) AS n FROM messages WHERE turn_id = ANY($1) "
        "AND role = 'assistant' GROUP BY turn_id",
        turn_ids,
    )
    assert {a["turn_id"]: a["n"] for a in answers} == dict.fromkeys(turn_ids, 1)
    message_ids = [m for _, _, m in accepted]
    users = await stored(
        postgres_url, "SELECT id FROM messages WHERE id = ANY($1) AND role = 'user'", message_ids
    )
    assert len(users) == len(message_ids)
    conversation_ids = list({c for c, _, _ in accepted})
    during = await stored(
        postgres_url,
        "SELECT id FROM messages WHERE conversation_id = ANY($1) AND content = 'during'",
        conversation_ids,
    )
    assert during == []  # the refused message was not kept
    key_id = turns[0]["api_key_id"]
    chat_usage = await stored(
        postgres_url,
        "SELECT turn_id FROM usage_records WHERE turn_id = ANY($1)",
        turn_ids,
    )
    assert sorted(u["turn_id"] for u in chat_usage) == sorted(turn_ids)
    served = 2 + 2 + gateway.statuses.count(200)  # warm-up, during the cut, the load
    assert set(gateway.statuses) == {200}

    async def gateway_usage_rows() -> int:
        rows = await stored(
            postgres_url,
            "SELECT count(*) AS n FROM usage_records WHERE api_key_id = $1 AND source = 'gateway'",
            key_id,
        )
        return int(rows[0]["n"])

    async def all_arrived() -> bool:
        return await gateway_usage_rows() >= served

    await eventually(all_arrived, "the gateway usage of the outage is stored")
    assert await gateway_usage_rows() == served


async def test_a_database_that_does_not_answer_fails_fast(
    cluster: Cluster, user_key: str, postgres_url: str, proxy: TcpProxy
) -> None:
    """Packets dropped instead of refused: the connect and statement time-outs turn the
    silence into the same retryable 503 (the client's own time-out would fail the test if a
    request hung), and the processes recover once the network is back."""
    env = {
        "CHATPLANE_DATABASE_URL": through(postgres_url, proxy),
        "CHATPLANE_DB_CONNECT_TIMEOUT_S": "2",
        "CHATPLANE_DB_COMMAND_TIMEOUT_S": "3",
    }
    api, worker = cluster.api("api", **env), cluster.worker("worker", **env)
    await asyncio.gather(api.wait_ready(), worker.wait_for_log("worker_started"))
    async with client(api.base_url, user_key) as http:
        conversation_id, body = await post_turn(http, "before the silence")
        assert (await read_events(http, body["events_url"]))[-1].event == "turn.completed"

        proxy.blackhole()
        await eventually(lambda: status_is(http, "/readyz", 503), "readyz says 503")
        assert "no answer" in (await http.get("/readyz")).json()["checks"]["database"]
        refused = await http.post(
            f"/api/conversations/{conversation_id}/messages", json={"content": "into the void"}
        )
        assert refused.status_code == 503, refused.text
        assert refused.json()["code"] == "database_unavailable"
        assert "retry-after" in refused.headers

        await proxy.restore()
        await eventually(lambda: status_is(http, "/readyz", 200), "readyz says 200")
        _, body = await post_turn(http, "after the silence")
        async with asyncio.timeout(RECOVERY_S):
            frames = await read_events(http, body["events_url"])
        assert frames[-1].event == "turn.completed"
        assert answer_of(frames) == "after the silence"
        detail = (await http.get(f"/api/conversations/{conversation_id}")).json()
        assert "into the void" not in [m["content"] for m in detail["messages"]]


async def test_a_usage_batch_whose_commit_landed_unseen_is_stored_once(
    postgres_url: str, tmp_path: Path
) -> None:
    """The connection breaks after COMMIT reached the database: the recorder sees a failure,
    keeps the batch and sends it again; the ids make the second write a no-op."""
    await migrate.upgrade(postgres_url)
    db = Database(create_engine(make_settings(tmp_path), postgres_url))
    recorder = UsageRecorder(db)
    tenant_id = new_id()
    answers_lost = [ConnectionResetError("the answer to COMMIT was lost")]

    def lose_the_answer(_session: Session) -> None:
        if answers_lost:
            raise answers_lost.pop()

    event.listen(Session, "after_commit", lose_the_answer)
    try:
        for tokens in (1, 2):
            recorder.record(
                tenant_id=tenant_id,
                user_id=None,
                api_key_id=None,
                model="mock",
                prompt_tokens=tokens,
                completion_tokens=tokens,
                cost_usd=0.0,
            )
        await recorder.flush()
        assert answers_lost == []  # the commit was answered with a broken connection
        await recorder.flush()
    finally:
        event.remove(Session, "after_commit", lose_the_answer)
        await db.close()
    rows = await stored(
        postgres_url,
        "SELECT prompt_tokens FROM usage_records WHERE tenant_id = $1 ORDER BY 1",
        tenant_id,
    )
    assert [r["prompt_tokens"] for r in rows] == [1, 2]


@contextlib.contextmanager
def answers_lost(lose: Callable[[ORMExecuteState], bool]) -> Iterator[list[Session]]:
    """Commits of a session that ran a statement for which `lose(state)` is true reach the
    database, but the caller sees the connection break, as when it drops right after
    COMMIT was sent. Yields the sessions whose answer was lost."""
    lost: list[Session] = []

    def executed(state: ORMExecuteState) -> None:
        if lose(state):
            state.session.info["lose_answer"] = True

    def after_commit(session: Session) -> None:
        if session.info.pop("lose_answer", False):
            lost.append(session)
            raise ConnectionResetError("the answer to COMMIT was lost")

    event.listen(Session, "do_orm_execute", executed)
    event.listen(Session, "after_commit", after_commit)
    try:
        yield lost
    finally:
        event.remove(Session, "do_orm_execute", executed)
        event.remove(Session, "after_commit", after_commit)


def adds(role: str) -> Callable[[ORMExecuteState], bool]:
    """An INSERT of a message with this role (however the code builds it)."""

    def inserts_message(state: ORMExecuteState) -> bool:
        statement = state.statement
        if not state.is_insert or not isinstance(statement, Insert):
            return False
        if statement.table.name != Message.__tablename__:
            return False
        given = state.parameters if isinstance(state.parameters, dict) else {}
        return given.get("role", statement.compile().params.get("role")) == role

    return inserts_message


@pytest.fixture
async def embedded_on_postgres(postgres_url: str, tmp_path: Path) -> AsyncIterator[Services]:
    """Services on the run's Postgres with the in-process broker, and no worker yet."""
    await migrate.upgrade(postgres_url)
    settings = make_settings(tmp_path, database_url=postgres_url, mock_chunk_delay_ms=0)
    services = await build_services(settings, run_turns=False)
    services.worker = TurnWorker(
        services.broker, services.runner, concurrency=2, max_attempts=3, consumer="w1"
    )
    yield services
    await services.close(drain_s=1)


async def new_principal(services: Services) -> Principal:
    user = await services.auth.create_user(f"lost-{new_id()}@example.com", "password-123")
    return Principal(user_id=user.id, tenant_id=user.tenant_id, email=user.email, role=user.role)


async def conversation_of(services: Services, principal: Principal, conversation_id: str) -> Any:
    return await services.chat.get_conversation(principal, conversation_id)


async def test_a_message_whose_commit_answer_was_lost_is_still_answered(
    embedded_on_postgres: Services,
) -> None:
    """The caller gets a 503 but the message is stored: its turn is queued anyway, so the
    stored message is answered instead of sitting `queued` forever."""
    services = embedded_on_postgres
    principal = await new_principal(services)
    conversation = await services.chat.create_conversation(principal, title=None, model=None)
    with answers_lost(adds("user")) as lost, pytest.raises(DatabaseUnavailable):
        await services.chat.post_message(principal, conversation.id, content="hi", model=None)
    assert len(lost) == 1
    assert services.worker is not None
    services.worker.start()

    async def answered() -> bool:
        view = await conversation_of(services, principal, conversation.id)
        return [m.role for m in view.messages] == ["user", "assistant"]

    await eventually(answered, "the stored message is answered")
    view = await conversation_of(services, principal, conversation.id)
    assert [m.content for m in view.messages] == ["hi", "hi"]


async def test_an_answer_whose_commit_answer_was_lost_ends_the_turn_once(
    embedded_on_postgres: Services,
) -> None:
    """The worker stores the answer, the connection breaks before it hears so: it waits for
    the database, sees its own answer stored, and ends the turn (once)."""
    services = embedded_on_postgres
    assert services.worker is not None
    principal = await new_principal(services)
    conversation = await services.chat.create_conversation(principal, title=None, model=None)
    with answers_lost(adds("assistant")) as lost:
        turn = await services.chat.post_message(
            principal, conversation.id, content="once", model=None
        )
        services.worker.start()
        async with asyncio.timeout(RECOVERY_S):
            events = await services.broker.read(turn.id, None, timeout_s=1)
            while events[-1].type != "turn.completed":
                events += await services.broker.read(turn.id, events[-1].id, timeout_s=1)
    assert len(lost) == 1
    assert [e.type for e in events].count("turn.completed") == 1
    view = await conversation_of(services, principal, conversation.id)
    assert [(m.role, m.content) for m in view.messages] == [("user", "once"), ("assistant", "once")]
    stored = await services.chat.get_turn(principal, turn.id)
    assert stored.status == "completed"
    assert stored.assistant_message_id == view.messages[1].id
