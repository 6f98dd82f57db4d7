"""The `[[models]]` tables of the CHATPLANE_CONFIG file, read and checked strictly.

```toml
[[models]]
name = "gpt-4o-mini"            # what clients ask for
provider = "openai"             # openai | anthropic | mock
base_url = "https://api.openai.com/v1"
api_key_env = "OPENAI_API_KEY"  # the NAME of the variable holding the key
upstream_model = "gpt-4o-mini"  # defaults to name
input_usd_per_mtok = 0.15
output_usd_per_mtok = 0.60
```
Other top-level tables are left to their own readers.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast

from chatplane.errors import ChatplaneError
from chatplane.providers.anthropic import DEFAULT_ANTHROPIC_BASE_URL
from chatplane.providers.mock import MOCK_MODELS
from chatplane.providers.openai import DEFAULT_OPENAI_BASE_URL

ProviderKind = Literal["openai", "anthropic", "mock"]
PROVIDER_KINDS: tuple[ProviderKind, ...] = ("openai", "anthropic", "mock")
DEFAULT_BASE_URLS: dict[str, str] = {
    "openai": DEFAULT_OPENAI_BASE_URL,
    "anthropic": DEFAULT_ANTHROPIC_BASE_URL,
}
_KEYS = frozenset(
    {
        "name",
        "provider",
        "base_url",
        "api_key_env",
        "upstream_model",
        "input_usd_per_mtok",
        "output_usd_per_mtok",
    }
)


class ConfigError(ChatplaneError):
    code = "config_error"
    status = 500
    title = "The model configuration is not valid"


@dataclass(frozen=True, slots=True)
class ModelConfig:
    name: str
    provider: ProviderKind
    upstream_model: str
    base_url: str | None = None
    api_key_env: str | None = None
    input_usd_per_mtok: float | None = None
    output_usd_per_mtok: float | None = None
    # The key itself, for models stored in the database (decrypted only in memory).
    api_key: str | None = field(default=None, repr=False)


def load_model_config(path: Path) -> list[ModelConfig]:
    """Parse and check the file; any problem raises `ConfigError` naming file and model."""
    try:
        with path.open("rb") as handle:
            document = tomllib.load(handle)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the model config: {exc.strerror or exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    return parse_model_config(document, source=str(path))


def parse_model_config(document: Mapping[str, Any], *, source: str) -> list[ModelConfig]:
    tables = document.get("models", [])
    if not isinstance(tables, list):
        raise ConfigError(f"{source}: 'models' must be an array of tables ([[models]])")
    models: list[ModelConfig] = []
    seen: set[str] = set()
    for index, table in enumerate(tables):
        model = _parse_model(table, where=f"{source}: models[{index}]")
        if model.name in seen:
            raise ConfigError(f"{source}: model {model.name!r} is defined twice")
        seen.add(model.name)
        models.append(model)
    return models


def _parse_model(table: Any, *, where: str) -> ModelConfig:
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: must be a table")
    name = table.get("name")
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"{where}: 'name' is required and must be a non-empty string")
    where = f"{where} ({name})"
    unknown = sorted(set(table) - _KEYS)
    if unknown:
        raise ConfigError(
            f"{where}: unknown key(s) {', '.join(unknown)} (known: {', '.join(sorted(_KEYS))})"
        )
    provider = table.get("provider")
    if provider not in PROVIDER_KINDS:
        raise ConfigError(
            f"{where}: 'provider' must be one of {', '.join(PROVIDER_KINDS)}, not {provider!r}"
        )
    kind = cast(ProviderKind, provider)
    upstream_model = _optional_str(table, "upstream_model", where) or name
    base_url = _optional_str(table, "base_url", where)
    api_key_env = _optional_str(table, "api_key_env", where)
    if kind == "mock":
        if upstream_model not in MOCK_MODELS:
            raise ConfigError(
                f"{where}: a mock model's upstream_model must be one of {', '.join(MOCK_MODELS)}"
            )
        if base_url or api_key_env:
            raise ConfigError(f"{where}: a mock model takes no base_url or api_key_env")
    else:
        base_url = base_url or DEFAULT_BASE_URLS[kind]
        if not base_url.startswith(("http://", "https://")):
            raise ConfigError(f"{where}: 'base_url' must start with http:// or https://")
        if kind == "anthropic" and not api_key_env:
            raise ConfigError(f"{where}: an anthropic model needs 'api_key_env'")
    return ModelConfig(
        name=name,
        provider=kind,
        upstream_model=upstream_model,
        base_url=base_url,
        api_key_env=api_key_env,
        input_usd_per_mtok=_optional_price(table, "input_usd_per_mtok", where),
        output_usd_per_mtok=_optional_price(table, "output_usd_per_mtok", where),
    )


def _optional_str(table: Mapping[str, Any], key: str, where: str) -> str | None:
    value = table.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{where}: {key!r} must be a non-empty string")
    return value


def _optional_price(table: Mapping[str, Any], key: str, where: str) -> float | None:
    value = table.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise ConfigError(f"{where}: {key!r} must be a number of USD >= 0, not {value!r}")
    return float(value)


def resolve_api_key(model: ModelConfig, environ: Mapping[str, str], *, source: str) -> str | None:
    """The model's own key, or the one its `api_key_env` names in the environment given."""
    if model.api_key is not None:
        return model.api_key
    if model.api_key_env is None:
        return None
    key = environ.get(model.api_key_env, "").strip()
    if not key:
        raise ConfigError(
            f"{source}: model {model.name!r} reads its API key from ${model.api_key_env}, "
            "which is not set"
        )
    return key
