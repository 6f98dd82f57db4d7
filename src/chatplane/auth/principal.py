"""Who is calling: the result of authentication, passed to services."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Principal:
    user_id: str
    tenant_id: str
    email: str
    role: str
    is_superadmin: bool = False
    api_key_id: str | None = None
    session_id: str | None = None
    via_cookie: bool = False
    # What the credential may do: an API key carries its own scopes; a login may do all.
    scopes: frozenset[str] = frozenset({"chat", "admin"})

    @property
    def is_admin(self) -> bool:
        return self.is_superadmin or self.role in ("owner", "admin")

    def may(self, scope: str) -> bool:
        return scope in self.scopes
