"""HTTP routes of usage and costs: `/api/admin/usage` (a tenant's usage; every tenant's for
superadmins), its CSV export, `/api/usage` (the caller's own) and `/api/admin/prices` (the
operators' price table). HTTP only: the rules and the scoping live in the services and the
repository."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Response
from fastapi.responses import StreamingResponse

from chatplane.auth.deps import AdminPrincipal, CurrentPrincipal, ServicesDep
from chatplane.usage.export import csv_chunks
from chatplane.usage.prices import PriceService
from chatplane.usage.schemas import (
    PriceIn,
    PriceOut,
    UsageReport,
    price_out,
    row_out,
    totals_out,
)
from chatplane.usage.service import Report, UsageQuery, UsageService

router = APIRouter(tags=["usage"])

NO_CONTENT = 204


async def usage_service(services: ServicesDep) -> UsageService:
    return UsageService(services.db)


async def price_service(services: ServicesDep) -> PriceService:
    return PriceService(services.db, services.registry, services.endpoints, services.audit)


UsageServiceDep = Annotated[UsageService, Depends(usage_service)]
PriceServiceDep = Annotated[PriceService, Depends(price_service)]

First = Annotated[
    str | None,
    Query(alias="from", max_length=32, description="First day, YYYY-MM-DD (UTC); 30 days ago"),
]
Last = Annotated[
    str | None, Query(max_length=32, description="Last day, YYYY-MM-DD (UTC), included; today")
]
Id = Annotated[str | None, Query(max_length=64)]
ModelName = Annotated[str | None, Query(max_length=200)]


def _report(query: UsageQuery, result: Report) -> UsageReport:
    return UsageReport.model_validate(
        {
            "from": query.first_day,
            "to": query.last_day,
            "group_by": list(query.group_by),
            "rows": [row_out(row, query.group_by) for row in result.rows],
            "totals": totals_out(result.totals),
            "truncated": result.truncated,
        }
    )


# A row has the fields of its groups only (a grouped field may be null: a turn has no key).
@router.get(
    "/api/admin/usage",
    response_model=UsageReport,
    response_model_exclude_unset=True,
    tags=["admin"],
)
async def tenant_usage(
    actor: AdminPrincipal,
    usage: UsageServiceDep,
    first: First = None,
    to: Last = None,
    group_by: Annotated[
        str | None,
        Query(
            max_length=100,
            description="Up to 3 of day,model,user,key,tenant,source (tenant: superadmins)",
        ),
    ] = None,
    tenant_id: Annotated[
        str | None, Query(max_length=64, description="Superadmins: one tenant (default: all)")
    ] = None,
    user_id: Id = None,
    api_key_id: Id = None,
    model: ModelName = None,
) -> UsageReport:
    """Requests, tokens and cost of the organisation, grouped; the totals of the range."""
    query = await usage.query(
        actor,
        own=False,
        first=first,
        last=to,
        group_by=group_by,
        tenant_id=tenant_id,
        user_id=user_id,
        api_key_id=api_key_id,
        model=model,
    )
    return _report(query, await usage.report(query))


@router.get(
    "/api/admin/usage.csv",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/csv": {}}, "description": "One line per group"}},
    tags=["admin"],
)
async def tenant_usage_csv(
    actor: AdminPrincipal,
    usage: UsageServiceDep,
    first: First = None,
    to: Last = None,
    tenant_id: Annotated[str | None, Query(max_length=64)] = None,
    user_id: Id = None,
    api_key_id: Id = None,
    model: ModelName = None,
) -> StreamingResponse:
    """The same records as CSV: one line per day, model, user and key (and tenant, across
    tenants), with emails and key names."""
    query = await usage.query(
        actor,
        own=False,
        first=first,
        last=to,
        group_by="",
        tenant_id=tenant_id,
        user_id=user_id,
        api_key_id=api_key_id,
        model=model,
    )
    name = f"usage-{query.first_day.isoformat()}-{query.last_day.isoformat()}.csv"
    return StreamingResponse(
        csv_chunks(usage.export(query), query.export_groups),
        media_type="text/csv; charset=utf-8",
        headers={
            "content-disposition": f'attachment; filename="{name}"',
            "cache-control": "no-store",
        },
    )


@router.get("/api/usage", response_model=UsageReport, response_model_exclude_unset=True)
async def own_usage(
    actor: CurrentPrincipal,
    usage: UsageServiceDep,
    first: First = None,
    to: Last = None,
    group_by: Annotated[
        str | None, Query(max_length=100, description="Up to 3 of day,model,key")
    ] = None,
    api_key_id: Id = None,
    model: ModelName = None,
) -> UsageReport:
    """The caller's own requests, tokens and cost."""
    query = await usage.query(
        actor,
        own=True,
        first=first,
        last=to,
        group_by=group_by,
        api_key_id=api_key_id,
        model=model,
    )
    return _report(query, await usage.report(query))


# Prices (superadmins).

PriceModel = Annotated[str, Path(max_length=200, description="A model name")]


@router.get("/api/admin/prices", response_model=list[PriceOut], tags=["admin"])
async def list_prices(actor: AdminPrincipal, prices: PriceServiceDep) -> list[PriceOut]:
    """Every model with its price now and where that price comes from."""
    return [price_out(pricing, updated) for pricing, updated in await prices.prices(actor)]


@router.put("/api/admin/prices/{model:path}", response_model=PriceOut, tags=["admin"])
async def set_price(
    model: PriceModel, body: PriceIn, actor: AdminPrincipal, prices: PriceServiceDep
) -> PriceOut:
    """Price a model (USD per million tokens); wins over every other source, at once."""
    pricing, updated = await prices.set_price(
        actor,
        model,
        input_usd=body.input_usd_per_mtok,
        output_usd=body.output_usd_per_mtok,
    )
    return price_out(pricing, updated)


@router.delete("/api/admin/prices/{model:path}", status_code=NO_CONTENT, tags=["admin"])
async def remove_price(
    model: PriceModel, actor: AdminPrincipal, prices: PriceServiceDep
) -> Response:
    """Back to the price from the settings, the config file or the model (else 0)."""
    await prices.remove_price(actor, model)
    return Response(status_code=NO_CONTENT)
