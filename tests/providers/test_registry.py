from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest

from chatplane.errors import ModelNotFound
from chatplane.providers import (
    AnthropicProvider,
    ChatMessage,
    CompletionRequest,
    ConfigError,
    MockProvider,
    ModelRoute,
    OpenAIProvider,
    TextDelta,
    Usage,
    build_registry,
    cost_usd,
)

from .conftest import make_settings
from .fakes import FakeAnthropic, FakeOpenAI

MOCK_M = '[[models]]\nname = "m"\nprovider = "mock"\nupstream_model = "mock"'


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def write_config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "models.toml"
    path.write_text(text)
    return path


async def reply(route: ModelRoute, text: str = "hi") -> str:
    request = CompletionRequest(model=route.upstream_model, messages=[ChatMessage("user", text)])
    items = [item async for item in route.provider.stream(request)]
    return "".join(item.text for item in items if isinstance(item, TextDelta))


async def test_a_fresh_install_has_the_mock_models(session: aiohttp.ClientSession) -> None:
    registry = await build_registry(make_settings(), session, environ={})
    assert [route.name for route in registry.models()] == ["mock-echo", "mock", "mock-cite"]
    assert registry.default_model == "mock-echo"
    route = await registry.resolve("mock-echo")
    assert isinstance(route.provider, MockProvider)
    assert (route.kind, route.owned_by, route.input_usd_per_mtok) == ("mock", "chatplane", 0.0)
    assert await reply(route, "echo me back") == "echo me back"
    await registry.close()


async def test_an_unknown_model_is_model_not_found(session: aiohttp.ClientSession) -> None:
    registry = await build_registry(make_settings(), session, environ={})
    with pytest.raises(ModelNotFound) as caught:
        await registry.resolve("gpt-9")
    assert caught.value.code == "model_not_found"
    assert "gpt-9" in caught.value.detail
    assert registry.get("gpt-9") is None


async def test_config_file_models_route_to_their_upstreams(
    tmp_path: Path,
    session: aiohttp.ClientSession,
    fake_openai: FakeOpenAI,
    fake_anthropic: FakeAnthropic,
) -> None:
    config = write_config(
        tmp_path,
        f"""
[server]  # other tables belong to other readers
port = 1

[[models]]
name = "fast"
provider = "openai"
base_url = "{fake_openai.base_url}"
api_key_env = "FAKE_OPENAI_KEY"
upstream_model = "gpt-fake-mini"
input_usd_per_mtok = 0.15
output_usd_per_mtok = 0.6

[[models]]
name = "gpt-fake"
provider = "openai"
base_url = "{fake_openai.base_url}"
api_key_env = "FAKE_OPENAI_KEY"

[[models]]
name = "claude"
provider = "anthropic"
base_url = "{fake_anthropic.base_url}"
api_key_env = "FAKE_ANTHROPIC_KEY"
upstream_model = "claude-fake"

[[models]]
name = "demo"
provider = "mock"
upstream_model = "mock-echo"
""",
    )
    environ = {"FAKE_OPENAI_KEY": "sk-test", "FAKE_ANTHROPIC_KEY": "ant-test"}
    registry = await build_registry(make_settings(config=config), session, environ=environ)
    assert [r.name for r in registry.models()] == [
        "mock-echo", "mock", "mock-cite", "fast", "gpt-fake", "claude", "demo"
    ]  # fmt: skip

    fast, gpt, claude, demo = [
        await registry.resolve(n) for n in ("fast", "gpt-fake", "claude", "demo")
    ]
    assert isinstance(fast.provider, OpenAIProvider)
    assert fast.provider is gpt.provider  # one provider per upstream
    assert (fast.input_usd_per_mtok, fast.output_usd_per_mtok) == (0.15, 0.6)
    assert (gpt.upstream_model, gpt.kind, gpt.input_usd_per_mtok) == ("gpt-fake", "openai", 0.0)
    assert isinstance(claude.provider, AnthropicProvider)
    assert demo.provider is (await registry.resolve("mock")).provider

    assert await reply(fast) == "Hello, world!"
    assert fake_openai.requests[-1].json["model"] == "gpt-fake-mini"
    assert fake_openai.requests[-1].headers["authorization"] == "Bearer sk-test"
    assert await reply(claude) == "Hello from Claude"
    assert fake_anthropic.requests[-1].json["model"] == "claude-fake"
    assert await reply(demo, "mocked") == "mocked"
    await registry.close()


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("[[models]\nname = 1", "not valid TOML"),
        ("models = 3", "must be an array of tables"),
        ('[[models]]\nprovider = "openai"', "'name' is required"),
        ('[[models]]\nname = "m"\nprovider = "cohere"', "'provider' must be one of"),
        ('[[models]]\nname = "m"\nprovider = "openai"\nupstream-model = "x"', "unknown key"),
        (f"{MOCK_M}\n{MOCK_M}", "defined twice"),
        (f"{MOCK_M}\ninput_usd_per_mtok = -1", "USD >= 0"),
        (f"{MOCK_M}\noutput_usd_per_mtok = \"1\"", "USD >= 0"),
        (f"{MOCK_M}\nbase_url = \"http://x\"", "takes no base_url"),
        ('[[models]]\nname = "m"\nprovider = "anthropic"', "needs 'api_key_env'"),
        ('[[models]]\nname = "m"\nprovider = "mock"', "upstream_model must be one of"),
        ('[[models]]\nname = "m"\nprovider = "openai"\nbase_url = "ftp://x"', "http://"),
        ('[[models]]\nname = "m"\nprovider = "openai"\napi_key_env = "NOT_SET_ANYWHERE"',
         "$NOT_SET_ANYWHERE, which is not set"),
    ],
)  # fmt: skip
async def test_a_bad_config_is_a_config_error_naming_file_and_problem(
    tmp_path: Path, session: aiohttp.ClientSession, text: str, problem: str
) -> None:
    config = write_config(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        await build_registry(make_settings(config=config), session, environ={})
    assert caught.value.code == "config_error"
    assert str(config) in caught.value.detail
    assert problem in caught.value.detail


async def test_a_missing_config_file_is_a_config_error(
    tmp_path: Path, session: aiohttp.ClientSession
) -> None:
    missing = tmp_path / "nowhere.toml"
    with pytest.raises(ConfigError) as caught:
        await build_registry(make_settings(config=missing), session, environ={})
    assert str(missing) in caught.value.detail


async def test_price_settings_override_the_file_and_price_the_mock(
    tmp_path: Path, session: aiohttp.ClientSession
) -> None:
    config = write_config(
        tmp_path,
        '[[models]]\nname = "demo"\nprovider = "mock"\nupstream_model = "mock"\n'
        "input_usd_per_mtok = 1.0\noutput_usd_per_mtok = 2.0\n",
    )
    settings = make_settings(config=config, model_prices={"demo": [3.0, 15.0], "mock-echo": [1, 1]})
    registry = await build_registry(settings, session, environ={})
    demo = await registry.resolve("demo")
    assert (demo.input_usd_per_mtok, demo.output_usd_per_mtok) == (3.0, 15.0)
    usage = Usage(prompt_tokens=1000, completion_tokens=2000)
    assert cost_usd(demo, usage) == pytest.approx(0.003 + 0.03)
    assert cost_usd(await registry.resolve("mock-echo"), usage) == pytest.approx(0.003)
    assert cost_usd(await registry.resolve("mock"), usage) == 0.0
    assert cost_usd(demo, None) == 0.0


async def test_the_openai_shortcut_exposes_every_upstream_model(
    session: aiohttp.ClientSession, fake_openai: FakeOpenAI
) -> None:
    settings = make_settings(
        openai_base_url=fake_openai.base_url,
        openai_api_key="sk-test",
        model_prices={"gpt-fake": [2.5, 10]},
    )
    registry = await build_registry(settings, session, environ={})
    names = [route.name for route in registry.models()]
    assert names == ["mock-echo", "mock", "mock-cite", "gpt-fake", "gpt-fake-mini"]
    route = await registry.resolve("gpt-fake")
    assert (route.kind, route.upstream_model, route.input_usd_per_mtok) == (
        "openai",
        "gpt-fake",
        2.5,
    )
    assert await reply(route) == "Hello, world!"
    assert fake_openai.requests[0].path == "/v1/models"


async def test_a_config_model_wins_over_a_discovered_one(
    tmp_path: Path, session: aiohttp.ClientSession, fake_openai: FakeOpenAI
) -> None:
    config = write_config(
        tmp_path, '[[models]]\nname = "gpt-fake"\nprovider = "mock"\nupstream_model = "mock"\n'
    )
    settings = make_settings(
        config=config, openai_base_url=fake_openai.base_url, openai_api_key="sk-test"
    )
    registry = await build_registry(settings, session, environ={})
    assert (await registry.resolve("gpt-fake")).kind == "mock"
    assert (await registry.resolve("gpt-fake-mini")).kind == "openai"


def models_requests(upstream: FakeOpenAI) -> int:
    return sum(1 for r in upstream.requests if r.path == "/v1/models")


async def test_an_upstream_down_at_start_is_discovered_on_a_later_miss(
    session: aiohttp.ClientSession, fake_openai: FakeOpenAI
) -> None:
    fake_openai.models_status = 503
    clock = FakeClock()
    settings = make_settings(openai_base_url=fake_openai.base_url, openai_api_key="sk-test")
    registry = await build_registry(settings, session, environ={}, clock=clock)
    assert [r.name for r in registry.models()] == ["mock-echo", "mock", "mock-cite"]
    assert models_requests(fake_openai) == 1

    fake_openai.models_status = 200
    clock.now += 10  # too soon to ask again
    with pytest.raises(ModelNotFound):
        await registry.resolve("gpt-fake")
    assert models_requests(fake_openai) == 1

    clock.now += 20
    route = await registry.resolve("gpt-fake")
    assert route.name == "gpt-fake"
    assert models_requests(fake_openai) == 2
    await registry.resolve("gpt-fake-mini")  # known now: no new request
    assert models_requests(fake_openai) == 2


async def test_an_unreachable_shortcut_upstream_does_not_stop_the_start(
    session: aiohttp.ClientSession, refused_url: str
) -> None:
    clock = FakeClock()
    settings = make_settings(openai_base_url=f"{refused_url}/v1")
    registry = await build_registry(settings, session, environ={}, clock=clock)
    assert [r.name for r in registry.models()] == ["mock-echo", "mock", "mock-cite"]
    clock.now += 30
    with pytest.raises(ModelNotFound):
        await registry.resolve("gpt-fake")


AnyFactory = Callable[..., object]
