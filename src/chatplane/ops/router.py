"""`/api/ops/*`: the operations API, for platform operators (superadmins) or whoever holds
`CHATPLANE_OPS_TOKEN`. HTTP only: the rules live in `OpsService`. `chatplane ops` calls it."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Path, Query, Request
from fastapi.responses import StreamingResponse

from chatplane.auth.deps import ClientDep, ServicesDep, authenticate_request, bearer_token
from chatplane.container import Services
from chatplane.errors import Forbidden, ServiceUnavailable
from chatplane.http.openapi import BEARER, PROBLEM
from chatplane.ops.dashboard import Dashboard
from chatplane.ops.drain import Drain
from chatplane.ops.schemas import (
    DashboardOut,
    DeadLettersOut,
    StatusOut,
    ThisProcessOut,
    TurnActionOut,
    dashboard_out,
    dead_letter_out,
    status_out,
    this_process_out,
    turn_action_out,
)
from chatplane.ops.service import OpsActor, OpsService

_PROBLEMS: dict[int | str, dict[str, Any]] = {
    status: {"description": description, "content": PROBLEM}
    for status, description in (
        (401, "No credentials, or wrong ones"),
        (403, "Not a superadmin"),
        (503, "A part the call needs is unreachable"),
    )
}
_TURN_PROBLEMS: dict[int | str, dict[str, Any]] = {
    404: {"description": "No such turn", "content": PROBLEM},
    409: {"description": "The turn has already ended", "content": PROBLEM},
}


@asynccontextmanager
async def _watch_drain(app: FastAPI) -> AsyncIterator[None]:
    """From start-up on, this process's heartbeats say whether it drains (SIGTERM too)."""
    services: Services | None = getattr(app.state, "services", None)
    if services is not None and services.presence is not None:
        services.presence.watch_drain(app.state.drain)
    yield


router = APIRouter(prefix="/api/ops", tags=["ops"], responses=_PROBLEMS, lifespan=_watch_drain)


def _same_secret(given: str, expected: str) -> bool:
    """Constant time, whatever the lengths."""
    return hmac.compare_digest(
        hashlib.sha256(given.encode()).digest(), hashlib.sha256(expected.encode()).digest()
    )


async def ops_actor(request: Request, services: ServicesDep, client: ClientDep) -> OpsActor:
    """The ops token, else a superadmin's own credentials (bearer or web session)."""
    token = bearer_token(request.headers.get("authorization"))
    expected = services.settings.ops_token
    if token and expected is not None and _same_secret(token, expected.get_secret_value()):
        return OpsActor(via="ops_token", ip=client.ip)
    principal = await authenticate_request(
        services, method=request.method, headers=request.headers, cookies=request.cookies
    )
    if not (principal.is_superadmin and principal.may("admin")):
        raise Forbidden("Only platform operators may use the operations API", code="not_superadmin")
    return OpsActor(
        via="superadmin", user_id=principal.user_id, email=principal.email, ip=client.ip
    )


async def ops_service(services: ServicesDep) -> OpsService:
    if services.presence is None:
        raise ServiceUnavailable("This process announces no presence", code="ops_unavailable")
    return OpsService(
        settings=services.settings,
        db=services.db,
        broker=services.broker,
        presence=services.presence,
        audit=services.audit,
    )


async def ops_dashboard(request: Request, services: ServicesDep) -> Dashboard:
    """One per process, made on first use: its samples serve every viewer."""
    board: Dashboard | None = getattr(request.app.state, "ops_dashboard", None)
    if board is None:
        if services.presence is None:
            raise ServiceUnavailable("This process announces no presence", code="ops_unavailable")
        board = Dashboard(services.settings, services.presence, services.broker)
        request.app.state.ops_dashboard = board
    return board


async def this_drain(request: Request) -> Drain:
    drain: Drain = request.app.state.drain
    return drain


Actor = Annotated[OpsActor, Depends(ops_actor)]
Ops = Annotated[OpsService, Depends(ops_service)]
ThisDrain = Annotated[Drain, Depends(this_drain)]
Board = Annotated[Dashboard, Depends(ops_dashboard)]
TurnId = Annotated[str, Path(min_length=1, max_length=64)]
_SECURE = {"security": BEARER}


@router.get("/status", openapi_extra=_SECURE)
async def status(_: Actor, ops: Ops, drain: ThisDrain) -> StatusOut:
    """The deployment at a glance: this process, every process seen lately (stale when
    silent for 3 heartbeats), the queue, turns queued and running, the database pool, and
    whether the database and Redis answer."""
    return status_out(await ops.status(drain))


@router.get("/dashboard", openapi_extra=_SECURE)
async def dashboard(_: Actor, board: Board) -> DashboardOut:
    """The live operations dashboard once: tiles (value, state against the thresholds),
    counters summed over every live process, and the recent history of the charted tiles."""
    return dashboard_out(await board.view(), board.interval_s)


@router.get(
    "/live",
    openapi_extra=_SECURE,
    response_class=StreamingResponse,
    responses={200: {"description": "Event stream", "content": {"text/event-stream": {}}}},
)
async def live(_: Actor, board: Board, drain: ThisDrain) -> StreamingResponse:
    """The dashboard as server-sent events: a `dashboard` frame (the JSON of
    `/api/ops/dashboard`) every `CHATPLANE_DASHBOARD_INTERVAL_S`. The stream ends when this
    process drains; EventSource reconnects by itself."""
    return StreamingResponse(
        _frames(board, drain),
        media_type="text/event-stream",
        headers={"cache-control": "no-store", "x-accel-buffering": "no"},
    )


async def _frames(board: Dashboard, drain: Drain) -> AsyncIterator[bytes]:
    yield f"retry: {int(board.interval_s * 1000)}\n\n".encode()
    while not drain.draining:
        frame = dashboard_out(await board.view(), board.interval_s)
        yield b"event: dashboard\ndata: " + frame.model_dump_json().encode() + b"\n\n"
        await asyncio.sleep(board.interval_s)


@router.post("/drain", openapi_extra=_SECURE)
async def drain_this_process(actor: Actor, ops: Ops, drain: ThisDrain) -> ThisProcessOut:
    """Drain the process that answers: `/readyz` answers 503, new model calls get a
    retryable 503, its event streams end so their clients resume elsewhere."""
    await ops.drain(drain, actor)
    return this_process_out(ops.presence, drain)


@router.post("/undrain", openapi_extra=_SECURE)
async def undrain_this_process(actor: Actor, ops: Ops, drain: ThisDrain) -> ThisProcessOut:
    """Take the process that answers back into service."""
    await ops.undrain(drain, actor)
    return this_process_out(ops.presence, drain)


@router.get("/dead-letters", openapi_extra=_SECURE)
async def dead_letters(
    _: Actor, ops: Ops, limit: Annotated[int, Query(ge=1, le=1000)] = 100
) -> DeadLettersOut:
    """Jobs that failed on every attempt, newest first."""
    letters = await ops.dead_letters(limit)
    return DeadLettersOut(dead_letters=[dead_letter_out(dead) for dead in letters])


@router.post("/turns/{turn_id}/cancel", responses=_TURN_PROBLEMS, openapi_extra=_SECURE)
async def cancel_turn(actor: Actor, ops: Ops, turn_id: TurnId) -> TurnActionOut:
    """Cancel any tenant's turn. A queued turn that no job can reach any more is ended at
    once (`action: cancelled`); otherwise the process running it stops it."""
    return turn_action_out(await ops.cancel_turn(turn_id, actor))


@router.post("/turns/{turn_id}/requeue", responses=_TURN_PROBLEMS, openapi_extra=_SECURE)
async def requeue_turn(actor: Actor, ops: Ops, turn_id: TurnId) -> TurnActionOut:
    """Give a stuck turn (queued or running, its run gone) a fresh job."""
    return turn_action_out(await ops.requeue_turn(turn_id, actor))
