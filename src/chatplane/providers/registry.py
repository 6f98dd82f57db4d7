"""The model registry: which provider serves a model name, under which upstream name, at
what price. Built once per process by `build_registry` and passed down."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import random
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import structlog

from chatplane.errors import ModelNotFound, ProviderError
from chatplane.providers.anthropic import AnthropicProvider
from chatplane.providers.config import (
    ConfigError,
    ModelConfig,
    ProviderKind,
    load_model_config,
    resolve_api_key,
)
from chatplane.providers.http import UpstreamHttp, session_of
from chatplane.providers.mock import MOCK_MODELS, MockProvider
from chatplane.providers.openai import OpenAIProvider
from chatplane.providers.protocol import Provider, Usage
from chatplane.settings import Settings

if TYPE_CHECKING:
    import aiohttp

log = structlog.get_logger(__name__)

REDISCOVERY_INTERVAL_S = 30.0
MOCK_OWNER = "chatplane"

# Where a model's price comes from, weakest first: unpriced, the model's own entry (the
# config file, or a model added at run time), CHATPLANE_MODEL_PRICES, an operator's price.
PriceSource = Literal["default", "config", "endpoint", "settings", "admin"]


@dataclass(frozen=True, slots=True)
class ModelRoute:
    name: str  # what clients ask for
    provider: Provider
    upstream_model: str  # what the provider is asked for
    kind: ProviderKind
    owned_by: str
    input_usd_per_mtok: float = 0.0
    output_usd_per_mtok: float = 0.0


@dataclass(frozen=True, slots=True)
class Price:
    input_usd_per_mtok: float
    output_usd_per_mtok: float
    source: PriceSource


@dataclass(frozen=True, slots=True)
class ModelPricing:
    """What a model costs now, and what it would cost without the operator's price."""

    model: str
    kind: ProviderKind
    effective: Price
    underlying: Price


def cost_usd(route: ModelRoute, usage: Usage | None) -> float:
    if usage is None:
        return 0.0
    return (
        usage.prompt_tokens * route.input_usd_per_mtok
        + usage.completion_tokens * route.output_usd_per_mtok
    ) / 1_000_000


class UpstreamDiscovery:
    """Lists an OpenAI-compatible upstream's models, at most once per interval, so an
    upstream that was down at start (or gained models since) is picked up lazily."""

    def __init__(
        self,
        provider: OpenAIProvider,
        *,
        interval_s: float = REDISCOVERY_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.provider = provider
        self.interval_s = interval_s
        self._clock = clock
        self._last_attempt: float | None = None
        self._lock = asyncio.Lock()

    async def discover(self, *, force: bool = False) -> list[str] | None:
        """The upstream's model ids; None when not due or when the upstream failed."""
        async with self._lock:  # concurrent misses share one attempt
            now = self._clock()
            if (
                not force
                and self._last_attempt is not None
                and now - self._last_attempt < self.interval_s
            ):
                return None
            self._last_attempt = now
            try:
                return await self.provider.list_models()
            except ProviderError as exc:
                log.warning(
                    "model_discovery_failed",
                    upstream=self.provider.name,
                    error=exc.detail,
                    retry_after_s=self.interval_s,
                )
                return None


class ModelRegistry:
    def __init__(
        self,
        routes: Iterable[ModelRoute],
        *,
        default_model: str,
        prices: Mapping[str, tuple[float, float]] | None = None,
        discovery: UpstreamDiscovery | None = None,
        factory: _ProviderFactory | None = None,
    ) -> None:
        self._default_model = default_model
        self._prices = dict(prices or {})
        self._overrides: dict[str, tuple[float, float]] = {}
        self._discovery = discovery
        self._factory = factory
        # The routes as built, with their own prices; `_routes` holds them priced (what
        # callers get), rebuilt whenever a price source changes.
        self._built: dict[str, ModelRoute] = {route.name: route for route in routes}
        self._routes: dict[str, ModelRoute] = {}
        # Models added at run time (stored in the database), and what they shadow.
        self._dynamic: set[str] = set()
        self._shadowed: dict[str, ModelRoute] = {}
        self._reprice()

    @property
    def default_model(self) -> str:
        return self._default_model

    def models(self) -> list[ModelRoute]:
        return list(self._routes.values())

    def get(self, name: str) -> ModelRoute | None:
        """The route for `name` as known now, without asking any upstream."""
        return self._routes.get(name)

    async def resolve(self, name: str) -> ModelRoute:
        """The route for `name`. On a miss, re-list the OpenAI shortcut upstream (at most
        every 30 s) before giving up with `ModelNotFound`."""
        route = self._routes.get(name)
        if route is not None:
            return route
        if self._discovery is not None:
            await self.discover()
            route = self._routes.get(name)
            if route is not None:
                return route
        raise ModelNotFound(f"The model {name!r} does not exist", model=name)

    def set_dynamic(self, configs: Iterable[ModelConfig]) -> None:
        """Replace the models added at run time (they win over the file and the mocks)."""
        if self._factory is None:
            raise RuntimeError("this registry was built without a provider factory")
        for name in self._dynamic:
            self._built.pop(name, None)
        self._built.update(self._shadowed)
        self._dynamic, self._shadowed = set(), {}
        for config in configs:
            if config.name in self._built:
                self._shadowed[config.name] = self._built[config.name]
            self._built[config.name] = self._factory.route(config)
            self._dynamic.add(config.name)
        self._reprice()

    def set_price_overrides(self, prices: Mapping[str, tuple[float, float]]) -> None:
        """Replace the operators' prices (USD per million tokens): they win over every other
        source. A model not known (yet) keeps its price until it is."""
        prices = dict(prices)
        if prices != self._overrides:
            self._overrides = prices
            self._reprice()

    def pricing(self, name: str) -> ModelPricing | None:
        route = self._built.get(name)
        if route is None:
            return None
        underlying = self._underlying_price(route)
        override = self._overrides.get(name)
        effective = underlying if override is None else Price(*override, source="admin")
        return ModelPricing(name, route.kind, effective, underlying)

    async def discover(self, *, force: bool = False) -> int:
        """Add the shortcut upstream's models not known yet; returns how many were added."""
        if self._discovery is None:
            return 0
        names = await self._discovery.discover(force=force)
        added = 0
        for name in names or ():
            if name not in self._built:  # the config file and the mock models win
                route = ModelRoute(
                    name=name,
                    provider=self._discovery.provider,
                    upstream_model=name,
                    kind="openai",
                    owned_by="openai",
                )
                self._built[name] = route
                self._routes[name] = self._priced(route)
                added += 1
        return added

    async def close(self) -> None:
        routes = [*self._built.values(), *self._shadowed.values()]
        providers: dict[int, Provider] = {id(r.provider): r.provider for r in routes}
        if self._discovery is not None:
            providers[id(self._discovery.provider)] = self._discovery.provider
        for provider in providers.values():
            await provider.close()

    def _reprice(self) -> None:
        # A new dict, swapped in at once: a reader never sees a half-repriced registry.
        self._routes = {name: self._priced(route) for name, route in self._built.items()}

    def _underlying_price(self, route: ModelRoute) -> Price:
        settings = self._prices.get(route.name)
        if settings is not None:
            return Price(settings[0], settings[1], source="settings")
        own = (route.input_usd_per_mtok, route.output_usd_per_mtok)
        if route.name in self._dynamic:
            return Price(*own, source="endpoint")
        if own != (0.0, 0.0):
            return Price(*own, source="config")
        return Price(0.0, 0.0, source="default")

    def _priced(self, route: ModelRoute) -> ModelRoute:
        price = self._overrides.get(route.name) or self._prices.get(route.name)
        if price is None:
            return route
        return dataclasses.replace(route, input_usd_per_mtok=price[0], output_usd_per_mtok=price[1])


async def build_registry(
    settings: Settings,
    http: UpstreamHttp | aiohttp.ClientSession,
    *,
    environ: Mapping[str, str] = os.environ,
    clock: Callable[[], float] = time.monotonic,
    mock_rng: random.Random | None = None,
) -> ModelRegistry:
    """The mock models, then the config file's models (which may replace a mock name),
    then every model of the OpenAI shortcut upstream not named already. The HTTP session
    is made only once a model needs an upstream."""
    mock = MockProvider.from_settings(settings, rng=mock_rng)
    routes = {
        name: ModelRoute(name, mock, name, kind="mock", owned_by=MOCK_OWNER) for name in MOCK_MODELS
    }
    factory = _ProviderFactory(http, mock, environ, source=str(settings.config or "models"))
    if settings.config is not None:
        for config in await asyncio.to_thread(load_model_config, settings.config):
            routes[config.name] = factory.route(config)

    discovery = None
    if settings.openai_base_url:
        key = settings.openai_api_key.get_secret_value() if settings.openai_api_key else None
        upstream = OpenAIProvider(
            session=session_of(http), base_url=settings.openai_base_url, api_key=key
        )
        discovery = UpstreamDiscovery(upstream, clock=clock)

    registry = ModelRegistry(
        routes.values(),
        default_model=settings.default_model,
        prices=settings.model_prices,
        discovery=discovery,
        factory=factory,
    )
    await registry.discover()
    return registry


class _ProviderFactory:
    """One provider per distinct upstream (kind, base URL, key), shared by its models."""

    def __init__(
        self,
        http: UpstreamHttp | aiohttp.ClientSession,
        mock: MockProvider,
        environ: Mapping[str, str],
        *,
        source: str,
    ) -> None:
        self._http = http
        self._mock = mock
        self._environ = environ
        self._source = source
        self._providers: dict[tuple[str, str, str | None], Provider] = {}

    def route(self, config: ModelConfig) -> ModelRoute:
        return ModelRoute(
            name=config.name,
            provider=self._provider(config),
            upstream_model=config.upstream_model,
            kind=config.provider,
            owned_by=MOCK_OWNER if config.provider == "mock" else config.provider,
            input_usd_per_mtok=config.input_usd_per_mtok or 0.0,
            output_usd_per_mtok=config.output_usd_per_mtok or 0.0,
        )

    def _provider(self, config: ModelConfig) -> Provider:
        if config.provider == "mock" or config.base_url is None:
            return self._mock
        api_key = resolve_api_key(config, self._environ, source=self._source)
        key = (config.provider, config.base_url, api_key)
        provider = self._providers.get(key)
        if provider is None:
            if config.provider == "anthropic":
                if api_key is None:
                    raise ConfigError(f"{self._source}: model {config.name!r} needs api_key_env")
                provider = AnthropicProvider(
                    session=session_of(self._http), base_url=config.base_url, api_key=api_key
                )
            else:
                provider = OpenAIProvider(
                    session=session_of(self._http), base_url=config.base_url, api_key=api_key
                )
            self._providers[key] = provider
        return provider
