"""GCRA arithmetic shared by the rate limiters (the Lua in `redis_scripts` mirrors it).

A bucket is one number, its theoretical arrival time (TAT) in integer microseconds; its
`level` is how far the TAT lies ahead of now (0 when full). A request of `cost` units adds
cost * period / limit to the level and passes while the level stays within `period` (the
tolerance), so a full bucket allows a burst of exactly `limit` units and refills
continuously. Levels are stored rounded down to whole microseconds, which refills a bucket
up to 1 us per request early: the burst stays exact while limit <= sqrt(period in us), e.g.
up to 7,745 single units per minute."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from chatplane.limits.protocol import RateDecision, RateRule

US = 1_000_000
# Float noise: a burst that fills the bucket exactly must pass.
_SLACK_US = 1e-3
_SLACK_UNITS = 1e-9


@dataclass(frozen=True, slots=True)
class Step:
    """One rule's answer for a bucket at `level_us`."""

    allowed: bool
    level_us: float  # before the request
    level_after_us: float  # after it, if it is taken
    retry_us: float  # until it would pass; 0 when it passes now


def validate(rules: Sequence[RateRule]) -> None:
    for rule in rules:
        if rule.limit < 1 or rule.period_s <= 0 or rule.cost < 0:
            raise ValueError(f"invalid rate rule {rule!r}: needs limit >= 1, period > 0, cost >= 0")


def step(rule: RateRule, level_us: float) -> Step:
    """A request of `rule.cost`. A cost above the limit never passes: its retry is a whole
    period (the caller should shrink the request, not wait)."""
    period = rule.period_s * US
    after = level_us + rule.cost * period / rule.limit
    if rule.cost <= rule.limit and after <= period + _SLACK_US:
        return Step(True, level_us, after, 0.0)
    retry = period if rule.cost > rule.limit else after - period
    return Step(False, level_us, after, retry)


def decision(rule: RateRule, allowed: bool, level_us: float, retry_us: float) -> RateDecision:
    """The caller's view of a bucket at `level_us` (after the request when it was taken)."""
    period = rule.period_s * US
    units = math.floor((period - level_us) * rule.limit / period + _SLACK_UNITS)
    return RateDecision(
        rule=rule,
        allowed=allowed,
        remaining=min(rule.limit, max(0, units)),
        reset_s=math.ceil(level_us) / US,
        retry_after_s=math.ceil(retry_us) / US,
    )
