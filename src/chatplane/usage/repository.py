"""Queries of the usage reports and of the price table, and the one place usage is scoped.

Usage rows are reached only through a `UsageScope`, made by one of its named constructors:
`of(principal)` (the caller's tenant: what a tenant admin sees), `own(principal)` (the
caller's own rows), `of_tenant(tenant_id)` and `all_tenants()` (for superadmins; the service
checks that). Every statement it builds starts from the scope's conditions, so a report of
another tenant's rows cannot be written with a scope made from a tenant admin.

Aggregation runs in SQL: one GROUP BY over `usage_records` (its (tenant_id, created_at),
(user_id, created_at) and (api_key_id, created_at) indexes bound the scan), then the names
of the groups' users, keys and tenants are joined to the grouped rows only."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Self

from sqlalchemy import ColumnElement, Select, String, delete, func, literal, literal_column, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import InstrumentedAttribute

from chatplane.auth.models import ApiKey, Tenant, User
from chatplane.auth.principal import Principal
from chatplane.usage.models import ModelPrice, UsageRecord

GROUPS = ("day", "model", "user", "key", "tenant", "source")
# The column each group is named by in a report row.
GROUP_COLUMNS = {
    "day": "day",
    "model": "model",
    "user": "user_id",
    "key": "api_key_id",
    "tenant": "tenant_id",
    "source": "source",
}
STREAM_BATCH = 1000


@dataclass(frozen=True, slots=True)
class UsageFilter:
    """Which records: `start <= created_at < end` (UTC), and optional equalities."""

    start: datetime
    end: datetime
    user_id: str | None = None
    api_key_id: str | None = None
    model: str | None = None


@dataclass(frozen=True, slots=True)
class UsageRow:
    """One group of a report (the fields it is not grouped by are None)."""

    requests: int
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float
    cached_requests: int = 0
    day: str | None = None
    model: str | None = None
    user_id: str | None = None
    user_email: str | None = None
    api_key_id: str | None = None
    key_name: str | None = None
    tenant_id: str | None = None
    tenant_slug: str | None = None
    source: str | None = None


def utc_day(session: AsyncSession) -> ColumnElement[str]:
    """The UTC day of a record as YYYY-MM-DD, on either database."""
    # Constants as SQL text, not bound parameters: Postgres must see the same expression in
    # the SELECT list and the GROUP BY, and two placeholders are two expressions to it.
    if session.get_bind().dialect.name == "postgresql":
        utc = func.timezone(literal_column("'UTC'"), UsageRecord.created_at)
        return func.to_char(utc, literal_column("'YYYY-MM-DD'"), type_=String)
    # SQLite keeps UTCDateTime values as UTC text, "YYYY-MM-DD HH:MM:SS.ffffff".
    return func.substr(
        UsageRecord.created_at, literal_column("1"), literal_column("10"), type_=String
    )


class UsageScope:
    """Statements over the usage rows a caller may see."""

    def __init__(
        self, session: AsyncSession, *, tenant_id: str | None, user_id: str | None = None
    ) -> None:
        self.session = session
        self.tenant_id = tenant_id
        self.user_id = user_id

    @classmethod
    def of(cls, session: AsyncSession, principal: Principal) -> Self:
        return cls(session, tenant_id=principal.tenant_id)

    @classmethod
    def own(cls, session: AsyncSession, principal: Principal) -> Self:
        return cls(session, tenant_id=principal.tenant_id, user_id=principal.user_id)

    @classmethod
    def of_tenant(cls, session: AsyncSession, tenant_id: str) -> Self:
        return cls(session, tenant_id=tenant_id)

    @classmethod
    def all_tenants(cls, session: AsyncSession) -> Self:
        return cls(session, tenant_id=None)

    def conditions(self, where: UsageFilter) -> list[ColumnElement[bool]]:
        conditions = [UsageRecord.created_at >= where.start, UsageRecord.created_at < where.end]
        if self.tenant_id is not None:
            conditions.append(UsageRecord.tenant_id == self.tenant_id)
        if self.user_id is not None:
            conditions.append(UsageRecord.user_id == self.user_id)
        if where.user_id is not None:
            conditions.append(UsageRecord.user_id == where.user_id)
        if where.api_key_id is not None:
            conditions.append(UsageRecord.api_key_id == where.api_key_id)
        if where.model is not None:
            conditions.append(UsageRecord.model == where.model)
        return conditions


class UsageRepository(UsageScope):
    async def totals(self, where: UsageFilter) -> UsageRow:
        statement = select(*_sums()).where(*self.conditions(where))
        row = (await self.session.execute(statement)).one()
        return _usage_row(row._mapping)

    async def groups(
        self, where: UsageFilter, group_by: Sequence[str], *, limit: int
    ) -> list[UsageRow]:
        statement = self._grouped(where, group_by).limit(limit)
        return [_usage_row(row._mapping) for row in (await self.session.execute(statement)).all()]

    async def stream_groups(
        self, where: UsageFilter, group_by: Sequence[str]
    ) -> AsyncIterator[UsageRow]:
        """Every group, read in batches (a CSV export of a long range)."""
        result = await self.session.stream(
            self._grouped(where, group_by).execution_options(yield_per=STREAM_BATCH)
        )
        async for partition in result.partitions(STREAM_BATCH):
            for row in partition:
                yield _usage_row(row._mapping)

    def _grouped(self, where: UsageFilter, group_by: Sequence[str]) -> Select[Any]:
        keys: dict[str, ColumnElement[Any] | InstrumentedAttribute[Any]] = {
            "day": utc_day(self.session),
            "model": UsageRecord.model,
            "user": UsageRecord.user_id,
            "key": UsageRecord.api_key_id,
            "tenant": UsageRecord.tenant_id,
            "source": UsageRecord.source,
        }
        grouped = (
            select(*[keys[name].label(GROUP_COLUMNS[name]) for name in group_by], *_sums())
            .where(*self.conditions(where))
            .group_by(*[keys[name] for name in group_by])
            .subquery("grouped")
        )
        # Names are joined to the groups, not to every record.
        statement: Select[Any] = select(grouped)
        if "user" in group_by:
            statement = statement.outerjoin(User, User.id == grouped.c.user_id).add_columns(
                User.email.label("user_email")
            )
        if "key" in group_by:
            statement = statement.outerjoin(ApiKey, ApiKey.id == grouped.c.api_key_id).add_columns(
                ApiKey.name.label("key_name")
            )
        if "tenant" in group_by:
            statement = statement.outerjoin(Tenant, Tenant.id == grouped.c.tenant_id).add_columns(
                Tenant.slug.label("tenant_slug")
            )
        order: list[Any] = [grouped.c.day] if "day" in group_by else []
        order += [grouped.c.cost_usd.desc(), grouped.c.requests.desc()]
        order += [grouped.c[GROUP_COLUMNS[name]] for name in group_by if name != "day"]
        return statement.order_by(*order)


def _sums() -> list[ColumnElement[Any]]:
    return [
        func.count().label("requests"),
        func.coalesce(func.sum(UsageRecord.prompt_tokens), literal(0)).label("prompt_tokens"),
        func.coalesce(func.sum(UsageRecord.completion_tokens), literal(0)).label(
            "completion_tokens"
        ),
        func.coalesce(func.sum(UsageRecord.cost_usd), literal(0.0)).label("cost_usd"),
        func.count().filter(UsageRecord.cached.is_(True)).label("cached_requests"),
    ]


def _usage_row(values: Any) -> UsageRow:
    return UsageRow(
        requests=int(values["requests"]),
        prompt_tokens=int(values["prompt_tokens"]),
        completion_tokens=int(values["completion_tokens"]),
        cost_usd=float(values["cost_usd"]),
        cached_requests=int(values["cached_requests"] or 0),
        day=values.get("day"),
        model=values.get("model"),
        user_id=values.get("user_id"),
        user_email=values.get("user_email"),
        api_key_id=values.get("api_key_id"),
        key_name=values.get("key_name"),
        tenant_id=values.get("tenant_id"),
        tenant_slug=values.get("tenant_slug"),
        source=values.get("source"),
    )


async def tenant_exists(session: AsyncSession, tenant_id: str) -> bool:
    return await session.get(Tenant, tenant_id) is not None


class PriceTable:
    """The operators' model prices: platform rows, no tenant owns them (superadmins only;
    the service checks)."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def all(self) -> Sequence[ModelPrice]:
        return (await self.session.scalars(select(ModelPrice).order_by(ModelPrice.model))).all()

    async def get(self, model: str) -> ModelPrice | None:
        return await self.session.get(ModelPrice, model)

    def add(self, price: ModelPrice) -> None:
        self.session.add(price)

    async def remove(self, model: str) -> bool:
        result = await self.session.execute(delete(ModelPrice).where(ModelPrice.model == model))
        return bool(getattr(result, "rowcount", 0))
