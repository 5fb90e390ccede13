"""Population Based Augmentation: Ray Tune's PopulationBasedTraining over the discrete pose space.

A population of children trains side by side; at every report the bottom quarter copies the weights and the
policy of a top-quarter child (exploit) and perturbs the policy (explore). The explore step is PBA's own
(Ho et al. 2019, Algorithm 2), not PBT's list mutations (which shift a categorical op type to its neighbour in
registry order): `PBAExplore`, passed as PBT's `custom_explore_fn`, resamples each op (type, p and m) with
probability `resample_probability` and otherwise keeps its type and moves its p and m bins by 0..`max_shift`
bins up or down, clipped to the range. What PBA learns is a schedule: the policy each child used from each step
on. Children record it and report it as `schedule_json`.

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


class PBAExplore:
    """PBA's explore on a config of discrete decisions (picklable: PBT's state is saved with the experiment)."""

    def __init__(self, space: DiscreteSpace, seed: int, resample_probability: float = 0.2, max_shift: int = 3):
        if not 0.0 <= resample_probability <= 1.0 or max_shift < 0:
            raise ValueError("resample_probability must lie in [0, 1] and max_shift be >= 0")
        self.space, self.resample_probability, self.max_shift = space, resample_probability, max_shift
        self.rng = random.Random(seed)

    def __call__(self, config: dict) -> dict:
        decisions = self.space.from_config(config)
        types, prob_bins, mag_bins = self.space.decisions_per_op()
        for base in range(0, len(decisions), 3):
            if self.rng.random() < self.resample_probability:
                decisions[base:base + 3] = [self.rng.randrange(types), self.rng.randrange(prob_bins),
                                            self.rng.randrange(mag_bins)]
            else:
                decisions[base + 1] = self._shift(decisions[base + 1], prob_bins)
                decisions[base + 2] = self._shift(decisions[base + 2], mag_bins)
        return {**config, **self.space.to_config(decisions)}

    def _shift(self, value: int, bins: int) -> int:
        amount = self.rng.randint(0, self.max_shift)
        moved = value + amount if self.rng.random() < 0.5 else value - amount
        return min(max(moved, 0), bins - 1)


class SeededPBT(PopulationBasedTraining):
    """PBT whose exploit draws (which top trial a bottom trial clones) come from its own seeded stream.

    Ray's PBT draws them from Python's global `random` and takes no seed. Seeding the global module would reach
    everything else in the process (and another search's PBT in the same `da2 compare`), so this scheduler keeps
    its own `random` state and swaps it in only while it decides. Another driver thread drawing from the global
    `random` inside that window would share the stream; nothing in the platform's drivers does.
    """

    def __init__(self, seed: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self._random_state = random.Random(seed).getstate()

    def _checkpoint_or_exploit(self, *args, **kwargs):
        outer = random.getstate()
        random.setstate(self._random_state)
        try:
            return super()._checkpoint_or_exploit(*args, **kwargs)
        finally:
            self._random_state = random.getstate()
            random.setstate(outer)


def make_pba(space: DiscreteSpace, seed: int, metric: str = "val_ap", mode: str = "max",
             resample_probability: float = 0.2, max_shift: int = 3, quantile_fraction: float = 0.25,
             perturbation_interval: int = 3) -> tuple[PopulationBasedTraining, dict]:
    """The PBT scheduler with PBA's explore, and the Tuner's param_space of seeded random starting decisions."""
    pbt = SeededPBT(seed, time_attr="training_iteration", metric=metric, mode=mode,
                    perturbation_interval=perturbation_interval,
                    # a child its search's budget stopped before its first evaluation reports no AP
                    require_attrs=False,
                    quantile_fraction=quantile_fraction,
                    custom_explore_fn=PBAExplore(space, seed, resample_probability, max_shift))
    rng = torch.Generator().manual_seed(seed)
    sizes = space.decisions_per_op()
    start = {name: tune.sample_from(_seeded_choice(sizes[index % 3], rng))
             for index, name in enumerate(space.param_names())}
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
