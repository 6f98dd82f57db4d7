"""limits, budgets and prices: tenant limit overrides, budgets (an API key's budget_usd
moves into them), model prices, per-key limits, usage indexes for budget re-counts

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-29 06:26:52.611193
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "model_prices",
        sa.Column("model", sa.String(length=200), nullable=False),
        sa.Column(
            "input_usd_per_mtok", sa.Numeric(precision=12, scale=6, asdecimal=False), nullable=False
        ),
        sa.Column(
            "output_usd_per_mtok",
            sa.Numeric(precision=12, scale=6, asdecimal=False),
            nullable=False,
        ),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("model", name=op.f("pk_model_prices")),
    )
    op.create_table(
        "budgets",
        sa.Column("tenant_id", sa.String(length=32), nullable=False),
        sa.Column("scope", sa.String(length=16), nullable=False),
        sa.Column("subject_id", sa.String(length=32), nullable=False),
        sa.Column("period", sa.String(length=16), nullable=False),
        sa.Column("limit_usd", sa.Numeric(precision=14, scale=6, asdecimal=False), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_budgets_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_budgets")),
        sa.UniqueConstraint("scope", "subject_id", "period", name=op.f("uq_budgets_scope")),
    )
    with op.batch_alter_table("budgets", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_budgets_tenant_id"), ["tenant_id"], unique=False)

    op.create_table(
        "tenant_limits",
        sa.Column("tenant_id", sa.String(length=32), nullable=False),
        sa.Column("rpm", sa.Integer(), nullable=True),
        sa.Column("tpm", sa.Integer(), nullable=True),
        sa.Column("max_concurrent", sa.Integer(), nullable=True),
        sa.Column("user_rpm", sa.Integer(), nullable=True),
        sa.Column("user_tpm", sa.Integer(), nullable=True),
        sa.Column("user_max_concurrent", sa.Integer(), nullable=True),
        sa.Column("key_rpm", sa.Integer(), nullable=True),
        sa.Column("key_tpm", sa.Integer(), nullable=True),
        sa.Column("key_max_concurrent", sa.Integer(), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_tenant_limits_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("tenant_id", name=op.f("pk_tenant_limits")),
    )
    # A key's budget becomes a lifetime budget row, before the column goes.
    op.execute(
        """
        INSERT INTO budgets (id, created_at, updated_at, tenant_id, scope, subject_id, period,
                             limit_usd)
        SELECT id, created_at, created_at, tenant_id, 'key', id, 'lifetime', budget_usd
        FROM api_keys WHERE budget_usd IS NOT NULL
        """
    )
    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        batch_op.add_column(sa.Column("tpm", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("max_concurrent", sa.Integer(), nullable=True))
        batch_op.drop_column("budget_usd")

    with op.batch_alter_table("turns", schema=None) as batch_op:
        batch_op.add_column(sa.Column("api_key_id", sa.String(length=32), nullable=True))

    with op.batch_alter_table("usage_records", schema=None) as batch_op:
        batch_op.create_index("ix_usage_key_created", ["api_key_id", "created_at"], unique=False)
        batch_op.create_index("ix_usage_user_created", ["user_id", "created_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("turns", schema=None) as batch_op:
        batch_op.drop_column("api_key_id")

    with op.batch_alter_table("usage_records", schema=None) as batch_op:
        batch_op.drop_index("ix_usage_user_created")
        batch_op.drop_index("ix_usage_key_created")

    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("budget_usd", sa.Numeric(precision=14, scale=6, asdecimal=False))
        )
        batch_op.drop_column("max_concurrent")
        batch_op.drop_column("tpm")
    op.execute(
        """
        UPDATE api_keys SET budget_usd = (
            SELECT limit_usd FROM budgets
            WHERE budgets.scope = 'key' AND budgets.subject_id = api_keys.id
              AND budgets.period = 'lifetime'
        )
        """
    )

    op.drop_table("tenant_limits")
    with op.batch_alter_table("budgets", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_budgets_tenant_id"))

    op.drop_table("budgets")
    op.drop_table("model_prices")
