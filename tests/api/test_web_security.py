"""Security headers, trusted proxies and CORS."""

from __future__ import annotations

from pathlib import Path

import httpx
from sqlalchemy import select

from chatplane.app import create_app
from chatplane.auth.models import AuditEvent
from chatplane.http.client import ClientResolver
from tests.api.live import PASSWORD, LiveServer
from tests.conftest import make_settings


def test_forwarded_for_is_believed_only_from_trusted_proxies() -> None:
    resolver = ClientResolver(["10.0.0.0/8", "192.168.1.5"])
    # From a trusted proxy: the right-most address that is not a proxy is the client.
    assert resolver.client_ip("10.1.2.3", "203.0.113.7, 192.168.1.5") == "203.0.113.7"
    # Whatever a client writes on the left is not believed.
    assert resolver.client_ip("10.1.2.3", "6.6.6.6, 203.0.113.7") == "203.0.113.7"
    # From anyone else the header is ignored.
    assert resolver.client_ip("198.51.100.1", "203.0.113.7") == "198.51.100.1"
    assert ClientResolver([]).client_ip("127.0.0.1", "203.0.113.7") == "127.0.0.1"
    scope = {
        "type": "http",
        "client": ("198.51.100.1", 5000),
        "scheme": "http",
        "headers": [(b"x-forwarded-proto", b"https")],
    }
    resolver.rewrite(scope)
    assert scope["scheme"] == "http"  # an untrusted peer cannot claim https


async def test_proxy_headers_give_client_ip_https_hsts_and_secure_cookies(
    live: LiveServer,
) -> None:
    async with httpx.AsyncClient(base_url=live.base_url) as client:
        login = await client.post(
            "/api/auth/login",
            json={"email": live.email, "password": PASSWORD},
            headers={"x-forwarded-for": "203.0.113.99", "x-forwarded-proto": "https"},
        )
        assert login.status_code == 200
        assert login.headers["strict-transport-security"].startswith("max-age=")
        assert all("secure" in c.lower() for c in login.headers.get_list("set-cookie"))
        plain = await client.get("/healthz")
        assert "strict-transport-security" not in plain.headers
        page = await client.get("/")
        csp = page.headers["content-security-policy"]
        assert "frame-ancestors 'none'" in csp
        assert "script-src 'self'" in csp
        assert page.headers["x-frame-options"] == "DENY"
    async with live.services.db.session() as session:
        ips = (
            await session.scalars(
                select(AuditEvent.ip).where(
                    AuditEvent.action == "login.succeeded", AuditEvent.subject == live.email
                )
            )
        ).all()
    assert "203.0.113.99" in ips


async def test_cors_is_off_by_default_and_follows_settings(tmp_path: Path) -> None:
    for origins, allowed in (([], False), (["https://app.example.com"], True)):
        app = create_app(make_settings(tmp_path, cors_origins=origins))
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            preflight = await client.options(
                "/v1/chat/completions",
                headers={
                    "origin": "https://app.example.com",
                    "access-control-request-method": "POST",
                    "access-control-request-headers": "authorization, content-type",
                },
            )
        granted = preflight.headers.get("access-control-allow-origin")
        assert (granted == "https://app.example.com") is allowed
