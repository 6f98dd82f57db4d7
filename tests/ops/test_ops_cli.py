"""`chatplane ops`, run as operators run it (a subprocess) against a running `chatplane
serve` (the embedded shape)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

from tests.ops.support import OPS_TOKEN
from tests.scale.procs import clean_env, free_port


@dataclass(frozen=True)
class Served:
    url: str
    pid: int
    env: dict[str, str]  # CHATPLANE_HOST/PORT name the server, CHATPLANE_OPS_TOKEN is set

    @property
    def process_id(self) -> str:
        return f"{socket.gethostname()}-{self.pid}"


def ops(served: Served, *args: str, without: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in served.env.items() if k != without}
    return subprocess.run(
        [sys.executable, "-m", "chatplane", "ops", *args],
        capture_output=True,
        text=True,
        env={**env, "COLUMNS": "200"},
        timeout=60,
        check=False,
    )


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    data = tmp_path_factory.mktemp("ops-cli")
    port = free_port()
    env = clean_env(
        CHATPLANE_DATA_DIR=str(data),
        CHATPLANE_PORT=str(port),
        CHATPLANE_OPS_TOKEN=OPS_TOKEN,
    )
    log_path = data / "serve.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "chatplane", "serve"], env=env, stdout=log, stderr=log
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"serve did not start:\n{log_path.read_text()}")
            time.sleep(0.1)
        yield Served(url, process.pid, env)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def test_status_prints_the_processes_and_the_queue(served: Served) -> None:
    done = ops(served, "status")  # the URL from CHATPLANE_HOST/PORT, the token from the env
    assert done.returncode == 0, done.stderr
    assert "Processes" in done.stdout
    assert "Queue and turns" in done.stdout
    assert served.process_id in done.stdout
    assert "database: reachable" in done.stdout
    assert "redis: not configured" in done.stdout


def test_status_json_is_the_api_answer(served: Served) -> None:
    done = ops(served, "status", "--json", "--url", served.url)
    assert done.returncode == 0, done.stderr
    status = json.loads(done.stdout)
    assert status["process"]["id"] == served.process_id
    assert [p["kind"] for p in status["processes"]] == ["api"]
    assert status["queue"]["depth"] == 0


def test_drain_and_undrain(served: Served) -> None:
    try:
        drained = ops(served, "drain")
        assert drained.returncode == 0, drained.stderr
        assert f"{served.process_id} is draining" in drained.stdout
        assert httpx.get(f"{served.url}/readyz").status_code == 503
        status = json.loads(ops(served, "status", "--json").stdout)
        assert status["process"]["draining"] is True
        assert "draining" in ops(served, "status").stdout
    finally:
        undrained = ops(served, "undrain", "--json")
    assert undrained.returncode == 0, undrained.stderr
    assert json.loads(undrained.stdout)["draining"] is False
    assert httpx.get(f"{served.url}/readyz").status_code == 200


def test_dead_letters_when_there_are_none(served: Served) -> None:
    done = ops(served, "dead-letters")
    assert done.returncode == 0, done.stderr
    assert "No dead letters." in done.stdout
    assert json.loads(ops(served, "dead-letters", "--json").stdout) == {"dead_letters": []}


def test_an_unreachable_server_is_a_clear_error(served: Served) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    done = ops(served, "status", "--url", url)
    assert done.returncode == 1
    assert f"cannot reach chatplane at {url}" in done.stderr
    assert "Traceback" not in done.stderr
    assert done.stdout == ""


def test_a_wrong_or_missing_token_is_a_clear_error(served: Served) -> None:
    wrong = ops(served, "status", "--token", "not-the-ops-token")
    assert wrong.returncode == 1
    assert "401" in wrong.stderr
    assert "CHATPLANE_OPS_TOKEN" in wrong.stderr
    missing = ops(served, "drain", without="CHATPLANE_OPS_TOKEN")
    assert missing.returncode == 1
    assert "401" in missing.stderr
    assert "Traceback" not in missing.stderr
    # The server kept serving: nothing was drained.
    assert httpx.get(f"{served.url}/readyz").status_code == 200


def test_the_command_imports_no_server_parts() -> None:
    """The CLI stays light: `chatplane ops` loads neither the app nor Rich until it prints."""
    code = (
        "import sys, chatplane.cli, chatplane.ops.remote; "
        "print('rich.table' in sys.modules, 'chatplane.app' in sys.modules)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=os.environ, check=True
    )
    assert done.stdout.split() == ["False", "False"]
