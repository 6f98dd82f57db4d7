"""Who is on the other end of a request: the client IP (through trusted proxies only) and
the user agent."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from starlette.types import Scope

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

    def client_ip(self, peer: str | None, forwarded_for: str) -> str | None:
        if peer is None or not self._proxies or not self._trusted(peer):
            return peer
        ip = peer
        for hop in reversed([part.strip() for part in forwarded_for.split(",") if part.strip()]):
            ip = hop
            if not self._trusted(hop):
                break
        return ip

    def rewrite(self, scope: Scope) -> None:
        """Put the real client address and scheme into the ASGI scope when the request
        came through a trusted proxy (`X-Forwarded-For`, `X-Forwarded-Proto`)."""
        client = scope.get("client")
        peer = client[0] if client else None
        if peer is None or not self._proxies or not self._trusted(peer):
            return
        forwarded_for = forwarded_proto = ""
        for name, value in scope["headers"]:
            if name == b"x-forwarded-for":
                forwarded_for = value.decode("latin-1")
            elif name == b"x-forwarded-proto":
                forwarded_proto = value.decode("latin-1").strip().lower()
        ip = self.client_ip(peer, forwarded_for)
        if ip is not None and ip != peer:
            scope["client"] = (ip, 0)
        if forwarded_proto in ("http", "https"):
            secure = forwarded_proto == "https"
            if scope["type"] == "websocket":
                scope["scheme"] = "wss" if secure else "ws"
            else:
                scope["scheme"] = forwarded_proto


def client_info(client_ip: str | None, headers: Mapping[str, str]) -> ClientInfo:
    return ClientInfo(ip=client_ip, user_agent=(headers.get("user-agent") or "")[:300] or None)
