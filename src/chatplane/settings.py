"""One Settings object, built once in the composition root and passed down."""

from __future__ import annotations

import json
import os
import secrets
from functools import cached_property
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

SECRET_KEY_FILE = "secret_key"
# The rate-limit zones of routes (see chatplane.limits.service.zone_of and the nginx config).
LIMIT_ZONES = ("auth", "chat", "gateway", "upload", "admin")
# A list setting: a JSON list, or comma-separated values.
Names = Annotated[list[str], NoDecode]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="CHATPLANE_",
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
    )

    data_dir: Path = Path(".chatplane")
    database_url: str | None = None
    redis_url: str | None = None
    # Every Redis key starts with it: several deployments (or test runs) can share a Redis.
    redis_prefix: str = Field(default="chatplane", pattern=r"^[A-Za-z0-9_.:-]{1,64}$")
    secret_key: SecretStr | None = Field(default=None, min_length=32)
    # Encrypts secrets stored in the database (32 bytes, base64); derived from the secret key
    # when unset.
    encryption_key: SecretStr | None = None
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    # JSON lines, or readable console lines; unset: console lines on a terminal, JSON
    # otherwise (a file, a pipe, a container's log collector).
    log_json: bool | None = None
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_content: bool = False
    access_log: bool = True  # one line per request: method, route, status, durations
    # Error reports to a Sentry-compatible service (the `sentry` extra); off when unset.
    sentry_dsn: str | None = None
    sentry_environment: str | None = None  # default: `production`

    # Models and upstreams.
    config: Path | None = None
    default_model: str = "mock-echo"
    openai_base_url: str | None = None
    openai_api_key: SecretStr | None = None
    model_prices: dict[str, tuple[float, float]] = Field(default_factory=dict)
    upstream_connect_timeout_s: float = Field(default=10.0, gt=0)
    upstream_read_timeout_s: float = Field(default=120.0, gt=0)

    # The built-in mock model.
    mock_ttft_ms: float = Field(default=0.0, ge=0)
    mock_chunk_delay_ms: float = Field(default=0.0, ge=0)
    mock_chunks: int = Field(default=20, ge=1, le=100_000)
    mock_failure_rate: float = Field(default=0.0, ge=0.0, le=1.0)

    # Requests and turns.
    max_request_kb: int = Field(default=1024, ge=1)
    context_max_tokens: int = Field(default=16_000, ge=256)
    max_output_tokens: int = Field(default=1024, ge=1)
    turn_events_ttl_s: int = Field(default=3600, ge=1)
    turn_max_attempts: int = Field(default=3, ge=1)
    job_visibility_timeout_s: float = Field(default=30.0, gt=0)
    sse_keepalive_s: float = Field(default=15.0, gt=0)
    # The WebSocket channel (/api/ws), per connection: open subscriptions, client messages
    # per second (and the burst above that rate); messages are capped at max_request_kb.
    # `serve` pings every connection this often and drops a peer silent for as long again.
    ws_max_subscriptions: int = Field(default=32, ge=1, le=10_000)
    ws_message_rate_per_s: float = Field(default=10.0, gt=0)
    ws_message_burst: int = Field(default=30, ge=1)
    ws_ping_interval_s: float = Field(default=20.0, gt=0)

    # Passwords (argon2id) and sessions for the web app.
    password_time_cost: int = Field(default=3, ge=1)
    password_memory_kib: int = Field(default=65536, ge=8)
    password_parallelism: int = Field(default=4, ge=1)
    secure_cookies: bool = False
    access_token_ttl_s: int = Field(default=3600, ge=60)
    session_ttl_s: int = Field(default=14 * 24 * 3600, ge=60)

    # Turn execution inside `serve` (embedded shape) and `worker`.
    turn_concurrency: int = Field(default=32, ge=1)
    # On SIGTERM: how long running turns may finish before they are handed back.
    drain_timeout_s: float = Field(default=25.0, ge=0)
    # The turn sweeper (chat/sweeper.py): this often (0: never) it re-queues turns left
    # queued or running with no job for longer than the grace, and fails those past
    # `turn_max_attempts` runs or the max age.
    turn_sweep_interval_s: float = Field(default=30.0, ge=0)
    turn_sweep_grace_s: float = Field(default=60.0, gt=0)
    turn_sweep_max_age_s: float = Field(default=3600.0, gt=0)

    # Single sign-on with any OpenID Connect provider (authorization code + PKCE).
    oidc_issuer: str | None = None
    oidc_client_id: str | None = None
    oidc_client_secret: SecretStr | None = None
    oidc_scopes: str = "openid email profile"
    oidc_redirect_url: str | None = None  # default: <this server>/api/auth/sso/callback
    oidc_provider_name: str = "Single sign-on"

    # Brute-force defence: failed logins per account and per client IP within a window.
    login_max_failures: int = Field(default=5, ge=1)
    login_window_s: int = Field(default=900, ge=1)

    # Rate limits (requests or tokens per minute) and concurrent requests. Defaults for every
    # key, user and tenant; tenants and keys override them in the admin API. 0: unlimited.
    rate_limit_key_rpm: int = Field(default=600, ge=0)
    rate_limit_user_rpm: int = Field(default=600, ge=0)
    rate_limit_tenant_rpm: int = Field(default=0, ge=0)
    rate_limit_key_tpm: int = Field(default=0, ge=0)
    rate_limit_user_tpm: int = Field(default=0, ge=0)
    rate_limit_tenant_tpm: int = Field(default=0, ge=0)
    max_concurrent_key: int = Field(default=0, ge=0)
    max_concurrent_user: int = Field(default=32, ge=0)
    max_concurrent_tenant: int = Field(default=0, ge=0)
    # Per client IP, per zone of routes (auth, chat, gateway, upload, admin): the default,
    # and per-zone values, e.g. {"auth": 60}.
    rate_limit_ip_rpm: int = Field(default=1200, ge=0)
    rate_limit_ip_zones: dict[str, int] = Field(default_factory=lambda: {"auth": 120})
    # When the limit store (Redis) is unreachable, requests in these zones pass unlimited
    # (logged and counted); in the others they are refused with 503. Budgets always refuse.
    limits_fail_open_zones: Names = Field(
        default_factory=lambda: ["auth", "chat", "upload", "admin"]
    )
    # An unsettled budget reservation (a process died mid-request) stops counting after this.
    budget_reservation_ttl_s: int = Field(default=3600, ge=60)

    # Client IPs: X-Forwarded-For is believed only from these proxies (IPs or CIDRs).
    trusted_proxies: Names = Field(default_factory=list)
    # Cross-origin requests: allowed origins (none by default).
    cors_origins: Names = Field(default_factory=list)

    # Database pool (scaled shape).
    db_pool_size: int = Field(default=10, ge=1)
    db_max_overflow: int = Field(default=10, ge=0)
    # A database that does not answer: give up connecting, or on one statement, after these
    # (Postgres), so requests fail fast with a retryable 503 instead of hanging.
    db_connect_timeout_s: float = Field(default=5.0, gt=0)
    db_command_timeout_s: float = Field(default=30.0, gt=0)

    # `chatplane worker` serves GET /metrics on this port (on CHATPLANE_HOST); 0: off.
    worker_metrics_port: int = Field(default=0, ge=0, le=65535)

    # The operations API (`/api/ops/*`, `chatplane ops`): superadmins, or this bearer token.
    ops_token: SecretStr | None = Field(default=None, min_length=16)
    # Every process announces itself this often; silent for 3 intervals it shows as stale,
    # for 10 it is dropped from the list.
    presence_interval_s: float = Field(default=5.0, gt=0)
    # The live operations dashboard (`/api/ops/dashboard`, `/api/ops/live`): a frame this
    # often, rates and p95 over this window, and per-tile `[warning, critical]` overrides as
    # JSON, e.g. {"latency_p95_s": [0.5, 2]} (tiles and defaults: docs/operations.md).
    dashboard_interval_s: float = Field(default=2.0, ge=0.2, le=60)
    dashboard_window_s: float = Field(default=60.0, ge=1, le=3600)
    dashboard_thresholds: dict[str, tuple[float, float]] = Field(default_factory=dict)

    # Knowledge bases. Embeddings: `none` (lexical retrieval only), `openai:<model>` (the
    # OpenAI-compatible upstream's /v1/embeddings) or `local:<model>` (the `local-embeddings`
    # extra, in-process).
    embeddings: str = Field(default="none", pattern=r"^(none|(openai|local):\S+)$")
    embeddings_base_url: str | None = None  # default: CHATPLANE_OPENAI_BASE_URL
    embeddings_api_key: SecretStr | None = None  # default: CHATPLANE_OPENAI_API_KEY
    embeddings_batch_size: int = Field(default=64, ge=1, le=2048)
    upload_max_mb: int = Field(default=50, ge=1)
    blob_url: str | None = None  # default: <data dir>/blobs; `s3://bucket/prefix` for S3
    s3_endpoint_url: str | None = None  # for S3-compatible stores (MinIO, Ceph, ...)
    kb_chunk_tokens: int = Field(default=350, ge=32, le=8192)
    kb_chunk_overlap_tokens: int = Field(default=50, ge=0, le=4096)
    kb_top_k: int = Field(default=5, ge=1, le=50)
    kb_context_max_tokens: int = Field(default=3000, ge=100)

    # What hot paths read on every request (API keys and sessions -> principal, tenant
    # limits): an in-process tier, and Redis behind it when CHATPLANE_REDIS_URL is set.
    # Changes made through the API reach every process at once; these TTLs bound what
    # changes elsewhere (the database by hand). Items per kind in each process; 0: no cache.
    cache_local_ttl_s: float = Field(default=30.0, gt=0)
    cache_ttl_s: float = Field(default=60.0, gt=0)
    cache_max_items: int = Field(default=10_000, ge=0)

    # The gateway's response cache (tenants and keys opt in; a request can ask with
    # `"chatplane": {"cache": true}`): how long an answer is kept, the total of the
    # in-process tier (the embedded shape; Redis bounds its own), and the largest answer kept.
    response_cache_ttl_s: float = Field(default=3600.0, gt=0)
    response_cache_max_mb: float = Field(default=64.0, gt=0)
    response_cache_max_entry_kb: int = Field(default=256, ge=1)

    @field_validator("trusted_proxies", "cors_origins", "limits_fail_open_zones", mode="before")
    @classmethod
    def _names(cls, value: object) -> object:
        """A JSON list, or the friendlier `a,b,c` (spaces ignored)."""
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                return json.loads(text)
            return [part.strip() for part in text.split(",") if part.strip()]
        return value

    @field_validator("limits_fail_open_zones", "rate_limit_ip_zones")
    @classmethod
    def _known_zones(cls, value: list[str] | dict[str, int]) -> list[str] | dict[str, int]:
        unknown = sorted(set(value) - set(LIMIT_ZONES))
        if unknown:
            raise ValueError(f"unknown zones {unknown}; the zones are {list(LIMIT_ZONES)}")
        return value

    @field_validator("rate_limit_ip_zones")
    @classmethod
    def _zone_limits(cls, value: dict[str, int]) -> dict[str, int]:
        if any(limit < 0 for limit in value.values()):
            raise ValueError("a zone's requests per minute is 0 (unlimited) or more")
        return value

    @field_validator("dashboard_thresholds")
    @classmethod
    def _known_tiles(cls, value: dict[str, tuple[float, float]]) -> dict[str, tuple[float, float]]:
        from chatplane.ops.thresholds import check_thresholds

        return check_thresholds(value)

    @field_validator("database_url")
    @classmethod
    def _known_driver(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if value.startswith(("postgresql://", "postgres://")):
            return "postgresql+asyncpg://" + value.split("://", 1)[1]
        if not value.startswith(("sqlite+aiosqlite://", "postgresql+asyncpg://")):
            raise ValueError("use sqlite+aiosqlite:///PATH or postgresql+asyncpg://USER@HOST/DB")
        return value

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{(self.data_dir / 'chatplane.db').resolve()}"

    @property
    def is_embedded_db(self) -> bool:
        return self.resolved_database_url.startswith("sqlite")

    @property
    def upload_max_bytes(self) -> int:
        return self.upload_max_mb * 1024 * 1024

    @property
    def max_request_bytes(self) -> int:
        return self.max_request_kb * 1024

    @cached_property
    def signing_key(self) -> str:
        """The secret key, generated and kept in the data dir (mode 0600) when not set."""
        if self.secret_key is not None:
            return self.secret_key.get_secret_value()
        return load_or_create_secret(self.data_dir)


def load_or_create_secret(data_dir: Path) -> str:
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / SECRET_KEY_FILE
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    key = secrets.token_urlsafe(48)
    # O_EXCL: two processes starting together agree on one key.
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_text().strip()
    with os.fdopen(fd, "w") as handle:
        handle.write(key + "\n")
    return key
