"""The tiles of the live operations dashboard and their default warning and critical
thresholds (`CHATPLANE_DASHBOARD_THRESHOLDS` overrides any of them). A tile is at `warning`
from its warning value up, `critical` from its critical value up: higher is worse for all."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class TileSpec:
    key: str
    label: str
    unit: str  # "" (a count), "/s", "/min", "s", "ratio"
    warning: float
    critical: float


TILES: tuple[TileSpec, ...] = (
    TileSpec("active_users", "Active users (5 min)", "", 500, 2000),
    TileSpec("open_streams", "Open streams", "", 2000, 8000),
    TileSpec("requests_per_s", "Requests per second", "/s", 200, 500),
    TileSpec("latency_p95_s", "p95 latency", "s", 1.0, 3.0),
    TileSpec("error_rate", "Error rate (5xx)", "ratio", 0.01, 0.05),
    TileSpec("first_token_p95_s", "First token p95", "s", 3.0, 10.0),
    TileSpec("queue_depth", "Queue depth", "", 100, 1000),
    TileSpec("queue_age_s", "Oldest queued job", "s", 10, 60),
    TileSpec("messages_per_min", "Messages per minute", "/min", 3000, 10000),
    TileSpec("turns_per_min", "Turns per minute", "/min", 3000, 10000),
    TileSpec("provider_errors_per_min", "Provider errors per minute", "/min", 1, 10),
)
TILE_KEYS = tuple(tile.key for tile in TILES)


def check_thresholds(overrides: dict[str, tuple[float, float]]) -> dict[str, tuple[float, float]]:
    """Known tiles only, each `[warning, critical]` with 0 <= warning <= critical."""
    unknown = sorted(set(overrides) - set(TILE_KEYS))
    if unknown:
        raise ValueError(f"unknown dashboard tiles {unknown}; the tiles are {list(TILE_KEYS)}")
    for key, (warning, critical) in overrides.items():
        if not 0 <= warning <= critical:
            raise ValueError(f"{key}: use [warning, critical] with 0 <= warning <= critical")
    return overrides


def thresholds(overrides: dict[str, tuple[float, float]]) -> dict[str, tuple[float, float]]:
    """Every tile's (warning, critical): the defaults, with the settings' overrides."""
    return {tile.key: overrides.get(tile.key, (tile.warning, tile.critical)) for tile in TILES}
