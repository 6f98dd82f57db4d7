"""The rules of limits and budgets in the admin API.

A tenant's own admins set the limits and budgets of its users and keys. What the whole
tenant may use (its overrides and its tenant-wide budgets) is the operator's (superadmin's)
to set; the tenant's admins see them. A superadmin names another tenant with `tenant_id`."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy.exc import IntegrityError

from chatplane.admin.repository import LimitsRepository
from chatplane.auth.audit import AuditLog
from chatplane.auth.principal import Principal
from chatplane.db.base import utcnow
from chatplane.db.engine import Database
from chatplane.errors import Conflict, Forbidden, NotFound, ValidationFailed
from chatplane.limits.models import BUDGET_PERIODS, BUDGET_SCOPES, Budget
from chatplane.limits.protocol import from_nano
from chatplane.limits.service import LIMIT_FIELDS, LimitService, budget_period

MAX_LIMIT = 10_000_000
MAX_BUDGET_USD = 10_000_000.0


@dataclass(frozen=True, slots=True)
class LimitsView:
    tenant_id: str
    overrides: dict[str, int | None]
    defaults: dict[str, int]
    effective: dict[str, int]
    response_cache: bool = False


@dataclass(frozen=True, slots=True)
class BudgetView:
    budget: Budget
    subject_label: str
    period_start: datetime | None
    spent_usd: float
    reserved_usd: float


def budget_not_found() -> NotFound:
    return NotFound("No such budget", code="budget_not_found")


def _check_limit(name: str, value: int | None) -> None:
    if value is not None and not 0 <= value <= MAX_LIMIT:
        raise ValidationFailed(f"'{name}' is between 0 (unlimited) and {MAX_LIMIT}", field=name)


class LimitsAdminService:
    def __init__(self, db: Database, limits: LimitService, audit: AuditLog) -> None:
        self.db = db
        self.limits = limits
        self.audit = audit

    def _tenant(self, actor: Principal, tenant_id: str | None) -> Principal:
        """The actor, acting on its own tenant or (a superadmin) on the one named."""
        if not (actor.is_admin and actor.may("admin")):
            raise Forbidden("Only admins of the organisation may do this", code="not_admin")
        if tenant_id is None or tenant_id == actor.tenant_id:
            return actor
        if not actor.is_superadmin:
            raise NotFound("No such tenant", code="tenant_not_found")
        return dataclasses.replace(actor, tenant_id=tenant_id)

    @staticmethod
    def _operator(actor: Principal) -> None:
        if not actor.is_superadmin:
            raise Forbidden(
                "Only the platform's operators set what a whole organisation may use",
                code="not_superadmin",
            )

    # Tenant limits --------------------------------------------------------------------------

    async def view(self, actor: Principal, tenant_id: str | None = None) -> LimitsView:
        scope = self._tenant(actor, tenant_id)
        async with self.db.session() as session:
            row = await LimitsRepository(session, scope).overrides()
        overrides = {name: getattr(row, name) if row else None for name in LIMIT_FIELDS}
        defaults = self.limits.defaults()
        effective = {
            name: defaults[name] if value is None else value for name, value in overrides.items()
        }
        cache = bool(row.response_cache) if row else False
        return LimitsView(scope.tenant_id, overrides, defaults, effective, cache)

    async def set_overrides(
        self,
        actor: Principal,
        values: dict[str, int | bool | None],
        tenant_id: str | None = None,
    ) -> LimitsView:
        """What the whole tenant may use is the operator's to set; whether its calls use
        the response cache (which only lowers what they cost) is also its admins'."""
        if set(values) - {"response_cache"}:
            self._operator(actor)
        scope = self._tenant(actor, tenant_id)
        for name, value in values.items():
            if name == "response_cache":
                values[name] = bool(value)
                continue
            if name not in LIMIT_FIELDS:
                raise ValidationFailed(f"Unknown limit '{name}'", field=name)
            _check_limit(name, value)
        async with self.db.session() as session:
            repo = LimitsRepository(session, scope)
            row = await repo.overrides() or repo.add_overrides()
            for name, value in values.items():
                setattr(row, name, value)
            row.updated_at = utcnow()
            try:
                await session.commit()
            except IntegrityError as exc:  # the tenant does not exist
                raise NotFound("No such tenant", code="tenant_not_found") from exc
        await self.limits.invalidate(scope.tenant_id)
        await self.audit.record(
            "limits.changed", tenant_id=scope.tenant_id, actor_id=actor.user_id, limits=values
        )
        return await self.view(actor, scope.tenant_id)

    async def set_key_limits(
        self, actor: Principal, key_id: str, values: dict[str, int | bool | None]
    ) -> dict[str, int | bool | None]:
        scope = self._tenant(actor, None)
        for name, value in values.items():
            if name != "response_cache":
                _check_limit(name, value)
        async with self.db.session() as session:
            repo = LimitsRepository(session, scope)
            key = await repo.get_key(key_id)
            if key is None:
                raise NotFound("No such API key", code="key_not_found")
            for name, value in values.items():
                setattr(key, name, value)
            result = {
                "rpm": key.rpm,
                "tpm": key.tpm,
                "max_concurrent": key.max_concurrent,
                "response_cache": key.response_cache,
            }
            await session.commit()
        await self.limits.invalidate(scope.tenant_id)
        await self.audit.record(
            "key.limits_changed",
            tenant_id=scope.tenant_id,
            actor_id=actor.user_id,
            subject=key.prefix,
            limits=values,
        )
        return result

    # Budgets ----------------------------------------------------------------------------------

    async def budgets(self, actor: Principal, tenant_id: str | None = None) -> list[BudgetView]:
        scope = self._tenant(actor, tenant_id)
        async with self.db.session() as session:
            repo = LimitsRepository(session, scope)
            budgets = await repo.budgets()
            labels = await repo.labels(budgets)
        return [await self._view(b, labels) for b in budgets]

    async def _view(self, budget: Budget, labels: dict[str, str]) -> BudgetView:
        period = budget_period(budget.scope, budget.subject_id, budget.period, datetime.now(UTC))
        spent, reserved = await self.limits.budget_usage(budget.tenant_id, period)
        label = "The organisation" if budget.scope == "tenant" else labels.get(budget.subject_id)
        return BudgetView(
            budget,
            label or budget.subject_id,
            period.start,
            from_nano(spent),
            from_nano(reserved),
        )

    async def create_budget(
        self,
        actor: Principal,
        *,
        scope_name: str,
        subject_id: str | None,
        period: str,
        limit_usd: float,
        tenant_id: str | None = None,
    ) -> BudgetView:
        scope = self._tenant(actor, tenant_id)
        _check_budget(scope_name, period, limit_usd)
        if scope_name == "tenant":
            self._operator(actor)
            subject_id = scope.tenant_id
        async with self.db.session() as session:
            repo = LimitsRepository(session, scope)
            if not subject_id or not await self._subject_exists(repo, scope_name, subject_id):
                raise NotFound(
                    f"No such {scope_name} in this organisation", code="subject_not_found"
                )
            budget = repo.add(
                Budget(scope=scope_name, subject_id=subject_id, period=period, limit_usd=limit_usd)
            )
            try:
                await session.commit()
            except IntegrityError as exc:
                raise Conflict(
                    f"This {scope_name} has a {period} budget already; change it instead",
                    code="budget_exists",
                ) from exc
            labels = await repo.labels([budget])
        await self._changed("budget.created", actor, budget)
        return await self._view(budget, labels)

    async def update_budget(
        self, actor: Principal, budget_id: str, limit_usd: float, tenant_id: str | None = None
    ) -> BudgetView:
        scope = self._tenant(actor, tenant_id)
        async with self.db.session() as session:
            repo = LimitsRepository(session, scope)
            budget = await self._changeable(repo, actor, budget_id)
            _check_budget(budget.scope, budget.period, limit_usd)
            budget.limit_usd = limit_usd
            budget.updated_at = utcnow()
            await session.commit()
            labels = await repo.labels([budget])
        await self._changed("budget.changed", actor, budget)
        return await self._view(budget, labels)

    async def delete_budget(
        self, actor: Principal, budget_id: str, tenant_id: str | None = None
    ) -> None:
        scope = self._tenant(actor, tenant_id)
        async with self.db.session() as session:
            repo = LimitsRepository(session, scope)
            budget = await self._changeable(repo, actor, budget_id)
            await repo.delete_budget(budget_id)
            await session.commit()
        await self._changed("budget.deleted", actor, budget)

    @staticmethod
    async def _subject_exists(repo: LimitsRepository, scope_name: str, subject_id: str) -> bool:
        if scope_name == "tenant":
            return await repo.tenant_exists()
        if scope_name == "user":
            return await repo.user_exists(subject_id)
        return await repo.get_key(subject_id) is not None

    async def _changeable(self, repo: LimitsRepository, actor: Principal, budget_id: str) -> Budget:
        """The tenant's budget `budget_id`, if the actor may change it (a tenant-wide one is
        the operator's)."""
        budget = await repo.budget(budget_id)
        if budget is None:
            raise budget_not_found()
        if budget.scope == "tenant":
            self._operator(actor)
        return budget

    async def _changed(self, action: str, actor: Principal, budget: Budget) -> None:
        """After a change: this process's policy cache forgets the tenant, and it is audited."""
        await self.limits.invalidate(budget.tenant_id)
        await self.audit.record(
            action,
            tenant_id=budget.tenant_id,
            actor_id=actor.user_id,
            subject=f"{budget.scope}:{budget.subject_id}",
            period=budget.period,
            limit_usd=budget.limit_usd,
        )


def _check_budget(scope_name: str, period: str, limit_usd: float) -> None:
    if scope_name not in BUDGET_SCOPES:
        raise ValidationFailed(f"'scope' is one of {list(BUDGET_SCOPES)}", field="scope")
    if period not in BUDGET_PERIODS:
        raise ValidationFailed(f"'period' is one of {list(BUDGET_PERIODS)}", field="period")
    if not 0 <= limit_usd <= MAX_BUDGET_USD:
        raise ValidationFailed(
            f"'limit_usd' is between 0 and {MAX_BUDGET_USD:.0f}", field="limit_usd"
        )


__all__ = ["BudgetView", "LimitsAdminService", "LimitsView"]
