"""Models configured at run time by an operator, with their upstream key encrypted."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Numeric, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from chatplane.db.base import Base, CreatedMixin, IdMixin, UTCDateTime, utcnow


class ModelEndpoint(IdMixin, CreatedMixin, Base):
    __tablename__ = "model_endpoints"

    name: Mapped[str] = mapped_column(String(200), unique=True)
    provider: Mapped[str] = mapped_column(String(16))  # openai | anthropic
    upstream_model: Mapped[str] = mapped_column(String(200))
    base_url: Mapped[str] = mapped_column(String(500))
    api_key_encrypted: Mapped[str | None] = mapped_column(Text)
    input_usd_per_mtok: Mapped[float] = mapped_column(Numeric(12, 6, asdecimal=False), default=0)
    output_usd_per_mtok: Mapped[float] = mapped_column(Numeric(12, 6, asdecimal=False), default=0)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
