"""Logs as an operator reads them: JSON lines from a real `chatplane serve` whose output is
a file (the default off a terminal), one access line per
request with the request id the response echoed, the route template, the status, the
duration and the time to the first body byte (a stream's first token), the tenant and the
user; no secret and no message text."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
from pathlib import Path

import httpx

from tests.scale.procs import Cluster, clean_env, run_cli

PASSWORD = "logged-password-1"
SECRET_TEXT = "the launch code is 0000"
MOCK_TTFT_MS = 150
MOCK_CHUNK_DELAY_MS = 100


async def test_json_access_lines_carry_the_echoed_request_id(tmp_path: Path) -> None:
    env = clean_env(  # CHATPLANE_LOG_JSON unset
        CHATPLANE_DATA_DIR=str(tmp_path / "data"),
        CHATPLANE_MOCK_TTFT_MS=str(MOCK_TTFT_MS),
        CHATPLANE_MOCK_CHUNKS="4",
        CHATPLANE_MOCK_CHUNK_DELAY_MS=str(MOCK_CHUNK_DELAY_MS),
    )
    run_cli(env, "users", "create", "log@example.com", "--password-stdin", stdin=PASSWORD + "\n")
    key = run_cli(env, "keys", "create", "log@example.com", "--name", "logs").strip()
    cluster = Cluster(env, tmp_path)
    api = cluster.api("api")
    try:
        await api.wait_ready()
        async with httpx.AsyncClient(
            base_url=api.base_url, headers={"authorization": f"Bearer {key}"}, timeout=30
        ) as http:
            created = await http.post(
                "/api/conversations", json={}, headers={"x-request-id": "req-from-client-1"}
            )
            conversation_id = created.json()["id"]
            posted = await http.post(
                f"/api/conversations/{conversation_id}/messages", json={"content": SECRET_TEXT}
            )
            failed_login = await http.post(
                "/api/auth/login", json={"email": "log@example.com", "password": "wrong-guess"}
            )
            streamed = await http.post(
                "/v1/chat/completions",
                json={
                    "model": "mock",
                    "stream": True,
                    "messages": [{"role": "user", "content": "hi"}],
                },
                headers={"x-request-id": "req-streamed-1"},
            )
    finally:
        cluster.stop_all()
    assert created.headers["x-request-id"] == "req-from-client-1"
    assert posted.status_code == 202
    assert failed_login.status_code == 401
    assert streamed.status_code == 200
    assert streamed.text.endswith("data: [DONE]\n\n")

    lines = [line for line in api.log().splitlines() if line.startswith("{")]
    records = [json.loads(line) for line in lines]  # every structured line is valid JSON
    access = [r for r in records if r.get("event") == "request"]
    first = next(r for r in access if r.get("request_id") == "req-from-client-1")
    assert first["route"] == "/api/conversations"
    assert (first["method"], first["status"]) == ("POST", 201)
    assert 0 <= first["first_byte_ms"] <= first["duration_ms"]
    assert first["tenant_id"]
    assert first["user_id"]
    assert first["level"] == "info"
    assert first["timestamp"].endswith("Z")
    message_line = next(r for r in access if r["status"] == 202)
    assert message_line["route"] == "/api/conversations/{conversation_id}/messages"
    assert posted.headers["x-request-id"] == message_line["request_id"]
    assert any(r["route"] == "/api/auth/login" and r["status"] == 401 for r in access)
    # A stream's first byte is its first token (after the mock's TTFT); its duration runs
    # to the last byte (three more chunks, each after the mock's gap).
    stream_line = next(r for r in access if r.get("request_id") == "req-streamed-1")
    assert stream_line["route"] == "/v1/chat/completions"
    assert stream_line["first_byte_ms"] >= MOCK_TTFT_MS
    assert stream_line["first_byte_ms"] + 3 * MOCK_CHUNK_DELAY_MS <= stream_line["duration_ms"]
    # uvicorn's own lines come through the same JSON renderer.
    assert any("Uvicorn running" in str(r.get("event")) for r in records)
    log = api.log()
    assert key not in log
    assert PASSWORD not in log
    assert "wrong-guess" not in log
    assert SECRET_TEXT not in log


TERMINAL_LINE = """
import structlog
from pathlib import Path
from chatplane.observability.logging import configure_logging
from chatplane.settings import Settings

configure_logging(Settings(_env_file=None, data_dir=Path({data_dir!r})))
structlog.get_logger("chatplane.test").info("on_a_terminal", answer=42)
"""


def test_a_terminal_gets_console_lines_unless_json_is_asked_for(tmp_path: Path) -> None:
    def line_on_a_terminal(**env: str) -> str:
        main, child = pty.openpty()
        try:
            subprocess.run(
                [sys.executable, "-c", TERMINAL_LINE.format(data_dir=str(tmp_path))],
                env=clean_env(**env),
                stderr=child,
                check=True,
                timeout=60,
            )
            return os.read(main, 65536).decode()
        finally:
            os.close(main)
            os.close(child)

    console = line_on_a_terminal()
    assert "on_a_terminal" in console
    assert "answer" in console
    assert "42" in console
    assert not console.lstrip().startswith("{")
    asked = json.loads(line_on_a_terminal(CHATPLANE_LOG_JSON="1"))
    assert (asked["event"], asked["answer"]) == ("on_a_terminal", 42)
