"""response cache: usage_records.cached, the opt-in of tenants (tenant_limits) and of API
keys (api_keys, NULL: as the tenant chose)

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02 21:45:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("usage_records", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("cached", sa.Boolean(), nullable=False, server_default=sa.false())
        )
    with op.batch_alter_table("tenant_limits", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("response_cache", sa.Boolean(), nullable=False, server_default=sa.false())
        )
    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        batch_op.add_column(sa.Column("response_cache", sa.Boolean(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        batch_op.drop_column("response_cache")
    with op.batch_alter_table("tenant_limits", schema=None) as batch_op:
        batch_op.drop_column("response_cache")
    with op.batch_alter_table("usage_records", schema=None) as batch_op:
        batch_op.drop_column("cached")
