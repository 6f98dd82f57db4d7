"""Model providers: one protocol, a registry by model name, adapters per vendor."""

from chatplane.providers.anthropic import AnthropicProvider
from chatplane.providers.config import ConfigError, ModelConfig, ProviderKind, load_model_config
from chatplane.providers.http import UpstreamHttp, create_upstream_session, upstream_timeout
from chatplane.providers.mock import MOCK_ECHO, MOCK_FILLER, MOCK_MODELS, MockProvider
from chatplane.providers.openai import OpenAIProvider
from chatplane.providers.protocol import (
    ChatMessage,
    CompletionRequest,
    Finish,
    Provider,
    Role,
    StreamItem,
    TextDelta,
    Usage,
    open_stream,
)
from chatplane.providers.registry import (
    ModelRegistry,
    ModelRoute,
    UpstreamDiscovery,
    build_registry,
    cost_usd,
)
from chatplane.providers.sse import ServerSentEvent, SSEDecoder
from chatplane.providers.tokens import estimate_prompt_tokens, estimate_tokens

__all__ = [
    "MOCK_ECHO",
    "MOCK_FILLER",
    "MOCK_MODELS",
    "AnthropicProvider",
    "ChatMessage",
    "CompletionRequest",
    "ConfigError",
    "Finish",
    "MockProvider",
    "ModelConfig",
    "ModelRegistry",
    "ModelRoute",
    "OpenAIProvider",
    "Provider",
    "ProviderKind",
    "Role",
    "SSEDecoder",
    "ServerSentEvent",
    "StreamItem",
    "TextDelta",
    "UpstreamDiscovery",
    "UpstreamHttp",
    "Usage",
    "build_registry",
    "cost_usd",
    "create_upstream_session",
    "estimate_prompt_tokens",
    "estimate_tokens",
    "load_model_config",
    "open_stream",
    "upstream_timeout",
]
