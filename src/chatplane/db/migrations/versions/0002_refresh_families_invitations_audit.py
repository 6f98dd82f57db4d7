"""sessions with refresh families, invitations, audit events

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29 05:06:41.392966
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "audit_events",
        sa.Column("tenant_id", sa.String(length=32), nullable=True),
        sa.Column("actor_id", sa.String(length=32), nullable=True),
        sa.Column("action", sa.String(length=64), nullable=False),
        sa.Column("subject", sa.String(length=320), nullable=True),
        sa.Column("ip", sa.String(length=64), nullable=True),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_events")),
    )
    with op.batch_alter_table("audit_events", schema=None) as batch_op:
        batch_op.create_index("ix_audit_tenant_created", ["tenant_id", "created_at"], unique=False)

    op.create_table(
        "invitations",
        sa.Column("tenant_id", sa.String(length=32), nullable=False),
        sa.Column("email", sa.String(length=320), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("created_by", sa.String(length=32), nullable=True),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("accepted_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_invitations_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_invitations")),
        sa.UniqueConstraint("token_hash", name=op.f("uq_invitations_token_hash")),
    )
    with op.batch_alter_table("invitations", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_invitations_tenant_id"), ["tenant_id"], unique=False)

    op.create_table(
        "refresh_tokens",
        sa.Column("session_id", sa.String(length=32), nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("used_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["session_id"],
            ["web_sessions.id"],
            name=op.f("fk_refresh_tokens_session_id_web_sessions"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_refresh_tokens")),
        sa.UniqueConstraint("token_hash", name=op.f("uq_refresh_tokens_token_hash")),
    )
    with op.batch_alter_table("refresh_tokens", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_refresh_tokens_session_id"), ["session_id"], unique=False
        )

    with op.batch_alter_table("tenants", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("sso_domains", sa.String(length=1000), nullable=False, server_default="")
        )
        batch_op.add_column(
            sa.Column("disabled", sa.Boolean(), nullable=False, server_default=sa.false())
        )

    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.add_column(sa.Column("last_login_at", sa.DateTime(timezone=True), nullable=True))

    with op.batch_alter_table("web_sessions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("revoked_reason", sa.String(length=64), nullable=True))
        batch_op.add_column(
            sa.Column("method", sa.String(length=16), nullable=False, server_default="password")
        )
        batch_op.add_column(sa.Column("ip", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("user_agent", sa.String(length=300), nullable=True))
        batch_op.add_column(sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=True))

    # Open sessions keep working: their current refresh token becomes the family's first.
    op.execute(
        "INSERT INTO refresh_tokens (id, session_id, token_hash, created_at) "
        "SELECT id, id, refresh_hash, created_at FROM web_sessions"
    )
    with op.batch_alter_table("web_sessions", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("uq_web_sessions_refresh_hash"), type_="unique")
        batch_op.drop_column("refresh_hash")


def downgrade() -> None:
    # Sessions go back to one refresh token each: the newest unused one, else none (the
    # session then ends at its next refresh).
    with op.batch_alter_table("web_sessions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("refresh_hash", sa.VARCHAR(length=64), nullable=True))
    op.execute(
        "UPDATE web_sessions SET refresh_hash = (SELECT r.token_hash FROM refresh_tokens r "
        "WHERE r.session_id = web_sessions.id AND r.used_at IS NULL "
        "ORDER BY r.created_at DESC LIMIT 1)"
    )
    op.execute("UPDATE web_sessions SET refresh_hash = id WHERE refresh_hash IS NULL")
    with op.batch_alter_table("web_sessions", schema=None) as batch_op:
        batch_op.alter_column("refresh_hash", existing_type=sa.VARCHAR(length=64), nullable=False)
        batch_op.create_unique_constraint(
            batch_op.f("uq_web_sessions_refresh_hash"), ["refresh_hash"]
        )
        batch_op.drop_column("last_used_at")
        batch_op.drop_column("user_agent")
        batch_op.drop_column("ip")
        batch_op.drop_column("method")
        batch_op.drop_column("revoked_reason")

    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.drop_column("last_login_at")

    with op.batch_alter_table("tenants", schema=None) as batch_op:
        batch_op.drop_column("disabled")
        batch_op.drop_column("sso_domains")

    with op.batch_alter_table("refresh_tokens", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_refresh_tokens_session_id"))

    op.drop_table("refresh_tokens")
    with op.batch_alter_table("invitations", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_invitations_tenant_id"))

    op.drop_table("invitations")
    with op.batch_alter_table("audit_events", schema=None) as batch_op:
        batch_op.drop_index("ix_audit_tenant_created")

    op.drop_table("audit_events")
