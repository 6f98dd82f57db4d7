"""The rules of usage reports: who may see which records, over which days, grouped how.

A report is asked for in two steps: `UsageService.query` checks the caller and the request
and answers a `UsageQuery` (or a 4xx error), then `report` or `export` runs it. An export is
a stream, so everything that can fail for the caller fails before the first byte."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta

from sqlalchemy.ext.asyncio import AsyncSession

from chatplane.auth.principal import Principal
from chatplane.db.base import utcnow
from chatplane.db.engine import Database
from chatplane.errors import Forbidden, NotFound, ValidationFailed
from chatplane.usage.repository import GROUPS, UsageFilter, UsageRepository, UsageRow, tenant_exists

DEFAULT_DAYS = 30
MAX_DAYS = 400
MAX_GROUPS = 3
MAX_ROWS = 10_000
OWN_GROUPS = ("day", "model", "key")
# A CSV export: one row per day x model x user x key (x tenant, across tenants).
EXPORT_GROUPS = ("day", "model", "user", "key")


@dataclass(frozen=True, slots=True)
class UsageQuery:
    actor: Principal
    scope: str  # "own" | "tenant" | "all"
    tenant_id: str | None  # of the "tenant" scope
    first_day: date
    last_day: date  # inclusive
    group_by: tuple[str, ...]
    where: UsageFilter

    @property
    def export_groups(self) -> tuple[str, ...]:
        if self.scope == "all":
            return ("day", "tenant", "model", "user", "key")
        return EXPORT_GROUPS


@dataclass(frozen=True, slots=True)
class Report:
    rows: list[UsageRow]
    totals: UsageRow
    truncated: bool


def require_admin(actor: Principal) -> None:
    if not (actor.is_admin and actor.may("admin")):
        raise Forbidden("Only admins of the organisation may do this", code="not_admin")


def is_operator(actor: Principal) -> bool:
    return actor.is_superadmin and actor.may("admin")


def parse_day(value: str | None, field: str) -> date | None:
    if value is None or value == "":
        return None
    try:
        return date.fromisoformat(value)
    except ValueError as exc:
        raise ValidationFailed(
            f"{field} is a date: YYYY-MM-DD", code="invalid_date", field=field
        ) from exc


def day_range(first: str | None, last: str | None, *, today: date) -> tuple[date, date]:
    """`from`..`to` inclusive; the last 30 days (today included) by default."""
    first_day, last_day = parse_day(first, "from"), parse_day(last, "to")
    if last_day is None:
        last_day = max(today, first_day) if first_day is not None else today
    if first_day is None:
        first_day = last_day - timedelta(days=DEFAULT_DAYS - 1)
    if first_day > last_day:
        raise ValidationFailed("from is after to", code="invalid_range", field="from")
    if (last_day - first_day).days + 1 > MAX_DAYS:
        raise ValidationFailed(
            f"A report covers at most {MAX_DAYS} days", code="range_too_long", field="from"
        )
    return first_day, last_day


def parse_groups(text: str | None, allowed: tuple[str, ...]) -> tuple[str, ...]:
    if text is None:
        return ("day",)
    names = tuple(part.strip() for part in text.split(",") if part.strip())
    unknown = [name for name in names if name not in allowed]
    if unknown or len(set(names)) != len(names) or len(names) > MAX_GROUPS:
        raise ValidationFailed(
            f"group_by is up to {MAX_GROUPS} of {', '.join(allowed)}, each once",
            code="invalid_group_by",
            field="group_by",
        )
    return names


def day_start(day: date) -> datetime:
    return datetime.combine(day, time.min, tzinfo=UTC)


class UsageService:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def query(
        self,
        actor: Principal,
        *,
        own: bool,
        first: str | None,
        last: str | None,
        group_by: str | None,
        tenant_id: str | None = None,
        user_id: str | None = None,
        api_key_id: str | None = None,
        model: str | None = None,
    ) -> UsageQuery:
        """The caller's own usage (`own`), else its tenant's; a superadmin's is any one
        tenant's (`tenant_id`) or every tenant's."""
        allowed: tuple[str, ...] = OWN_GROUPS
        if own:
            scope = "own"
        else:
            require_admin(actor)
            scope, allowed = ("all" if is_operator(actor) else "tenant"), GROUPS
        if tenant_id is not None and not own:
            if scope == "tenant" and tenant_id != actor.tenant_id:
                raise Forbidden(
                    "Only superadmins may see other organisations' usage", code="not_superadmin"
                )
            scope = "tenant"
        names = parse_groups(group_by, allowed)
        if "tenant" in names and not is_operator(actor):
            raise Forbidden("Only superadmins may group by tenant", code="not_superadmin")
        first_day, last_day = day_range(first, last, today=utcnow().date())
        if scope == "tenant" and tenant_id is not None and is_operator(actor):
            async with self.db.session() as session:
                if not await tenant_exists(session, tenant_id):
                    raise NotFound("No such tenant", code="tenant_not_found")
        return UsageQuery(
            actor=actor,
            scope=scope,
            tenant_id=tenant_id or actor.tenant_id,
            first_day=first_day,
            last_day=last_day,
            group_by=names,
            where=UsageFilter(
                start=day_start(first_day),
                end=day_start(last_day + timedelta(days=1)),
                user_id=user_id,
                api_key_id=api_key_id,
                model=model,
            ),
        )

    async def report(self, query: UsageQuery) -> Report:
        async with self.db.session() as session:
            repo = self._repository(session, query)
            totals = await repo.totals(query.where)
            rows: list[UsageRow] = []
            if query.group_by:
                rows = await repo.groups(query.where, query.group_by, limit=MAX_ROWS + 1)
        return Report(rows=rows[:MAX_ROWS], totals=totals, truncated=len(rows) > MAX_ROWS)

    async def export(self, query: UsageQuery) -> AsyncIterator[UsageRow]:
        """Every group of `query.export_groups`, streamed from the database."""
        async with self.db.session() as session:
            repo = self._repository(session, query)
            async for row in repo.stream_groups(query.where, query.export_groups):
                yield row

    @staticmethod
    def _repository(session: AsyncSession, query: UsageQuery) -> UsageRepository:
        if query.scope == "own":
            return UsageRepository.own(session, query.actor)
        if query.scope == "all":
            return UsageRepository.all_tenants(session)
        if is_operator(query.actor) and query.tenant_id is not None:
            return UsageRepository.of_tenant(session, query.tenant_id)
        return UsageRepository.of(session, query.actor)
