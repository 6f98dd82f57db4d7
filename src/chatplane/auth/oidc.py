"""Sign-in with any OpenID Connect provider: the authorization code flow with PKCE.

`OidcClient` is the relying party. It reads the provider's discovery document and key set
(cached; the key set is fetched again when a token names a key it lacks), builds the
authorization request, trades the code at the token endpoint and validates the ID token.
`LoginState` is what the browser carries between the two legs of the flow, in a signed
cookie, so any replica can finish a login another one started. All HTTP goes through the
process's shared aiohttp session, each call with its own deadline."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import ipaddress
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar
from urllib.parse import quote_plus, urlencode, urlsplit

import jwt
import orjson

from chatplane.errors import BadRequest, ChatplaneError, Forbidden, NotFound, Unauthorized
from chatplane.providers.http import UpstreamHttp, session_of
from chatplane.settings import Settings

if TYPE_CHECKING:
    import aiohttp

HTTP_TIMEOUT_S = 10.0
METADATA_TTL_S = 3600.0
# A key id still missing after a fresh key set is not fetched for again for this long.
MISSING_KEY_RETRY_S = 60.0
MAX_DOCUMENT_BYTES = 256 * 1024
CLOCK_LEEWAY_S = 60
STATE_TTL_S = 600
STATE_AUDIENCE = "chatplane:sso-state"
MAX_NEXT_LENGTH = 2000
# Asymmetric signatures only, each with the key type it needs: never `none`, never HS*
# (an HMAC "signed" with the provider's public key would verify for anyone).
KEY_TYPES = {
    "RS256": "RSA",
    "RS384": "RSA",
    "RS512": "RSA",
    "PS256": "RSA",
    "PS384": "RSA",
    "PS512": "RSA",
    "ES256": "EC",
    "ES384": "EC",
    "ES512": "EC",
    "EdDSA": "OKP",
}
EC_CURVES = {"ES256": "P-256", "ES384": "P-384", "ES512": "P-521"}

T = TypeVar("T")


class SsoNotConfigured(NotFound):
    code = "sso_not_configured"
    title = "Single sign-on is not configured"


class SsoNextInvalid(BadRequest):
    code = "sso_next_invalid"
    title = "The return address must be a path on this site"


class SsoStateInvalid(BadRequest):
    code = "sso_state_invalid"
    title = "This sign-in attempt is unknown or has expired"


class SsoDenied(Forbidden):
    code = "sso_denied"
    title = "The identity provider did not sign you in"


class SsoProviderError(ChatplaneError):
    code = "sso_provider_error"
    status = 502
    title = "The identity provider failed"


class SsoTokenInvalid(Unauthorized):
    code = "sso_token_invalid"
    title = "The identity provider's ID token is not valid"


class SsoEmailUnverified(Forbidden):
    code = "sso_email_unverified"
    title = "The identity provider did not confirm the email address"


@dataclass(frozen=True, slots=True)
class ProviderMetadata:
    issuer: str
    authorization_endpoint: str
    token_endpoint: str
    jwks_uri: str
    token_auth_methods: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class SsoIdentity:
    issuer: str
    subject: str
    email: str


def safe_next_path(value: str | None) -> str:
    """`next` as a path on this site: no scheme or host, nothing a browser reads as a host
    (`//`, `\\`, control characters it strips), else `SsoNextInvalid`."""
    if not value:
        return "/"
    if (
        len(value) > MAX_NEXT_LENGTH
        or not value.startswith("/")
        or value.startswith("//")
        or "\\" in value
        or any(ord(char) < 0x20 or ord(char) == 0x7F for char in value)
    ):
        raise SsoNextInvalid()
    parts = urlsplit(value)
    if parts.scheme or parts.netloc:
        raise SsoNextInvalid()
    return value


@dataclass(frozen=True, slots=True)
class LoginState:
    """The secrets of one sign-in attempt, kept by the browser between the two legs."""

    state: str
    nonce: str
    code_verifier: str
    redirect_uri: str
    next_path: str

    @classmethod
    def new(cls, *, redirect_uri: str, next_path: str) -> LoginState:
        return cls(
            state=secrets.token_urlsafe(32),
            nonce=secrets.token_urlsafe(32),
            code_verifier=secrets.token_urlsafe(64),  # 86 characters: RFC 7636 wants 43-128
            redirect_uri=redirect_uri,
            next_path=next_path,
        )

    @property
    def code_challenge(self) -> str:
        digest = hashlib.sha256(self.code_verifier.encode("ascii")).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")

    def seal(self, secret: str) -> str:
        now = int(time.time())
        claims = {
            "aud": STATE_AUDIENCE,
            "iat": now,
            "exp": now + STATE_TTL_S,
            "state": self.state,
            "nonce": self.nonce,
            "cv": self.code_verifier,
            "ru": self.redirect_uri,
            "next": self.next_path,
        }
        return jwt.encode(claims, _state_key(secret), algorithm="HS256")

    @classmethod
    def unseal(cls, sealed: str | None, secret: str, *, returned_state: str | None) -> LoginState:
        """The attempt this browser started, if the provider sent back its `state`."""
        if not sealed:
            raise SsoStateInvalid("No sign-in was started in this browser, or it expired")
        try:
            claims = jwt.decode(
                sealed,
                _state_key(secret),
                algorithms=["HS256"],
                audience=STATE_AUDIENCE,
                options={"require": ["exp", "aud"]},
            )
            login = cls(
                state=str(claims["state"]),
                nonce=str(claims["nonce"]),
                code_verifier=str(claims["cv"]),
                redirect_uri=str(claims["ru"]),
                next_path=safe_next_path(str(claims["next"])),
            )
        except jwt.ExpiredSignatureError as exc:
            raise SsoStateInvalid("The sign-in took too long; start again") from exc
        except (jwt.PyJWTError, KeyError, SsoNextInvalid) as exc:
            raise SsoStateInvalid("The sign-in cookie is not valid") from exc
        if not returned_state or not hmac.compare_digest(
            login.state.encode(), returned_state.encode()
        ):
            raise SsoStateInvalid("The provider answered a different sign-in attempt")
        return login


def _state_key(secret: str) -> bytes:
    """A key of its own for state cookies, so no other token signed with the secret key
    (a session token, say) can pass for one, nor the other way round."""
    return hmac.new(secret.encode(), b"chatplane/sso-state/v1", hashlib.sha256).digest()


class _Cached(Generic[T]):
    """A value fetched on demand and kept for `ttl_s`. Concurrent callers share one fetch;
    a failed fetch fails its waiters and the next caller tries again."""

    def __init__(self, fetch: Callable[[], Awaitable[T]], ttl_s: float) -> None:
        self._fetch = fetch
        self._ttl_s = ttl_s
        self._value: T | None = None
        self._fetched_at = 0.0
        self._inflight: asyncio.Task[T] | None = None

    async def get(self, *, refresh: bool = False) -> T:
        fresh = time.monotonic() - self._fetched_at < self._ttl_s
        if self._value is not None and fresh and not refresh:
            return self._value
        if self._inflight is None:
            self._inflight = asyncio.ensure_future(self._load())
            # Retrieved here too, so a fetch whose callers all left is never "unretrieved".
            self._inflight.add_done_callback(lambda task: task.cancelled() or task.exception())
        return await asyncio.shield(self._inflight)

    async def _load(self) -> T:
        try:
            value = await self._fetch()
            self._value, self._fetched_at = value, time.monotonic()
            return value
        finally:
            self._inflight = None


class OidcClient:
    def __init__(
        self,
        settings: Settings,
        http: UpstreamHttp | aiohttp.ClientSession,
        *,
        metadata_ttl_s: float = METADATA_TTL_S,
    ) -> None:
        self.settings = settings
        self.http = http
        self._metadata = _Cached(self._discover, metadata_ttl_s)
        self._jwks = _Cached(self._fetch_jwks, metadata_ttl_s)
        self._missing_kids: dict[str, float] = {}

    @property
    def enabled(self) -> bool:
        return bool(self.settings.oidc_issuer and self.settings.oidc_client_id)

    def _client_id(self) -> str:
        if not self.settings.oidc_issuer or not self.settings.oidc_client_id:
            raise SsoNotConfigured()
        return self.settings.oidc_client_id

    async def metadata(self) -> ProviderMetadata:
        self._client_id()  # "not configured" before any request
        return await self._metadata.get()

    async def authorization_url(self, login: LoginState) -> str:
        metadata = await self.metadata()
        scopes = self.settings.oidc_scopes.split()
        params = {
            "response_type": "code",
            "client_id": self._client_id(),
            "redirect_uri": login.redirect_uri,
            "scope": " ".join(scopes if "openid" in scopes else ["openid", *scopes]),
            "state": login.state,
            "nonce": login.nonce,
            "code_challenge": login.code_challenge,
            "code_challenge_method": "S256",
        }
        endpoint = metadata.authorization_endpoint
        return f"{endpoint}{'&' if urlsplit(endpoint).query else '?'}{urlencode(params)}"

    async def sign_in(self, code: str, login: LoginState) -> SsoIdentity:
        """Trade the code for an ID token and return the identity it vouches for."""
        id_token = await self._exchange(code, login)
        return await self.validate_id_token(id_token, nonce=login.nonce)

    # The provider's documents.

    async def _discover(self) -> ProviderMetadata:
        issuer = self.settings.oidc_issuer or ""
        _require_https(issuer, "issuer")
        document = await self._get_json(
            issuer.rstrip("/") + "/.well-known/openid-configuration", "discovery document"
        )
        named = document.get("issuer")
        if not isinstance(named, str) or named.rstrip("/") != issuer.rstrip("/"):
            raise SsoProviderError(
                f"The discovery document names the issuer {named!r}, not {issuer!r}"
            )
        methods = document.get("token_endpoint_auth_methods_supported")
        return ProviderMetadata(
            issuer=named,
            authorization_endpoint=_endpoint(document, "authorization_endpoint"),
            token_endpoint=_endpoint(document, "token_endpoint"),
            jwks_uri=_endpoint(document, "jwks_uri"),
            token_auth_methods=tuple(str(m) for m in methods)
            if isinstance(methods, list)
            else ("client_secret_basic",),  # the default the spec gives
        )

    async def _fetch_jwks(self) -> list[dict[str, Any]]:
        metadata = await self.metadata()
        document = await self._get_json(metadata.jwks_uri, "key set")
        keys = document.get("keys")
        if not isinstance(keys, list):
            raise SsoProviderError("The provider's key set has no keys")
        return [key for key in keys if isinstance(key, dict)]

    async def _signing_key(self, kid: str | None, alg: str) -> jwt.PyJWK:
        jwk = _select_key(await self._jwks.get(), kid)
        if jwk is None and kid is not None and not self._recently_missing(kid):
            jwk = _select_key(await self._jwks.get(refresh=True), kid)  # the keys rotated?
            if jwk is None:
                self._missing_kids[kid] = time.monotonic()
        if jwk is None:
            raise SsoTokenInvalid("The ID token is signed with a key the provider does not publish")
        _check_key_fits(jwk, alg)
        try:
            return jwt.PyJWK(jwk, algorithm=alg)
        except jwt.PyJWTError as exc:
            raise SsoProviderError(
                f"The provider publishes a key that cannot be read: {exc}"
            ) from exc

    def _recently_missing(self, kid: str) -> bool:
        now = time.monotonic()
        for known, at in list(self._missing_kids.items()):
            if now - at > MISSING_KEY_RETRY_S:
                del self._missing_kids[known]
        return kid in self._missing_kids

    # The code exchange and the ID token.

    async def _exchange(self, code: str, login: LoginState) -> str:
        metadata = await self.metadata()
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": login.redirect_uri,
            "code_verifier": login.code_verifier,
        }
        headers = {"Accept": "application/json"}
        secret = self.settings.oidc_client_secret
        methods = metadata.token_auth_methods
        if secret is None:  # a public client: PKCE is its proof
            form["client_id"] = self._client_id()
        elif "client_secret_basic" in methods:
            # RFC 6749 2.3.1: both parts form-encoded before they are joined.
            pair = f"{quote_plus(self._client_id())}:{quote_plus(secret.get_secret_value())}"
            headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode()
        elif "client_secret_post" in methods:
            form["client_id"] = self._client_id()
            form["client_secret"] = secret.get_secret_value()
        else:
            raise SsoProviderError(
                "The token endpoint supports neither client_secret_basic nor client_secret_post"
            )
        status, body = await self._request(
            "POST", metadata.token_endpoint, "token endpoint", data=form, headers=headers
        )
        if status != 200:
            error = body.get("error") if isinstance(body, dict) else None
            raise SsoProviderError(
                f"The token endpoint refused the code ({status} {error or 'no error code'})",
                provider_error=str(error)[:100] if error else None,
            )
        id_token = body.get("id_token") if isinstance(body, dict) else None
        if not isinstance(id_token, str) or not id_token:
            raise SsoProviderError("The token endpoint answered without an id_token")
        return id_token

    async def validate_id_token(self, id_token: str, *, nonce: str) -> SsoIdentity:
        try:
            header = jwt.get_unverified_header(id_token)
        except jwt.PyJWTError as exc:
            raise SsoTokenInvalid("The ID token is malformed") from exc
        alg = header.get("alg")
        if alg not in KEY_TYPES:
            raise SsoTokenInvalid(
                f"The ID token is signed with {alg!r}, not a public-key algorithm"
            )
        kid = header.get("kid")
        key = await self._signing_key(kid if isinstance(kid, str) else None, alg)
        metadata = await self.metadata()
        client_id = self._client_id()
        try:
            claims = jwt.decode(
                id_token,
                key,
                algorithms=[alg],
                audience=client_id,
                issuer=metadata.issuer,
                leeway=CLOCK_LEEWAY_S,
                options={"require": ["iss", "sub", "aud", "exp", "iat"]},
            )
        except jwt.ExpiredSignatureError as exc:
            raise SsoTokenInvalid("The ID token has expired") from exc
        except jwt.InvalidAudienceError as exc:
            raise SsoTokenInvalid("The ID token was issued to another client") from exc
        except jwt.InvalidIssuerError as exc:
            raise SsoTokenInvalid("The ID token comes from another issuer") from exc
        except jwt.InvalidSignatureError as exc:
            raise SsoTokenInvalid("The ID token's signature does not verify") from exc
        except jwt.PyJWTError as exc:
            raise SsoTokenInvalid(f"The ID token is not valid: {exc}") from exc
        audiences = claims["aud"] if isinstance(claims["aud"], list) else [claims["aud"]]
        azp = claims.get("azp")
        if (len(audiences) > 1 or azp is not None) and azp != client_id:
            raise SsoTokenInvalid("The ID token was issued to another client (azp)")
        token_nonce = claims.get("nonce")
        if not isinstance(token_nonce, str) or not hmac.compare_digest(
            token_nonce.encode(), nonce.encode()
        ):
            raise SsoTokenInvalid("The ID token answers another sign-in attempt (nonce)")
        email = claims.get("email")
        if not isinstance(email, str) or "@" not in email:
            raise SsoEmailUnverified("The identity provider did not share an email address")
        verified = claims.get("email_verified")
        if verified is not True and verified != "true":  # some providers send a string
            raise SsoEmailUnverified()
        return SsoIdentity(issuer=metadata.issuer, subject=str(claims["sub"]), email=email)

    # HTTP.

    async def _get_json(self, url: str, what: str) -> dict[str, Any]:
        status, body = await self._request("GET", url, what, headers={"Accept": "application/json"})
        if status != 200 or not isinstance(body, dict):
            raise SsoProviderError(f"The provider's {what} answered {status}, not a JSON object")
        return body

    async def _request(self, method: str, url: str, what: str, **kwargs: Any) -> tuple[int, Any]:
        import aiohttp  # with the first sign-in: a server without SSO never loads it

        try:
            async with session_of(self.http).request(
                method,
                url,
                timeout=aiohttp.ClientTimeout(total=HTTP_TIMEOUT_S),
                allow_redirects=method == "GET",
                **kwargs,
            ) as response:
                if response.headers.get("Content-Encoding", "identity") != "identity":
                    raise SsoProviderError(f"The provider's {what} sent a compressed answer")
                if (response.content_length or 0) > MAX_DOCUMENT_BYTES:
                    raise SsoProviderError(f"The provider's {what} answer is too large")
                body = bytearray()
                async for chunk in response.content.iter_chunked(64 * 1024):
                    body += chunk
                    if len(body) > MAX_DOCUMENT_BYTES:
                        raise SsoProviderError(f"The provider's {what} answer is too large")
                status = response.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise SsoProviderError(
                f"Could not reach the provider's {what} ({type(exc).__name__})"
            ) from exc
        try:
            return status, orjson.loads(body) if body else None
        except orjson.JSONDecodeError:
            return status, None


def _endpoint(document: dict[str, Any], name: str) -> str:
    value = document.get(name)
    if not isinstance(value, str) or not value:
        raise SsoProviderError(f"The discovery document has no {name}")
    _require_https(value, name)
    return value


def _require_https(url: str, what: str) -> None:
    """Tokens and keys travel over TLS; plain http only to this machine (development)."""
    parts = urlsplit(url)
    if parts.scheme == "https" and parts.hostname:
        return
    if parts.scheme == "http" and _is_loopback(parts.hostname or ""):
        return
    raise SsoProviderError(f"The provider's {what} must be an https:// URL, not {url!r}")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _select_key(keys: list[dict[str, Any]], kid: str | None) -> dict[str, Any] | None:
    signing = [key for key in keys if key.get("use", "sig") == "sig"]
    if kid is None:  # allowed only when the choice is not a choice
        return signing[0] if len(signing) == 1 else None
    return next((key for key in signing if key.get("kid") == kid), None)


def _check_key_fits(jwk: dict[str, Any], alg: str) -> None:
    """The token's algorithm must be one its key is meant for."""
    fits = jwk.get("kty") == KEY_TYPES[alg] and jwk.get("alg", alg) == alg
    if alg in EC_CURVES:
        fits = fits and jwk.get("crv") == EC_CURVES[alg]
    if not fits:
        raise SsoTokenInvalid(f"The ID token's algorithm {alg} does not fit its key")
