"""What the shared tier stores: principals and tenant policies survive JSON unchanged."""

from __future__ import annotations

import orjson

from chatplane.auth.principal import Principal
from chatplane.auth.service import PRINCIPALS
from chatplane.limits.service import POLICIES, BudgetLimit, TenantPolicy


def round_trip(data: object) -> object:
    return orjson.loads(orjson.dumps(data))


def test_a_principal_round_trips_without_how_the_request_came() -> None:
    principal = Principal(
        user_id="u1",
        tenant_id="t1",
        email="a@example.com",
        role="admin",
        is_superadmin=True,
        api_key_id="k1",
        via_cookie=True,
        scopes=frozenset({"chat"}),
    )
    loaded = PRINCIPALS.load(round_trip(PRINCIPALS.dump(principal)))
    assert loaded == Principal(
        user_id="u1",
        tenant_id="t1",
        email="a@example.com",
        role="admin",
        is_superadmin=True,
        api_key_id="k1",
        scopes=frozenset({"chat"}),
    )


def test_a_tenant_policy_round_trips() -> None:
    policy = TenantPolicy(
        overrides={"rpm": 100, "tpm": None},
        keys={"k1": (5, None, 2)},
        budgets={
            ("tenant", "t1"): (BudgetLimit("month", 12.5),),
            ("key", "k1"): (BudgetLimit("day", 1.0), BudgetLimit("lifetime", 3.0)),
        },
    )
    assert POLICIES.load(round_trip(POLICIES.dump(policy))) == policy


def test_a_policy_entry_written_before_a_new_field_takes_its_default() -> None:
    data = round_trip(POLICIES.dump(TenantPolicy(overrides={}, keys={}, budgets={})))
    assert isinstance(data, dict)
    minimal = {name: data[name] for name in ("overrides", "keys", "budgets")}
    assert POLICIES.load(minimal) == TenantPolicy(overrides={}, keys={}, budgets={})
