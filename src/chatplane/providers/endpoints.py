"""Models an operator adds at run time: stored in the database with the upstream key
encrypted, loaded into the registry at start and after each change, in every process (a
change tells the others through the cache's invalidation channel), and periodically as a
safety net. Operators' model prices (`ModelPrice`, set in `chatplane.usage.prices`) ride the
same load."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass

import structlog
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from chatplane.auth.audit import AuditLog
from chatplane.auth.principal import Principal
from chatplane.cache import Cache, LocalCache, Namespace, not_shared
from chatplane.crypto import SecretBox
from chatplane.db.base import new_id, utcnow
from chatplane.db.engine import Database
from chatplane.errors import Conflict, NotFound, ServiceUnavailable, ValidationFailed
from chatplane.providers.config import DEFAULT_BASE_URLS, ModelConfig
from chatplane.providers.models import ModelEndpoint
from chatplane.providers.registry import ModelRegistry
from chatplane.usage.models import ModelPrice

log = structlog.get_logger("chatplane.models")

KINDS = ("openai", "anthropic")
REFRESH_S = 30.0
# Carries only "reload the model endpoints" to every process; nothing is stored under it.
MODELS = Namespace[None]("models", not_shared, lambda data: None)
ENDPOINTS_KEY = "endpoints"


@dataclass(frozen=True, slots=True)
class EndpointChange:
    provider: str | None = None
    upstream_model: str | None = None
    base_url: str | None = None
    api_key: str | None = None  # None: keep; "": remove
    input_usd_per_mtok: float | None = None
    output_usd_per_mtok: float | None = None


class ModelEndpointService:
    def __init__(
        self,
        db: Database,
        registry: ModelRegistry,
        box: SecretBox,
        audit: AuditLog,
        cache: Cache | None = None,
    ) -> None:
        self.db = db
        self.registry = registry
        self.box = box
        self.audit = audit
        self.cache: Cache = cache or LocalCache(ttl_s=REFRESH_S, max_items=0)
        self.cache.on_invalidate(MODELS, self._reload_soon)
        self._task: asyncio.Task[None] | None = None
        self._reload: asyncio.Task[None] | None = None
        self._reload_again = False

    async def load(self) -> None:
        async with self.db.session() as session:
            rows = (await session.scalars(select(ModelEndpoint))).all()
            prices = (await session.scalars(select(ModelPrice))).all()
        self.registry.set_dynamic([self._config(row) for row in rows])
        self.registry.set_price_overrides(
            {p.model: (p.input_usd_per_mtok, p.output_usd_per_mtok) for p in prices}
        )

    async def reload_everywhere(self) -> None:
        """After a change: load it here now, and tell every other process to load it."""
        await self.load()
        await self.cache.invalidate(MODELS, ENDPOINTS_KEY)

    def _reload_soon(self, key: str | None) -> None:
        """Another process changed a model (or the channel reconnected): load once more,
        however many messages arrive while a load runs."""
        if self._task is None:
            return  # not serving: `load` at start-up reads everything anyway
        if self._reload is not None and not self._reload.done():
            self._reload_again = True
            return
        self._reload = asyncio.create_task(self._reload_now(), name="model-endpoints-reload")

    async def _reload_now(self) -> None:
        while True:
            self._reload_again = False
            try:
                await self.load()
            except ServiceUnavailable as exc:
                log.warning("model_endpoints_reload_failed", error=exc.detail)
            if not self._reload_again:
                return

    def start_refresh(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._refresh_loop(), name="model-endpoints")

    async def _refresh_loop(self) -> None:
        while True:
            await asyncio.sleep(REFRESH_S)
            try:
                await self.load()
            except ServiceUnavailable as exc:
                log.warning("model_endpoints_refresh_failed", error=exc.detail)

    async def close(self) -> None:
        for task in (self._task, self._reload):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._task = self._reload = None

    def _config(self, row: ModelEndpoint) -> ModelConfig:
        key = None
        if row.api_key_encrypted:
            key = self.box.decrypt(row.api_key_encrypted, context=row.name)
        return ModelConfig(
            name=row.name,
            provider="anthropic" if row.provider == "anthropic" else "openai",
            upstream_model=row.upstream_model,
            base_url=row.base_url,
            api_key=key,
            input_usd_per_mtok=row.input_usd_per_mtok,
            output_usd_per_mtok=row.output_usd_per_mtok,
        )

    async def list(self) -> list[ModelEndpoint]:
        async with self.db.session() as session:
            return list(
                (await session.scalars(select(ModelEndpoint).order_by(ModelEndpoint.name))).all()
            )

    async def create(self, actor: Principal, name: str, change: EndpointChange) -> ModelEndpoint:
        provider = change.provider or "openai"
        row = ModelEndpoint(
            id=new_id(),
            name=name,
            provider=provider,
            upstream_model=change.upstream_model or name,
            base_url=change.base_url or DEFAULT_BASE_URLS[_kind(provider)],
            input_usd_per_mtok=change.input_usd_per_mtok or 0.0,
            output_usd_per_mtok=change.output_usd_per_mtok or 0.0,
        )
        _check(row)
        if change.api_key:
            row.api_key_encrypted = self.box.encrypt(change.api_key, context=name)
        elif provider == "anthropic":
            raise ValidationFailed("An anthropic model needs an api_key", field="api_key")
        async with self.db.session() as session:
            session.add(row)
            try:
                await session.commit()
            except IntegrityError as exc:
                raise Conflict(f"A model named {name!r} exists", code="model_exists") from exc
        await self._changed(actor, "model.created", row)
        return row

    async def update(
        self, actor: Principal, endpoint_id: str, change: EndpointChange
    ) -> ModelEndpoint:
        async with self.db.session() as session:
            row = await session.get(ModelEndpoint, endpoint_id)
            if row is None:
                raise NotFound("No such model", code="model_endpoint_not_found")
            for field in ("provider", "upstream_model", "base_url"):
                value = getattr(change, field)
                if value is not None:
                    setattr(row, field, value)
            if change.input_usd_per_mtok is not None:
                row.input_usd_per_mtok = change.input_usd_per_mtok
            if change.output_usd_per_mtok is not None:
                row.output_usd_per_mtok = change.output_usd_per_mtok
            if change.api_key is not None:
                row.api_key_encrypted = (
                    self.box.encrypt(change.api_key, context=row.name) if change.api_key else None
                )
            _check(row)
            row.updated_at = utcnow()
            await session.commit()
        await self._changed(actor, "model.updated", row, key_changed=change.api_key is not None)
        return row

    async def delete(self, actor: Principal, endpoint_id: str) -> None:
        async with self.db.session() as session:
            row = await session.get(ModelEndpoint, endpoint_id)
            if row is None:
                raise NotFound("No such model", code="model_endpoint_not_found")
            await session.delete(row)
            await session.commit()
        await self._changed(actor, "model.deleted", row)

    def key_hint(self, row: ModelEndpoint) -> str | None:
        """The last four characters of the key, so an operator can tell keys apart."""
        if not row.api_key_encrypted:
            return None
        return "…" + self.box.decrypt(row.api_key_encrypted, context=row.name)[-4:]

    async def _changed(
        self, actor: Principal, action: str, row: ModelEndpoint, *, key_changed: bool = False
    ) -> None:
        await self.reload_everywhere()
        await self.audit.record(
            action,
            tenant_id=actor.tenant_id,
            actor_id=actor.user_id,
            subject=row.name,
            key_changed=key_changed,
        )


def _kind(provider: str) -> str:
    if provider not in KINDS:
        raise ValidationFailed(f"provider is one of {', '.join(KINDS)}", field="provider")
    return provider


def _check(row: ModelEndpoint) -> None:
    _kind(row.provider)
    if not row.base_url.startswith(("http://", "https://")):
        raise ValidationFailed("base_url must start with http:// or https://", field="base_url")
