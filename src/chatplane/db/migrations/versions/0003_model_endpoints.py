"""model endpoints

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29 05:18:24.827310
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "model_endpoints",
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("provider", sa.String(length=16), nullable=False),
        sa.Column("upstream_model", sa.String(length=200), nullable=False),
        sa.Column("base_url", sa.String(length=500), nullable=False),
        sa.Column("api_key_encrypted", sa.Text(), nullable=True),
        sa.Column(
            "input_usd_per_mtok", sa.Numeric(precision=12, scale=6, asdecimal=False), nullable=False
        ),
        sa.Column(
            "output_usd_per_mtok",
            sa.Numeric(precision=12, scale=6, asdecimal=False),
            nullable=False,
        ),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_model_endpoints")),
        sa.UniqueConstraint("name", name=op.f("uq_model_endpoints_name")),
    )


def downgrade() -> None:
    op.drop_table("model_endpoints")
