"""The OpenAPI schema also describes the plain ASGI routes (turn events, the /v1 gateway),
which FastAPI cannot see, so `/openapi.json` stays complete."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

BEARER: list[dict[str, list[str]]] = [{"bearer": []}]
PROBLEM = {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}
OPENAI_ERROR = {"application/json": {"schema": {"$ref": "#/components/schemas/OpenAIError"}}}

COMPONENTS: dict[str, Any] = {
    "Problem": {
        "type": "object",
        "required": ["status", "code", "title", "detail"],
        "properties": {
            "type": {"type": "string"},
            "status": {"type": "integer"},
            "code": {"type": "string"},
            "title": {"type": "string"},
            "detail": {"type": "string"},
            "field": {"type": ["string", "null"]},
        },
    },
    "OpenAIError": {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "properties": {
                    "message": {"type": "string"},
                    "type": {"type": "string"},
                    "param": {"type": ["string", "null"]},
                    "code": {"type": ["string", "null"]},
                },
            }
        },
    },
    "ChatCompletionRequest": {
        "type": "object",
        "required": ["model", "messages"],
        "properties": {
            "model": {"type": "string"},
            "messages": {
                "type": "array",
                "minItems": 1,
                "items": {
                    "type": "object",
                    "required": ["role"],
                    "properties": {
                        "role": {"enum": ["system", "developer", "user", "assistant", "tool"]},
                        "content": {
                            "oneOf": [
                                {"type": "string"},
                                {"type": "array", "items": {"type": "object"}},
                                {"type": "null"},
                            ]
                        },
                    },
                },
            },
            "stream": {"type": "boolean"},
            "stream_options": {
                "type": "object",
                "properties": {"include_usage": {"type": "boolean"}},
            },
            "max_tokens": {"type": "integer", "minimum": 1},
            "max_completion_tokens": {"type": "integer", "minimum": 1},
            "temperature": {"type": "number", "minimum": 0, "maximum": 2},
            "top_p": {"type": "number", "minimum": 0, "maximum": 1},
            "stop": {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]},
            "chatplane": {"type": "object", "description": "chatplane extensions"},
        },
    },
}


def _errors(content: dict[str, Any], *statuses: int) -> dict[str, Any]:
    return {str(status): {"description": "Error", "content": content} for status in statuses}


PATHS: dict[str, Any] = {
    "/api/turns/{turn_id}/events": {
        "get": {
            "tags": ["chat"],
            "summary": "Follow a turn's events (server-sent events)",
            "description": "Frames carry `id:`, `event:` and `data:` (JSON). Resume with the "
            "`Last-Event-ID` header or `?after=`; the stream ends after `turn.completed`, "
            "`turn.failed` or `turn.cancelled`.",
            "security": BEARER,
            "parameters": [
                {"name": "turn_id", "in": "path", "required": True, "schema": {"type": "string"}},
                {"name": "after", "in": "query", "schema": {"type": "string", "maxLength": 64}},
                {
                    "name": "Last-Event-ID",
                    "in": "header",
                    "schema": {"type": "string", "maxLength": 64},
                },
            ],
            "responses": {
                "200": {"description": "Event stream", "content": {"text/event-stream": {}}},
                **_errors(PROBLEM, 400, 401, 404),
            },
        }
    },
    "/api/kb/{kb_id}/documents/{document_id}/events": {
        "get": {
            "tags": ["knowledge"],
            "summary": "Follow a document's ingestion (server-sent events)",
            "description": "`document.queued`, `document.indexing` `{stage, done?, total?}`, "
            "then `document.ready` `{chunks}` or `document.failed` `{error}`. Resume like a "
            "turn's events, with `Last-Event-ID` or `?after=`.",
            "security": BEARER,
            "parameters": [
                {"name": "kb_id", "in": "path", "required": True, "schema": {"type": "string"}},
                {
                    "name": "document_id",
                    "in": "path",
                    "required": True,
                    "schema": {"type": "string"},
                },
                {"name": "after", "in": "query", "schema": {"type": "string", "maxLength": 64}},
                {
                    "name": "Last-Event-ID",
                    "in": "header",
                    "schema": {"type": "string", "maxLength": 64},
                },
            ],
            "responses": {
                "200": {"description": "Event stream", "content": {"text/event-stream": {}}},
                **_errors(PROBLEM, 400, 401, 404),
            },
        }
    },
    "/v1/chat/completions": {
        "post": {
            "tags": ["gateway"],
            "summary": "OpenAI-compatible chat completion (streamed or not)",
            "security": BEARER,
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {
                        "schema": {"$ref": "#/components/schemas/ChatCompletionRequest"}
                    }
                },
            },
            "responses": {
                "200": {
                    "description": "A chat.completion object, or chat.completion.chunk events",
                    "content": {"application/json": {}, "text/event-stream": {}},
                },
                **_errors(OPENAI_ERROR, 400, 401, 404, 413, 502, 504),
            },
        }
    },
    "/v1/models": {
        "get": {
            "tags": ["gateway"],
            "summary": "Models this gateway serves",
            "security": BEARER,
            "responses": {
                "200": {"description": "A list object", "content": {"application/json": {}}},
                **_errors(OPENAI_ERROR, 401),
            },
        }
    },
}


def install_openapi(app: FastAPI) -> None:
    def schema() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=app.routes,
            )
            document.setdefault("components", {}).setdefault("schemas", {}).update(COMPONENTS)
            document["components"]["securitySchemes"] = {
                "bearer": {"type": "http", "scheme": "bearer"}
            }
            document["paths"].update(PATHS)
            app.openapi_schema = document
        return app.openapi_schema

    app.openapi = schema  # type: ignore[method-assign]
