"""Tenant isolation by construction: the scope filters every statement it builds, covers
every identity table that has a tenant, and the admin code builds no SQL outside it."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest
from sqlalchemy.dialects import sqlite

import chatplane.admin
from chatplane.admin.repository import TenantOwned, TenantScope
from chatplane.auth import models
from chatplane.auth.principal import Principal
from chatplane.db.base import Base
from chatplane.limits import models as limit_models

ADMIN_PACKAGE = Path(inspect.getfile(chatplane.admin)).parent
KEYS_ROUTER = ADMIN_PACKAGE.parent / "auth" / "keys_router.py"
QUERY_MODULE = "repository.py"
RUNS_SQL = frozenset({"execute", "scalar", "scalars", "stream", "get"})
SCOPED = list(TenantOwned.__constraints__)


def test_every_identity_table_with_a_tenant_is_scoped() -> None:
    tenant_owned = {
        value
        for value in [*vars(models).values(), *vars(limit_models).values()]
        if isinstance(value, type)
        and issubclass(value, Base)
        and value is not Base
        and "tenant_id" in value.__table__.c
        # Keyed by the tenant itself: the repository reads the caller's one row by its key.
        and value is not limit_models.TenantLimits
    }
    assert tenant_owned == set(SCOPED)


@pytest.mark.parametrize("model", SCOPED, ids=lambda m: m.__name__)
def test_scope_statements_filter_by_the_callers_tenant(model: type[Base]) -> None:
    principal = Principal(user_id="u1", tenant_id="tenant-a", email="a@example.com", role="owner")
    scope = TenantScope(session=None, principal=principal)  # type: ignore[arg-type]
    table = model.__tablename__
    for statement in (scope.select(model), scope.update(model), scope.delete(model)):  # type: ignore[type-var]
        compiled = statement.compile(dialect=sqlite.dialect())
        assert f"{table}.tenant_id = ?" in str(compiled)
        assert "tenant-a" in compiled.params.values()


def _admin_modules() -> list[Path]:
    modules = [p for p in ADMIN_PACKAGE.glob("*.py") if p.name != QUERY_MODULE]
    assert len(modules) >= 5
    return [*modules, KEYS_ROUTER]


@pytest.mark.parametrize("module", _admin_modules(), ids=lambda p: p.name)
def test_only_the_repository_builds_or_runs_sql(module: Path) -> None:
    tree = ast.parse(module.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("sqlalchemy"):
            assert node.module in ("sqlalchemy.exc", "sqlalchemy.ext.asyncio"), (
                f"{module.name} imports from {node.module}: queries belong in {QUERY_MODULE}"
            )
        if isinstance(node, ast.Import):
            assert not any(a.name.startswith("sqlalchemy") for a in node.names), module.name
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            receiver = node.func.value
            on_session = isinstance(receiver, ast.Name) and receiver.id == "session"
            assert not (on_session and node.func.attr in RUNS_SQL), (
                f"{module.name}:{node.lineno} runs SQL itself; use a repository"
            )
