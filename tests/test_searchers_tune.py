"""The RL-AutoAugment Searcher and OptunaSearch + ASHA each drive a real Ray Tune run on a local Ray.

Children here are cheap functions of the decisions (the real child training is the lead's trainable): the reward
is the fraction of ops whose type is TARGET_OP, so the runs take seconds.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import pytest
import ray.cloudpickle
from ray import tune
from ray.tune import Callback, RunConfig, TuneConfig, Tuner

from baselines.optuna_search import make_asha, make_optuna_search, optuna_param_space
from baselines.rl_autoaugment import RLAutoAugmentSearcher
from search_spaces.discrete import DiscreteSpace
from search_spaces.policy import Policy

# Ray workers cannot import this test module (pytest puts tests/ on the driver's sys.path only): ship by value
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])

SPACE = DiscreteSpace()
TARGET_OP = 4  # "Rotate" in the registry order


def target_fraction(config: dict) -> float:
    decisions = SPACE.from_config(config)
    types = decisions[0::3]
    return types.count(config.get("target_op", TARGET_OP)) / len(types)


def reward_child(config: dict) -> None:
    """One report: val_ap = fraction of ops of the target type; checks the policy travels intact."""
    policy = Policy.from_json(config["policy_json"])
    assert policy == SPACE.to_policy(SPACE.from_config(config))
    tune.report({"val_ap": target_fraction(config)})


def staged_child(config: dict) -> None:
    """Four reports (epochs) whose score grows towards a decision-dependent level, so ASHA can rank children."""
    decisions = SPACE.from_config(config)
    level = 0.7 * target_fraction(config) + 0.3 * sum(decisions[2::3]) / (9 * len(decisions[2::3]))
    for epoch in range(1, 5):
        tune.report({"val_ap": level * epoch / 4})


class InterruptAfter(Callback):
    """Sends the driver SIGUSR1 (Tune's stop signal, like Ctrl+C) after `count` completed trials, once ever."""

    def __init__(self, count: int, marker: Path):
        self.count = count
        self.marker = marker
        self.completed = 0

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self.completed += 1
        if self.completed >= self.count and not self.marker.exists():
            self.marker.write_text("interrupted\n")
            if signal.getsignal(signal.SIGUSR1) in (signal.SIG_DFL, None):
                pytest.fail("Tune did not install its SIGUSR1 handler; interrupting would kill the test process")
            os.kill(os.getpid(), signal.SIGUSR1)


def test_rl_searcher_drives_tune_and_survives_tuner_restore(ray_session, tmp_path) -> None:
    searcher = RLAutoAugmentSearcher(SPACE, metric="val_ap", mode="max", batch_size=4, seed=0)
    experiment = tmp_path / "rl"
    tuner = Tuner(
        reward_child,
        param_space={"target_op": TARGET_OP},  # constants reach every child beside the searcher's decisions
        tune_config=TuneConfig(search_alg=searcher, num_samples=8, max_concurrent_trials=2),
        run_config=RunConfig(name=experiment.name, storage_path=str(tmp_path), verbose=0,
                             callbacks=[InterruptAfter(3, tmp_path / "interrupted.marker")]),
    )
    tuner.fit()
    done_before = [dict(entry) for entry in searcher.history]
    assert 3 <= len(done_before) < 8, "the run was meant to stop part-way"
    assert searcher.suggest("probe") is not None  # interrupted, not finished: the controller still proposes

    # Tuner.restore unpickles the searcher as it was built and loads the state Tune saved through save()
    final = Tuner.restore(str(experiment), trainable=reward_child).fit()

    assert len(final) == 8 and final.errors == []
    by_trial = {result.metrics["trial_id"]: result.config for result in final}
    state = RLAutoAugmentSearcher(SPACE, seed=123)
    state.restore_from_dir(str(experiment))
    assert state.history[: len(done_before)] == done_before
    # every child, including those cut off by the interruption and re-run, rewarded the controller exactly once
    assert sorted(entry["trial_id"] for entry in state.history) == sorted(by_trial)
    for entry in state.history:
        config = by_trial[entry["trial_id"]]
        assert config["target_op"] == TARGET_OP
        assert entry["decisions"] == SPACE.from_config(config)
        assert entry["reward"] == pytest.approx(target_fraction(config))
    assert [update["num_updates"] for update in state.updates] == [1, 2]  # one PPO step per 4 children
    best = max(final, key=lambda result: result.metrics["val_ap"])
    assert state.best_policy() == SPACE.to_policy(SPACE.from_config(best.config))


def test_optuna_search_with_asha_drives_a_tune_run(ray_session, tmp_path) -> None:
    param_space = optuna_param_space(SPACE)
    assert list(param_space) == SPACE.param_names()
    # planted: the first two children are the best the space has (every op the target, magnitudes at the top), so
    # ASHA's rung cutoff (their median) is above every later child and the rungs must stop some of them early
    _, _, mags = SPACE.decisions_per_op()
    best = [[TARGET_OP, 0, mags - 1 - k] * (len(SPACE.param_names()) // 3) for k in (0, 1)]
    tuner = Tuner(
        staged_child,
        param_space=param_space,
        tune_config=TuneConfig(search_alg=make_optuna_search(SPACE, seed=0,
                                                             points_to_evaluate=[SPACE.to_config(d) for d in best]),
                               scheduler=make_asha(max_t=4, grace_period=1, reduction_factor=2),
                               num_samples=8, max_concurrent_trials=1),  # sequential: TPE and ASHA deterministic
        run_config=RunConfig(name="optuna", storage_path=str(tmp_path), verbose=0),
    )
    results = tuner.fit()

    assert len(results) == 8 and results.errors == []
    iterations = [result.metrics["training_iteration"] for result in results]
    assert max(iterations) == 4
    assert min(iterations) < 4, f"ASHA stopped no child early: {iterations}"
    for result in results:
        assert set(result.config) == set(SPACE.param_names())  # children receive the decision keys only
        SPACE.to_policy(SPACE.from_config(result.config))  # and every point decodes to a valid policy
    assert len({tuple(SPACE.from_config(result.config)) for result in results}) == 8  # the planted two and six TPE draws
    limits = SPACE.decisions_per_op()
    for result in results:  # sampled bins are whole numbers in range, as ints (not floats or strings)
        for index, name in enumerate(SPACE.param_names()):
            value = result.config[name]
            assert type(value) is int and 0 <= value < limits[index % 3], (name, value)


def test_optuna_sees_probability_and_magnitude_bins_as_ordered_integers() -> None:
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    distributions = OptunaSearch.convert_search_space(optuna_param_space(SPACE))
    types, prob_bins, mag_bins = SPACE.decisions_per_op()
    for name, distribution in distributions.items():
        if name.endswith("_type"):  # op types have no order: a categorical choice
            assert isinstance(distribution, optuna.distributions.CategoricalDistribution)
            assert list(distribution.choices) == list(range(types))
        else:  # TPE models bin 3 as near bin 4
            bins = prob_bins if name.endswith("_prob") else mag_bins
            assert isinstance(distribution, optuna.distributions.IntDistribution), name
            assert (distribution.low, distribution.high, distribution.step) == (0, bins - 1, 1)
