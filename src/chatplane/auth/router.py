"""HTTP routes of authentication: login, refresh, logout, password, own sessions."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from chatplane.auth.cookies import clear_session_cookies, set_session_cookies
from chatplane.auth.deps import ClientDep, CurrentPrincipal, ServicesDep
from chatplane.auth.schemas import (
    LoginIn,
    LogoutAllOut,
    MeOut,
    PasswordChangeIn,
    RefreshIn,
    SessionOut,
    TokensOut,
)
from chatplane.auth.sessions import LoginResult

router = APIRouter(prefix="/api/auth", tags=["auth"])


def _tokens(result: LoginResult) -> TokensOut:
    return TokensOut(
        access_token=result.access_token,
        refresh_token=result.refresh_token,
        expires_in=result.expires_in,
    )


@router.post("/login", response_model=TokensOut)
async def login(
    body: LoginIn, request: Request, response: Response, services: ServicesDep, client: ClientDep
) -> TokensOut:
    """Log in with email and password. Also sets the web app's session cookies."""
    result = await services.sessions.login(body.email, body.password, client)
    set_session_cookies(response, result, request=request, settings=services.settings)
    return _tokens(result)


@router.post("/refresh", response_model=TokensOut)
async def refresh(body: RefreshIn, services: ServicesDep, client: ClientDep) -> TokensOut:
    """Trade a refresh token (usable once) for new tokens."""
    return _tokens(await services.sessions.refresh(body.refresh_token, client))


@router.post("/logout", status_code=204)
async def logout(principal: CurrentPrincipal, services: ServicesDep) -> Response:
    await services.sessions.logout(principal)
    response = Response(status_code=204)
    clear_session_cookies(response)
    return response


@router.post("/logout-all", response_model=LogoutAllOut)
async def logout_all(
    principal: CurrentPrincipal, services: ServicesDep, response: Response
) -> LogoutAllOut:
    """End every session of the current user, this one included."""
    ended = await services.sessions.logout_everywhere(principal.user_id)
    await services.audit.record(
        "logout.everywhere", tenant_id=principal.tenant_id, actor_id=principal.user_id
    )
    clear_session_cookies(response)
    return LogoutAllOut(sessions_ended=ended)


@router.post("/password", status_code=204)
async def change_password(
    body: PasswordChangeIn, principal: CurrentPrincipal, services: ServicesDep
) -> Response:
    """Change the password; every other session of the user ends."""
    await services.sessions.change_password(principal, body.current_password, body.new_password)
    return Response(status_code=204)


@router.get("/me", response_model=MeOut)
async def me(principal: CurrentPrincipal) -> MeOut:
    return MeOut(
        id=principal.user_id,
        email=principal.email,
        tenant_id=principal.tenant_id,
        role=principal.role,
        is_superadmin=principal.is_superadmin,
        scopes=sorted(principal.scopes),
    )


@router.get("/sessions", response_model=list[SessionOut])
async def my_sessions(principal: CurrentPrincipal, services: ServicesDep) -> list[SessionOut]:
    sessions = await services.sessions.list_sessions(principal.user_id)
    return [
        SessionOut.model_validate(s, from_attributes=True).model_copy(
            update={"current": s.id == principal.session_id}
        )
        for s in sessions
    ]


@router.delete("/sessions/{session_id}", status_code=204)
async def end_my_session(
    session_id: str, principal: CurrentPrincipal, services: ServicesDep
) -> Response:
    await services.sessions.end_session(principal, session_id, owner_id=principal.user_id)
    return Response(status_code=204)
