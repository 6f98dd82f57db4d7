"""Which limits apply to a request, and admitting it: rate limits, concurrency slots, budgets.

The numbers come from the settings (defaults), the tenant's overrides and the API key's own
limits; budgets from the `budgets` table. They are read per tenant into a snapshot kept in
the cache (`chatplane.cache`, dropped in every process on a change), so a request costs no
database query. The counting happens in the limit stores
(`chatplane.limits.protocol`): in-process, or Redis (exact across replicas)."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from functools import partial
from typing import Any

import structlog
from sqlalchemy import func, select

from chatplane.auth.models import ApiKey
from chatplane.auth.principal import Principal
from chatplane.cache import Cache, LocalCache, Namespace
from chatplane.db.engine import Database
from chatplane.errors import (
    BudgetExceeded,
    ServiceUnavailable,
    TooManyRequests,
)
from chatplane.limits.models import Budget, TenantLimits
from chatplane.limits.protocol import (
    AdmitResult,
    BudgetRule,
    RateDecision,
    RateRule,
    ReserveResult,
    SlotDecision,
    SlotRule,
    from_nano,
    to_nano,
)
from chatplane.limits.stores import LimitStores
from chatplane.observability import metrics
from chatplane.settings import LIMIT_ZONES, Settings
from chatplane.usage.models import UsageRecord

log = structlog.get_logger("chatplane.limits")

MINUTE_S = 60.0
ZONES = LIMIT_ZONES
LIMIT_FIELDS = (
    "rpm",
    "tpm",
    "max_concurrent",
    "user_rpm",
    "user_tpm",
    "user_max_concurrent",
    "key_rpm",
    "key_tpm",
    "key_max_concurrent",
)
# What a model call counts at most: the tokens it takes from tokens/minute limits, and its
# worst-case cost in USD (what a budget reserves). Awaited only when a limit needs it.
Measure = Callable[[], Awaitable[tuple[int, float]]]
# Where the state of the request's limits is kept for the headers (see LimitMiddleware).
STATE_KEY = "chatplane.ratelimit"
# The routes whose handler takes the per-address check into its admission (or, for a
# gateway cache hit, into its requests/minute check): one store call instead of two.
ADMITTING_ROUTES = frozenset({("POST", "/v1/chat/completions")})


def zone_of(path: str, method: str) -> str | None:
    """The rate-limit zone of a route, like the zones of the nginx configuration."""
    if path.startswith("/v1/"):
        return "gateway"
    if not path.startswith("/api/"):
        return None
    if path.startswith(("/api/auth/", "/api/invitations/")):
        return "auth"
    if path.startswith(("/api/admin/", "/api/ops/")):
        return "admin"
    if path.startswith("/api/kb/") and method == "POST" and path.endswith("/documents"):
        return "upload"
    return "chat"


@dataclass(slots=True)
class AddressCheck:
    """A request's per-address check, left by `LimitMiddleware` to a route that admits
    (`ADMITTING_ROUTES`): the admission counts it in the same store call, under the
    caller's tenant partition (so the call stays on one Redis Cluster slot). `taken` once a
    store call has been made for it; a response that starts while it is not gets the
    ordinary check (in the address's own partition) first."""

    zone: str
    ip: str
    taken: bool = False


@dataclass(frozen=True, slots=True)
class EffectiveLimits:
    """The numbers for one principal (0: unlimited)."""

    key_rpm: int
    key_tpm: int
    key_max_concurrent: int
    user_rpm: int
    user_tpm: int
    user_max_concurrent: int
    tenant_rpm: int
    tenant_tpm: int
    tenant_max_concurrent: int


@dataclass(frozen=True, slots=True)
class BudgetLimit:
    period: str  # day | month | lifetime
    limit_usd: float


@dataclass(frozen=True, slots=True)
class TenantPolicy:
    overrides: dict[str, int | None]
    keys: dict[str, tuple[int | None, int | None, int | None]]  # key id -> rpm, tpm, conc.
    budgets: dict[tuple[str, str], tuple[BudgetLimit, ...]]  # (scope, subject id) -> limits
    # The gateway response cache chosen by the tenant (its id) and by keys (their ids).
    response_cache: dict[str, bool] = field(default_factory=dict)

    # The codec of the shared cache tier. A field of JSON types (str, numbers, bool, None,
    # lists, dicts with str keys) passes as it is and needs no line here; a field an entry
    # written before it lacks takes its default.
    def to_json(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data["budgets"] = [
            [scope, subject, [[limit.period, limit.limit_usd] for limit in limits]]
            for (scope, subject), limits in self.budgets.items()
        ]
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TenantPolicy:
        known = {f.name for f in fields(cls)}
        values = {name: value for name, value in data.items() if name in known}
        values["keys"] = {key_id: tuple(limits) for key_id, limits in data["keys"].items()}
        values["budgets"] = {
            (scope, subject): tuple(BudgetLimit(period, float(usd)) for period, usd in limits)
            for scope, subject, limits in data["budgets"]
        }
        return cls(**values)


# Tenant id -> its policy, in every process (invalidated by the admin changes of limits).
POLICIES = Namespace[TenantPolicy]("policies", TenantPolicy.to_json, TenantPolicy.from_json)


@dataclass(slots=True)
class Reservation:
    """A budget hold: settled by whoever finishes the request (maybe another process)."""

    tenant_id: str
    reservation_id: str
    keys: tuple[str, ...]
    amount_nano: int


@dataclass(slots=True)
class Admission:
    """What admitting a request took: released (and settled) exactly once when it ends."""

    limits: LimitService
    tenant_id: str
    lease_id: str
    decision: RateDecision | None = None
    slots: bool = False
    reservation: Reservation | None = None
    _done: bool = field(default=False, repr=False)

    async def finish(self, actual_cost_usd: float) -> None:
        if self._done:
            return
        self._done = True
        await self.limits.finish(
            self.tenant_id,
            self.lease_id,
            slots=self.slots,
            reservation=self.reservation,
            actual_cost_usd=actual_cost_usd,
        )


@dataclass(frozen=True, slots=True)
class BudgetPeriod:
    """A budget's current period: the key of its counter, where it starts (None: lifetime)
    and how long its counter is worth keeping (None: forever)."""

    scope: str  # tenant | user | key
    subject_id: str
    key: str
    start: datetime | None
    ttl_s: int | None


def budget_period(scope: str, subject_id: str, period: str, now: datetime) -> BudgetPeriod:
    if period == "day":
        start = now.replace(hour=0, minute=0, second=0, microsecond=0)
        tag, ttl = f"day:{start:%Y-%m-%d}", 2 * 86400
    elif period == "month":
        start = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        tag, ttl = f"month:{start:%Y-%m}", 33 * 86400
    else:
        return BudgetPeriod(scope, subject_id, f"budget:{scope}:{subject_id}:lifetime", None, None)
    return BudgetPeriod(scope, subject_id, f"budget:{scope}:{subject_id}:{tag}", start, ttl)


@dataclass(frozen=True, slots=True)
class _Budget:
    rule: BudgetRule
    period: BudgetPeriod


def rate_headers_text(decision: RateDecision) -> list[tuple[str, str]]:
    """`RateLimit-Limit`, `-Remaining` and `-Reset` (seconds until the quota is full)."""
    return [
        ("RateLimit-Limit", str(decision.rule.limit)),
        ("RateLimit-Remaining", str(max(0, decision.remaining))),
        ("RateLimit-Reset", str(math.ceil(decision.reset_s))),
    ]


def rate_headers(decision: RateDecision) -> list[tuple[bytes, bytes]]:
    return [(k.lower().encode(), v.encode()) for k, v in rate_headers_text(decision)]


def tightest(decisions: Sequence[RateDecision]) -> RateDecision | None:
    """The decision the headers describe: the refusal, else the rule nearest its limit."""
    if not decisions:
        return None
    refused = [d for d in decisions if not d.allowed]
    if refused:
        return max(refused, key=lambda d: d.retry_after_s)
    return min(decisions, key=lambda d: (d.remaining / max(1, d.rule.limit), d.remaining))


def remember(state: dict[str, object], decision: RateDecision | None) -> None:
    """Keep the tighter of what the request's checks decided, for the headers."""
    if decision is None:
        return
    current = state.get(STATE_KEY)
    if isinstance(current, RateDecision):
        chosen = tightest([current, decision])
        if chosen is not None:
            decision = chosen
    state[STATE_KEY] = decision


class LimitService:
    def __init__(
        self,
        settings: Settings,
        db: Database,
        stores: LimitStores,
        *,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
        cache: Cache | None = None,
    ) -> None:
        """`stores.admissions` does the three stores' work of `admit` and `finish` in one
        step each; the single stores serve the per-address checks and the budget seeding."""
        self.settings = settings
        self.db = db
        self.rates = stores.rates
        self.budgets = stores.budgets
        self.admissions = stores.admissions
        self.cache: Cache = cache or LocalCache(
            ttl_s=settings.cache_local_ttl_s, max_items=settings.cache_max_items
        )
        self.cache.on_invalidate(POLICIES, self._invalidated)
        self._loading: dict[str, asyncio.Future[TenantPolicy]] = {}
        self._now = now
        self._fail_open = frozenset(settings.limits_fail_open_zones)
        self._defaults = self.defaults()  # read from the settings once, not per request

    # Policies ------------------------------------------------------------------------------

    async def policy(self, tenant_id: str) -> TenantPolicy:
        return await self.cache.load(POLICIES, tenant_id, partial(self._load_once, tenant_id))

    async def _load_once(self, tenant_id: str) -> tuple[TenantPolicy, float | None]:
        loading = self._loading.get(tenant_id)
        if loading is not None:  # one query per tenant at a time, however many requests
            return await asyncio.shield(loading), None
        future: asyncio.Future[TenantPolicy] = asyncio.get_running_loop().create_future()
        self._loading[tenant_id] = future
        try:
            policy = await self._load(tenant_id)
            future.set_result(policy)
            return policy, None
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: waiters re-raise it, nobody logs it as lost
            raise
        finally:
            if self._loading.get(tenant_id) is future:
                del self._loading[tenant_id]

    def _invalidated(self, tenant_id: str | None) -> None:
        """A query in flight may predate the change: later requests do not wait for it."""
        if tenant_id is None:
            self._loading.clear()
        else:
            self._loading.pop(tenant_id, None)

    async def invalidate(self, tenant_id: str) -> None:
        """Drop the tenant's policy here and in every other process, after a change."""
        await self.cache.invalidate(POLICIES, tenant_id)

    async def _load(self, tenant_id: str) -> TenantPolicy:
        async with self.db.session() as session:
            row = await session.get(TenantLimits, tenant_id)
            keys = (
                await session.execute(
                    select(ApiKey.id, ApiKey.rpm, ApiKey.tpm, ApiKey.max_concurrent).where(
                        ApiKey.tenant_id == tenant_id,
                        (ApiKey.rpm.is_not(None))
                        | (ApiKey.tpm.is_not(None))
                        | (ApiKey.max_concurrent.is_not(None)),
                    )
                )
            ).all()
            budgets = (
                await session.scalars(select(Budget).where(Budget.tenant_id == tenant_id))
            ).all()
            cache_keys = await session.execute(
                select(ApiKey.id, ApiKey.response_cache).where(
                    ApiKey.tenant_id == tenant_id, ApiKey.response_cache.is_not(None)
                )
            )
            response_cache = {key_id: bool(on) for key_id, on in cache_keys}
        if row is not None:
            response_cache[tenant_id] = row.response_cache
        overrides = {name: getattr(row, name) if row else None for name in LIMIT_FIELDS}
        grouped: dict[tuple[str, str], list[BudgetLimit]] = {}
        for budget in budgets:
            grouped.setdefault((budget.scope, budget.subject_id), []).append(
                BudgetLimit(budget.period, float(budget.limit_usd))
            )
        return TenantPolicy(
            overrides=overrides,
            keys={key_id: (rpm, tpm, conc) for key_id, rpm, tpm, conc in keys},
            budgets={subject: tuple(limits) for subject, limits in grouped.items()},
            response_cache=response_cache,
        )

    def defaults(self) -> dict[str, int]:
        s = self.settings
        return {
            "rpm": s.rate_limit_tenant_rpm,
            "tpm": s.rate_limit_tenant_tpm,
            "max_concurrent": s.max_concurrent_tenant,
            "user_rpm": s.rate_limit_user_rpm,
            "user_tpm": s.rate_limit_user_tpm,
            "user_max_concurrent": s.max_concurrent_user,
            "key_rpm": s.rate_limit_key_rpm,
            "key_tpm": s.rate_limit_key_tpm,
            "key_max_concurrent": s.max_concurrent_key,
        }

    def effective(self, policy: TenantPolicy, api_key_id: str | None) -> EffectiveLimits:
        defaults = self._defaults

        def pick(name: str) -> int:
            value = policy.overrides.get(name)
            return defaults[name] if value is None else value

        own = policy.keys.get(api_key_id or "", (None, None, None))
        return EffectiveLimits(
            key_rpm=own[0] if own[0] is not None else pick("key_rpm"),
            key_tpm=own[1] if own[1] is not None else pick("key_tpm"),
            key_max_concurrent=own[2] if own[2] is not None else pick("key_max_concurrent"),
            user_rpm=pick("user_rpm"),
            user_tpm=pick("user_tpm"),
            user_max_concurrent=pick("user_max_concurrent"),
            tenant_rpm=pick("rpm"),
            tenant_tpm=pick("tpm"),
            tenant_max_concurrent=pick("max_concurrent"),
        )

    # Rate limits -----------------------------------------------------------------------------

    def _rate_rules(
        self, principal: Principal, limits: EffectiveLimits, *, requests: bool, tokens: int
    ) -> list[RateRule]:
        subjects = [("user", principal.user_id, limits.user_rpm, limits.user_tpm)]
        if principal.api_key_id is not None:
            subjects.insert(0, ("key", principal.api_key_id, limits.key_rpm, limits.key_tpm))
        subjects.append(("tenant", principal.tenant_id, limits.tenant_rpm, limits.tenant_tpm))
        rules: list[RateRule] = []
        for scope, subject, rpm, tpm in subjects:
            if requests and rpm > 0:
                rules.append(RateRule(f"rpm:{scope}:{subject}", rpm, MINUTE_S, 1, f"{scope}_rpm"))
            if tokens > 0 and tpm > 0:
                rules.append(
                    RateRule(f"tpm:{scope}:{subject}", tpm, MINUTE_S, tokens, f"{scope}_tpm")
                )
        return rules

    def _address_rule(self, zone: str, ip: str) -> RateRule | None:
        limit = self.settings.rate_limit_ip_zones.get(zone, self.settings.rate_limit_ip_rpm)
        if limit <= 0:
            return None
        return RateRule(f"ip:{zone}:{ip}", limit, MINUTE_S, 1, "ip")

    def _take_address(self, address: AddressCheck | None) -> list[RateRule]:
        """The address rule to count with the caller's own rules (marked taken: the store
        call that follows counts it, or fails for all of them)."""
        if address is None or address.taken:
            return []
        address.taken = True
        rule = self._address_rule(address.zone, address.ip)
        return [rule] if rule is not None else []

    async def check_ip(self, zone: str, ip: str) -> RateDecision | None:
        """The per-address limit of a zone; raises TooManyRequests when over it."""
        rule = self._address_rule(zone, ip)
        if rule is None:
            return None
        return await self._check("ip", [rule], zone)

    async def check_requests(
        self, principal: Principal, zone: str, *, address: AddressCheck | None = None
    ) -> RateDecision | None:
        """One more request by this principal (key, user and tenant requests/minute), and
        the request's `address` check when one is left to it, in one store call."""
        limits = self.effective(await self.policy(principal.tenant_id), principal.api_key_id)
        rules = self._rate_rules(principal, limits, requests=True, tokens=0)
        rules += self._take_address(address)
        return await self._check(principal.tenant_id, rules, zone) if rules else None

    async def _check(
        self, partition: str, rules: Sequence[RateRule], zone: str
    ) -> RateDecision | None:
        try:
            decisions = await self.rates.check(partition, rules)
        except ServiceUnavailable:
            self._store_down("rate", zone)
            return None
        decision = tightest(decisions)
        if decision is not None and not decision.allowed:
            raise _rate_refusal(decision)
        return decision

    def _store_down(self, kind: str, zone: str) -> None:
        log.warning("limit_store_unreachable", kind=kind, zone=zone)
        _count_store_error(kind)
        if zone not in self._fail_open:
            raise ServiceUnavailable(
                "Limits cannot be checked right now; retry shortly",
                code="limits_unavailable",
                retry_after=2,
            )

    # Admission of model calls (gateway requests and native turns) ---------------------------

    async def admit(
        self,
        principal: Principal,
        *,
        lease_id: str,
        zone: str,
        measure: Measure,
        count_request: bool,
        concurrent: bool = True,
        address: AddressCheck | None = None,
    ) -> Admission:
        """Rate (requests and tokens), a concurrency slot, and a budget reservation of the
        worst-case cost, all or nothing, in one step of the limit stores: a refused
        request takes nothing. With `address`, the request's per-address limit is one more
        rate rule of that step (under the tenant's partition). `measure` is awaited only
        when a tokens/minute limit or a budget applies. `Admission.finish(actual)` gives
        back the slot and settles the reservation when the call ends, however it ends."""
        policy = await self.policy(principal.tenant_id)
        limits = self.effective(policy, principal.api_key_id)
        admission = Admission(self, principal.tenant_id, lease_id)
        checks = self._budgets(principal, policy)
        tokens, worst_cost_usd = 0, 0.0
        if checks or _counts_tokens(principal, limits):
            tokens, worst_cost_usd = await measure()
        rates = self._rate_rules(principal, limits, requests=count_request, tokens=tokens)
        rates += self._take_address(address)
        slots = self._slot_rules(principal, limits) if concurrent else []
        budgets = [check.rule for check in checks]
        if not (rates or slots or budgets):
            return admission
        amount = to_nano(worst_cost_usd)
        try:
            result = await self._admit_seeded(admission, rates, slots, checks, amount)
        except ServiceUnavailable as exc:
            self._admission_store_down(zone, rates=bool(rates), slots=bool(slots), exc=exc)
            if budgets:
                raise ServiceUnavailable(
                    "Budgets cannot be checked right now; retry shortly",
                    code="limits_unavailable",
                    retry_after=2,
                ) from exc
            return admission  # the zone fails open and no budget applies
        decision = tightest(result.rates)
        if decision is not None and not decision.allowed:
            raise _rate_refusal(decision)
        if result.slots is not None and not result.slots.allowed:
            raise _slot_refusal(result.slots)
        if result.budget is not None and not result.budget.ok:
            raise _budget_refusal(result.budget, amount)
        admission.decision = decision
        admission.slots = bool(slots)
        if budgets:
            keys = tuple(rule.key for rule in budgets)
            admission.reservation = Reservation(principal.tenant_id, lease_id, keys, amount)
        return admission

    async def _admit_seeded(
        self,
        admission: Admission,
        rates: Sequence[RateRule],
        slots: Sequence[SlotRule],
        checks: Sequence[_Budget],
        amount: int,
    ) -> AdmitResult:
        """The combined admission; when a budget counter is missing (nothing was taken),
        seed it from the usage records and try once more."""
        budgets = [check.rule for check in checks]
        result = await self._admit_once(admission, rates, slots, budgets, amount)
        unseeded = result.budget.unseeded if result.budget is not None else ()
        if not unseeded:
            return result
        for check in checks:
            if check.rule.key in unseeded:
                spent = await self._spent(check.period)
                await self.budgets.seed(
                    admission.tenant_id, check.rule.key, spent, ttl_s=check.period.ttl_s
                )
        return await self._admit_once(admission, rates, slots, budgets, amount)

    async def _admit_once(
        self,
        admission: Admission,
        rates: Sequence[RateRule],
        slots: Sequence[SlotRule],
        budgets: Sequence[BudgetRule],
        amount: int,
    ) -> AdmitResult:
        tenant_id, lease_id = admission.tenant_id, admission.lease_id
        try:
            return await self.admissions.admit(
                tenant_id,
                lease_id,
                rates,
                slots,
                budgets,
                amount,
                budget_ttl_s=float(self.settings.budget_reservation_ttl_s),
            )
        except ServiceUnavailable:
            raise
        except BaseException:
            # Cancelled in flight: the script may have run. Give back what it may have
            # taken, so nothing waits for its expiry.
            admission.slots = bool(slots)
            if budgets:
                keys = tuple(rule.key for rule in budgets)
                admission.reservation = Reservation(tenant_id, lease_id, keys, amount)
            await admission.finish(0.0)
            raise

    def _admission_store_down(
        self, zone: str, *, rates: bool, slots: bool, exc: ServiceUnavailable
    ) -> None:
        """The combined call failed: rate and slot limits follow the zone (a 503 where it
        fails closed); budgets always fail closed (the caller's 503)."""
        kind = "rate" if rates else "concurrency" if slots else "budget"
        log.warning("limit_store_unreachable", kind=kind, zone=zone)
        _count_store_error(kind)
        if (rates or slots) and zone not in self._fail_open:
            raise ServiceUnavailable(
                "Limits cannot be checked right now; retry shortly",
                code="limits_unavailable",
                retry_after=2,
            ) from exc

    def _slot_rules(self, principal: Principal, limits: EffectiveLimits) -> list[SlotRule]:
        rules: list[SlotRule] = []
        if principal.api_key_id is not None and limits.key_max_concurrent > 0:
            key = f"conc:key:{principal.api_key_id}"
            rules.append(SlotRule(key, limits.key_max_concurrent, "key_concurrency"))
        if limits.user_max_concurrent > 0:
            key = f"conc:user:{principal.user_id}"
            rules.append(SlotRule(key, limits.user_max_concurrent, "user_concurrency"))
        if limits.tenant_max_concurrent > 0:
            key = f"conc:tenant:{principal.tenant_id}"
            rules.append(SlotRule(key, limits.tenant_max_concurrent, "tenant_concurrency"))
        return rules

    def _budgets(self, principal: Principal, policy: TenantPolicy) -> list[_Budget]:
        """The budgets a call of this principal counts against, in their current periods."""
        subjects = [("tenant", principal.tenant_id), ("user", principal.user_id)]
        if principal.api_key_id is not None:
            subjects.append(("key", principal.api_key_id))
        now = self._now()
        checks: list[_Budget] = []
        for scope, subject in subjects:
            for budget in policy.budgets.get((scope, subject), ()):
                period = budget_period(scope, subject, budget.period, now)
                name = f"{scope}_{budget.period}"
                rule = BudgetRule(period.key, to_nano(budget.limit_usd), period.ttl_s, name)
                checks.append(_Budget(rule, period))
        return checks

    async def budget_usage(self, tenant_id: str, period: BudgetPeriod) -> tuple[int, int]:
        """Spent and reserved nano-USD in a budget's period now (from the usage records when
        the store has no counter for it yet)."""
        try:
            state = await self.budgets.state(tenant_id, period.key)
        except ServiceUnavailable:
            state = None
        if state is None:
            return await self._spent(period), 0
        return state.spent_nano, state.reserved_nano

    async def _spent(self, period: BudgetPeriod) -> int:
        """What a budget's subject spent in the period, from the usage records."""
        column = {
            "tenant": UsageRecord.tenant_id,
            "user": UsageRecord.user_id,
            "key": UsageRecord.api_key_id,
        }[period.scope]
        query = select(func.coalesce(func.sum(UsageRecord.cost_usd), 0)).where(
            column == period.subject_id
        )
        if period.start is not None:
            query = query.where(UsageRecord.created_at >= period.start)
        async with self.db.session() as session:
            total = await session.scalar(query)
        return to_nano(float(total or 0))

    async def finish(
        self,
        tenant_id: str,
        lease_id: str,
        *,
        slots: bool,
        reservation: Reservation | None,
        actual_cost_usd: float,
    ) -> None:
        """Give back the slot and settle the reservation, in one step. Never raises: a store
        that is down now lets the lease and the reservation expire by themselves."""
        if not slots and reservation is None:
            return
        try:
            await self.admissions.finish(
                tenant_id,
                lease_id,
                slots=slots,
                reservation_id=reservation.reservation_id if reservation else None,
                actual_nano=to_nano(actual_cost_usd),
                budget_keys=reservation.keys if reservation else (),
            )
        except ServiceUnavailable:
            _count_store_error("budget" if reservation else "concurrency")
            log.warning(
                "limit_finish_failed",
                lease_id=lease_id,
                reservation_id=reservation.reservation_id if reservation else None,
            )

    async def settle(
        self, tenant_id: str, reservation_id: str, keys: Sequence[str], actual_cost_usd: float
    ) -> None:
        try:
            await self.budgets.settle(tenant_id, reservation_id, to_nano(actual_cost_usd), keys)
        except ServiceUnavailable:
            _count_store_error("budget")
            log.warning("budget_settle_failed", reservation_id=reservation_id)

    async def close(self) -> None:
        """Nothing to release: the stores and the cache are closed by their owner."""


def _counts_tokens(principal: Principal, limits: EffectiveLimits) -> bool:
    """Whether a tokens/minute limit applies to this principal's calls."""
    key_tpm = limits.key_tpm if principal.api_key_id is not None else 0
    return bool(key_tpm or limits.user_tpm or limits.tenant_tpm)


def _rate_refusal(decision: RateDecision) -> TooManyRequests:
    _refused("rate", decision.rule.name)
    retry = max(1, math.ceil(decision.retry_after_s))
    what = "tokens" if decision.rule.name.endswith("tpm") else "requests"
    return TooManyRequests(
        f"Too many {what} for this {_scope_word(decision.rule.name)}; retry in {retry} s",
        code="rate_limited",
        retry_after=retry,
        limit=decision.rule.name,
        _headers=dict(rate_headers_text(decision)),
    )


def _slot_refusal(decision: SlotDecision) -> TooManyRequests:
    refused = decision.refused
    name = refused.name if refused else "concurrency"
    _refused("concurrency", name)
    limit = refused.limit if refused else 0
    return TooManyRequests(
        f"Too many requests at once for this {_scope_word(name)} "
        f"(at most {limit}); retry when one ends",
        code="too_many_concurrent",
        retry_after=1,
        limit=name,
    )


def _budget_refusal(result: ReserveResult, amount: int) -> BudgetExceeded:
    refused = result.refused
    name = refused.name if refused else "budget"
    _refused("budget", name)
    extra: dict[str, Any] = {"budget": name}
    if refused is not None and result.state is not None:
        extra["limit_usd"] = from_nano(refused.limit_nano)
        extra["spent_usd"] = from_nano(result.state.spent_nano)
    return BudgetExceeded(
        f"The {_budget_words(name)} budget does not cover this request "
        f"(its worst case is {from_nano(amount):.6f} USD)",
        **extra,
    )


def _scope_word(name: str) -> str:
    return {"ip": "address", "key": "API key", "user": "user", "tenant": "organisation"}.get(
        name.split("_", 1)[0], "caller"
    )


def _budget_words(name: str) -> str:
    scope, _, period = name.partition("_")
    who = {"key": "API key's", "user": "user's", "tenant": "organisation's"}.get(scope, scope)
    return f"{who} {period}" if period else who


def _refused(kind: str, name: str) -> None:
    metrics.limit_refused(kind, name.split("_", 1)[0])


def _count_store_error(kind: str) -> None:
    log.debug("limit_store_error", kind=kind)
    metrics.redis_error("limits")


__all__ = [
    "ADMITTING_ROUTES",
    "STATE_KEY",
    "ZONES",
    "AddressCheck",
    "Admission",
    "BudgetPeriod",
    "EffectiveLimits",
    "LimitService",
    "Measure",
    "Reservation",
    "TenantPolicy",
    "budget_period",
    "rate_headers",
    "remember",
    "tightest",
]
