"""Fixed policies as a "search" of one child: the same child training, scored the same way, for the comparison."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from search_spaces.fixed import fixed_policy

if TYPE_CHECKING:
    from da2_platform.config import ExperimentConfig
    from da2_platform.search.driver import TuneJob


def make_fixed_job(name: str) -> Callable[[ExperimentConfig, object], TuneJob]:
    """`da2 search --method fixed:NAME`: one child with the named policy, trained as long as an RL child."""
    policy = fixed_policy(name)  # an unknown name fails now, before any compute

    def make(cfg: ExperimentConfig, data) -> TuneJob:
        from ray import tune

        from da2_platform.search.children import child_settings, child_trainable, search_params
        from da2_platform.search.driver import TuneJob

        steps = cfg.search.rl.child_steps
        return TuneJob(
            method=f"fixed:{name}",
            trainable=tune.with_parameters(child_trainable, settings=child_settings(cfg, data, None, steps)),
            param_space={"policy_json": policy.to_json()},
            tune_config={"num_samples": 1},
            search_params=search_params(cfg, None, policy=name, child_steps=steps),
        )
    return make
