"""Tables of limits: per-tenant overrides of the rate and concurrency defaults, and budgets."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Boolean, ForeignKey, Integer, Numeric, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from chatplane.db.base import Base, CreatedMixin, IdMixin, UTCDateTime, utcnow

BUDGET_SCOPES = ("tenant", "user", "key")
BUDGET_PERIODS = ("day", "month", "lifetime")


class TenantLimits(Base):
    """One tenant's overrides of the settings' defaults. NULL inherits the default; 0 means
    unlimited. `user_*` and `key_*` apply to each member and each key of the tenant (a key's
    own `rpm`/`tpm`/`max_concurrent` win over them)."""

    __tablename__ = "tenant_limits"

    tenant_id: Mapped[str] = mapped_column(
        ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True
    )
    rpm: Mapped[int | None] = mapped_column(Integer)
    tpm: Mapped[int | None] = mapped_column(Integer)
    max_concurrent: Mapped[int | None] = mapped_column(Integer)
    user_rpm: Mapped[int | None] = mapped_column(Integer)
    user_tpm: Mapped[int | None] = mapped_column(Integer)
    user_max_concurrent: Mapped[int | None] = mapped_column(Integer)
    key_rpm: Mapped[int | None] = mapped_column(Integer)
    key_tpm: Mapped[int | None] = mapped_column(Integer)
    key_max_concurrent: Mapped[int | None] = mapped_column(Integer)
    # The gateway response cache for the tenant's calls (a key may choose otherwise).
    response_cache: Mapped[bool] = mapped_column(Boolean, default=False)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class Budget(IdMixin, CreatedMixin, Base):
    """At most `limit_usd` of spend per period (UTC day, UTC month, or ever) by a tenant, a
    user or an API key."""

    __tablename__ = "budgets"
    __table_args__ = (UniqueConstraint("scope", "subject_id", "period"),)

    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    scope: Mapped[str] = mapped_column(String(16))  # tenant | user | key
    subject_id: Mapped[str] = mapped_column(String(32))  # the tenant, user or key id
    period: Mapped[str] = mapped_column(String(16))  # day | month | lifetime
    limit_usd: Mapped[float] = mapped_column(Numeric(14, 6, asdecimal=False))
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
