"""`da2 search --method rl`: the RL-AutoAugment Searcher over the platform's child training."""

from __future__ import annotations

from typing import TYPE_CHECKING

from baselines.rl_autoaugment.searcher import RLAutoAugmentSearcher

if TYPE_CHECKING:
    from da2_platform.config import ExperimentConfig
    from da2_platform.search.driver import TuneJob


def make_rl_job(cfg: ExperimentConfig, data) -> TuneJob:
    from ray import tune

    from da2_platform.search.children import child_settings, child_trainable, discrete_space, search_params
    from da2_platform.search.driver import TuneJob

    sc = cfg.search.rl
    searcher = RLAutoAugmentSearcher(discrete_space(sc, cfg.search.include_flip), metric="val_ap", mode="max",
                                     batch_size=max(1, sc.concurrent), seed=cfg.seed)
    return TuneJob(
        method="rl",
        trainable=tune.with_parameters(child_trainable, settings=child_settings(cfg, data, sc, sc.child_steps)),
        param_space={},
        tune_config={"search_alg": searcher, "num_samples": sc.trials, "max_concurrent_trials": sc.concurrent,
                     "metric": "val_ap", "mode": "max", "time_budget_s": sc.time_budget_s},
        search_params=search_params(cfg, sc, controller="LSTM-100 + PPO", ppo_batch=max(1, sc.concurrent)),
        expected_trials=sc.trials,
        allow_partial=sc.time_budget_s is not None,
    )
