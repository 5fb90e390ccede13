"""The search methods by their CLI names, and the `SearchSpec` each hands the driver.

`spec_builder(method)` is the one place a method name becomes code. Each builder joins a method's algorithm
(DA2's trial in `da2_platform.search.da2`; the Searchers and schedulers in `baselines/`, which know nothing of
the platform) to the platform's trials (`da2_platform.search.children`), so imports point one way:
da2_platform -> baselines -> search_spaces.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable

from da2_platform.config import ExperimentConfig
from da2_platform.data.splits import ExperimentData
from da2_platform.errors import ConfigError
from da2_platform.search.spec import SearchSpec
from search_spaces.fixed import fixed_policy

METHODS = ("da2", "da2:score", "rl", "optuna", "pba", "fixed:NAME")

SpecBuilder = Callable[[ExperimentConfig, ExperimentData], SearchSpec]


def spec_builder(method: str) -> SpecBuilder:
    """The builder `(cfg, data) -> SearchSpec` of a method; an unknown method or fixed policy fails here."""
    if method in ("da2", "da2:score"):  # the paper's relaxed estimator, and the score-function variant
        return functools.partial(da2_spec, method=method)
    builders = {"rl": rl_spec, "optuna": optuna_spec, "pba": pba_spec}
    if method in builders:
        return builders[method]
    if method.startswith("fixed:"):
        return fixed_spec(method.removeprefix("fixed:"))  # an unknown name raises PolicyError now
    raise ConfigError(f"--method: unknown method {method!r}; use one of {', '.join(METHODS)}")


# each builder imports its method's modules itself: naming one method (the CLI checks --method) loads only it

def da2_spec(cfg: ExperimentConfig, data: ExperimentData, method: str = "da2") -> SearchSpec:
    """`da2 search --method da2` (the paper's relaxed estimator) or `--method da2:score` (the score-function
    variant): one DA2 trial per seed."""
    from ray import tune

    from da2_platform.search.curves import plot_policy_curves
    from da2_platform.search.da2 import STATE_FILE, da2_method_config, da2_trainable
    from da2_platform.search.trial import trial_settings

    cfg = da2_method_config(cfg, method)
    sc = cfg.search.da2

    def artifacts(results: list[dict]) -> dict[str, bytes]:
        files = {}
        for r in results:
            curves = r["metrics"].get("curves_json")
            if curves:
                seed = r["config"].get("seed")
                files[f"curves/seed{seed}.json"] = curves.encode()
                files[f"curves/seed{seed}.png"] = plot_policy_curves(json.loads(curves))
        return files

    settings = trial_settings(cfg, data)
    if sc.one_pass:
        settings.update(holdout_annotations=str(data.val_annotations), holdout_images=str(data.val_images))
    return SearchSpec(
        method=method,
        trainable=tune.with_parameters(da2_trainable, settings=settings),
        param_space={"seed": tune.grid_search(list(sc.seeds))},
        tune_config={"max_concurrent_trials": max(1, len(sc.seeds))},
        search_params={**sc.model_dump(mode="json"), "model": cfg.model.preset or cfg.model.backbone,
                       "input_size": "x".join(map(str, cfg.data.input_size)), "batch_size": cfg.train.batch_size},
        artifacts=artifacts,
        expected_trials=len(sc.seeds),
        model_file=STATE_FILE if sc.one_pass else None,
    )


def rl_spec(cfg: ExperimentConfig, data: ExperimentData) -> SearchSpec:
    """`da2 search --method rl`: the RL-AutoAugment Searcher over the platform's child training."""
    from ray import tune

    from baselines.rl_autoaugment.searcher import RLAutoAugmentSearcher
    from da2_platform.search.children import child_settings, child_trainable, discrete_space, search_params

    sc = cfg.search.rl
    # one PPO step per `ppo_batch` rewards, independent of how many children run at once
    searcher = RLAutoAugmentSearcher(discrete_space(sc, cfg.search.include_flip), metric="val_ap", mode="max",
                                     batch_size=sc.ppo_batch, seed=cfg.seed)
    return SearchSpec(
        method="rl",
        trainable=tune.with_parameters(child_trainable, settings=child_settings(cfg, data, sc, sc.child_steps)),
        param_space={},
        tune_config={"search_alg": searcher, "num_samples": sc.trials, "max_concurrent_trials": sc.concurrent,
                     "metric": "val_ap", "mode": "max", "time_budget_s": sc.time_budget_s},
        search_params=search_params(cfg, sc, controller="LSTM-100 + PPO"),
        expected_trials=sc.trials,
        allow_partial=sc.time_budget_s is not None,
    )


def optuna_spec(cfg: ExperimentConfig, data: ExperimentData) -> SearchSpec:
    """`da2 search --method optuna`: TPE + ASHA over the platform's child training."""
    from ray import tune

    from baselines.optuna_search import make_asha, make_optuna_search, optuna_param_space, startup_trials
    from da2_platform.search.children import child_settings, child_trainable, discrete_space, search_params

    sc = cfg.search.optuna
    space = discrete_space(sc, cfg.search.include_flip)
    startup = startup_trials(sc.trials, sc.startup_trials)
    return SearchSpec(
        method="optuna",
        trainable=tune.with_parameters(child_trainable, settings=child_settings(cfg, data, sc, sc.child_steps)),
        param_space=optuna_param_space(space),
        tune_config={"search_alg": make_optuna_search(space, seed=cfg.seed, n_startup_trials=startup),
                     "num_samples": sc.trials, "max_concurrent_trials": sc.concurrent,
                     "time_budget_s": sc.time_budget_s,
                     # rungs at evaluations 1, 2, 4, ... below sc.evals: at least two with the default 4
                     "scheduler": make_asha(max_t=sc.evals, grace_period=1, reduction_factor=2)},
        search_params=search_params(cfg, sc, sampler="TPE", scheduler="ASHA", bins="ordered integers",
                                    n_startup_trials=startup),
        expected_trials=sc.trials,
        allow_partial=True,  # ASHA stops weak children before they complete
    )


def pba_spec(cfg: ExperimentConfig, data: ExperimentData) -> SearchSpec:
    """`da2 search --method pba`: PBT with PBA's explore over the platform's child training."""
    from ray import tune

    from baselines.pba import best_schedule, make_pba
    from da2_platform.search.children import child_settings, child_trainable, discrete_space, search_params

    sc = cfg.search.pba
    pbt, start = make_pba(discrete_space(sc, cfg.search.include_flip), seed=cfg.seed,
                          perturbation_interval=sc.perturbation_interval)

    def artifacts(results: list[dict]) -> dict[str, bytes]:
        schedule = best_schedule(results)
        return {"policy/schedule.json": schedule.encode()} if schedule else {}

    return SearchSpec(
        method="pba",
        trainable=tune.with_parameters(child_trainable, settings=child_settings(cfg, data, sc, sc.child_steps)),
        param_space=start,
        tune_config={"scheduler": pbt, "num_samples": sc.trials, "max_concurrent_trials": sc.concurrent,
                     "time_budget_s": sc.time_budget_s},
        search_params=search_params(cfg, sc, scheduler="PopulationBasedTraining", explore="PBA (resample 0.2, "
                                    "shift p/m by 0-3 bins)", perturbation_interval=sc.perturbation_interval),
        artifacts=artifacts,
        keep_checkpoints=None,
        expected_trials=sc.trials,
        allow_partial=sc.time_budget_s is not None,
    )


def fixed_spec(name: str) -> SpecBuilder:
    """`da2 search --method fixed:NAME`: one child with the named policy, trained as long as an RL child."""
    policy = fixed_policy(name)  # an unknown name fails now, before any compute

    def build(cfg: ExperimentConfig, data: ExperimentData) -> SearchSpec:
        from ray import tune

        from da2_platform.search.children import child_settings, child_trainable, search_params

        steps = cfg.search.rl.child_steps
        return SearchSpec(
            method=f"fixed:{name}",
            trainable=tune.with_parameters(child_trainable, settings=child_settings(cfg, data, None, steps)),
            param_space={"policy_json": policy.to_json()},
            tune_config={"num_samples": 1},
            search_params=search_params(cfg, None, policy=name, child_steps=steps),
        )
    build.__qualname__ = f"fixed_spec.{name}"
    return build
