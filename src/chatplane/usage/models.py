"""Usage records: one per chat turn or gateway call."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Boolean, Index, Integer, Numeric, String
from sqlalchemy.orm import Mapped, mapped_column

from chatplane.db.base import Base, CreatedMixin, IdMixin, UTCDateTime, utcnow


class UsageRecord(IdMixin, CreatedMixin, Base):
    __tablename__ = "usage_records"
    __table_args__ = (
        Index("ix_usage_tenant_created", "tenant_id", "created_at"),
        # Budgets re-count a user's or a key's spend in a period from these.
        Index("ix_usage_user_created", "user_id", "created_at"),
        Index("ix_usage_key_created", "api_key_id", "created_at"),
    )

    tenant_id: Mapped[str] = mapped_column(String(32))
    user_id: Mapped[str | None] = mapped_column(String(32))
    api_key_id: Mapped[str | None] = mapped_column(String(32))
    # Unique: a turn's usage is recorded exactly once, whatever retries happen.
    turn_id: Mapped[str | None] = mapped_column(String(32), unique=True)
    source: Mapped[str] = mapped_column(String(16))  # "chat" | "gateway"
    model: Mapped[str] = mapped_column(String(200))
    prompt_tokens: Mapped[int] = mapped_column(Integer, default=0)
    completion_tokens: Mapped[int] = mapped_column(Integer, default=0)
    cost_usd: Mapped[float] = mapped_column(Numeric(14, 8, asdecimal=False), default=0.0)
    # Answered from the gateway's response cache: no upstream call, no cost.
    cached: Mapped[bool] = mapped_column(Boolean, default=False)


class ModelPrice(Base):
    """An operator's price for a model (USD per million tokens); wins over the settings and
    the config file."""

    __tablename__ = "model_prices"

    model: Mapped[str] = mapped_column(String(200), primary_key=True)
    input_usd_per_mtok: Mapped[float] = mapped_column(Numeric(12, 6, asdecimal=False))
    output_usd_per_mtok: Mapped[float] = mapped_column(Numeric(12, 6, asdecimal=False))
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
