"""HTTP routes of limits and budgets in the admin API (HTTP only: the rules live in
`chatplane.admin.limits`)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Response

from chatplane.admin.limits import BudgetView, LimitsAdminService, LimitsView
from chatplane.admin.schemas import (
    BudgetIn,
    BudgetOut,
    BudgetPatch,
    KeyLimitsIn,
    KeyLimitsOut,
    LimitsOut,
    LimitValues,
)
from chatplane.auth.deps import AdminPrincipal, ServicesDep

router = APIRouter(prefix="/api/admin", tags=["admin"])

NO_CONTENT = 204
TenantQuery = Annotated[
    str | None,
    Query(max_length=32, description="Another tenant's id (superadmins only)"),
]


async def limits_service(services: ServicesDep) -> LimitsAdminService:
    return LimitsAdminService(services.db, services.limits, services.audit)


LimitsDep = Annotated[LimitsAdminService, Depends(limits_service)]


def _limits_out(view: LimitsView) -> LimitsOut:
    return LimitsOut(
        tenant_id=view.tenant_id,
        overrides=view.overrides,
        defaults=view.defaults,
        effective=view.effective,
        response_cache=view.response_cache,
    )


def _budget_out(view: BudgetView) -> BudgetOut:
    budget = view.budget
    return BudgetOut(
        id=budget.id,
        scope=budget.scope,
        subject_id=budget.subject_id,
        subject_label=view.subject_label,
        period=budget.period,
        limit_usd=float(budget.limit_usd),
        spent_usd=view.spent_usd,
        reserved_usd=view.reserved_usd,
        period_start=view.period_start,
        created_at=budget.created_at,
    )


@router.get("/limits", response_model=LimitsOut)
async def get_limits(
    actor: AdminPrincipal, limits: LimitsDep, tenant_id: TenantQuery = None
) -> LimitsOut:
    """The organisation's limits: its overrides, the server's defaults, and what applies."""
    return _limits_out(await limits.view(actor, tenant_id))


@router.put("/limits", response_model=LimitsOut)
async def set_limits(
    body: LimitValues, actor: AdminPrincipal, limits: LimitsDep, tenant_id: TenantQuery = None
) -> LimitsOut:
    """Set the organisation's overrides (superadmins). Fields left out keep their value."""
    values = body.model_dump(exclude_unset=True)
    return _limits_out(await limits.set_overrides(actor, values, tenant_id))


@router.patch("/keys/{key_id}/limits", response_model=KeyLimitsOut)
async def set_key_limits(
    key_id: str, body: KeyLimitsIn, actor: AdminPrincipal, limits: LimitsDep
) -> KeyLimitsOut:
    """A key's own requests/minute, tokens/minute and concurrent requests."""
    values = body.model_dump(exclude_unset=True)
    return KeyLimitsOut(**await limits.set_key_limits(actor, key_id, values))


@router.get("/budgets", response_model=list[BudgetOut])
async def list_budgets(
    actor: AdminPrincipal, limits: LimitsDep, tenant_id: TenantQuery = None
) -> list[BudgetOut]:
    """The organisation's budgets with what was spent and is reserved in the current period."""
    return [_budget_out(view) for view in await limits.budgets(actor, tenant_id)]


@router.post("/budgets", status_code=201, response_model=BudgetOut)
async def create_budget(
    body: BudgetIn, actor: AdminPrincipal, limits: LimitsDep, tenant_id: TenantQuery = None
) -> BudgetOut:
    """A budget for the organisation (superadmins), a member or an API key: at most
    `limit_usd` per UTC day, UTC month, or ever."""
    view = await limits.create_budget(
        actor,
        scope_name=body.scope,
        subject_id=body.subject_id,
        period=body.period,
        limit_usd=body.limit_usd,
        tenant_id=tenant_id,
    )
    return _budget_out(view)


@router.patch("/budgets/{budget_id}", response_model=BudgetOut)
async def update_budget(
    budget_id: str,
    body: BudgetPatch,
    actor: AdminPrincipal,
    limits: LimitsDep,
    tenant_id: TenantQuery = None,
) -> BudgetOut:
    return _budget_out(await limits.update_budget(actor, budget_id, body.limit_usd, tenant_id))


@router.delete("/budgets/{budget_id}", status_code=NO_CONTENT)
async def delete_budget(
    budget_id: str, actor: AdminPrincipal, limits: LimitsDep, tenant_id: TenantQuery = None
) -> Response:
    await limits.delete_budget(actor, budget_id, tenant_id)
    return Response(status_code=NO_CONTENT)
