"""`chatplane ops` speaks to a running server's operations API over HTTP. The standard
library's client is enough for one call per command, and keeps the CLI free of a
dependency the server does not need."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import urlsplit

TIMEOUT_S = 10.0


class OpsCallFailed(Exception):
    """The call did not give an answer to show; the message says why, for a person."""


def call_ops(base_url: str, token: str | None, method: str, path: str) -> Any:
    """The JSON answer of `method base_url+path`, or `OpsCallFailed`."""
    url = base_url.rstrip("/") + path
    if urlsplit(url).scheme not in ("http", "https"):
        raise OpsCallFailed(f"{base_url} is not an http:// or https:// URL")
    headers = {"accept": "application/json"}
    if token:
        headers["authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:  # scheme checked
            return _json(response.read(), url)
    except urllib.error.HTTPError as exc:
        raise OpsCallFailed(_refusal(exc.code, exc.read(), base_url)) from exc
    except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
        reason = getattr(exc, "reason", exc)
        raise OpsCallFailed(f"cannot reach chatplane at {base_url}: {reason}") from exc


def _json(body: bytes, url: str) -> Any:
    try:
        return json.loads(body)
    except ValueError as exc:
        raise OpsCallFailed(f"{url} did not answer JSON: is it a chatplane server?") from exc


def _refusal(status: int, body: bytes, base_url: str) -> str:
    try:
        problem = json.loads(body)
        detail = f"{problem['code']}: {problem['detail']}"
    except (ValueError, KeyError, TypeError):
        detail = body[:200].decode(errors="replace") or "no details"
    if status == 401:
        return (
            f"the server at {base_url} refused the credentials (401 {detail}); "
            "set CHATPLANE_OPS_TOKEN or pass --token"
        )
    if status == 403:
        return f"not allowed (403 {detail}): use the ops token or a superadmin's key"
    if status == 404:  # the commands call fixed paths only
        return f"no operations API at {base_url} (404 {detail}): an older chatplane?"
    return f"the server answered {status} ({detail})"
