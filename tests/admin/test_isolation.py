"""THE ISOLATION WALK: every /api route from /openapi.json, called by an admin of another
organisation with the ids of this organisation's objects, answers 403 or 404 and shows none
of its data; every admin route refuses a plain member. A route whose path names a kind of
object the walk does not know fails the walk until it is taught that kind."""

from __future__ import annotations

import itertools
import re
import uuid
from dataclasses import dataclass
from typing import Any

import httpx

from tests.admin.support import (
    Account,
    Org,
    access_token,
    add_user,
    expect,
    new_org,
    status_of,
    unique_email,
)
from tests.api.live import LiveServer

# Routes for callers without credentials (they name no tenant's objects).
PUBLIC_ROUTES = frozenset({"/api/auth/login", "/api/auth/refresh", "/api/auth/invitations/accept"})
PUBLIC_PREFIXES = ("/api/auth/sso/",)
# Objects of the whole platform (superadmins only): no tenant owns them.
PLATFORM_PARAMS = frozenset({"endpoint_id", "model"})
PARAM = re.compile(r"{(\w+)}")
ISOLATED = (403, 404)


@dataclass
class Tenancy:
    """One organisation's objects, by the path parameter that names them."""

    org: Org
    member: Account
    member_token: str
    ids: dict[str, str]
    markers: frozenset[str]  # strings that must never reach another organisation


async def populate(live: LiveServer) -> Tenancy:
    org = await new_org(live)
    member = await add_user(live, org)
    member_token = await access_token(live, member.email)
    async with live.client(member_token) as client:
        session_id = next(
            s["id"] for s in expect(await client.get("/api/auth/sessions"), 200) if s["current"]
        )
        key = expect(await client.get("/api/keys"), 200)[0]
    async with live.client(org.owner.key) as client:
        conversation = expect(await client.post("/api/conversations", json={"title": "t"}), 201)
        turn = expect(
            await client.post(
                f"/api/conversations/{conversation['id']}/messages", json={"content": "hi"}
            ),
            202,
        )
    invitee = unique_email("invitee")
    async with live.client(org.owner.key) as admin:
        invitation = expect(
            await admin.post("/api/admin/invitations", json={"email": invitee}), 201
        )
        budget = expect(
            await admin.post(
                "/api/admin/budgets",
                json={"scope": "user", "subject_id": member.id, "period": "day", "limit_usd": 5},
            ),
            201,
        )
        kb_name = f"kb-{uuid.uuid4().hex[:10]}"
        kb = expect(await admin.post("/api/kb", json={"name": kb_name}), 201)
        filename = f"doc-{uuid.uuid4().hex[:10]}.txt"
        document = expect(
            await admin.post(
                f"/api/kb/{kb['id']}/documents",
                files={"file": (filename, f"Secret notes of {kb_name}".encode())},
            ),
            202,
        )
    ids = {
        "conversation_id": conversation["id"],
        "turn_id": turn["turn_id"],
        "user_id": member.id,
        "key_id": key["id"],
        "invitation_id": invitation["id"],
        "budget_id": budget["id"],
        "session_id": session_id,
        "tenant_id": org.tenant_id,
        "kb_id": kb["id"],
        "document_id": document["document_id"],
    }
    markers = {
        *ids.values(),
        *(org.slug, org.owner.id, org.owner.email, member.email, invitee, kb_name, filename),
    }
    return Tenancy(org, member, member_token, ids, frozenset(markers | {key["prefix"]}))


def api_routes(document: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    routes = []
    for path, operations in document["paths"].items():
        if not path.startswith("/api/") or path in PUBLIC_ROUTES:
            continue
        if path.startswith(PUBLIC_PREFIXES):
            continue
        for method, operation in operations.items():
            routes.append((method.upper(), path, operation))
    return routes


def sample(schema: dict[str, Any], document: dict[str, Any], name: str = "") -> Any:
    """A small valid value for a JSON schema, so a request passes validation and reaches
    the code that looks its ids up."""
    if "$ref" in schema:
        target: Any = document
        for part in schema["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        return sample(target, document, name)
    for combinator in ("anyOf", "oneOf", "allOf"):
        if combinator in schema:
            options = [o for o in schema[combinator] if o.get("type") != "null"]
            return sample(options[0], document, name)
    if "enum" in schema:
        return schema["enum"][0]
    kind = schema.get("type")
    if kind == "object":
        required = set(schema.get("required", []))
        properties = schema.get("properties", {}).items()
        return {key: sample(value, document, key) for key, value in properties if key in required}
    if kind == "array":
        return [sample(schema.get("items", {}), document, name)] * schema.get("minItems", 0)
    if kind in ("integer", "number"):
        return schema.get("minimum", 1)
    if kind == "boolean":
        return False
    if kind == "string":
        if "email" in name:
            return unique_email("walk")
        text = f"walk{uuid.uuid4().hex[:12]}"
        return text.ljust(schema.get("minLength", 0), "x")[: schema.get("maxLength", 100)]
    return None


# The body of a multipart route (a document upload): one small text file.
MULTIPART = object()


def request_body(operation: dict[str, Any], document: dict[str, Any]) -> Any:
    content = operation.get("requestBody", {}).get("content", {})
    if "multipart/form-data" in content:
        return MULTIPART
    if "application/json" not in content:
        return None
    return sample(content["application/json"]["schema"], document)


async def call(client: httpx.AsyncClient, method: str, url: str, body: Any) -> tuple[int, str]:
    """Status and body text; an event stream's body is not read (it may never end)."""
    if body is MULTIPART:
        files = {"file": (f"walk-{uuid.uuid4().hex[:8]}.txt", uuid.uuid4().bytes.hex().encode())}
        response = await client.request(method, url, files=files)
        return response.status_code, response.text
    async with client.stream(method, url, json=body) as response:
        if response.headers.get("content-type", "").startswith("text/event-stream"):
            return response.status_code, ""
        return response.status_code, (await response.aread()).decode()


def id_choices(
    params: list[str], mine: Tenancy, theirs: Tenancy
) -> list[tuple[dict[str, str], bool]]:
    """Every way to fill the path's ids from the two organisations, with whether any id is
    the other organisation's. Platform objects get a made-up id (only superadmins pass)."""
    platform_id = uuid.uuid4().hex
    options = [
        [(p, platform_id, False)]
        if p in PLATFORM_PARAMS
        else [(p, mine.ids[p], False), (p, theirs.ids[p], True)]
        for p in params
    ]
    return [
        ({p: value for p, value, _ in combo}, any(foreign for _, _, foreign in combo))
        for combo in itertools.product(*options)
    ]


async def test_no_route_reaches_another_organisations_objects(live: LiveServer) -> None:
    victim, intruder = await populate(live), await populate(live)
    async with httpx.AsyncClient(base_url=live.base_url) as anonymous:
        document = expect(await anonymous.get("/openapi.json"), 200)
    routes = api_routes(document)
    unknown = {
        (path, p)
        for _, path, _ in routes
        for p in PARAM.findall(path)
        if p not in victim.ids and p not in PLATFORM_PARAMS
    }
    assert not unknown, f"teach the walk these path ids (an object of tenant A each): {unknown}"

    walked: list[str] = []
    async with live.client(intruder.org.owner.key) as client:
        for method, path, operation in routes:
            params = PARAM.findall(path)
            tenant_params = [p for p in params if p not in PLATFORM_PARAMS]
            for ids, foreign in id_choices(params, intruder, victim):
                if tenant_params and not foreign and method != "GET":
                    continue  # the intruder's own objects: nothing to learn, only to lose
                url = path.format(**ids)
                status, text = await call(client, method, url, request_body(operation, document))
                where = f"{method} {url} as another organisation's admin -> {status}: {text}"
                assert status < 500, where
                leaked = [marker for marker in victim.markers if marker in text]
                assert not leaked, where
                if foreign or (params and not tenant_params):
                    assert status in ISOLATED, where
                    walked.append(f"{method} {path}")
                elif tenant_params:  # a GET of the intruder's own objects works
                    assert 200 <= status < 300, f"control, own ids: {where}"
    with_ids = {f"{method} {path}" for method, path, _ in routes if PARAM.search(path)}
    assert set(walked) == with_ids
    assert len(with_ids) >= 17

    await assert_untouched(live, victim)


async def test_admin_routes_refuse_a_plain_member(live: LiveServer) -> None:
    victim = await populate(live)
    async with httpx.AsyncClient(base_url=live.base_url) as anonymous:
        document = expect(await anonymous.get("/openapi.json"), 200)
    admin_routes = [r for r in api_routes(document) if r[1].startswith("/api/admin/")]
    assert len(admin_routes) >= 16
    platform_id = uuid.uuid4().hex
    async with live.client(victim.member_token) as member:
        for method, path, operation in admin_routes:
            ids = {p: victim.ids.get(p, platform_id) for p in PARAM.findall(path)}
            url = path.format(**ids)
            status, text = await call(member, method, url, request_body(operation, document))
            assert status == 403, f"{method} {url} as a member -> {status}: {text}"
    await assert_untouched(live, victim)


async def assert_untouched(live: LiveServer, victim: Tenancy) -> None:
    """Nothing the walk sent changed the organisation's objects."""
    assert await status_of(live, victim.member.key, "/api/conversations") == 200
    assert await status_of(live, victim.member_token) == 200
    async with live.client(victim.org.owner.key) as admin:
        path = f"/api/conversations/{victim.ids['conversation_id']}"
        assert expect(await admin.get(path), 200)["title"] == "t"
        user = expect(await admin.get(f"/api/admin/users/{victim.member.id}"), 200)
        assert (user["role"], user["disabled"]) == ("member", False)
        pending = expect(await admin.get("/api/admin/invitations"), 200)
        assert [i["id"] for i in pending] == [victim.ids["invitation_id"]]
        keys = expect(await admin.get("/api/admin/keys"), 200)
        assert all(k["revoked_at"] is None for k in keys)
