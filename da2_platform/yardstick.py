"""The comparison's yardstick: final AP at equal budgets, and censored device-hours to a common target.

Every method searches under one budget in the ledger's device-seconds. At cumulative budgets of 1x, 3x, 10x, 30x
the costlier DA2 method's measured search cost (or absolute device-hours), each method's anytime policy (what it
would have returned had it been stopped then, `search.anytime`) is retrained with the final recipe and scored on
val; those trainings cost no search. A method that finished before a budget keeps its final policy there; one that
had returned nothing yet (a DA2 search still running) has no AP there. Per method and budget: the mean and std of
final AP over seeds. The common target is the best DA2 method's final AP at 1x minus 0.005; each method's
device-hours to reach it is the first budget whose mean final AP reaches it, written "> B" (censored at the
largest budget B) when none does; never a method's distance to its own best.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from da2_platform.search.anytime import ToTarget, to_target

DA2_METHODS = ("da2", "da2:score")
TARGET_MARGIN = 0.005  # the target is DA2's final AP minus this (half an AP point)


@dataclass(frozen=True)
class Budget:
    multiple: float | None  # of the costlier DA2 method's search cost; None for an absolute budget
    device_seconds: float

    @property
    def device_hours(self) -> float:
        return self.device_seconds / 3600


def budgets_from(multiples: Sequence[float] | None, da2_cost_s: float | None,
                 device_hours: Sequence[float] | None = None) -> list[Budget]:
    """The budgets of a comparison: multiples of DA2's measured cost, or absolute device-hours."""
    if device_hours:
        return [Budget(None, h * 3600) for h in sorted(device_hours)]
    if not multiples:
        raise ValueError("budgets: give multiples of DA2's cost or absolute device-hours")
    if da2_cost_s is None or da2_cost_s <= 0:
        raise ValueError("budgets: multiples of DA2's cost need a measured DA2 search (none ran)")
    return [Budget(float(m), float(m) * da2_cost_s) for m in sorted(multiples)]


def da2_unit_cost(costs: dict[str, float]) -> float | None:
    """The unit of the multiples: the costlier DA2 method's search device-seconds (of those that ran).

    So every DA2 method has its policy at 1x, and the baselines get the larger of the two budgets: the unit that
    is harder on DA2's claims."""
    found = [costs[m] for m in DA2_METHODS if costs.get(m)]
    return max(found) if found else None


def _round4(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def _mean_std(values: Sequence[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def paired_gaps(budgets: Sequence[Budget], final_ap: dict[str, list[list[float | None]]],
                seeds_at: Sequence[Sequence[int]]) -> dict:
    """Per DA2 method and other method: per seed, the DA2 method's final AP at the first budget minus the other's
    at each budget; the mean, std and count over the seeds where both have an AP.

    Seed by seed, so the spread the seeds share (data draw, init) cancels: "DA2 at 1x against RL at 3x" as a
    paired difference, not two means with their own spreads. `seeds_at[b]` names the seeds of `final_ap[m][b]`."""
    out: dict = {"rule": "per seed: the DA2 method's final AP at the first budget minus the method's at the "
                         "budget; mean, std and n over the seeds where both have one"}
    for da2 in [m for m in DA2_METHODS if m in final_ap]:
        first = dict(zip(seeds_at[0], final_ap[da2][0]))
        rows: dict = {}
        for method in [m for m in final_ap if m not in DA2_METHODS]:
            rows[method] = []
            for b, budget in enumerate(budgets):
                gaps = [first[s] - v for s, v in zip(seeds_at[b], final_ap[method][b])
                        if v is not None and first.get(s) is not None]
                mean, std = _mean_std(gaps)
                rows[method].append({"multiple": budget.multiple, "mean": _round4(mean), "std": _round4(std),
                                     "n": len(gaps)})
        out[da2] = rows
    return out


def yardstick_report(budgets: Sequence[Budget], final_ap: dict[str, list[list[float | None]]],
                     seeds: Sequence[int], seeds_at: Sequence[Sequence[int]] | None = None) -> dict:
    """The report's `budgets`, `to_target` and `paired` sections.

    `final_ap[method][b]` holds the final APs over seeds at budget b (None where the method had returned nothing
    yet at that budget on that seed); `seeds_at[b]` names those seeds when a budget ran at fewer of them (default:
    `seeds` at every budget)."""
    seeds_at = seeds_at if seeds_at is not None else [list(seeds)] * len(budgets)
    rows = []
    means: dict[str, list[float | None]] = {m: [] for m in final_ap}
    for b, budget in enumerate(budgets):
        methods = {}
        for method, per_budget in final_ap.items():
            values = [v for v in per_budget[b] if v is not None]
            complete = len(values) == len(per_budget[b]) and values
            mean, std = _mean_std(values) if complete else (None, None)
            means[method].append(mean)
            methods[method] = {"final_ap_mean": _round4(mean), "final_ap_std": _round4(std),
                               "per_seed": per_budget[b]}
        rows.append({"multiple": budget.multiple, "device_hours": round(budget.device_hours, 6),
                     "methods": methods})
    da2_at_1 = [means[m][0] for m in DA2_METHODS if m in means and means[m] and means[m][0] is not None]
    to = {"target_ap": None, "methods": {}, "rule": f"best DA2 method's mean final AP at the first budget minus "
                                                  f"{TARGET_MARGIN}; censored at the largest budget"}
    if da2_at_1:
        target = max(da2_at_1) - TARGET_MARGIN
        to["target_ap"] = round(target, 4)
        reference = None
        reached: dict[str, ToTarget] = {}
        for method in final_ap:
            reached[method] = to_target([(b.device_hours, means[method][i]) for i, b in enumerate(budgets)], target)
        da2_hours = [reached[m].device_hours for m in DA2_METHODS if m in reached and not reached[m].censored]
        reference = min(da2_hours) if da2_hours else None
        for method, hit in reached.items():
            hours = hit.device_hours if not hit.censored else hit.largest_budget_hours
            ratio = None if reference is None or reference <= 0 else hours / reference
            to["methods"][method] = {"device_hours": None if hit.censored else round(hit.device_hours, 6),
                                     "ratio_to_da2": None if ratio is None else round(ratio, 2),
                                     "censored": hit.censored, "text": hit.text()}
    return {"seeds": list(seeds), "budgets": rows, "to_target": to,
            "paired": paired_gaps(budgets, final_ap, seeds_at)}
