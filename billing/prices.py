"""The price list: per pricing tier (the reference's free / startup / growth / enterprise), per
meter and dimension, in integer micro-units of ``currency`` per ``per`` units. Never floats.

The defaults below can be replaced, tier by tier, by the JSON in ``CONVEYOR_BILLING_PRICES``
(same shape as :data:`DEFAULT_TIERS`). Conveyor's plans map to tiers by :data:`PLAN_TIERS`
(a plan named like a tier is that tier; an unknown plan is priced as ``free``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from config import get_settings

#: Meters and their units.
UNITS: dict[str, str] = {
    "jobs": "job",
    "pages_crawled": "page",
    "tokens_in": "token",
    "tokens_out": "token",
    "gpu_seconds": "second",
    "replica_seconds": "second",
    "storage_gb_hours": "gb_hour",
}
ANY = "*"  # a dimension's price when its own is not listed

_BASE: dict[str, dict[str, list[int]]] = {  # meter -> dimension -> [micros, per]
    "jobs": {ANY: [100, 1]},
    "pages_crawled": {"static": [200, 1], "rendered": [1_000, 1]},
    "tokens_in": {ANY: [100, 1_000]},
    "tokens_out": {ANY: [300, 1_000]},
    "gpu_seconds": {ANY: [500, 1], "cpu": [50, 1], "a100": [1_100, 1], "h100": [2_000, 1]},
    "replica_seconds": {ANY: [10, 1]},
    "storage_gb_hours": {ANY: [150, 1]},
}


def _scaled(percent: int) -> dict[str, dict[str, list[int]]]:
    return {
        meter: {dim: [micros * percent // 100, per] for dim, (micros, per) in dims.items()}
        for meter, dims in _BASE.items()
    }


#: tier -> {allowance_micros (included usage per month), prepaid (refuse work beyond credits),
#: prices}
DEFAULT_TIERS: dict[str, dict[str, Any]] = {
    "free": {"allowance_micros": 5_000_000, "prepaid": True, "prices": _scaled(100)},
    "startup": {"allowance_micros": 50_000_000, "prepaid": True, "prices": _scaled(90)},
    "growth": {"allowance_micros": 500_000_000, "prepaid": True, "prices": _scaled(80)},
    "enterprise": {"allowance_micros": 0, "prepaid": False, "prices": _scaled(70)},
}
PLAN_TIERS: dict[str, str] = {"starter": "startup", "pro": "growth", "unlimited": "enterprise"}


@dataclass(frozen=True)
class Price:
    micros: int
    per: int

    def cost(self, quantity: int) -> int:
        """The cost of ``quantity`` units, rounded half up to a whole micro-unit."""
        return (quantity * self.micros + self.per // 2) // self.per


@dataclass(frozen=True)
class Tier:
    name: str
    allowance_micros: int
    prepaid: bool
    prices: dict[str, dict[str, Price]]

    def price(self, meter: str, dimension: str) -> Price:
        dims = self.prices.get(meter, {})
        return dims.get(dimension) or dims.get(ANY) or Price(0, 1)


@lru_cache(maxsize=1)
def _tiers(raw: str) -> dict[str, Tier]:
    table = {**DEFAULT_TIERS, **(json.loads(raw) if raw else {})}
    return {
        name: Tier(
            name,
            int(spec.get("allowance_micros", 0)),
            bool(spec.get("prepaid", True)),
            {
                meter: {dim: Price(int(p[0]), max(1, int(p[1]))) for dim, p in dims.items()}
                for meter, dims in spec.get("prices", {}).items()
            },
        )
        for name, spec in table.items()
    }


def tier_for_plan(plan: str) -> Tier:
    tiers = _tiers(get_settings().billing_prices)
    return tiers.get(plan) or tiers.get(PLAN_TIERS.get(plan, "")) or tiers["free"]


def currency() -> str:
    return get_settings().billing_currency
