"""The one upstream HTTP client session of a process.

Every adapter and the gateway's passthrough share it, so connections to an upstream are
pooled and kept alive across requests. Bodies are never decompressed: we ask for
`identity` and forward or parse the bytes as they come.

`UpstreamHttp` makes the session on first use: a process without an upstream (the embedded
default, on the mock models) never loads aiohttp's client (some MB of memory).
"""

from __future__ import annotations

import asyncio
from functools import cached_property
from typing import TYPE_CHECKING

from chatplane import __version__
from chatplane.settings import Settings

if TYPE_CHECKING:
    import aiohttp

# Total open upstream connections per process; one long stream holds one connection, so
# this bounds concurrent upstream streams. No separate per-host cap: a gateway usually
# talks to one upstream.
DEFAULT_CONNECTION_LIMIT = 1000
DEFAULT_KEEPALIVE_S = 30.0
DEFAULT_DNS_CACHE_S = 300


def upstream_timeout(settings: Settings) -> aiohttp.ClientTimeout:
    """No total deadline (a stream can run for minutes); bounded connect and idle gaps.

    `connect` also bounds the wait for a free pooled connection, so a saturated pool
    fails as a timeout instead of queueing forever.
    """
    import aiohttp

    return aiohttp.ClientTimeout(
        total=None,
        connect=settings.upstream_connect_timeout_s,
        sock_connect=settings.upstream_connect_timeout_s,
        sock_read=settings.upstream_read_timeout_s,
    )


def create_upstream_session(
    settings: Settings,
    *,
    limit: int = DEFAULT_CONNECTION_LIMIT,
    keepalive_timeout_s: float = DEFAULT_KEEPALIVE_S,
) -> aiohttp.ClientSession:
    """Build the shared session. Call it once per process, inside the running event loop
    (the composition root's lifespan), and close it on shutdown."""
    asyncio.get_running_loop()  # fail here, clearly, rather than deep inside aiohttp
    import aiohttp

    connector = aiohttp.TCPConnector(
        limit=limit,
        limit_per_host=0,
        keepalive_timeout=keepalive_timeout_s,
        ttl_dns_cache=DEFAULT_DNS_CACHE_S,
    )
    return aiohttp.ClientSession(
        connector=connector,
        timeout=upstream_timeout(settings),
        auto_decompress=False,
        raise_for_status=False,
        headers={
            "Accept-Encoding": "identity",
            "User-Agent": f"chatplane/{__version__}",
        },
    )


class UpstreamHttp:
    """The process's shared upstream session, made (inside the running loop) when something
    first needs it: an adapter of a configured upstream, an `openai:` embedder, an SSO
    sign-in. The adapters keep the session itself, so a streamed request pays nothing for
    the laziness."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._closed = False

    @property
    def started(self) -> bool:
        return "session" in self.__dict__

    @cached_property
    def session(self) -> aiohttp.ClientSession:
        # A cached_property is stored in the instance: later reads are plain attribute reads.
        if self._closed:
            raise RuntimeError("the upstream HTTP session is closed")
        return create_upstream_session(self._settings)

    async def close(self) -> None:
        if not self._closed and self.started:
            await self.session.close()
        self._closed = True


def session_of(http: UpstreamHttp | aiohttp.ClientSession) -> aiohttp.ClientSession:
    """The session behind `http` (made now if it was not yet)."""
    return http.session if isinstance(http, UpstreamHttp) else http
