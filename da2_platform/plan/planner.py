"""`make_plan`: each method's device-hours and wall time before launch, from its config and the unit costs."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import ClassVar

from da2_platform.config import ExperimentConfig
from da2_platform.errors import ConfigError
from da2_platform.plan.bill import MethodPlan, Resources, price, side_by_side
from da2_platform.plan.costs import UnitCosts, data_sizes, held_per_trial
from da2_platform.plan.sources import unit_costs
from da2_platform.plan.work import DA2_METHODS, DataSizes, da2_estimator, expand_methods, work_function


@dataclass
class Plan:
    experiment: str
    config: str
    costs: UnitCosts
    sizes: DataSizes
    resources: Resources
    seeds: int  # a comparison's seeds, run one after another; method figures are per seed
    methods: list[MethodPlan]
    total: dict
    budget_device_hours: float | None = None
    budgets: list[dict] = field(default_factory=list)  # --budgets: what each multiple of DA2's cost buys
    projection: dict | None = None
    assumptions: list[str] = field(default_factory=list)

    def search_device_hours(self) -> dict[str, float]:
        """Per method, the planned search device-hours of one seed (what the report sets beside the spent)."""
        return {m.method: m.search_device_seconds / 3600 for m in self.methods}

    def to_dict(self) -> dict:
        return {"experiment": self.experiment, "config": self.config, "device": self.costs.device,
                "costs": self.costs.to_dict(), "sizes": self.sizes.__dict__,
                "resources": {"workers": self.resources.workers, "devices_per_worker": self.resources.devices},
                "seeds": self.seeds, "budget_device_hours": self.budget_device_hours,
                "methods": [m.to_dict() for m in self.methods], "total": self.total, "budgets": self.budgets,
                "projection": self.projection, "assumptions": self.assumptions}

    TABLE_COLUMNS: ClassVar[list[str]] = ["method", "search device-h", "final device-h", "wall", "at once", "what it buys"]

    def table_rows(self) -> list[list]:
        rows = [[m.method, f"{m.search_device_seconds / 3600:.4g}", f"{m.final_device_seconds / 3600:.4g}",
                 hours_minutes(m.wall_seconds), str(m.concurrent), m.buys] for m in self.methods]
        t = self.total
        label = "compare, side by side" + (f", {self.seeds} seeds" if self.seeds > 1 else "")
        rows.append([label, f"{t['search_device_hours']:.4g}", f"{t['final_device_hours']:.4g}",
                     hours_minutes(t["wall_hours"] * 3600), str(t["slots"]), ""])
        return rows


def hours_minutes(seconds: float) -> str:
    minutes = round(seconds / 60)
    return f"{minutes // 60}h{minutes % 60:02d}" if minutes >= 60 else f"{seconds / 60:.1f} min"


def make_plan(cfg: ExperimentConfig, methods: str, source: str = "auto", budget_device_hours: float | None = None,
              budgets: list[float] | None = None, workers: int = 1, devices_per_worker: float | None = None,
              seeds: list[int] | None = None, scale: str | None = None, tflops: float | None = None,
              config_label: str = "<defaults>", costs: UnitCosts | None = None,
              sizes: DataSizes | None = None, capped: set[str] | None = None, stop_at: str = "step") -> Plan:
    """The plan of `methods` on `cfg` (or, with `scale`, on the named COCO config priced from `cfg`'s costs).
    A budget caps every method, as `da2 compare` runs them (`capped` names others) and stops them within a step
    (`stop_at` "report": at the first report past it, as comparisons before the budget account ran).
    `costs` and `sizes` skip reading, measuring and counting them (tests, a caller that has them)."""
    from da2_platform.compare import seed_config

    if budget_device_hours is not None and budgets:
        raise ConfigError("da2 plan: --budgets: give --budget-device-hours or --budgets, not both")
    target, facts = cfg, None
    if scale is not None:
        from da2_platform.plan.projection import scale_config

        target, _ = scale_config(scale)
    chosen = expand_methods(methods, target)
    if budgets and not any(m in DA2_METHODS for m in chosen):
        raise ConfigError("da2 plan: --budgets: budgets are multiples of DA2's cost; add da2 or da2:score to "
                          "--methods")
    _, held = held_per_trial(target)
    if devices_per_worker is None:
        devices_per_worker = 1.0 if target.search.gpus_per_trial > 0 else float(os.cpu_count() or 1)
    resources = Resources(workers, devices_per_worker)
    resources.slots(held)  # a trial larger than a worker is a named error before anything is measured
    estimators = {da2_estimator(m) for m in chosen if m in DA2_METHODS}
    if costs is None:
        costs = unit_costs(cfg, estimators, source)
    if scale is not None:
        from da2_platform.plan.projection import project

        costs, facts = project(costs, cfg, target, scale, tflops)
    run_cfg = seed_config(target, seeds[0], len(seeds) > 1) if seeds else target
    sizes = sizes or data_sizes(target)
    works = {m: work_function(m)(run_cfg, m, sizes) for m in chosen}
    capped = set(chosen) if capped is None else set(capped)
    plans: dict[str, MethodPlan] = {}
    budget_rows: list[dict] = []
    if budgets:
        reference = max(price(works[m], costs, sizes, resources).unbudgeted_device_seconds
                        for m in chosen if m in DA2_METHODS)
        levels = sorted(set(budgets))
        for m, w in works.items():
            if m in capped:
                full = price(w, costs, sizes, resources).unbudgeted_device_seconds
                distinct = min(len(levels), sum(1 for b in levels if b * reference < full) + 1)
                plans[m] = price(w, costs, sizes, resources, levels[-1] * reference, distinct, stop_at)
            else:
                plans[m] = price(w, costs, sizes, resources)
        for b in levels:
            at = {m: price(works[m], costs, sizes, resources, b * reference if m in capped else None,
                           stop_at=stop_at) for m in chosen}
            budget_rows.append({"multiple": b, "device_hours": b * reference / 3600,
                                "methods": {m: {"search_device_hours": p.search_device_seconds / 3600,
                                                "bought": p.bought, "asked": p.asked, "unit": p.unit}
                                            for m, p in at.items()}})
    else:
        budget_s = None if budget_device_hours is None else budget_device_hours * 3600
        plans = {m: price(w, costs, sizes, resources, budget_s if m in capped else None, stop_at=stop_at)
                 for m, w in works.items()}
    method_plans = [plans[m] for m in chosen]
    total = side_by_side(method_plans, held, resources, run_cfg.search.rl.concurrent, len(seeds or [0]))
    plan = Plan(target.name, config_label if scale is None else f"{config_label} -> {scale}", costs, sizes,
                resources, len(seeds or [0]), method_plans, total, budget_device_hours, budget_rows, facts)
    plan.assumptions = assumptions(plan, capped, run_cfg, stop_at)
    return plan


def assumptions(plan: Plan, capped: set[str], cfg: ExperimentConfig, stop_at: str = "step") -> list[str]:
    c, r = plan.costs, plan.resources
    steps = ", ".join(f"DA2 {e} {s:.3g} s ({s / c.train_step:.2f}x)" for e, s in sorted(c.da2_step.items()))
    units = (f"per step with setup and evaluations spread in: plain {c.train_step:.3g} s"
             + (f", final training {c.final_step:.3g} s" if c.final_step is not None else "")
             if c.amortized else
             f"plain step {c.train_step:.3g} s, setup {c.setup:.3g} s (DA2 {c.da2_setup:.3g} s), evaluation "
             f"{c.eval_crop * 1000:.3g} ms a crop, checkpoint {c.checkpoint:.3g} s")
    out = [f"costs ({c.source}), device-seconds on {c.device}: {units}" + (f"; {steps}" if steps else ""),
           *c.notes,
           (f"data: train {plan.sizes.train}, search-train {plan.sizes.search_train}, search-val "
           f"{plan.sizes.search_val}, val {plan.sizes.val} crops ({plan.sizes.source})"),
           (f"workers: {r.workers} x {r.devices:g} device(s), a trial holds {c.devices_held:g}: {plan.total['slots']} "
           "trial(s) at once"),
           (f"final trainings: {cfg.train.epochs} epochs of the full train split, scored on val, "
           f"{max(1, cfg.search.rl.concurrent)} at once")]
    if plan.budget_device_hours is not None or plan.budgets:
        rule = ("it is checked at reports, so a capped search spends it and half a report's cost more on average"
                if stop_at == "report" else "a capped search stops within a step of it: it spends the budget and "
                "half a step per running trial more on average")
        out.append(f"a budget caps {', '.join(sorted(capped))}; {rule}")
    if plan.budgets:
        out.append("--budgets: multiples of the costlier DA2 method's planned cost; a capped method's anytime policy "
                   "is retrained at each budget where it can differ")
    if plan.seeds > 1:
        out.append(f"figures per method are per seed; the comparison runs its {plan.seeds} seeds one after "
                   "another (one DA2 trial per seed)")
    if plan.projection:
        out.extend(plan.projection["assumptions"])
    return out

