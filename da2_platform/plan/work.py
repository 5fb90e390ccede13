"""What each method's search does, read off its config section: trials, steps, evaluations, concurrency.

`WORK` is the plan's one table: method -> the function that turns a config into the trials that method runs.
A method's setting that changes its work (its evaluations per child, ASHA's rungs, PBA's perturbation interval)
is read in its function only; a new method is a new row. The functions count work; `plan.bill` prices it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

from da2_platform.config import DiscreteSearchConfig, ExperimentConfig
from da2_platform.errors import ConfigError
from da2_platform.search.children import EVALS_PER_CHILD
from da2_platform.search.da2 import DA2_METHODS as DA2_ESTIMATORS

# ASHA as search/methods.py builds it for Optuna: rungs at grace_period * reduction_factor^k evaluations
ASHA_GRACE_PERIOD, ASHA_REDUCTION_FACTOR = 1, 2
# PBT as baselines/pba.py builds it: the bottom quarter restarts from a top trial's checkpoint at each perturbation
PBT_QUANTILE = 0.25
DA2_METHODS = tuple(DA2_ESTIMATORS)
METHOD_NAMES = ("da2", "da2:score", "rl", "optuna", "pba", "fixed", "fixed:NAME")


@dataclass(frozen=True)
class DataSizes:
    """Crops of each data role (one crop per person) and where the counts come from."""

    train: int  # the full train split (final trainings)
    search_train: int  # what searches train on
    search_val: int  # what searches score on
    val: int  # what final trainings are scored on
    source: str

    def crops(self, split: str) -> int:
        return getattr(self, split)


@dataclass(frozen=True)
class TrialWork:
    """`count` trials of one kind (an expected count where early stopping ends some), each of `steps` steps and
    `evals` evaluations per split; `restarts` extra setups per trial (PBT's exploits), `reports` checkpointed
    reports per trial, and the steps between two reports (where today's budget check happens)."""

    kind: str  # "child", "final" or "da2:<estimator>"
    count: float
    steps: float
    evals: dict[str, float]  # split -> evaluations per trial
    reports: float
    report_steps: int
    restarts: float = 0.0


@dataclass(frozen=True)
class MethodWork:
    method: str
    search: TrialWork
    final: TrialWork | None  # compare's fresh training with the method's policy (None: one-pass DA2)
    concurrent: int  # trials at once, as the search runs them
    unit: str  # what a budget buys: "children" or "steps"
    notes: list[str] = field(default_factory=list)


def steps_per_epoch(crops: int, cfg: ExperimentConfig) -> int:
    """Batches of one epoch as `training.loop.epoch_loader` deals them (drop_last once there is a full batch)."""
    batch = cfg.train.batch_size
    batches = crops // batch if crops >= batch else 1
    return min(cfg.train.max_steps_per_epoch or batches, batches)


def da2_estimator(method: str) -> str:
    """The d estimator a DA2 method's search runs: `da2` the paper's relaxed one, `da2:score` the score variant."""
    return DA2_ESTIMATORS[method]


def final_work(cfg: ExperimentConfig, sizes: DataSizes) -> TrialWork:
    """compare's final training: cfg.train.epochs epochs of the full train split, scored once on val."""
    steps = cfg.train.epochs * steps_per_epoch(sizes.train, cfg)
    return TrialWork("final", 1, steps, {"val": 1}, reports=1, report_steps=steps)


def _children(sc: DiscreteSearchConfig, count: float, evals: int, reached: float, steps: float,
              **extra) -> TrialWork:
    """`count` children of `sc.child_steps` steps scored `evals` times, of which they reach `reached` (and
    `steps` steps) on average."""
    every = max(1, sc.child_steps // evals)
    return TrialWork("child", count, steps, {"search_val": reached}, reports=reached, report_steps=every, **extra)


def rl_work(cfg: ExperimentConfig, method: str, sizes: DataSizes) -> MethodWork:
    sc = cfg.search.rl
    return MethodWork(method, _children(sc, sc.trials, sc.evals, sc.evals, sc.child_steps), final_work(cfg, sizes),
                      sc.concurrent, "children")


def asha_expected_evals(evals: int, grace: int = ASHA_GRACE_PERIOD, rf: int = ASHA_REDUCTION_FACTOR) -> float:
    """Evaluations a trial reaches on average under ASHA: past each rung below the last evaluation a fraction
    1/rf goes on (ASHA keeps the top 1/rf of the results recorded at the rung)."""
    rungs = [grace * rf**k for k in range(64) if grace * rf**k < evals]
    return sum(rf ** -sum(1 for r in rungs if r < t) for t in range(1, evals + 1))


def optuna_work(cfg: ExperimentConfig, method: str, sizes: DataSizes) -> MethodWork:
    sc = cfg.search.optuna
    reached = asha_expected_evals(sc.evals)
    steps = sc.child_steps * reached / sc.evals
    return MethodWork(method, _children(sc, sc.trials, sc.evals, reached, steps), final_work(cfg, sizes),
                      sc.concurrent, "children", [(f"ASHA: a child reaches {reached:g} of {sc.evals} evaluations on "
                                                  "average")])


def pba_work(cfg: ExperimentConfig, method: str, sizes: DataSizes) -> MethodWork:
    sc = cfg.search.pba
    perturbations = max(0, sc.evals - 1) // sc.perturbation_interval  # none at the last: the stopper ends it
    restarts = PBT_QUANTILE * perturbations
    return MethodWork(method, _children(sc, sc.trials, sc.evals, sc.evals, sc.child_steps, restarts=restarts),
                      final_work(cfg, sizes), sc.concurrent, "children",
                      [f"PBT: {restarts:g} restarts per child from an exploited checkpoint"])


def fixed_work(cfg: ExperimentConfig, method: str, sizes: DataSizes) -> MethodWork:
    sc = cfg.search.rl  # a fixed policy trains one child as long as an RL child, scored as often as the default
    return MethodWork(method, _children(sc, 1, EVALS_PER_CHILD, EVALS_PER_CHILD, sc.child_steps),
                      final_work(cfg, sizes), 1, "children")


def da2_work(cfg: ExperimentConfig, method: str, sizes: DataSizes) -> MethodWork:
    """One trial per seed, all at once; in one-pass mode the final training's schedule and no final training."""
    sc = cfg.search.da2
    estimator = da2_estimator(method)
    steps = cfg.train.epochs * steps_per_epoch(sizes.search_train, cfg) if sc.one_pass else sc.steps
    evals = {"search_val": 1, **({"val": 1} if sc.one_pass else {})}
    reports = math.ceil(steps / sc.checkpoint_every)
    search = TrialWork(f"da2:{estimator}", len(sc.seeds), steps, evals, reports, min(sc.checkpoint_every, steps))
    final = None if sc.one_pass else final_work(cfg, sizes)
    return MethodWork(method, search, final, len(sc.seeds), "steps", [f"estimator {estimator}"])


WorkFunction = Callable[[ExperimentConfig, str, DataSizes], MethodWork]
WORK: dict[str, WorkFunction] = {"da2": da2_work, "da2:score": da2_work, "rl": rl_work, "optuna": optuna_work,
                                 "pba": pba_work, "fixed:": fixed_work}


def work_function(method: str) -> WorkFunction:
    return WORK["fixed:" if method.startswith("fixed:") else method]


def expand_methods(text: str, cfg: ExperimentConfig, option: str = "--methods") -> list[str]:
    """'da2,rl,fixed' -> the method names, `fixed` standing for every fixed policy the config names; an unknown
    name is a ConfigError naming the option."""
    from search_spaces.fixed import fixed_policy
    from search_spaces.policy import PolicyError

    names = [m.strip() for m in text.split(",") if m.strip()]
    if not names:
        raise ConfigError(f"da2 plan: {option}: no method given; use some of {', '.join(METHOD_NAMES)}")
    out: list[str] = []
    for name in names:
        if name == "fixed":
            out.extend(f"fixed:{f}" for f in cfg.search.fixed)
        elif name.startswith("fixed:"):
            try:
                fixed_policy(name.removeprefix("fixed:"))
            except PolicyError as e:
                raise ConfigError(f"da2 plan: {option}: {name}: {e}") from None
            out.append(name)
        elif name in WORK:
            out.append(name)
        else:
            raise ConfigError(f"da2 plan: {option}: unknown method {name!r}; use one of {', '.join(METHOD_NAMES)}")
    return list(dict.fromkeys(out))
