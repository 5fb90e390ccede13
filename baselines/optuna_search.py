"""TPE over the discrete pose space through Ray Tune's OptunaSearch, with ASHA stopping weak children early.

Op types are unordered (a categorical choice); probability and magnitude bins are ordered integers
(`tune.randint`, which OptunaSearch hands TPE as an `IntDistribution`), so TPE models "bin 3 is near bin 4".
The decision domains travel in the Tuner's param_space, so constants for the children can sit beside them:

    space = DiscreteSpace()
    Tuner(trainable, param_space={**optuna_param_space(space), "epochs": 4},
          tune_config=TuneConfig(search_alg=make_optuna_search(space, seed=0), scheduler=make_asha(max_t=4)))

Children receive the decision keys only and rebuild the policy: space.to_policy(space.from_config(config)).
Metric and mode live in the searcher and the scheduler; do not pass them to TuneConfig as well.
"""

from __future__ import annotations

from ray import tune
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search.optuna import OptunaSearch

from search_spaces.discrete import DiscreteSpace


def optuna_param_space(space: DiscreteSpace) -> dict:
    """{decision name: domain} in the space's flat order: op types categorical, p and m bins ordered integers."""
    types, prob_bins, mag_bins = space.decisions_per_op()
    domains = (tune.choice(list(range(types))), tune.randint(0, prob_bins), tune.randint(0, mag_bins))
    return {name: domains[index % 3] for index, name in enumerate(space.param_names())}


def startup_trials(trials: int, given: int | None = None) -> int:
    """TPE's random start-up trials: `given`, or a third of the trials the search can afford (at most Optuna's
    default 10, at least 1), so that TPE itself proposes most of them."""
    if given is not None:
        return given
    return max(1, min(10, trials // 3))


def make_optuna_search(space: DiscreteSpace, seed: int, metric: str = "val_ap", mode: str = "max",
                       n_startup_trials: int = 10, points_to_evaluate: list[dict] | None = None) -> OptunaSearch:
    """OptunaSearch with a seeded TPE sampler; the domains come from `optuna_param_space(space)` in the Tuner.

    `points_to_evaluate` (decision configs, as `space.to_config` writes them) are tried first, in order.
    """
    import optuna  # imported here: only this builder needs optuna's own classes

    sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=n_startup_trials)
    study_name = f"discrete-{space.num_sub_policies}x{space.ops_per_sub_policy}-{len(space.op_names)}ops"
    return OptunaSearch(metric=metric, mode=mode, sampler=sampler, study_name=study_name,
                        points_to_evaluate=points_to_evaluate)


def make_asha(metric: str = "val_ap", mode: str = "max", max_t: int = 10, grace_period: int = 1,
              reduction_factor: int = 2) -> ASHAScheduler:
    """ASHA on training_iteration (one report per evaluation point): rungs at grace_period * reduction_factor^k."""
    return ASHAScheduler(time_attr="training_iteration", metric=metric, mode=mode, max_t=max_t,
                         grace_period=grace_period, reduction_factor=reduction_factor)
