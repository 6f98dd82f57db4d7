"""The one upstream HTTP client session of a process.

Every adapter and the gateway's passthrough share it, so connections to an upstream are
pooled and kept alive across requests. Bodies are never decompressed: we ask for
`identity` and forward or parse the bytes as they come.
"""

from __future__ import annotations

import asyncio

import aiohttp

from chatplane import __version__
from chatplane.settings import Settings

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
