"""Pydantic shapes of the usage reports and of the price table."""

from __future__ import annotations

from datetime import date, datetime

from pydantic import BaseModel, ConfigDict, Field

from chatplane.providers.registry import ModelPricing, PriceSource
from chatplane.usage.repository import UsageRow

# A price above this (USD per million tokens) is a typo, not a model.
MAX_USD_PER_MTOK = 100_000.0


class UsageRowOut(BaseModel):
    """One group; a field is present when the report is grouped by it."""

    model_config = ConfigDict(protected_namespaces=())

    day: str | None = Field(default=None, description="YYYY-MM-DD, UTC")
    model: str | None = None
    user_id: str | None = None
    user_email: str | None = None
    api_key_id: str | None = None
    key_name: str | None = None
    tenant_id: str | None = None
    tenant_slug: str | None = None
    source: str | None = Field(default=None, description='"chat" or "gateway"')
    requests: int
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float
    cached_requests: int = Field(
        default=0, description="Of `requests`, those answered from the gateway response cache"
    )


class UsageTotals(BaseModel):
    requests: int
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float
    cached_requests: int = Field(
        default=0, description="Of `requests`, those answered from the gateway response cache"
    )


class UsageReport(BaseModel):
    from_: date = Field(alias="from")
    to: date
    group_by: list[str]
    rows: list[UsageRowOut]
    totals: UsageTotals
    truncated: bool = Field(
        default=False, description="More groups matched than the report shows; narrow it."
    )

    model_config = ConfigDict(populate_by_name=True)


def row_out(row: UsageRow, group_by: tuple[str, ...]) -> UsageRowOut:
    fields: dict[str, object] = {}
    if "day" in group_by:
        fields["day"] = row.day
    if "model" in group_by:
        fields["model"] = row.model
    if "user" in group_by:
        fields |= {"user_id": row.user_id, "user_email": row.user_email}
    if "key" in group_by:
        fields |= {"api_key_id": row.api_key_id, "key_name": row.key_name}
    if "tenant" in group_by:
        fields |= {"tenant_id": row.tenant_id, "tenant_slug": row.tenant_slug}
    if "source" in group_by:
        fields["source"] = row.source
    return UsageRowOut(
        **fields,
        requests=row.requests,
        prompt_tokens=row.prompt_tokens,
        completion_tokens=row.completion_tokens,
        cost_usd=round(row.cost_usd, 8),
        cached_requests=row.cached_requests,
    )


def totals_out(row: UsageRow) -> UsageTotals:
    return UsageTotals(
        requests=row.requests,
        prompt_tokens=row.prompt_tokens,
        completion_tokens=row.completion_tokens,
        cost_usd=round(row.cost_usd, 8),
        cached_requests=row.cached_requests,
    )


# Prices.


class PriceIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    input_usd_per_mtok: float = Field(ge=0, le=MAX_USD_PER_MTOK, allow_inf_nan=False)
    output_usd_per_mtok: float = Field(ge=0, le=MAX_USD_PER_MTOK, allow_inf_nan=False)


class PriceBasis(BaseModel):
    input_usd_per_mtok: float
    output_usd_per_mtok: float
    source: PriceSource


class PriceOut(BaseModel):
    model_config = ConfigDict(protected_namespaces=())

    model: str
    provider: str
    input_usd_per_mtok: float
    output_usd_per_mtok: float
    source: PriceSource = Field(
        description="default (unpriced), config (the TOML file), endpoint (a model added at "
        "run time), settings (CHATPLANE_MODEL_PRICES) or admin (this table)"
    )
    underlying: PriceBasis = Field(
        description="The price without the admin's (what DELETE restores)"
    )
    updated_at: datetime | None = Field(default=None, description="When the admin price was set")


def price_out(pricing: ModelPricing, updated_at: datetime | None = None) -> PriceOut:
    return PriceOut(
        model=pricing.model,
        provider=pricing.kind,
        input_usd_per_mtok=pricing.effective.input_usd_per_mtok,
        output_usd_per_mtok=pricing.effective.output_usd_per_mtok,
        source=pricing.effective.source,
        underlying=PriceBasis(
            input_usd_per_mtok=pricing.underlying.input_usd_per_mtok,
            output_usd_per_mtok=pricing.underlying.output_usd_per_mtok,
            source=pricing.underlying.source,
        ),
        updated_at=updated_at if pricing.effective.source == "admin" else None,
    )
