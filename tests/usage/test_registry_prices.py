"""Where a model's price comes from, in the registry: the operator's price wins over the
settings, the config file and a run-time model's own, and reverting restores it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from chatplane.providers.config import ModelConfig
from chatplane.providers.protocol import Usage
from chatplane.providers.registry import ModelRegistry, build_registry, cost_usd
from tests.conftest import make_settings

CONFIG = """
[[models]]
name = "filed"
provider = "mock"
upstream_model = "mock"
input_usd_per_mtok = 1.0
output_usd_per_mtok = 2.0

[[models]]
name = "set-twice"
provider = "mock"
upstream_model = "mock"
input_usd_per_mtok = 1.0
output_usd_per_mtok = 2.0
"""


@pytest.fixture
async def registry(tmp_path: Path) -> AsyncIterator[ModelRegistry]:
    config = tmp_path / "models.toml"
    config.write_text(CONFIG)
    settings = make_settings(tmp_path, config=config, model_prices={"set-twice": [3.0, 4.0]})
    async with aiohttp.ClientSession() as session:
        registry = await build_registry(settings, session, environ={})
        yield registry
        await registry.close()


def price_of(registry: ModelRegistry, name: str) -> tuple[float, float, str]:
    pricing = registry.pricing(name)
    assert pricing is not None
    effective = pricing.effective
    return effective.input_usd_per_mtok, effective.output_usd_per_mtok, effective.source


async def test_every_source_is_named(registry: ModelRegistry) -> None:
    registry.set_dynamic(
        [
            ModelConfig(
                name="added",
                provider="openai",
                upstream_model="x",
                base_url="http://127.0.0.1:9",
                input_usd_per_mtok=5.0,
                output_usd_per_mtok=6.0,
            )
        ]
    )
    assert price_of(registry, "mock") == (0.0, 0.0, "default")
    assert price_of(registry, "filed") == (1.0, 2.0, "config")
    assert price_of(registry, "set-twice") == (3.0, 4.0, "settings")
    assert price_of(registry, "added") == (5.0, 6.0, "endpoint")
    assert registry.pricing("nobody") is None


async def test_the_operators_price_wins_and_reverts(registry: ModelRegistry) -> None:
    usage = Usage(prompt_tokens=1_000_000, completion_tokens=1_000_000)
    before = await registry.resolve("set-twice")
    registry.set_price_overrides({"set-twice": (10.0, 20.0), "mock": (0.5, 0.5), "later": (1, 1)})
    assert price_of(registry, "set-twice") == (10.0, 20.0, "admin")
    pricing = registry.pricing("set-twice")
    assert pricing is not None
    assert pricing.underlying.source == "settings"
    # What the gateway and the turn runner resolve from now on costs the new price.
    assert cost_usd(await registry.resolve("set-twice"), usage) == 30.0
    assert cost_usd(await registry.resolve("mock"), usage) == 1.0
    assert [r.input_usd_per_mtok for r in registry.models() if r.name == "mock"] == [0.5]
    assert cost_usd(before, usage) == 7.0  # a route taken before keeps its price

    # A price for a model that appears later applies when it does.
    registry.set_dynamic(
        [
            ModelConfig(
                name="later", provider="openai", upstream_model="x", base_url="http://127.0.0.1:9"
            )
        ]
    )
    assert price_of(registry, "later") == (1, 1, "admin")

    registry.set_price_overrides({})
    assert price_of(registry, "set-twice") == (3.0, 4.0, "settings")
    assert price_of(registry, "mock") == (0.0, 0.0, "default")
    assert price_of(registry, "later") == (0.0, 0.0, "endpoint")
    assert cost_usd(await registry.resolve("set-twice"), usage) == 7.0


async def test_a_run_time_model_keeps_the_operators_price_across_reloads(
    registry: ModelRegistry,
) -> None:
    registry.set_price_overrides({"filed": (9.0, 9.0)})
    shadow = ModelConfig(
        name="filed",
        provider="openai",
        upstream_model="x",
        base_url="http://127.0.0.1:9",
        input_usd_per_mtok=7.0,
    )
    registry.set_dynamic([shadow])
    assert price_of(registry, "filed") == (9.0, 9.0, "admin")
    registry.set_dynamic([])
    assert (await registry.resolve("filed")).kind == "mock"  # the file's model is back
    assert price_of(registry, "filed") == (9.0, 9.0, "admin")
    registry.set_price_overrides({})
    assert price_of(registry, "filed") == (1.0, 2.0, "config")
