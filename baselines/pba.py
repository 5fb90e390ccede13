"""Population Based Augmentation: Ray Tune's PopulationBasedTraining over the discrete pose space.

A population of children trains side by side; at every report the bottom quarter copies the weights and the
policy of a top-quarter child (exploit) and perturbs the policy's decisions (explore). What PBA learns is a
schedule: the policy each child used from each step on. Children record it and report it as `schedule_json`.

    space = DiscreteSpace()
    pbt, start = make_pba(space, seed=0)
    Tuner(trainable, param_space=start, tune_config=TuneConfig(scheduler=pbt, num_samples=16))

The trainable must checkpoint at every report and restore from the checkpoint PBT hands it (exploit).
"""

from __future__ import annotations

import json
import random

import torch
from ray import tune
from ray.tune.schedulers import PopulationBasedTraining

from search_spaces.discrete import DiscreteSpace


def pba_mutations(space: DiscreteSpace) -> dict[str, list[int]]:
    """{decision name: its choices} in the space's flat order (op type, p bin, m bin per op)."""
    sizes = space.decisions_per_op()
    return {name: list(range(sizes[index % 3])) for index, name in enumerate(space.param_names())}


def make_pba(space: DiscreteSpace, seed: int, metric: str = "val_ap", mode: str = "max",
             resample_probability: float = 0.2, quantile_fraction: float = 0.25
             ) -> tuple[PopulationBasedTraining, dict]:
    """The PBT scheduler and the Tuner's param_space of seeded random starting decisions."""
    mutations = pba_mutations(space)
    random.seed(seed)  # PBT explores with Python's global `random`; it takes no seed of its own
    pbt = PopulationBasedTraining(time_attr="training_iteration", metric=metric, mode=mode,
                                  perturbation_interval=1, hyperparam_mutations=mutations,
                                  resample_probability=resample_probability, quantile_fraction=quantile_fraction)
    rng = torch.Generator().manual_seed(seed)
    start = {name: tune.sample_from(_seeded_choice(len(choices), rng)) for name, choices in mutations.items()}
    return pbt, start


def best_schedule(results: list[dict], metric: str = "val_ap") -> str | None:
    """The schedule JSON ([{"step", "policy"}, ...]) of the best child, from the trials' last results."""
    scored = [r for r in results if r["metrics"].get("schedule_json")]
    if not scored:
        return None
    best = max(scored, key=lambda r: r["metrics"].get(metric, 0.0))
    json.loads(best["metrics"]["schedule_json"])  # a child wrote it; refuse anything that is not JSON
    return best["metrics"]["schedule_json"]


def _seeded_choice(n: int, rng: torch.Generator):
    return lambda _spec: int(torch.randint(0, n, (1,), generator=rng))
