"""Every table, imported in one place for Alembic and the metadata."""

from chatplane.auth.models import (
    ApiKey,
    AuditEvent,
    Invitation,
    RefreshToken,
    Tenant,
    User,
    WebSession,
)
from chatplane.chat.models import Conversation, Message, Turn
from chatplane.db.base import Base
from chatplane.providers.models import ModelEndpoint
from chatplane.usage.models import UsageRecord

__all__ = [
    "ApiKey",
    "AuditEvent",
    "Base",
    "Conversation",
    "Invitation",
    "Message",
    "ModelEndpoint",
    "RefreshToken",
    "Tenant",
    "Turn",
    "UsageRecord",
    "User",
    "WebSession",
]
