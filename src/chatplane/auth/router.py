"""HTTP routes of authentication: login, refresh, logout, me."""

from __future__ import annotations

import secrets

from fastapi import APIRouter, Request, Response

from chatplane.auth.deps import CSRF_COOKIE, SESSION_COOKIE, CurrentPrincipal, ServicesDep
from chatplane.auth.schemas import LoginIn, MeOut, RefreshIn, TokensOut
from chatplane.auth.service import LoginResult

router = APIRouter(prefix="/api/auth", tags=["auth"])


def _tokens(result: LoginResult) -> TokensOut:
    return TokensOut(
        access_token=result.access_token,
        refresh_token=result.refresh_token,
        expires_in=result.expires_in,
    )


@router.post("/login", response_model=TokensOut)
async def login(
    body: LoginIn, request: Request, response: Response, services: ServicesDep
) -> TokensOut:
    result = await services.auth.login(body.email, body.password)
    secure = services.settings.secure_cookies or request.url.scheme == "https"
    response.set_cookie(
        SESSION_COOKIE,
        result.session_token,
        max_age=result.session_expires_in,
        httponly=True,
        secure=secure,
        samesite="lax",
        path="/",
    )
    response.set_cookie(
        CSRF_COOKIE,
        secrets.token_urlsafe(24),
        max_age=result.session_expires_in,
        httponly=False,
        secure=secure,
        samesite="strict",
        path="/",
    )
    return _tokens(result)


@router.post("/refresh", response_model=TokensOut)
async def refresh(body: RefreshIn, services: ServicesDep) -> TokensOut:
    return _tokens(await services.auth.refresh(body.refresh_token))


@router.post("/logout", status_code=204)
async def logout(principal: CurrentPrincipal, services: ServicesDep) -> Response:
    if principal.session_id is not None:
        await services.auth.logout(principal.session_id)
    response = Response(status_code=204)
    response.delete_cookie(SESSION_COOKIE, path="/")
    response.delete_cookie(CSRF_COOKIE, path="/")
    return response


@router.get("/me", response_model=MeOut)
async def me(principal: CurrentPrincipal) -> MeOut:
    return MeOut(
        id=principal.user_id,
        email=principal.email,
        tenant_id=principal.tenant_id,
        role=principal.role,
    )
