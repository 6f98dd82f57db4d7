"""What the operations API answers."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal

from pydantic import BaseModel, Field

from chatplane import __version__
from chatplane.broker.protocol import DeadLetter
from chatplane.ops.dashboard import View
from chatplane.ops.drain import Drain
from chatplane.ops.presence import Presence, SeenProcess
from chatplane.ops.service import Check, Status, TurnAction


class ThisProcessOut(BaseModel):
    """The process that answered."""

    id: str = Field(description="host-pid")
    kind: Literal["api", "worker"]
    draining: bool
    since: datetime | None = Field(description="When the drain started")
    reason: str | None = Field(description="What started the drain: SIGTERM or ops API")
    inflight: int = Field(description="Model calls in flight in this process")


class ProcessOut(BaseModel):
    id: str
    kind: Literal["api", "worker"]
    host: str
    pid: int
    version: str
    started_at: datetime
    last_seen: datetime
    seen_s_ago: float
    stale: bool = Field(description="Silent for 3 heartbeats: stopped or unreachable")
    running_turns: int | None = Field(description="Processes that run turns")
    concurrency: int | None
    draining: bool | None = Field(description="API processes")
    inflight: int | None = Field(description="API processes: model calls in flight")


class QueueOut(BaseModel):
    depth: int | None = Field(description="Jobs waiting plus jobs claimed, not yet done")
    oldest_job_age_s: float | None = Field(description="The oldest job not yet claimed")
    error: str | None = None


class TurnsOut(BaseModel):
    running: int | None
    queued: int | None
    error: str | None = None


class PoolOut(BaseModel):
    size: int
    checked_out: int
    overflow: int
    max_overflow: int


class CheckOut(BaseModel):
    reachable: bool
    error: str | None = None


class StatusOut(BaseModel):
    version: str
    time: datetime
    process: ThisProcessOut
    processes: list[ProcessOut]
    presence_error: str | None = None
    queue: QueueOut
    turns: TurnsOut
    db_pool: PoolOut | None = Field(description="This process's pool; null without one")
    database: CheckOut
    redis: CheckOut | None = Field(description="null when no Redis is configured")


class DeadLetterOut(BaseModel):
    job_id: str
    kind: str
    turn_id: str | None
    attempts: int
    reason: str


class DeadLettersOut(BaseModel):
    dead_letters: list[DeadLetterOut]


class TurnActionOut(BaseModel):
    turn_id: str
    tenant_id: str
    status: str = Field(description="The turn's status after the action")
    action: Literal["cancel_requested", "cancelled", "requeued"]
    job_id: str | None = Field(default=None, description="The fresh job of a requeued turn")


class TileOut(BaseModel):
    key: str = Field(description="active_users, open_streams, requests_per_s, latency_p95_s...")
    label: str
    unit: str = Field(description='"" (a count), "/s", "/min", "s" or "ratio"')
    value: float | None = Field(description="null until known (rates need two samples)")
    state: Literal["ok", "warning", "critical", "unknown"]
    warning: float = Field(description="The value from which the tile warns")
    critical: float = Field(description="The value from which the tile is critical")


class DashboardTotalsOut(BaseModel):
    """Counters summed over the live processes since each started."""

    requests: float
    server_errors: float
    messages: float = Field(description="Chat messages accepted: HTTP, WebSocket and /v1")
    provider_errors: float
    turns: dict[str, float] = Field(description="Ended turns by outcome")


class WebSocketsOut(BaseModel):
    connections: float
    subscriptions: float


class DashboardOut(BaseModel):
    time: datetime
    interval_s: float = Field(description="Seconds between frames of /api/ops/live")
    window_s: float | None = Field(description="The span the rates cover; null at first")
    processes: int = Field(description="Live processes whose numbers are summed")
    tiles: list[TileOut]
    totals: DashboardTotalsOut
    websockets: WebSocketsOut
    history: dict[str, list[tuple[float, float | None]]] = Field(
        description="Per charted tile, [unix time, value] points, oldest first"
    )
    errors: list[str] = Field(description="Parts that could not be read this time")


def dashboard_out(view: View, interval_s: float) -> DashboardOut:
    totals = view.totals
    return DashboardOut(
        time=_at(view.at),
        interval_s=interval_s,
        window_s=view.window_s,
        processes=view.processes,
        tiles=[
            TileOut(
                key=tile.key,
                label=tile.label,
                unit=tile.unit,
                value=tile.value,
                state=tile.state,
                warning=tile.warning,
                critical=tile.critical,
            )
            for tile in view.tiles
        ],
        totals=DashboardTotalsOut(
            requests=totals.requests,
            server_errors=totals.server_errors,
            messages=totals.messages,
            provider_errors=totals.provider_errors,
            turns=dict(totals.turns),
        ),
        websockets=WebSocketsOut(
            connections=view.ws_connections, subscriptions=view.ws_subscriptions
        ),
        history={key: list(points) for key, points in view.history.items()},
        errors=view.errors,
    )


def _at(unix: float) -> datetime:
    return datetime.fromtimestamp(unix, UTC)


def this_process_out(presence: Presence, drain: Drain) -> ThisProcessOut:
    return ThisProcessOut(
        id=presence.id,
        kind=presence.kind,
        draining=drain.draining,
        since=drain.since,
        reason=drain.reason,
        inflight=drain.inflight,
    )


def process_out(seen: SeenProcess) -> ProcessOut:
    info = seen.info
    return ProcessOut(
        id=info.id,
        kind=info.kind,
        host=info.host,
        pid=info.pid,
        version=info.version,
        started_at=_at(info.started_at),
        last_seen=_at(info.seen_at),
        seen_s_ago=seen.seen_s_ago,
        stale=seen.stale,
        running_turns=info.running_turns,
        concurrency=info.concurrency,
        draining=info.draining,
        inflight=info.inflight,
    )


def _check_out(check: Check) -> CheckOut:
    return CheckOut(reachable=check.ok, error=check.error)


def status_out(status: Status) -> StatusOut:
    queue, turns, pool = status.queue, status.turns, status.pool
    return StatusOut(
        version=__version__,
        time=datetime.now(UTC),
        process=this_process_out(status.presence, status.drain),
        processes=[process_out(seen) for seen in status.processes],
        presence_error=status.presence_error,
        queue=QueueOut(
            depth=queue.depth if queue else None,
            oldest_job_age_s=round(queue.oldest_waiting_age_s, 3) if queue else None,
            error=status.queue_error,
        ),
        turns=TurnsOut(
            running=turns["running"] if turns else None,
            queued=turns["queued"] if turns else None,
            error=status.turns_error,
        ),
        db_pool=PoolOut(
            size=pool.size,
            checked_out=pool.checked_out,
            overflow=pool.overflow,
            max_overflow=pool.max_overflow,
        )
        if pool
        else None,
        database=_check_out(status.database),
        redis=_check_out(status.redis) if status.redis else None,
    )


def dead_letter_out(dead: DeadLetter) -> DeadLetterOut:
    turn_id = dead.job.payload.get("turn_id")
    return DeadLetterOut(
        job_id=dead.job.id,
        kind=dead.job.kind,
        turn_id=str(turn_id) if turn_id is not None else None,
        attempts=dead.job.attempt,
        reason=dead.reason,
    )


def turn_action_out(action: TurnAction) -> TurnActionOut:
    return TurnActionOut(
        turn_id=action.turn_id,
        tenant_id=action.tenant_id,
        status=action.status,
        action=action.action,
        job_id=action.job_id,
    )
