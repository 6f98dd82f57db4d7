"""deploy/nginx/chatplane.conf in front of two real API processes (and a worker) on Postgres
and Redis, over HTTPS with a certificate made here: streams pass unbuffered, a zone refuses
with 429, metrics and the operations API stay private, request ids and the client's address
reach the app, both processes get traffic over kept-alive connections, HTTP/2 is offered and
static files never reach the app.

The config is rendered as an operator would (its placeholders filled in), then only moved to
loopback ports and a temporary directory, so that nginx runs without root."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from chatplane.web.router import STATIC_DIR
from tests.broker.support import REDIS_URL, delete_keys, require_redis, unique_prefix
from tests.conftest import RUN_ID
from tests.scale.procs import Cluster, Proc, clean_env, free_port, run_cli

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

ROOT = Path(__file__).resolve().parents[2]
CONF = ROOT / "deploy" / "nginx" / "chatplane.conf"
PLACEHOLDERS = {
    "CHATPLANE_SERVER_NAME",
    "CHATPLANE_TLS_CERT",
    "CHATPLANE_TLS_KEY",
    "CHATPLANE_STATIC_DIR",
    "CHATPLANE_UPSTREAM_SERVERS",
}
OPS_TOKEN = "nginx-test-ops-token-" + RUN_ID
WORDS = " ".join(f"w{i}" for i in range(30))  # 30 chunks 50 ms apart: about 1.5 s
CHUNK_DELAY_MS = 50
TERMINAL = {"turn.completed", "turn.failed", "turn.cancelled"}
T = TypeVar("T")
CLIENT_IP = "127.0.0.2"  # the test's own address: nginx and the app see it, not 127.0.0.1


def nginx_binary() -> str:
    found = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin")
    if found is None:
        message = "nginx is missing: scripts/ensure-nginx.sh installs Debian's nginx"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return found


def self_signed_certificate(directory: Path) -> tuple[Path, Path]:
    """A certificate for localhost and 127.0.0.1, its own trust anchor."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def render(values: dict[str, str], *, https_port: int, http_port: int, access_log: Path) -> str:
    """The config with its placeholders filled in (as envsubst does), moved to loopback
    ports and a writable access log."""
    text = CONF.read_text()
    assert set(re.findall(r"\$\{(\w+)\}", text)) == PLACEHOLDERS
    for name, value in values.items():
        text = text.replace("${" + name + "}", value)
    moves = {
        "    listen 80;\n": f"    listen 127.0.0.1:{http_port};\n",
        "    listen 443 ssl http2;\n": f"    listen 127.0.0.1:{https_port} ssl http2;\n",
        "/var/log/nginx/access.log": str(access_log),
        # Stricter than in production: the app's `X-Accel-Buffering: no` is ignored, so the
        # streams pass unbuffered by the config's own `proxy_buffering off`, or not at all.
        "    proxy_read_timeout 60s;\n": "    proxy_read_timeout 60s;\n"
        "    proxy_ignore_headers X-Accel-Buffering;\n",
    }
    for old, new in moves.items():
        assert text.count(old) == 1, old
        text = text.replace(old, new)
    return text


def main_config(prefix: Path, site: Path) -> str:
    """What nginx.conf around the site would hold, with every path in the temp dir."""
    temps = "\n".join(
        f"    {kind}_temp_path {prefix / kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    # Started by root, nginx would run its workers as nobody, who cannot enter the temp dir.
    user = "user root;\n" if os.geteuid() == 0 else ""
    return (
        f"{user}daemon off;\nworker_processes 1;\npid {prefix / 'nginx.pid'};\n"
        f"error_log {prefix / 'error.log'} info;\n"
        "events { worker_connections 512; }\n"
        "http {\n    include /etc/nginx/mime.types;\n    default_type application/octet-stream;\n"
        f"{temps}\n    include {site};\n}}\n"
    )


@dataclass
class Front:
    nginx: Nginx
    apis: list[Proc]
    key: str

    @property
    def base_url(self) -> str:
        return f"https://127.0.0.1:{self.nginx.https_port}"

    def client(self, *, local_address: str = CLIENT_IP) -> httpx.AsyncClient:
        context = ssl.create_default_context(cafile=self.nginx.cert)
        return httpx.AsyncClient(
            base_url=self.base_url,
            transport=httpx.AsyncHTTPTransport(verify=context, local_address=local_address),
            headers={"authorization": f"Bearer {self.key}"},
            timeout=15,
        )

    def access_lines(self) -> list[dict[str, Any]]:
        log = self.nginx.access_log
        return [json.loads(line) for line in log.read_text().splitlines() if line]


def logged(front: Front, request_ids: set[str]) -> list[dict[str, Any]] | None:
    """nginx's access log lines of these requests, once all of them are there."""
    lines = [line for line in front.access_lines() if line["request_id"] in request_ids]
    return lines if {line["request_id"] for line in lines} == request_ids else None


def app_lines(proc: Proc) -> list[dict[str, Any]]:
    lines = []
    for line in proc.log().splitlines():
        if line.startswith("{"):
            try:
                lines.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return lines


async def poll(check: Callable[[], T | None], what: str, timeout_s: float = 5.0) -> T:
    """`check()` until it returns something truthy."""
    deadline = time.monotonic() + timeout_s
    while True:
        found = check()
        if found:
            return found
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


@dataclass
class Nginx:
    """nginx with the rendered config, in its own directory, started and stopped by PID."""

    directory: Path
    https_port: int = field(default_factory=free_port)
    http_port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def cert(self) -> Path:
        return self.directory / "cert.pem"

    @property
    def access_log(self) -> Path:
        return self.directory / "access.log"

    def command(self) -> list[str]:
        prefix = self.directory
        config = prefix / "nginx.conf"
        return [
            nginx_binary(),
            "-p",
            str(prefix),
            "-e",
            str(prefix / "error.log"),
            "-c",
            str(config),
        ]

    def configure(self, upstream_ports: list[int]) -> None:
        cert, key = self_signed_certificate(self.directory)
        site = self.directory / "chatplane.conf"
        values = {
            "CHATPLANE_SERVER_NAME": "localhost",
            "CHATPLANE_TLS_CERT": str(cert),
            "CHATPLANE_TLS_KEY": str(key),
            "CHATPLANE_STATIC_DIR": str(STATIC_DIR),
            "CHATPLANE_UPSTREAM_SERVERS": " ".join(
                f"server 127.0.0.1:{port};" for port in upstream_ports
            ),
        }
        site.write_text(
            render(
                values,
                https_port=self.https_port,
                http_port=self.http_port,
                access_log=self.access_log,
            )
        )
        (self.directory / "nginx.conf").write_text(main_config(self.directory, site))

    def test_config(self) -> str:
        """`nginx -t`: its report, after asserting it passed."""
        checked = subprocess.run(
            [*self.command(), "-t"], capture_output=True, text=True, timeout=30, check=False
        )
        assert checked.returncode == 0, checked.stderr
        return checked.stderr

    def start(self) -> None:
        with (self.directory / "nginx.out").open("ab") as out:
            self.process = subprocess.Popen(self.command(), stdout=out, stderr=out)

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def errors(self) -> str:
        return (self.directory / "error.log").read_text(errors="replace")

    def stop(self) -> None:
        if self.process is None or not self.running():
            return
        self.process.send_signal(signal.SIGTERM)  # the master stops its own workers
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)


def test_the_rendered_config_passes_nginx_t(tmp_path: Path) -> None:
    nginx = Nginx(tmp_path)
    nginx.configure([free_port(), free_port()])
    report = nginx.test_config()
    assert "test is successful" in report
    assert "[warn]" not in report, report


@pytest.fixture(scope="module")
async def front(
    postgres_url: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Front]:
    nginx_binary()
    await require_redis()
    tmp = tmp_path_factory.mktemp("nginx-cluster")
    prefix = unique_prefix()
    env = clean_env(
        CHATPLANE_DATA_DIR=str(tmp / "data"),
        CHATPLANE_DATABASE_URL=postgres_url,
        CHATPLANE_REDIS_URL=REDIS_URL,
        CHATPLANE_REDIS_PREFIX=prefix,
        CHATPLANE_SECRET_KEY="nginx-test-secret-key-" + RUN_ID * 3,
        CHATPLANE_MOCK_CHUNK_DELAY_MS=str(CHUNK_DELAY_MS),
        CHATPLANE_TRUSTED_PROXIES='["127.0.0.1"]',
        CHATPLANE_LOG_JSON="1",
        CHATPLANE_OPS_TOKEN=OPS_TOKEN,
        # The app's own per-IP limits out of the way: the 429s here are nginx's.
        CHATPLANE_RATE_LIMIT_IP_RPM="100000",
        CHATPLANE_RATE_LIMIT_IP_ZONES="{}",
    )
    run_cli(env, "db", "upgrade")
    email = f"nginx-{RUN_ID}@example.com"
    run_cli(env, "users", "create", email, "--password-stdin", stdin="nginx-password\n")
    key = run_cli(env, "keys", "create", email, "--name", "nginx").strip()

    cluster = Cluster(env, tmp)
    nginx = Nginx(tmp_path_factory.mktemp("nginx"))
    try:
        apis = [cluster.api("api-1"), cluster.api("api-2")]
        worker = cluster.worker("worker-1")
        nginx.configure([api.port for api in apis if api.port is not None])
        nginx.test_config()
        nginx.start()
        await asyncio.gather(
            *[api.wait_ready() for api in apis], worker.wait_for_log("worker_started")
        )
        built = Front(nginx, apis, key)
        async with built.client() as http:
            deadline = time.monotonic() + 15
            while True:
                assert nginx.running(), nginx.errors()
                try:
                    if (await http.get("/nginx-healthz")).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, nginx.errors()
                await asyncio.sleep(0.05)
        yield built
    finally:
        nginx.stop()
        cluster.stop_all()
        await delete_keys(prefix)


async def start_turn(http: httpx.AsyncClient) -> str:
    conversation = (await http.post("/api/conversations", json={})).json()
    accepted = await http.post(
        f"/api/conversations/{conversation['id']}/messages", json={"content": WORDS}
    )
    assert accepted.status_code == 202, accepted.text
    events_url: str = accepted.json()["events_url"]
    return events_url


async def timed_sse(response: httpx.Response) -> list[tuple[float, str, str]]:
    """(arrival time, event, data) for every SSE frame, until the stream ends."""
    frames: list[tuple[float, str, str]] = []
    fields: dict[str, str] = {}
    async for line in response.aiter_lines():
        if line == "":
            if "data" in fields:
                frames.append((time.monotonic(), fields.get("event", ""), fields["data"]))
                if fields.get("event") in TERMINAL:
                    break
            fields = {}
        elif not line.startswith(":"):
            name, _, value = line.partition(":")
            fields[name] = value.removeprefix(" ")
    return frames


async def test_a_turn_streams_through_nginx_unbuffered(front: Front) -> None:
    async with front.client() as http:
        events_url = await start_turn(http)
        async with http.stream("GET", events_url) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            frames = await timed_sse(response)
    deltas = [
        (at, json.loads(data)["text"]) for at, event, data in frames if event == "message.delta"
    ]
    assert "".join(text for _, text in deltas) == WORDS
    assert frames[-1][1] == "turn.completed"
    # Unbuffered: the words arrive as they are made, spread over the turn (~1.5 s), not at once.
    assert frames[-1][0] - deltas[0][0] > 0.6 * len(deltas) * CHUNK_DELAY_MS / 1000


async def test_a_gateway_stream_arrives_unbuffered(front: Front) -> None:
    body = {"model": "mock-echo", "stream": True, "messages": [{"role": "user", "content": WORDS}]}
    arrivals: list[float] = []
    text = ""
    async with front.client() as http, http.stream("POST", "/v1/chat/completions", json=body) as r:
        assert r.status_code == 200
        async for line in r.aiter_lines():
            if not line.startswith("data: "):
                continue
            arrivals.append(time.monotonic())
            if line == "data: [DONE]":
                break
            for choice in json.loads(line[6:])["choices"]:
                text += choice["delta"].get("content") or ""
    assert text == WORDS
    assert arrivals[-1] - arrivals[0] > 0.6 * len(WORDS.split()) * CHUNK_DELAY_MS / 1000


async def test_the_auth_zone_answers_429_past_its_burst(front: Front) -> None:
    """auth: 2 requests/s, burst 20. 40 at once (to /api/auth/me): about 21 pass, the rest
    are refused by nginx in the app's problem shape, and never reach the app."""
    async with front.client(local_address="127.0.0.3") as http:
        began = time.monotonic()
        answers = await asyncio.gather(*[http.get("/api/auth/me") for _ in range(40)])
        took = time.monotonic() - began
    refused = [a for a in answers if a.status_code == 429]
    assert {a.status_code for a in answers} == {200, 429}
    assert 40 - len(refused) <= 21 + 2 * took + 1
    assert len(refused) >= 10
    problem = refused[0].json()
    assert problem["code"] == "rate_limited"
    assert problem["limit"] == "proxy_ip"
    assert refused[0].headers["content-type"] == "application/problem+json"
    rejected_ids = {a.headers["x-request-id"] for a in refused}
    lines = await poll(lambda: logged(front, rejected_ids), "the refusals in nginx's access log")
    assert len(lines) == len(rejected_ids)
    assert {line["upstream"] for line in lines} == {""}  # not passed to any process


async def test_metrics_and_the_operations_api_are_not_public(front: Front) -> None:
    ops = {"authorization": f"Bearer {OPS_TOKEN}"}
    async with front.client() as http:
        for path in (
            "/metrics",
            "/metrics/",
            "/api/ops/status",
            "/api//ops/status",
            "/api/%6fps/status",
            "/api/./ops/status",
        ):
            answer = await http.get(path, headers=ops)
            assert answer.status_code == 403, path
        assert (await http.post("/api/ops/drain", headers=ops)).status_code == 403
    # The routes are there, on each process's own address.
    api = front.apis[0]
    async with httpx.AsyncClient(base_url=api.base_url, timeout=10) as direct:
        assert (await direct.get("/metrics")).status_code == 200
        assert (await direct.get("/api/ops/status", headers=ops)).status_code == 200


async def test_request_ids_and_the_client_address_reach_the_app(front: Front) -> None:
    mine = f"nginx-test-{uuid.uuid4().hex}"
    async with front.client() as http:
        # A forged X-Forwarded-For: the app still sees the address nginx saw.
        sent = await http.get(
            "/api/conversations", headers={"x-request-id": mine, "x-forwarded-for": "203.0.113.9"}
        )
        made = await http.get("/api/conversations")
        # The app builds its redirects with the scheme nginx passed on (X-Forwarded-Proto).
        redirected = await http.get("/api/conversations/")
    assert redirected.status_code == 307
    assert redirected.headers["location"].startswith("https://"), redirected.headers
    assert sent.status_code == made.status_code == 200
    assert sent.headers.get_list("x-request-id") == [mine]
    assert len(made.headers.get_list("x-request-id")) == 1
    nginx_made = made.headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{32}", nginx_made)  # nginx's $request_id

    for request_id in (mine, nginx_made):
        app_line = await poll(
            partial(app_request_line, front, request_id), f"{request_id} in the app's logs"
        )
        assert app_line["client"] == CLIENT_IP
        assert app_line["status"] == 200
        [nginx_line] = await poll(
            partial(logged, front, {request_id}), f"{request_id} in nginx's access log"
        )
        assert nginx_line["remote_addr"] == CLIENT_IP
        assert nginx_line["upstream"] == f"127.0.0.1:{app_line['port']}"


def app_request_line(front: Front, request_id: str) -> dict[str, Any] | None:
    """The app's access line of a request, with the port of the process that logged it."""
    for api in front.apis:
        for line in app_lines(api):
            if line.get("request_id") == request_id and line.get("event") == "request":
                return {**line, "port": api.port}
    return None


def connections_to(port: int) -> set[int]:
    """The peers' ports of the established TCP connections to a local port, from
    /proc/net/tcp (IPv4)."""
    peers = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local_port = int(fields[1].split(":")[1], 16)
        if local_port == port and fields[3] == "01":  # ESTABLISHED
            peers.add(int(fields[2].split(":")[1], 16))
    return peers


async def test_both_processes_serve_over_kept_alive_connections(front: Front) -> None:
    ids = [f"nginx-rr-{uuid.uuid4().hex}" for _ in range(10)]
    before = {api.name: connections_to(api.port or 0) for api in front.apis}
    async with front.client() as http:
        for request_id in ids:
            answer = await http.get("/api/conversations", headers={"x-request-id": request_id})
            assert answer.status_code == 200
    lines = await poll(lambda: logged(front, set(ids)), "the requests in nginx's access log")
    by_upstream: dict[str, int] = {}
    for line in lines:
        by_upstream[line["upstream"]] = by_upstream.get(line["upstream"], 0) + 1
    assert set(by_upstream) == {f"127.0.0.1:{api.port}" for api in front.apis}
    assert min(by_upstream.values()) >= 3  # round robin: 5 each
    for api in front.apis:
        assert any(line.get("request_id") in ids for line in app_lines(api)), api.name
        # Five requests each, one after the other, over connections nginx keeps open: at most
        # one new connection each (the idle ones close after 4 s), still open afterwards.
        after = connections_to(api.port or 0)
        assert after, api.name
        assert len(after - before[api.name]) <= 1, api.name


def negotiated(port: int, cert: Path) -> tuple[str | None, str | None, dict[str, Any]]:
    context = ssl.create_default_context(cafile=cert)
    context.set_alpn_protocols(["h2", "http/1.1"])
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        return tls.selected_alpn_protocol(), tls.version(), dict(tls.getpeercert() or {})


async def test_tls_offers_http2_and_plain_http_redirects(front: Front) -> None:
    alpn, version, cert = await asyncio.to_thread(
        negotiated, front.nginx.https_port, front.nginx.cert
    )
    assert alpn == "h2"
    assert version in ("TLSv1.2", "TLSv1.3")
    assert ("IP Address", "127.0.0.1") in cert["subjectAltName"]
    async with front.client() as http:
        answer = await http.get("/healthz")
        assert answer.status_code == 200
        assert answer.headers.get_list("strict-transport-security") == [
            "max-age=31536000; includeSubDomains"
        ]
        assert answer.headers.get_list("x-content-type-options") == ["nosniff"]
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{front.nginx.http_port}") as plain:
        moved = await plain.get("/api/conversations?x=1")
        assert moved.status_code == 301
        assert moved.headers["location"] == "https://127.0.0.1/api/conversations?x=1"
        assert (await plain.get("/nginx-healthz")).text == "ok\n"


async def test_static_files_are_served_by_nginx(front: Front) -> None:
    request_id = f"nginx-static-{uuid.uuid4().hex}"
    async with front.client() as http:
        answer = await http.get("/static/app.css", headers={"x-request-id": request_id})
        missing = await http.get("/static/no-such-file.js")
    assert answer.status_code == 200
    assert answer.content == (STATIC_DIR / "app.css").read_bytes()
    assert answer.headers["content-type"].startswith("text/css")
    assert answer.headers["cache-control"] == "max-age=3600"
    assert "etag" in answer.headers
    assert answer.headers["x-content-type-options"] == "nosniff"  # the server's headers too
    assert missing.status_code == 404
    [line] = await poll(lambda: logged(front, {request_id}), "the request in nginx's log")
    assert line["upstream"] == ""  # not passed to any process
    assert not any(request_id in api.log() for api in front.apis)


async def test_bodies_over_the_app_limit_are_refused_by_nginx(front: Front) -> None:
    async with front.client() as http:
        refused = await http.post(
            "/api/conversations",
            content=b"x" * (1024 * 1024 + 1),
            headers={"content-type": "application/json"},
        )
    assert refused.status_code == 413
    assert refused.json()["code"] == "payload_too_large"


def handshake(port: int, cert: Path, headers: dict[str, str]) -> str:
    """A WebSocket handshake to /api/ws over TLS (HTTP/1.1): the answer's status line."""
    context = ssl.create_default_context(cafile=cert)
    context.set_alpn_protocols(["http/1.1"])
    lines = [
        "GET /api/ws HTTP/1.1",
        "Host: localhost",
        "Upgrade: websocket",
        "Connection: Upgrade",
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
        "Sec-WebSocket-Version: 13",
        *[f"{name}: {value}" for name, value in headers.items()],
    ]
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        tls.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        return tls.recv(4096).decode("latin-1").split("\r\n", 1)[0]


async def test_a_websocket_handshake_reaches_the_app_as_one(front: Front) -> None:
    """A handshake passed on as a WebSocket is upgraded by the app (101), where a plain GET
    finds no page (404)."""
    request_id = f"nginx-ws-{uuid.uuid4().hex}"
    headers = {"authorization": f"Bearer {front.key}", "x-request-id": request_id}
    status = await asyncio.to_thread(handshake, front.nginx.https_port, front.nginx.cert, headers)
    assert status.split(" ")[1] == "101", status
    [line] = await poll(lambda: logged(front, {request_id}), "the handshake in nginx's log")
    assert line["upstream"] in {f"127.0.0.1:{api.port}" for api in front.apis}
    assert line["upstream_status"] == status.split(" ")[1]  # the app's answer, not nginx's
    async with front.client() as http:
        assert (await http.get("/api/ws")).status_code == 404
