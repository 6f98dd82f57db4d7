"""The web app's cookies: an httpOnly session cookie and a readable CSRF token."""

from __future__ import annotations

import secrets

from starlette.requests import Request
from starlette.responses import Response

from chatplane.auth.deps import CSRF_COOKIE, SESSION_COOKIE
from chatplane.auth.sessions import LoginResult
from chatplane.settings import Settings


def is_secure(request: Request, settings: Settings) -> bool:
    return settings.secure_cookies or request.url.scheme == "https"


def set_session_cookies(
    response: Response, result: LoginResult, *, request: Request, settings: Settings
) -> None:
    secure = is_secure(request, settings)
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
        httponly=False,  # the web app reads it and echoes it in X-CSRF-Token
        secure=secure,
        samesite="strict",
        path="/",
    )


def clear_session_cookies(response: Response) -> None:
    response.delete_cookie(SESSION_COOKIE, path="/")
    response.delete_cookie(CSRF_COOKIE, path="/")
