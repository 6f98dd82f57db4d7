"""HTTP routes of single sign-on with an OpenID Connect provider.

`/login` and `/callback` are browser navigations, so they answer with redirects only: to the
provider, to `next` once signed in, or, on any failure, to `/?sso_error=<code>`, which the web
app shows on its login view. The codes are those of the errors raised (`sso_not_configured`,
`sso_next_invalid`, `sso_state_invalid`, `sso_denied`, `sso_provider_error`,
`sso_token_invalid`, `sso_email_unverified`, `sso_not_provisioned`, `account_disabled`); the
detail goes to the log, never to the address bar."""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import urlencode

import structlog
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import RedirectResponse
from pydantic import BaseModel
from starlette.responses import Response

from chatplane.auth.cookies import is_secure, set_session_cookies
from chatplane.auth.deps import ClientDep, ServicesDep
from chatplane.auth.oidc import (
    STATE_TTL_S,
    LoginState,
    OidcClient,
    SsoDenied,
    SsoIdentity,
    SsoNotConfigured,
    SsoProviderError,
    safe_next_path,
)
from chatplane.container import Services
from chatplane.errors import ChatplaneError
from chatplane.http.client import ClientInfo

STATE_COOKIE = "chatplane_sso"
STATE_COOKIE_PATH = "/api/auth/sso"

log = structlog.get_logger("chatplane.auth.sso")

router = APIRouter(prefix="/api/auth/sso", tags=["auth"])

REDIRECT: dict[int | str, dict[str, Any]] = {
    302: {"description": "A redirect (see the description)"}
}


class SsoConfigOut(BaseModel):
    enabled: bool
    name: str


async def oidc_client(services: ServicesDep) -> OidcClient:
    """The process's client (it caches the provider's documents)."""
    return services.oidc


OidcDep = Annotated[OidcClient, Depends(oidc_client)]


@router.get("/config", response_model=SsoConfigOut)
async def sso_config(oidc: OidcDep, services: ServicesDep) -> SsoConfigOut:
    """Whether single sign-on is offered, and the provider's name for the button."""
    return SsoConfigOut(enabled=oidc.enabled, name=services.settings.oidc_provider_name)


@router.get("/login", status_code=302, response_class=RedirectResponse, responses=REDIRECT)
async def sso_login(
    request: Request,
    oidc: OidcDep,
    services: ServicesDep,
    next_path: Annotated[str | None, Query(alias="next")] = None,
) -> Response:
    """Start signing in: a redirect to the provider, with the attempt's secrets in a
    short-lived signed cookie. `next` is where to land afterwards: a path on this site.
    On failure: a redirect to `/?sso_error=<code>`."""
    try:
        login = LoginState.new(
            redirect_uri=services.settings.oidc_redirect_url
            or str(request.url_for("sso_callback")),
            next_path=safe_next_path(next_path),
        )
        response = _redirect(await oidc.authorization_url(login))
    except ChatplaneError as exc:
        return await _failed(exc, request, services, client=None, identity=None)
    response.set_cookie(
        STATE_COOKIE,
        login.seal(services.settings.signing_key),
        max_age=STATE_TTL_S,
        httponly=True,
        secure=is_secure(request, services.settings),
        samesite="lax",  # sent on the provider's top-level redirect back to us
        path=STATE_COOKIE_PATH,
    )
    return response


@router.get(
    "/callback",
    name="sso_callback",
    status_code=302,
    response_class=RedirectResponse,
    responses=REDIRECT,
)
async def sso_callback(
    request: Request,
    oidc: OidcDep,
    services: ServicesDep,
    client: ClientDep,
    code: str | None = None,
    state: str | None = None,
    error: str | None = None,
) -> Response:
    """Finish signing in: check `state` against this browser's cookie, trade the code,
    validate the ID token, find or provision the user, set the session cookies and redirect
    to `next`. On failure: a redirect to `/?sso_error=<code>`, with `code` one of
    `sso_not_configured`, `sso_denied`, `sso_state_invalid`, `sso_provider_error`,
    `sso_token_invalid`, `sso_email_unverified`, `sso_not_provisioned`, `account_disabled`."""
    identity: SsoIdentity | None = None
    try:
        if not oidc.enabled:
            raise SsoNotConfigured()
        if error is not None:
            if error == "access_denied":
                raise SsoDenied("Sign-in was cancelled at the identity provider")
            raise SsoProviderError(f"The identity provider answered {error[:100]!r}")
        login = LoginState.unseal(
            request.cookies.get(STATE_COOKIE),
            services.settings.signing_key,
            returned_state=state,
        )
        if not code:
            raise SsoProviderError("The identity provider sent no code")
        identity = await oidc.sign_in(code, login)
        user = await services.sessions.provision_sso_user(identity.email, client)
        result = await services.sessions.open_session(user, method="sso", client=client)
    except ChatplaneError as exc:
        return await _failed(exc, request, services, client=client, identity=identity)
    await services.audit.record(
        "login.sso",
        tenant_id=user.tenant_id,
        actor_id=user.id,
        subject=user.email,
        ip=client.ip,
        issuer=identity.issuer,
        provider_subject=identity.subject,
    )
    response = _redirect(login.next_path)
    set_session_cookies(response, result, request=request, settings=services.settings)
    _clear_state_cookie(response, request, services)
    return response


async def _failed(
    exc: ChatplaneError,
    request: Request,
    services: Services,
    *,
    client: ClientInfo | None,
    identity: SsoIdentity | None,
) -> Response:
    log.warning("sso_failed", code=exc.code, status=exc.status, detail=exc.detail)
    if identity is not None and client is not None:
        # The provider vouched for someone we turned away: worth an audit record.
        await services.audit.record(
            "login.failed",
            subject=identity.email,
            ip=client.ip,
            method="sso",
            reason=exc.code,
        )
    response = _redirect("/?" + urlencode({"sso_error": exc.code}))
    _clear_state_cookie(response, request, services)
    return response


def _redirect(url: str) -> Response:
    return RedirectResponse(url, status_code=302, headers={"cache-control": "no-store"})


def _clear_state_cookie(response: Response, request: Request, services: Services) -> None:
    response.delete_cookie(
        STATE_COOKIE,
        path=STATE_COOKIE_PATH,
        httponly=True,
        secure=is_secure(request, services.settings),
        samesite="lax",
    )
