"""`/api/admin/models`: models an operator adds at run time (superadmins only). Keys go in,
never out: responses show only the last four characters."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Response
from pydantic import BaseModel, Field

from chatplane.auth.deps import AdminPrincipal, ServicesDep
from chatplane.auth.principal import Principal
from chatplane.errors import Forbidden
from chatplane.providers.endpoints import EndpointChange
from chatplane.providers.models import ModelEndpoint

router = APIRouter(prefix="/api/admin/models", tags=["admin"])

ProviderName = Literal["openai", "anthropic"]


async def superadmin(principal: AdminPrincipal) -> Principal:
    if not principal.is_superadmin:
        raise Forbidden("Only platform operators manage models", code="not_superadmin")
    return principal


Operator = Annotated[Principal, Depends(superadmin)]


class ModelEndpointIn(BaseModel):
    name: str = Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9._:/-]+$")
    provider: ProviderName = "openai"
    upstream_model: str | None = Field(default=None, min_length=1, max_length=200)
    base_url: str | None = Field(default=None, min_length=8, max_length=500)
    api_key: str | None = Field(default=None, min_length=1, max_length=1000)
    input_usd_per_mtok: float = Field(default=0.0, ge=0)
    output_usd_per_mtok: float = Field(default=0.0, ge=0)


class ModelEndpointPatch(BaseModel):
    provider: ProviderName | None = None
    upstream_model: str | None = Field(default=None, min_length=1, max_length=200)
    base_url: str | None = Field(default=None, min_length=8, max_length=500)
    api_key: str | None = Field(default=None, max_length=1000, description='"" removes the key')
    input_usd_per_mtok: float | None = Field(default=None, ge=0)
    output_usd_per_mtok: float | None = Field(default=None, ge=0)


class ModelEndpointOut(BaseModel):
    id: str
    name: str
    provider: str
    upstream_model: str
    base_url: str
    api_key_hint: str | None
    input_usd_per_mtok: float
    output_usd_per_mtok: float
    created_at: datetime
    updated_at: datetime


def _out(services: ServicesDep, row: ModelEndpoint) -> ModelEndpointOut:
    return ModelEndpointOut(
        id=row.id,
        name=row.name,
        provider=row.provider,
        upstream_model=row.upstream_model,
        base_url=row.base_url,
        api_key_hint=services.endpoints.key_hint(row),
        input_usd_per_mtok=row.input_usd_per_mtok,
        output_usd_per_mtok=row.output_usd_per_mtok,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


def _change(body: ModelEndpointIn | ModelEndpointPatch) -> EndpointChange:
    return EndpointChange(
        provider=body.provider,
        upstream_model=body.upstream_model,
        base_url=body.base_url,
        api_key=body.api_key,
        input_usd_per_mtok=body.input_usd_per_mtok,
        output_usd_per_mtok=body.output_usd_per_mtok,
    )


@router.get("", response_model=list[ModelEndpointOut])
async def list_models(_: Operator, services: ServicesDep) -> list[ModelEndpointOut]:
    return [_out(services, row) for row in await services.endpoints.list()]


@router.post("", status_code=201, response_model=ModelEndpointOut)
async def add_model(
    body: ModelEndpointIn, operator: Operator, services: ServicesDep
) -> ModelEndpointOut:
    row = await services.endpoints.create(operator, body.name, _change(body))
    return _out(services, row)


@router.patch("/{endpoint_id}", response_model=ModelEndpointOut)
async def change_model(
    endpoint_id: str, body: ModelEndpointPatch, operator: Operator, services: ServicesDep
) -> ModelEndpointOut:
    row = await services.endpoints.update(operator, endpoint_id, _change(body))
    return _out(services, row)


@router.delete("/{endpoint_id}", status_code=204)
async def remove_model(endpoint_id: str, operator: Operator, services: ServicesDep) -> Response:
    await services.endpoints.delete(operator, endpoint_id)
    return Response(status_code=204)
