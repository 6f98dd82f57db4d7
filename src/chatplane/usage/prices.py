"""Operators' model prices (superadmins): a `ModelPrice` row wins over the settings, the
config file and a run-time model's own price. A change applies at once in this process and,
through `ModelEndpointService`'s periodic load, within its interval in every other process;
costs are computed from the registry's routes, so usage recorded after it uses the new price."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.exc import IntegrityError

from chatplane.auth.audit import AuditLog
from chatplane.auth.principal import Principal
from chatplane.db.base import utcnow
from chatplane.db.engine import Database
from chatplane.errors import Forbidden, NotFound
from chatplane.providers.endpoints import ModelEndpointService
from chatplane.providers.registry import ModelPricing, ModelRegistry
from chatplane.usage.models import ModelPrice
from chatplane.usage.repository import PriceTable


def require_operator(actor: Principal) -> None:
    if not (actor.is_superadmin and actor.may("admin")):
        raise Forbidden("Only platform operators manage prices", code="not_superadmin")


class PriceService:
    def __init__(
        self,
        db: Database,
        registry: ModelRegistry,
        runtime: ModelEndpointService,
        audit: AuditLog,
    ) -> None:
        self.db = db
        self.registry = registry
        self.runtime = runtime  # loads run-time models and prices into the registry
        self.audit = audit

    async def prices(self, actor: Principal) -> list[tuple[ModelPricing, datetime | None]]:
        """Every model the registry knows, by name, with when its admin price was set."""
        require_operator(actor)
        async with self.db.session() as session:
            stored = {row.model: row.updated_at for row in await PriceTable(session).all()}
        found = (self.registry.pricing(route.name) for route in self.registry.models())
        known = sorted((p for p in found if p is not None), key=lambda p: p.model)
        return [(pricing, stored.get(pricing.model)) for pricing in known]

    async def set_price(
        self, actor: Principal, model: str, *, input_usd: float, output_usd: float
    ) -> tuple[ModelPricing, datetime]:
        require_operator(actor)
        await self.registry.resolve(model)  # ModelNotFound (404) for a model nobody serves
        before = self._pricing(model)
        now = utcnow()
        async with self.db.session() as session:
            table = PriceTable(session)
            row = await table.get(model)
            if row is None:
                row = ModelPrice(model=model)
                table.add(row)
            _set(row, input_usd, output_usd, now)
            try:
                await session.commit()
            except IntegrityError:  # another operator added it just now: ours is the later
                await session.rollback()
                row = await table.get(model)
                assert row is not None
                _set(row, input_usd, output_usd, now)
                await session.commit()
        await self.runtime.reload_everywhere()
        await self.audit.record(
            "price.set",
            tenant_id=actor.tenant_id,
            actor_id=actor.user_id,
            subject=model,
            input_usd_per_mtok=input_usd,
            output_usd_per_mtok=output_usd,
            previous=[
                before.effective.input_usd_per_mtok,
                before.effective.output_usd_per_mtok,
                before.effective.source,
            ],
        )
        return self._pricing(model), now

    async def remove_price(self, actor: Principal, model: str) -> ModelPricing | None:
        """Back to the underlying price; None if the model is not known any more."""
        require_operator(actor)
        async with self.db.session() as session:
            removed = await PriceTable(session).remove(model)
            await session.commit()
        if not removed:
            raise NotFound(f"No admin price for {model!r}", code="price_not_found")
        await self.runtime.reload_everywhere()
        await self.audit.record(
            "price.removed", tenant_id=actor.tenant_id, actor_id=actor.user_id, subject=model
        )
        return self.registry.pricing(model)

    def _pricing(self, model: str) -> ModelPricing:
        pricing = self.registry.pricing(model)
        if pricing is None:
            raise NotFound(f"The model {model!r} does not exist", code="model_not_found")
        return pricing


def _set(row: ModelPrice, input_usd: float, output_usd: float, now: datetime) -> None:
    row.input_usd_per_mtok = input_usd
    row.output_usd_per_mtok = output_usd
    row.updated_at = now
