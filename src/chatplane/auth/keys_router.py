"""HTTP routes of a user's own API keys (`/api/keys`): any logged-in user."""

from __future__ import annotations

from fastapi import APIRouter, Response

from chatplane.admin.deps import KeyServiceDep
from chatplane.admin.schemas import key_created, key_out
from chatplane.auth.deps import CurrentPrincipal
from chatplane.auth.schemas import ApiKeyCreated, ApiKeyIn, ApiKeyOut

router = APIRouter(prefix="/api", tags=["keys"])


@router.get("/keys", response_model=list[ApiKeyOut])
async def my_keys(principal: CurrentPrincipal, keys: KeyServiceDep) -> list[ApiKeyOut]:
    """The caller's API keys, revoked ones included, newest first (never the key itself)."""
    return [key_out(key) for key in await keys.own_keys(principal)]


@router.post("/keys", status_code=201, response_model=ApiKeyCreated)
async def create_key(
    body: ApiKeyIn, principal: CurrentPrincipal, keys: KeyServiceDep
) -> ApiKeyCreated:
    """A new key; `key` is shown this once. Only admins may give a key the 'admin' scope."""
    key, plaintext = await keys.create_own_key(
        principal,
        name=body.name,
        scopes=frozenset(body.scopes),
        expires_in_days=body.expires_in_days,
    )
    return key_created(key, plaintext)


@router.delete("/keys/{key_id}", status_code=204)
async def revoke_key(key_id: str, principal: CurrentPrincipal, keys: KeyServiceDep) -> Response:
    """Revoke one of the caller's keys; it stops working at once."""
    await keys.revoke_own_key(principal, key_id)
    return Response(status_code=204)
