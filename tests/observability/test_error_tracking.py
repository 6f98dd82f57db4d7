"""Error reports as a Sentry-compatible service receives them: a local HTTP endpoint takes
the envelopes the real `sentry-sdk` posts, from a live server whose requests and turns fail
for real. Reports carry the request, tenant, user and turn ids, and never a secret, a
cookie, an authorization header, or message text unless content logging is on."""

from __future__ import annotations

import asyncio
import gzip
import json
import logging
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import AsyncGenerator, AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import structlog
import typer

from chatplane import __version__
from chatplane.cli import start_error_tracking
from chatplane.errors import ProviderError
from chatplane.observability.error_tracking import (
    ErrorTrackingUnavailable,
    init_error_tracking,
    stop_error_tracking,
)
from chatplane.observability.logging import configure_logging
from chatplane.providers.protocol import CompletionRequest, StreamItem
from chatplane.settings import Settings
from tests.api.live import PASSWORD, LiveServer, start_live_server
from tests.conftest import make_settings
from tests.scale.procs import clean_env

sentry_sdk = pytest.importorskip("sentry_sdk", reason="needs the `sentry` extra")

SECRET_TEXT = "the launch code is 0451-tango"
BODY_PASSWORD = "hunter2-in-the-body"
COOKIE_VALUE = "cookie-value-that-must-not-leak"
LOGGED_TOKEN = "tok-nested-in-a-log-field"


@dataclass
class EnvelopeSink:
    """Takes envelopes on /api/<project>/envelope/ like a Sentry server would."""

    port: int
    bodies: list[bytes] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def dsn(self) -> str:
        return f"http://publickey@127.0.0.1:{self.port}/1"

    def received(self) -> bytes:
        with self.lock:
            return b"\n".join(self.bodies)

    def events(self) -> list[dict[str, Any]]:
        with self.lock:
            bodies = list(self.bodies)
        return [item for body in bodies for item in _event_items(body)]


def _event_items(body: bytes) -> list[dict[str, Any]]:
    """The `event` items of one envelope: a header line, then per item a header line and
    its payload (of `length` bytes when the header says so, else up to the newline)."""
    events: list[dict[str, Any]] = []
    _, _, rest = body.partition(b"\n")
    while rest.strip():
        header_line, _, rest = rest.partition(b"\n")
        header = json.loads(header_line)
        if "length" in header:
            payload, rest = rest[: header["length"]], rest[header["length"] :]
            rest = rest.removeprefix(b"\n")
        else:
            payload, _, rest = rest.partition(b"\n")
        if header.get("type") == "event":
            events.append(json.loads(payload))
    return events


@pytest.fixture
def sink() -> Iterator[EnvelopeSink]:
    collected = EnvelopeSink(port=0)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length", 0)))
            if self.headers.get("content-encoding") == "gzip":
                body = gzip.decompress(body)
            if self.path.endswith("/envelope/"):
                with collected.lock:
                    collected.bodies.append(body)
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, *_: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    collected.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield collected
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@contextmanager
def error_tracking(settings: Settings) -> Iterator[None]:
    """Logging and error tracking as `chatplane serve` sets them up, undone afterwards so
    nothing leaks into other tests: the SDK client closed, structlog's and the standard
    library's logging configuration restored."""
    saved_structlog = structlog.get_config()
    names = ("", "uvicorn", "uvicorn.error", "uvicorn.access", "alembic")
    saved_loggers = [
        (logger, list(logger.handlers), logger.level, logger.propagate)
        for logger in (logging.getLogger(name) for name in names)
    ]
    configure_logging(settings)
    # Loggers first used in this test must not keep this configuration when it ends.
    structlog.configure(cache_logger_on_first_use=False)
    try:
        assert init_error_tracking(settings)
        yield
    finally:
        stop_error_tracking()
        structlog.configure(**saved_structlog)
        for logger, handlers, level, propagate in saved_loggers:
            logger.handlers[:] = handlers
            logger.setLevel(level)
            logger.propagate = propagate
    assert not sentry_sdk.get_client().is_active()


async def flushed_events(sink: EnvelopeSink) -> list[dict[str, Any]]:
    """The events the sink holds once the SDK has sent its queue (`flush` returns when its
    transport thread's posts have been answered)."""
    await asyncio.to_thread(sentry_sdk.flush, 5)
    return sink.events()


def freeze_table(settings: Settings, table: str) -> None:
    """A real internal failure: the database refuses every insert into `table` with a
    constraint error (not an outage, which would be a 503)."""
    db_file = settings.resolved_database_url.split("///", 1)[1]
    with sqlite3.connect(db_file) as connection:
        connection.execute(
            f"CREATE TRIGGER freeze_{table} BEFORE INSERT ON {table} "
            "BEGIN SELECT RAISE(ABORT, 'frozen by the test'); END"
        )


@asynccontextmanager
async def live_server(settings: Settings) -> AsyncIterator[LiveServer]:
    live = await start_live_server(settings, email="errors@example.com")
    try:
        yield live
    finally:
        await live.stop()


@pytest.mark.parametrize("log_content", [False, True], ids=["content-off", "content-on"])
async def test_a_500_is_reported_with_its_ids_and_without_secrets(
    tmp_path: Path, sink: EnvelopeSink, log_content: bool
) -> None:
    settings = make_settings(tmp_path, sentry_dsn=sink.dsn, log_content=log_content)
    with error_tracking(settings):
        async with live_server(settings) as live, live.client() as http:
            me = (await http.get("/api/auth/me")).json()
            conversation = (await http.post("/api/conversations", json={})).json()
            freeze_table(settings, "messages")
            failed = await http.post(
                f"/api/conversations/{conversation['id']}/messages",
                json={"content": SECRET_TEXT, "password": BODY_PASSWORD},
                headers={
                    "cookie": f"chatplane_session={COOKIE_VALUE}",
                    "x-request-id": "req-message-500",
                },
            )
            freeze_table(settings, "refresh_tokens")
            async with httpx.AsyncClient(base_url=live.base_url, timeout=30) as anonymous:
                failed_login = await anonymous.post(
                    "/api/auth/login",
                    json={"email": live.email, "password": PASSWORD},
                    headers={"x-request-id": "req-login-500"},
                )
            events = await flushed_events(sink)
            api_key = live.api_key

    assert (failed.status_code, failed_login.status_code) == (500, 500)
    assert SECRET_TEXT not in failed.text
    by_request = {event.get("tags", {}).get("request_id"): event for event in events}
    assert len(events) == 2  # one report per failure (uvicorn's own error line is deduped)
    event = by_request["req-message-500"]
    assert event["tags"]["tenant_id"] == me["tenant_id"]
    assert event["tags"]["user_id"] == me["id"]
    assert event["user"] == {"id": me["id"]}  # the opaque id, never the email
    assert event["release"] == f"chatplane@{__version__}"
    assert event["level"] == "error"
    assert event["contexts"]["log"]["event"] == "unhandled_error"
    chain = event["exception"]["values"]  # the cause first, the exception raised last
    assert chain[-1]["type"] == "IntegrityError"
    assert "frozen by the test" in chain[-1]["value"]
    frames = [frame for error in chain for frame in error["stacktrace"]["frames"]]
    assert frames
    assert all("vars" not in frame for frame in frames)  # no local variables
    login_event = by_request["req-login-500"]
    assert login_event["contexts"]["log"]["path"] == "/api/auth/login"
    assert "user_id" not in login_event["tags"]  # nobody was logged in yet

    received = sink.received().decode()
    for secret in (api_key, BODY_PASSWORD, PASSWORD, COOKIE_VALUE, "errors@example.com"):
        assert secret not in received
    # The message text reaches a report only through the failed statement's values.
    assert (SECRET_TEXT in received) is log_content


async def test_a_crashed_turn_is_reported_and_a_provider_error_is_not(
    tmp_path: Path, sink: EnvelopeSink, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = make_settings(tmp_path, sentry_dsn=sink.dsn, turn_max_attempts=1)

    async def failing_stream(request: CompletionRequest) -> AsyncGenerator[StreamItem, None]:
        if "upstream" in request.messages[-1].content:
            raise ProviderError("The upstream answered 503", kind="http_503")
        raise RuntimeError("the adapter has a bug")
        yield  # a stream, like every provider's

    with error_tracking(settings):
        async with live_server(settings) as live, live.client() as http:
            route = await live.services.registry.resolve("mock-echo")
            monkeypatch.setattr(route.provider, "stream", failing_stream)
            conversation = (await http.post("/api/conversations", json={})).json()
            turns = {}
            for name, content in (("expected", "upstream, fail please"), ("crash", SECRET_TEXT)):
                posted = await http.post(
                    f"/api/conversations/{conversation['id']}/messages", json={"content": content}
                )
                assert posted.status_code == 202
                turns[name] = posted.json()["turn_id"]
                assert await turn_status(http, turns[name]) == "failed"
            events = await flushed_events(sink)

    reported = [event.get("tags", {}).get("turn_id") for event in events]
    assert reported == [turns["crash"]]  # the provider error is expected: not an error
    [event] = events
    assert event["contexts"]["log"]["event"] == "job_crashed"
    assert event["contexts"]["log"]["kind"] == "turn"
    [error] = event["exception"]["values"]
    assert (error["type"], error["value"]) == ("RuntimeError", "the adapter has a bug")
    assert SECRET_TEXT not in sink.received().decode()


async def turn_status(http: httpx.AsyncClient, turn_id: str) -> str:
    """The turn's status once it has ended."""
    deadline = time.monotonic() + 10
    while True:
        status = str((await http.get(f"/api/turns/{turn_id}")).json()["status"])
        if status in ("completed", "failed", "cancelled") or time.monotonic() > deadline:
            return status
        await asyncio.sleep(0.05)


@pytest.mark.parametrize("log_content", [False, True], ids=["content-off", "content-on"])
async def test_error_log_events_are_redacted_like_their_lines(
    tmp_path: Path, sink: EnvelopeSink, log_content: bool
) -> None:
    settings = make_settings(tmp_path, sentry_dsn=sink.dsn, log_content=log_content)
    with error_tracking(settings):
        log = structlog.get_logger("chatplane.tests")
        with structlog.contextvars.bound_contextvars(
            request_id="req-7", tenant_id="tenant-7", user_id="user-7"
        ):
            log.info("not_reported")
            log.warning("not_reported_either")
            log.error(
                "audit_row_not_stored",
                password=BODY_PASSWORD,
                content=SECRET_TEXT,
                details={"token": LOGGED_TOKEN, "Authorization": "Bearer abc123", "n": 3},
            )
        events = await flushed_events(sink)

    [event] = events
    assert event["message"] == "audit_row_not_stored"
    assert event["level"] == "error"
    assert {key: event["tags"][key] for key in ("request_id", "tenant_id", "user_id")} == {
        "request_id": "req-7",
        "tenant_id": "tenant-7",
        "user_id": "user-7",
    }
    fields = event["contexts"]["log"]
    assert fields["password"] == "[redacted]"
    assert fields["details"] == {"token": "[redacted]", "Authorization": "[redacted]", "n": 3}
    assert fields["content"] == (SECRET_TEXT if log_content else "[content]")
    received = sink.received().decode()
    for secret in (BODY_PASSWORD, LOGGED_TOKEN, "abc123"):
        assert secret not in received
    assert (SECRET_TEXT in received) is log_content


def run_python(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code],
        env=clean_env(**env),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


SERVE_APP = """
import sys
import structlog
from chatplane.app import serve_app

serve_app()  # what each process of `serve --workers N` runs
structlog.get_logger("probe").info("started")
loaded = sorted(name for name in sys.modules if name.startswith("sentry_sdk"))[:1]
print(loaded)
if loaded:
    import sentry_sdk
    print(sentry_sdk.get_client().options["release"])
"""


@pytest.mark.slow
def test_without_a_dsn_the_sdk_is_not_even_imported(tmp_path: Path) -> None:
    done = run_python(SERVE_APP, CHATPLANE_DATA_DIR=str(tmp_path))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


@pytest.mark.slow
def test_each_server_process_reports_on_its_own(tmp_path: Path, sink: EnvelopeSink) -> None:
    done = run_python(SERVE_APP, CHATPLANE_DATA_DIR=str(tmp_path), CHATPLANE_SENTRY_DSN=sink.dsn)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["['sentry_sdk']", f"chatplane@{__version__}"]


@pytest.mark.slow
def test_a_dsn_without_the_sdk_stops_the_start_naming_the_extra(tmp_path: Path) -> None:
    shim = tmp_path / "shim" / "sentry_sdk"
    shim.mkdir(parents=True)
    (shim / "__init__.py").write_text("raise ImportError('sentry-sdk is not installed')\n")
    done = subprocess.run(
        [sys.executable, "-m", "chatplane", "worker"],
        env=clean_env(
            PYTHONPATH=str(shim.parent),
            CHATPLANE_DATA_DIR=str(tmp_path / "data"),
            CHATPLANE_SENTRY_DSN="http://publickey@127.0.0.1:9/1",
            CHATPLANE_REDIS_URL="redis://127.0.0.1:9/0",  # never reached
        ),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    assert "pip install 'chatplane[sentry]'" in done.stderr, done.stderr


@pytest.mark.parametrize("in_this_process", [True, False], ids=["serve", "serve-workers-n"])
def test_every_start_path_names_the_extra_when_the_sdk_is_missing(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    in_this_process: bool,
) -> None:
    monkeypatch.setitem(sys.modules, "sentry_sdk", None)  # `import sentry_sdk` fails
    settings = make_settings(tmp_path, sentry_dsn="http://publickey@127.0.0.1:9/1")
    with pytest.raises(ErrorTrackingUnavailable, match=r"pip install 'chatplane\[sentry\]'"):
        init_error_tracking(settings)
    with pytest.raises(typer.Exit) as stopped:
        start_error_tracking(settings, in_this_process=in_this_process)
    assert stopped.value.exit_code == 2
    assert "pip install 'chatplane[sentry]'" in capsys.readouterr().err
    assert not init_error_tracking(make_settings(tmp_path))  # no DSN: nothing to start
