"""Who is on the other end of a request: the client IP (through trusted proxies only) and
the user agent."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class ClientInfo:
    ip: str | None
    user_agent: str | None


class ClientResolver:
    """`X-Forwarded-For` is believed only when the peer is a configured proxy; then the
    client is the right-most address that is not a proxy (the left part is client-made)."""

    def __init__(self, trusted_proxies: Iterable[str]) -> None:
        self._proxies: list[Network] = [
            ipaddress.ip_network(entry.strip(), strict=False)
            for entry in trusted_proxies
            if entry.strip()
        ]

    def _trusted(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in network for network in self._proxies)

    def resolve(self, peer: str | None, headers: Mapping[str, str]) -> ClientInfo:
        user_agent = (headers.get("user-agent") or "")[:300] or None
        ip = peer
        if peer is not None and self._proxies and self._trusted(peer):
            forwarded = headers.get("x-forwarded-for", "")
            for hop in reversed([part.strip() for part in forwarded.split(",") if part.strip()]):
                ip = hop
                if not self._trusted(hop):
                    break
        return ClientInfo(ip=ip, user_agent=user_agent)
