"""What a search returns, and what it would have returned had it been stopped at a budget.

One rule per method turns the trials a search has finished into the policy it returns (`returned_policy`):
RL-AutoAugment returns its top `top_children` children's sub-policies (AutoAugment: the top 5 policies' 25,
equally weighted), every other method its best trial's policy by search-val AP. The anytime policy at a budget B
(`anytime_policy`) is the same rule applied to the trials that had ended when the search's cumulative spend
reached B, the spend of concurrent trials counted as they ran (each trial's devices held x its elapsed time).
`da2 compare` retrains each anytime policy with the final recipe (the yardstick: final AP at equal budgets).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from search_spaces.policy import Policy, SubPolicy


class TrialRow(Protocol):
    """The ledger fields this module reads (a `ledger.LedgerRow`)."""

    status: str
    start_time: str
    end_time: str
    device_seconds: float
    wall_seconds: float
    policy_json: str
    trial_id: str
    search_val_ap: float | None


def search_score(row: TrialRow) -> float:
    """A search trial's search-val AP (the ledger's search-val column)."""
    return float(row.search_val_ap)


def returned_policy(method: str, rows: Sequence[TrialRow], top_children: int = 5) -> Policy | None:
    """The policy `method` returns from these finished trials (None when none of them has a policy)."""
    scored = [r for r in rows if r.policy_json and r.status in ("completed", "stopped")]
    done = [r for r in scored if r.status == "completed"] or scored  # ASHA-stopped or budget-ended children
    if not done:
        return None
    ranked = sorted(done, key=search_score, reverse=True)
    if method != "rl" or top_children == 1:
        best = ranked[0]
        return Policy.from_json(best.policy_json, source=f"{method} trial {best.trial_id}")
    top = [Policy.from_json(r.policy_json, source=f"rl trial {r.trial_id}") for r in ranked[:top_children]]
    subs = [sub for policy in top for sub in policy.sub_policies]
    weight = 1.0 / len(subs)
    return Policy(tuple(SubPolicy(weight, sub.ops) for sub in subs), name=f"rl-top{len(top)}",
                  metadata={"method": "rl", "children": [r.trial_id for r in ranked[:top_children]],
                            "rule": f"top {len(top)} children's sub-policies, equal weights"})


def _seconds(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


@dataclass(frozen=True)
class Span:
    start: float
    end: float
    rate: float  # device-seconds per second while it ran (the devices it held)


def _started(rows: Sequence[TrialRow]) -> list[TrialRow]:
    """The trials that ran: one the search stopped before it made a report has no start and spent nothing."""
    return [r for r in rows if r.start_time]


def _spans(rows: Sequence[TrialRow]) -> list[Span]:
    """Each started trial's run, in seconds since the search's first trial started."""
    rows = _started(rows)
    out = []
    origin = min((_seconds(r.start_time) for r in rows), default=0.0)
    for r in rows:
        start, end = _seconds(r.start_time) - origin, _seconds(r.end_time) - origin
        length = max(end - start, 1e-9)
        out.append(Span(start, start + length, r.device_seconds / length))
    return out


def spend_at(rows: Sequence[TrialRow], t: float) -> float:
    """The search's device-seconds spent `t` seconds after its first trial started (trials running then count
    what they had used)."""
    return sum(s.rate * min(max(t - s.start, 0.0), s.end - s.start) for s in _spans(rows))


def time_at_spend(rows: Sequence[TrialRow], budget: float) -> float | None:
    """The first time (seconds after its first trial started) at which the search had spent `budget`
    device-seconds (None: it never did)."""
    spans = _spans(rows)
    if not spans or sum(s.rate * (s.end - s.start) for s in spans) < budget:
        return None
    lo, hi = min(s.start for s in spans), max(s.end for s in spans)
    for _ in range(60):  # spend is continuous and non-decreasing in t: bisect
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if spend_at(rows, mid) < budget else (lo, mid)
    return hi


def anytime_policy(method: str, rows: Sequence[TrialRow], budget: float, top_children: int = 5
                   ) -> tuple[Policy | None, list[str]]:
    """What the search would have returned had it been stopped at `budget` device-seconds, and the trials that
    rule used: its rule over the trials that had ended by then. A search that spent less than `budget` in all
    returns its final policy. None: nothing had ended yet (a DA2 search before its one trial finished)."""
    rows = _started(rows)
    t = time_at_spend(rows, budget)
    ends = [s.end for s in _spans(rows)]
    ended = list(rows) if t is None else [r for r, end in zip(rows, ends) if end <= t + 1e-6]
    policy = returned_policy(method, ended, top_children)
    return policy, [r.trial_id for r in ended]


def total_spend(rows: Sequence[TrialRow]) -> float:
    return sum(r.device_seconds for r in rows)


@dataclass(frozen=True)
class ToTarget:
    """Device-hours a method needed to reach the target final AP, or the largest budget when censored."""

    device_hours: float | None  # the first budget whose mean final AP reached the target; None: censored
    largest_budget_hours: float
    censored: bool

    def text(self) -> str:
        return f"> {self.largest_budget_hours:.4g}" if self.censored else f"{self.device_hours:.4g}"


def to_target(curve: Sequence[tuple[float, float | None]], target: float) -> ToTarget:
    """From (budget device-hours, mean final AP) pairs in increasing budget: the first budget at which the mean
    final AP reached `target`, censored ("> B", B the largest budget) when it never did."""
    points = sorted(curve)
    if not points:
        raise ValueError("to_target: no budgets")
    for hours, ap in points:
        if ap is not None and ap >= target:
            return ToTarget(hours, points[-1][0], False)
    return ToTarget(None, points[-1][0], True)
