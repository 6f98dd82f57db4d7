"""A small, real OpenID Connect provider on a loopback port, for tests.

It speaks the protocol on the wire (discovery, /authorize, /token, /jwks), checks what a
strict provider checks (client authentication, single-use codes, the redirect URI and the
PKCE verifier) and signs ID tokens with keys made here. Tests change how it behaves
through `tamper` (the next ID token) and a few switches, reset before each test."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote_plus, urlencode

import jwt
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

CLIENT_ID = "chatplane-test"
CLIENT_SECRET = "s3cret+with/odd=chars"
DROP = object()  # a claim override that removes the claim


@dataclass
class SigningKey:
    kid: str
    alg: str
    private: PrivateKeyTypes

    @classmethod
    def rsa(cls, kid: str) -> SigningKey:
        return cls(kid, "RS256", rsa.generate_private_key(public_exponent=65537, key_size=2048))

    @classmethod
    def ec(cls, kid: str) -> SigningKey:
        return cls(kid, "ES256", ec.generate_private_key(ec.SECP256R1()))

    def jwk(self) -> dict[str, Any]:
        algorithm = jwt.get_algorithm_by_name(self.alg)
        public = json.loads(algorithm.to_jwk(self.private.public_key()))
        return {**public, "kid": self.kid, "use": "sig", "alg": self.alg}

    def sign(self, claims: dict[str, Any], *, kid: str | None = None) -> str:
        return jwt.encode(
            claims,
            self.private,  # type: ignore[arg-type]
            algorithm=self.alg,
            headers={"kid": kid or self.kid},
        )


@dataclass
class Tamper:
    """How the next ID token departs from a good one."""

    claims: dict[str, Any] = field(default_factory=dict)  # overrides; DROP removes
    key: SigningKey | None = None  # sign with this key instead of the published one
    forge: Callable[[dict[str, Any]], str] | None = None  # build the token from the claims


@dataclass
class Grant:
    client_id: str
    redirect_uri: str
    code_challenge: str
    nonce: str
    email: str
    used: bool = False


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class FakeOidcProvider:
    def __init__(self, *, host: str = "127.0.0.1", public_host: str | None = None) -> None:
        self.host = host
        self.public_host = public_host or host  # the name clients use (e.g. "localhost")
        self.issuer = ""
        self.first_key = SigningKey.rsa("key-1")
        self.runner: web.AppRunner | None = None
        self.reset()

    def reset(self) -> None:
        self.key = self.first_key  # signs the ID tokens
        self.published: list[SigningKey] = [self.first_key]  # served at /jwks
        self.tamper = Tamper()
        self.auth_methods = ["client_secret_basic", "client_secret_post"]
        self.login_as = "ada@acme.test"  # who "signs in" when /authorize has no login_hint
        self.deny = False
        self.grants: dict[str, Grant] = {}
        self.authorize_requests: list[dict[str, str]] = []
        self.token_requests: list[dict[str, str]] = []
        self.token_errors: list[str] = []
        self.hits: Counter[str] = Counter()

    async def __aenter__(self) -> FakeOidcProvider:
        app = web.Application()
        app.router.add_get("/.well-known/openid-configuration", self._discovery)
        app.router.add_get("/authorize", self._authorize)
        app.router.add_post("/token", self._token)
        app.router.add_get("/jwks", self._jwks)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, self.host, 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.issuer = f"http://{self.public_host}:{port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    # Helpers for tests.

    def id_token_claims(self, grant: Grant) -> dict[str, Any]:
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "sub": "sub-" + hashlib.sha256(grant.email.encode()).hexdigest()[:16],
            "aud": grant.client_id,
            "iat": now,
            "exp": now + 300,
            "nonce": grant.nonce,
            "email": grant.email,
            "email_verified": True,
        }
        for name, value in self.tamper.claims.items():
            if value is DROP:
                claims.pop(name, None)
            else:
                claims[name] = value
        return claims

    # Endpoints.

    async def _discovery(self, request: web.Request) -> web.Response:
        self.hits["discovery"] += 1
        return web.json_response(
            {
                "issuer": self.issuer,
                "authorization_endpoint": f"{self.issuer}/authorize",
                "token_endpoint": f"{self.issuer}/token",
                "jwks_uri": f"{self.issuer}/jwks",
                "response_types_supported": ["code"],
                "subject_types_supported": ["public"],
                "id_token_signing_alg_values_supported": ["RS256", "ES256"],
                "code_challenge_methods_supported": ["S256"],
                "token_endpoint_auth_methods_supported": self.auth_methods,
            }
        )

    async def _jwks(self, request: web.Request) -> web.Response:
        self.hits["jwks"] += 1
        return web.json_response({"keys": [key.jwk() for key in self.published]})

    async def _authorize(self, request: web.Request) -> web.Response:
        self.hits["authorize"] += 1
        query = dict(request.query)
        self.authorize_requests.append(query)
        redirect_uri = query.get("redirect_uri", "")
        if (
            query.get("client_id") != CLIENT_ID
            or not redirect_uri
            or query.get("response_type") != "code"
            or "openid" not in query.get("scope", "").split()
            or query.get("code_challenge_method") != "S256"
            or not query.get("code_challenge")
            or not query.get("nonce")
        ):
            return web.json_response({"error": "invalid_request"}, status=400)
        back = {"state": query.get("state", "")}
        if self.deny:
            back["error"] = "access_denied"
        else:
            code = secrets.token_urlsafe(24)
            self.grants[code] = Grant(
                client_id=CLIENT_ID,
                redirect_uri=redirect_uri,
                code_challenge=query["code_challenge"],
                nonce=query["nonce"],
                email=query.get("login_hint") or self.login_as,
            )
            back["code"] = code
        raise web.HTTPFound(f"{redirect_uri}?{urlencode(back)}")

    async def _token(self, request: web.Request) -> web.Response:
        self.hits["token"] += 1
        form = {key: str(value) for key, value in (await request.post()).items()}
        self.token_requests.append(
            {**form, "authorization": request.headers.get("Authorization", "")}
        )
        problem = self._token_problem(request, form)
        if problem is not None:
            self.token_errors.append(problem)
            return web.json_response(
                {"error": problem.split(":")[0], "error_description": problem}, status=400
            )
        grant = self.grants[form["code"]]
        grant.used = True
        if self.tamper.forge is not None:
            id_token = self.tamper.forge(self.id_token_claims(grant))
        else:
            key = self.tamper.key or self.key
            id_token = key.sign(self.id_token_claims(grant))
        return web.json_response(
            {
                "access_token": secrets.token_urlsafe(16),
                "token_type": "Bearer",
                "id_token": id_token,
            }
        )

    def _token_problem(self, request: web.Request, form: dict[str, str]) -> str | None:
        client_id, secret = form.get("client_id"), form.get("client_secret")
        authorization = request.headers.get("Authorization", "")
        if authorization.startswith("Basic "):
            if "client_secret_basic" not in self.auth_methods:
                return "invalid_client: basic auth not allowed"
            user, _, password = base64.b64decode(authorization[6:]).decode().partition(":")
            client_id, secret = unquote_plus(user), unquote_plus(password)
        elif "client_secret_post" not in self.auth_methods:
            return "invalid_client: client_secret_post not allowed"
        if (
            client_id != CLIENT_ID
            or secret is None
            or not hmac.compare_digest(secret, CLIENT_SECRET)
        ):
            return "invalid_client: wrong client credentials"
        if form.get("grant_type") != "authorization_code":
            return "unsupported_grant_type: " + form.get("grant_type", "")
        grant = self.grants.get(form.get("code", ""))
        if grant is None or grant.used:
            return "invalid_grant: unknown or used code"
        if form.get("redirect_uri") != grant.redirect_uri:
            return "invalid_grant: redirect_uri differs"
        verifier = form.get("code_verifier", "")
        if b64url(hashlib.sha256(verifier.encode()).digest()) != grant.code_challenge:
            return "invalid_grant: PKCE verifier does not match the challenge"
        return None
