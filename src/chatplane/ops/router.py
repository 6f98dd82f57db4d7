"""`/api/ops/*`: the operations API, for platform operators (superadmins) or whoever holds
`CHATPLANE_OPS_TOKEN`. HTTP only: the rules live in `OpsService`. `chatplane ops` calls it."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Path, Query, Request

from chatplane.auth.deps import ClientDep, ServicesDep, authenticate_request, bearer_token
from chatplane.container import Services
from chatplane.errors import Forbidden, ServiceUnavailable
from chatplane.http.openapi import BEARER, PROBLEM
from chatplane.ops.drain import Drain
from chatplane.ops.schemas import (
    DeadLettersOut,
    StatusOut,
    ThisProcessOut,
    TurnActionOut,
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


def ops_service(services: ServicesDep) -> OpsService:
    if services.presence is None:
        raise ServiceUnavailable("This process announces no presence", code="ops_unavailable")
    return OpsService(
        settings=services.settings,
        db=services.db,
        broker=services.broker,
        presence=services.presence,
        audit=services.audit,
    )


def this_drain(request: Request) -> Drain:
    drain: Drain = request.app.state.drain
    return drain


Actor = Annotated[OpsActor, Depends(ops_actor)]
Ops = Annotated[OpsService, Depends(ops_service)]
ThisDrain = Annotated[Drain, Depends(this_drain)]
TurnId = Annotated[str, Path(min_length=1, max_length=64)]
_SECURE = {"security": BEARER}


@router.get("/status", openapi_extra=_SECURE)
async def status(_: Actor, ops: Ops, drain: ThisDrain) -> StatusOut:
    """The deployment at a glance: this process, every process seen lately (stale when
    silent for 3 heartbeats), the queue, turns queued and running, the database pool, and
    whether the database and Redis answer."""
    return status_out(await ops.status(drain))


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
