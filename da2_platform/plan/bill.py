"""The plan's arithmetic: each method's work (`plan.work`) priced with unit costs (`plan.costs`).

Per trial: setup x (1 + restarts) + steps x the step's cost + evaluations x crops x the cost of a crop + reports x
a checkpoint. A search costs its trials together; under a budget it stops within one step of it (the platform's
budget account: each trial running then ends with its step), so it spends the budget and on average half a step
per running trial more. Wall time: a search runs min(its concurrency, the trials the workers can hold) trials at
once, and lasts no less than its longest trial. A comparison runs the searches side by side on the same workers, then the final trainings, one
seed after another.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from da2_platform.errors import ConfigError
from da2_platform.plan.costs import UnitCosts
from da2_platform.plan.work import DataSizes, MethodWork, TrialWork


@dataclass(frozen=True)
class Resources:
    """The workers a plan runs on: `devices` per worker are GPUs, or CPUs where trials hold no GPU."""

    workers: int
    devices: float

    def slots(self, held: float) -> int:
        """Trials that run at once."""
        per_worker = math.floor(self.devices / held + 1e-9)
        if per_worker < 1:
            raise ConfigError(f"da2 plan: --gpus-per-worker: a trial holds {held:g} device(s) "
                              f"(search.gpus_per_trial or search.cpus_per_trial) but a worker has {self.devices:g}")
        return self.workers * per_worker


@dataclass
class MethodPlan:
    method: str
    unit: str  # what a budget buys: children or steps (per trial)
    asked: float  # the children or steps the config asks for
    bought: float  # what the search gets within its budget
    trials: float  # expected trials that start
    concurrent: int
    search_device_seconds: float
    unbudgeted_device_seconds: float
    final_device_seconds: float
    finals: int  # final trainings (compare retrains the anytime policy at each budget it can differ)
    wall_seconds: float  # the search alone on the workers
    final_wall_seconds: float
    budget_device_seconds: float | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def buys(self) -> str:
        what = "children" if self.unit == "children" else "DA2 steps"
        return f"{count(self.bought)} of {count(self.asked)} {what}"

    def to_dict(self) -> dict:
        out = asdict(self)
        out.update(search_device_hours=self.search_device_seconds / 3600,
                   final_device_hours=self.final_device_seconds / 3600, wall_hours=self.wall_seconds / 3600,
                   buys=self.buys)
        return out


def count(value: float) -> str:
    """3.83, 42.5, 1,000, 20,000: a count as a reader takes it in."""
    return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"


def trial_cost(trial: TrialWork, costs: UnitCosts, sizes: DataSizes) -> float:
    """Device-seconds of one trial of `trial`'s kind."""
    setup = costs.da2_setup if trial.kind.startswith("da2:") else costs.setup
    evals = sum(n * sizes.crops(split) * costs.eval_crop for split, n in trial.evals.items())
    return (setup * (1 + trial.restarts) + trial.steps * costs.step(trial.kind) + evals
            + trial.reports * costs.checkpoint)


def report_cost(trial: TrialWork, costs: UnitCosts, sizes: DataSizes) -> float:
    """Device-seconds between two reports of a trial."""
    evals = sum(n * sizes.crops(split) for split, n in trial.evals.items()) / max(1.0, trial.reports)
    return trial.report_steps * costs.step(trial.kind) + evals * costs.eval_crop + costs.checkpoint


STOP_RULES = ("step", "report")


def overshoot(trial: TrialWork, costs: UnitCosts, sizes: DataSizes, concurrent: int, stop_at: str = "step"
              ) -> float:
    """What a capped search spends past its budget on average. `step` (the platform's budget account): each trial
    running when the budget is spent ends with the step it is in, half a step on average. `report` (before the
    account, as comparisons recorded until then ran): the first report past the budget, half a report's cost."""
    if stop_at == "report":
        return report_cost(trial, costs, sizes) / 2
    return concurrent * costs.step(trial.kind) / 2


def price(work: MethodWork, costs: UnitCosts, sizes: DataSizes, resources: Resources,
          budget_s: float | None = None, finals: int = 1, stop_at: str = "step") -> MethodPlan:
    """One method's search (capped at `budget_s` device-seconds when given) and its `finals` final trainings."""
    search, held = work.search, costs.devices_held
    per_trial = trial_cost(search, costs, sizes)
    full = search.count * per_trial
    asked = search.count if work.unit == "children" else search.steps
    spent, bought, trials = full, asked, search.count
    running = max(1, min(work.concurrent, resources.slots(held), math.ceil(search.count)))
    if budget_s is not None and full > budget_s:
        spent = min(full, budget_s + overshoot(search, costs, sizes, running, stop_at))
        if work.unit == "children":
            bought = trials = min(search.count, budget_s / per_trial)
            trials = min(search.count, math.ceil(trials) + max(0, work.concurrent - 1))  # the ones running when stopped
        else:
            fixed = per_trial - search.steps * costs.step(search.kind)
            bought = min(search.steps, max(0.0, (budget_s / search.count - fixed) / costs.step(search.kind)))
    concurrent = max(1, min(work.concurrent, resources.slots(held), math.ceil(trials)))
    wall = max(min(per_trial, spent) / held, spent / held / concurrent)
    final_s = trial_cost(work.final, costs, sizes) if work.final is not None else 0.0
    return MethodPlan(work.method, work.unit, asked, bought, trials, concurrent, spent, full, final_s * finals,
                      finals if work.final is not None else 0, wall, final_s / held, budget_s, list(work.notes))


def side_by_side(plans: list[MethodPlan], held: float, resources: Resources, final_concurrency: int,
                 seeds: int = 1) -> dict:
    """A comparison of `plans` on the workers: the searches at once, then the final trainings; per seed in turn."""
    slots = resources.slots(held)
    search_s = sum(p.search_device_seconds for p in plans)
    final_s = sum(p.final_device_seconds for p in plans)
    searches_wall = max([p.wall_seconds for p in plans] + [search_s / held / slots])
    finals_wall = max([p.final_wall_seconds for p in plans if p.finals]
                      + [final_s / held / max(1, min(slots, final_concurrency))])
    return {"search_device_hours": search_s * seeds / 3600, "final_device_hours": final_s * seeds / 3600,
            "device_hours": (search_s + final_s) * seeds / 3600,
            "wall_hours": (searches_wall + finals_wall) * seeds / 3600, "slots": slots, "seeds": seeds}
