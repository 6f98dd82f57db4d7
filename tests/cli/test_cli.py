"""The `chatplane` command line, run as users run it: a subprocess."""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from chatplane.cli import usable_cores
from chatplane.db.migrate import head_revision

FAST_HASHING = {
    "CHATPLANE_PASSWORD_TIME_COST": "1",
    "CHATPLANE_PASSWORD_MEMORY_KIB": "1024",
    "CHATPLANE_PASSWORD_PARALLELISM": "1",
}


def _env(data_dir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHATPLANE_")}
    return {**env, **FAST_HASHING, "CHATPLANE_DATA_DIR": str(data_dir), **extra}


def chatplane(
    data_dir: Path, *args: str, stdin: str | None = None, **env: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "chatplane", *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=_env(data_dir, **env),
        timeout=60,
        check=False,
    )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_users_and_keys_are_created_and_bad_input_is_refused(tmp_path: Path) -> None:
    created = chatplane(
        tmp_path,
        "users",
        "create",
        "Root@Example.com",
        "--admin",
        "--password-stdin",
        stdin="s3cret-pass\n",
    )
    assert created.returncode == 0, created.stderr
    assert "root@example.com" in created.stdout
    assert "owner" in created.stdout  # the first user of a new tenant owns it

    again = chatplane(
        tmp_path, "users", "create", "root@example.com", "--password-stdin", stdin="s3cret-pass\n"
    )
    assert again.returncode == 1
    assert "exists" in again.stderr

    short = chatplane(
        tmp_path, "users", "create", "b@example.com", "--password-stdin", stdin="short\n"
    )
    assert short.returncode == 1
    assert "at least 8" in short.stderr

    key = chatplane(tmp_path, "keys", "create", "root@example.com", "--name", "ci")
    assert key.returncode == 0, key.stderr
    lines = key.stdout.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("cp_")
    assert len(lines[0]) > 40

    bad_scope = chatplane(
        tmp_path, "keys", "create", "root@example.com", "--name", "x", "--scope", "root"
    )
    assert bad_scope.returncode == 1
    assert "Scopes are one or more of" in bad_scope.stderr
    both = chatplane(
        tmp_path, "keys", "create", "root@example.com", "--name", "ops",
        "--scope", "chat", "--scope", "admin",
    )  # fmt: skip
    assert both.returncode == 0, both.stderr
    assert both.stdout.strip().startswith("cp_")

    unknown = chatplane(tmp_path, "keys", "create", "nobody@example.com", "--name", "x")
    assert unknown.returncode == 1
    assert "No user" in unknown.stderr

    limited = chatplane(
        tmp_path, "keys", "create", "root@example.com", "--name", "metered",
        "--rpm", "7", "--budget-usd", "1.5",
    )  # fmt: skip
    assert limited.returncode == 0, limited.stderr
    with sqlite3.connect(tmp_path / "chatplane.db") as db:
        key_id, rpm = db.execute("SELECT id, rpm FROM api_keys WHERE name = 'metered'").fetchone()
        budget = db.execute(
            "SELECT scope, period, limit_usd FROM budgets WHERE subject_id = ?", (key_id,)
        ).fetchone()
    assert rpm == 7
    assert budget == ("key", "lifetime", 1.5)  # a lifetime budget of the key
    negative = chatplane(
        tmp_path, "keys", "create", "root@example.com", "--name", "y", "--budget-usd", "-1"
    )
    assert negative.returncode != 0


def test_db_upgrade_and_bad_configuration(tmp_path: Path) -> None:
    behind = chatplane(tmp_path, "db", "check")
    assert behind.returncode == 1
    assert "chatplane db upgrade" in behind.stderr
    upgraded = chatplane(tmp_path, "db", "upgrade")
    assert upgraded.returncode == 0, upgraded.stderr
    assert f"revision {head_revision()}" in upgraded.stdout
    assert (tmp_path / "chatplane.db").exists()
    assert chatplane(tmp_path, "db", "check").returncode == 0

    bad = chatplane(tmp_path, "db", "upgrade", CHATPLANE_DATABASE_URL="mysql://x")
    assert bad.returncode == 2
    assert "CHATPLANE_DATABASE_URL" in bad.stderr
    bad_port = chatplane(tmp_path, "version", CHATPLANE_PORT="eighty")
    assert bad_port.returncode == 0  # `version` needs no configuration
    serve_bad_port = chatplane(tmp_path, "serve", CHATPLANE_PORT="eighty")
    assert serve_bad_port.returncode == 2
    assert "CHATPLANE_PORT" in serve_bad_port.stderr


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, str, subprocess.Popen[str]]]:
    port = _free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "chatplane", "serve", "--port", str(port)],
        env=_env(tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"serve did not start: {process.stdout and process.stdout.read()}")
            time.sleep(0.1)
        yield base, str(tmp_path), process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if process.stdout is not None:
            process.stdout.close()


def test_serve_with_no_configuration_and_the_openai_sdk(
    served: tuple[str, str, subprocess.Popen[str]],
) -> None:
    base, data_dir, process = served
    secret = Path(data_dir) / "secret_key"
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert len(secret.read_text().strip()) >= 32

    user = chatplane(
        Path(data_dir), "users", "create", "a@example.com", "--password-stdin", stdin="password1\n"
    )
    assert user.returncode == 0, user.stderr
    key = chatplane(Path(data_dir), "keys", "create", "a@example.com", "--name", "sdk")
    api_key = key.stdout.strip()
    client = openai.OpenAI(base_url=f"{base}/v1", api_key=api_key, max_retries=0)
    try:
        completion = client.chat.completions.create(
            model="mock-echo", messages=[{"role": "user", "content": "hi there"}]
        )
        assert completion.choices[0].message.content == "hi there"
        stream = client.chat.completions.create(
            model="mock-echo", messages=[{"role": "user", "content": "a b c"}], stream=True
        )
        assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == "a b c"
    finally:
        client.close()

    process.send_signal(signal.SIGTERM)
    # uvicorn shuts down gracefully, then re-raises the signal it caught.
    assert process.wait(timeout=15) in (0, -signal.SIGTERM)
    assert process.stdout is not None
    banner = process.stdout.read()
    assert "application shutdown complete" in banner.lower()
    assert f"on {base}" in banner
    assert "chatplane users create" in banner  # how to make the first admin


def test_serve_workers_need_redis_and_zero_means_one_per_core(tmp_path: Path) -> None:
    two = chatplane(tmp_path, "serve", "--workers", "2")
    assert two.returncode == 2
    assert "needs CHATPLANE_REDIS_URL" in two.stderr
    if usable_cores() == 1:
        pytest.skip("one core here: --workers 0 would start one process")
    per_core = chatplane(tmp_path, "serve", "--workers", "0")
    assert per_core.returncode == 2  # one per core is more than one, so it needs Redis too
    assert "needs CHATPLANE_REDIS_URL" in per_core.stderr
