"""Budget checks before dispatch, with reservations so concurrent calls cannot overspend.

Before a call is sent upstream the gateway reserves its worst-case cost (prompt ≈ body bytes / 4
tokens, completion = the request's ``max_tokens``/``max_completion_tokens`` or the configured
``reserve_completion_tokens``, at the most expensive price of the fallback chain). A call is
refused with 429 when the budget is already spent, or when spent + reserved-in-flight + this
reservation would exceed it. The reservation is released when the call ends and the real cost
is recorded. A reply longer than the reserved completion tokens is the only way to go over.

A call counts toward its consumer's budget and toward the budget of every project given: the
project it is attributed to, or — for a call of a managed consumer without a valid task tag —
every project the consumer currently works on, so leaving a tag out never escapes a budget.
"""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from hiclaw.plugins.gateways.embedded.errors import GatewayHTTPError
from hiclaw.plugins.gateways.embedded.routing import Route
from hiclaw.plugins.gateways.embedded.store import Consumer, GatewayStore

BYTES_PER_TOKEN = 4
EPSILON_USD = 1e-9  # float sums of per-token prices; a nano-dollar is "spent"


@dataclass
class Reservation:
    keys: tuple[tuple[str, str], ...]
    amount: float


def estimate_cost(chain: list[Route], payload: dict[str, Any], body_bytes: int, default_completion: int) -> float:
    """The most a call can cost, as far as can be told before it is made."""
    prompt = body_bytes // BYTES_PER_TOKEN + 1
    limit = payload.get("max_completion_tokens") or payload.get("max_tokens")
    completion = limit if isinstance(limit, int) and limit > 0 else default_completion
    choices = payload.get("n")
    completion *= choices if isinstance(choices, int) and choices > 1 else 1  # n replies, each up to the limit
    return max((route.price.cost(prompt, completion) for route in chain), default=0.0)


def _refusal(scope: str, name: str, message: str, *, in_flight: bool = False) -> GatewayHTTPError:
    fix = f"raise the budget with `hiclaw gateway budget set --{scope} {name} USD`"
    if in_flight:
        fix = "set a lower max_tokens, or " + fix
    return GatewayHTTPError(429, f"{message} — {fix}", code="budget_exceeded", kind="insufficient_quota")


class BudgetGuard:
    def __init__(self, store: GatewayStore) -> None:
        self.store = store
        self._reserved: dict[tuple[str, str], float] = defaultdict(float)

    def reserve(self, consumer: Consumer, projects: Sequence[str], amount: float) -> Reservation:
        """Reserve ``amount`` USD against every budget the call counts toward (the consumer's and
        those of ``projects``), or raise 429."""
        holders: list[tuple[str, str, float | None, float]] = [
            ("consumer", consumer.name, consumer.budget_usd, consumer.spent_usd)]
        for project in dict.fromkeys(projects):
            found = self.store.project(project)
            if found is not None:
                holders.append(("project", found.name, found.budget_usd, found.spent_usd))
        keys = []
        for scope, name, budget, spent in holders:
            if budget is None:
                continue
            in_flight = self._reserved.get((scope, name), 0.0)
            if spent >= budget - EPSILON_USD:
                raise _refusal(scope, name, f"budget exhausted for {scope} {name!r}: spent ${spent:.4f} of ${budget:.2f}")
            if spent + in_flight + amount > budget + EPSILON_USD:
                raise _refusal(scope, name, (
                    f"this call could exceed the budget of {scope} {name!r}: spent ${spent:.4f} + in flight "
                    f"${in_flight:.4f} + up to ${amount:.4f} for this call > ${budget:.2f}"), in_flight=True)
            keys.append((scope, name))
        for key in keys:
            self._reserved[key] += amount
        return Reservation(tuple(keys), amount)

    def tightest(self, projects: Sequence[str]) -> str | None:
        """The project with the least budget left (spent and in flight counted); the first one
        when none has a budget. Where an untagged call of a consumer on several projects is charged."""
        def left(name: str) -> float:
            found = self.store.project(name)
            if found is None or found.budget_usd is None:
                return float("inf")
            return found.budget_usd - found.spent_usd - self._reserved.get(("project", name), 0.0)

        return min(projects, key=left, default=None)

    def release(self, reservation: Reservation) -> None:
        for key in reservation.keys:
            left = self._reserved[key] - reservation.amount
            if left <= 1e-12:
                del self._reserved[key]
            else:
                self._reserved[key] = left
