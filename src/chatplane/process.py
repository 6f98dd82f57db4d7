"""The long-running processes of `chatplane serve` and `chatplane worker`.

Once the command line has checked the settings (and, for `serve`, the database), the process
replaces itself (`os.execv`: same PID, so signals, supervisors and containers see no change)
with a fresh interpreter running this module: `python -m chatplane.process serve HOST PORT`
or `... worker`. Only what serves or runs turns is then resident, nothing of the command
line (Typer with its own copy of click, about 1.7 MB) for the life of the process."""

from __future__ import annotations

import os
import sys
from typing import Any, NoReturn

from chatplane.settings import Settings

# SIGTERM drains first (up to drain_timeout_s, see chatplane.ops.drain); what still runs after
# that is cut this many seconds after the server stops listening.
GRACEFUL_SHUTDOWN_S = 3
# Each server process builds its app from the settings in the environment.
APP_FACTORY = "chatplane.app:serve_app"


def uvicorn_options(settings: Settings, host: str, port: int) -> dict[str, Any]:
    return {
        "host": host,
        "port": port,
        "loop": "uvloop",
        "http": "httptools",
        "access_log": False,
        "proxy_headers": False,  # trusted proxies are handled by chatplane's own middleware
        "log_config": None,
        "timeout_graceful_shutdown": GRACEFUL_SHUTDOWN_S,
        # WebSockets (/api/ws): ping frames keep proxies from timing idle connections out
        # and drop dead peers; a frame over twice the app's own message cap (which gets a
        # clear error) is refused by the protocol, so no connection buffers more.
        "ws_ping_interval": settings.ws_ping_interval_s,
        "ws_ping_timeout": settings.ws_ping_interval_s,
        "ws_max_size": 2 * settings.max_request_bytes,
        "factory": True,
    }


def become(*argv: str) -> NoReturn:
    """Replace this process with `python -m chatplane.process ARGV...` (never returns)."""
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, [sys.executable, "-m", "chatplane.process", *argv])


def process_settings() -> Settings:
    """Settings from the environment, with logging and (given a DSN) error tracking set up:
    how every server and worker process starts."""
    from chatplane.observability.logging import configure_logging

    settings = Settings()
    configure_logging(settings)
    if settings.sentry_dsn:
        from chatplane.observability.error_tracking import init_error_tracking

        init_error_tracking(settings)
    return settings


def serve(host: str, port: int) -> None:
    import uvicorn

    uvicorn.run(APP_FACTORY, **uvicorn_options(Settings(), host, port))


def worker() -> None:
    import uvloop

    from chatplane.errors import ChatplaneError
    from chatplane.worker import run_worker

    settings = process_settings()
    try:
        uvloop.run(run_worker(settings))
    except ChatplaneError as exc:
        from chatplane.cli import fail  # its message and exit code, as before the hand-over

        raise SystemExit(fail(exc.detail).exit_code) from exc


def keep_rich_out() -> None:
    """Keep Rich out of this process: structlog imports it (and with it pygments and
    attrs) whenever it is installed, and the command line needs it installed, but a
    server or worker never prints with it (the console log's tracebacks are plain: Rich's
    show local variables, which may hold secrets). 4.7 MB of idle RSS and 79 modules.

    A `None` in `sys.modules` makes `import rich` fail as if it were not installed, which
    structlog (and Typer, for an error message from the command line's helpers) handle.
    Only for the process this module runs as: an interpreter that has Rich keeps it."""
    if "rich" not in sys.modules:
        sys.modules["rich"] = None  # type: ignore[assignment]  # the documented import blocker


def main(argv: list[str]) -> None:
    keep_rich_out()
    match argv:
        case ["serve", host, port]:
            serve(host, int(port))
        case ["worker"]:
            worker()
        case _:
            raise SystemExit(f"usage: {sys.executable} -m chatplane.process serve HOST PORT|worker")


if __name__ == "__main__":
    main(sys.argv[1:])
