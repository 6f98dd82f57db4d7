"""Walk the sign-in flow the way a browser does: one hop at a time, cookies kept."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import httpx

from tests.api.live import LiveServer

SESSION_COOKIE = "chatplane_session"
STATE_COOKIE = "chatplane_sso"


@dataclass
class Attempt:
    login: httpx.Response  # chatplane's answer to /api/auth/sso/login
    authorize: httpx.Response  # the provider's answer to /authorize
    callback: httpx.Response  # chatplane's answer to /api/auth/sso/callback

    @property
    def authorize_params(self) -> dict[str, str]:
        return query_of(self.login.headers["location"])

    @property
    def callback_url(self) -> str:
        return str(self.authorize.headers["location"])

    @property
    def landed(self) -> str:
        assert self.callback.status_code == 302, self.callback.text
        return str(self.callback.headers["location"])


def query_of(url: str) -> dict[str, str]:
    return dict(parse_qsl(urlsplit(url).query))


def with_query(url: str, **changes: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(query=urlencode({**query_of(url), **changes})))


def browser() -> httpx.AsyncClient:
    return httpx.AsyncClient(timeout=15, follow_redirects=False)


async def start(
    client: httpx.AsyncClient, live: LiveServer, next_path: str | None
) -> httpx.Response:
    params = {"next": next_path} if next_path is not None else {}
    return await client.get(f"{live.base_url}/api/auth/sso/login", params=params)


async def sign_in(
    client: httpx.AsyncClient,
    live: LiveServer,
    *,
    email: str | None = None,
    next_path: str | None = None,
    edit_authorize: Callable[[str], str] = lambda url: url,
    edit_callback: Callable[[str], str] = lambda url: url,
) -> Attempt:
    """chatplane -> provider -> chatplane. `email` is who signs in at the provider."""
    login = await start(client, live, next_path)
    assert login.status_code == 302, login.text
    authorize_url = login.headers["location"]
    if email is not None:
        authorize_url = with_query(authorize_url, login_hint=email)
    authorize = await client.get(edit_authorize(authorize_url))
    assert authorize.status_code == 302, authorize.text
    callback = await client.get(edit_callback(authorize.headers["location"]))
    return Attempt(login, authorize, callback)


def set_cookie_headers(response: httpx.Response) -> list[str]:
    return response.headers.get_list("set-cookie")


def assert_refused(response: httpx.Response, code: str) -> None:
    """A failure: back to the login view with the code, no session, no state left over."""
    assert response.status_code == 302, response.text
    assert response.headers["location"] == f"/?sso_error={code}"
    cookies = set_cookie_headers(response)
    assert not any(c.startswith(f"{SESSION_COOKIE}=") for c in cookies), cookies
    assert any(c.startswith(f"{STATE_COOKIE}=") and "Max-Age=0" in c for c in cookies), cookies
