"""One budget for every method: searchers that search (RL's PPO batch, Optuna's start-up), and trials that stop
within one step of the search's budget, charged from their start."""

from __future__ import annotations

import pytest
import torch

from da2_platform.config import load_config


@pytest.mark.parametrize("concurrent", [1, 2, 4])
def test_rl_controller_updates_after_its_ppo_batch_whatever_the_concurrency(tmp_path, concurrent):
    from da2_platform.data.splits import ExperimentData
    from da2_platform.search.methods import rl_spec

    cfg = load_config(None, {"workdir": str(tmp_path), "search.rl.concurrent": concurrent,
                             "search.rl.ppo_batch": 3, "search.rl.trials": 12})
    paths = {k: tmp_path / k for k in ("a", "b", "c", "d", "e", "f", "g")}
    data = ExperimentData(paths["a"], paths["b"], paths["c"], paths["d"], paths["e"], paths["f"], paths["g"])
    searcher = rl_spec(cfg, data).tune_config["search_alg"]
    assert searcher.batch_size == 3 and "HorizontalFlip" not in searcher.space.op_names
    for i in range(7):
        searcher.suggest(f"t{i}")
    for i in range(7):
        searcher.on_trial_complete(f"t{i}", {"val_ap": 0.1 * i})
        assert len(searcher.updates) == (i + 1) // 3  # one PPO step per 3 rewards


def test_optunas_startup_trials_follow_the_trials_it_can_afford(tmp_path):
    from baselines.optuna_search import startup_trials
    from da2_platform.data.splits import ExperimentData
    from da2_platform.search.methods import optuna_spec

    assert [startup_trials(n) for n in (1, 6, 12, 30, 90)] == [1, 2, 4, 10, 10]
    assert startup_trials(30, given=5) == 5
    cfg = load_config(None, {"workdir": str(tmp_path), "search.optuna.trials": 12})
    paths = [tmp_path / str(i) for i in range(7)]
    spec = optuna_spec(cfg, ExperimentData(*paths))
    assert spec.search_params["n_startup_trials"] == 4
    assert spec.tune_config["search_alg"]._sampler._n_startup_trials == 4
    asha = spec.tune_config["scheduler"]
    rungs = [r for r in (1, 2, 4, 8) if r < cfg.search.optuna.evals]
    assert len(rungs) >= 2 and asha._max_t == cfg.search.optuna.evals


def test_pba_runs_a_population_of_eight_perturbing_every_three_evaluations():
    cfg = load_config(None)
    assert cfg.search.pba.trials >= 8 and cfg.search.pba.perturbation_interval == 3
    with pytest.raises(Exception, match="trials"):
        load_config(None, {"search.pba.trials": 4})


def test_a_child_stops_within_one_step_of_the_budget_and_is_charged_its_time(synthpose_small, tmp_path,
                                                                             ray_session):
    from da2_platform.search.children import child_fit, run_child, trial_clock
    from da2_platform.search.control import open_account
    from search_spaces.fixed import fixed_policy

    cfg = load_config(None, {"workdir": str(tmp_path), "train.batch_size": 8, "data.synth_seed": 0})
    settings = {"cfg": cfg.model_dump(mode="json"), "space": None, "child_steps": 40, "evals": 1,
                "train_annotations": str(synthpose_small.train_annotations),
                "train_images": str(synthpose_small.train_images),
                "eval_annotations": str(synthpose_small.val_annotations),
                "eval_images": str(synthpose_small.val_images)}
    clock = trial_clock(cfg, torch.device("cpu"))  # started before the set-up, which is charged
    fit = child_fit(cfg, settings, fixed_policy("none"), torch.device("cpu"))
    setup = clock.report()["device_seconds"]
    budget_s = setup + 3.0  # a few seconds of training after the set-up: far fewer than 40 steps
    account = open_account(f"test-{tmp_path.name}", budget_s)
    reports: list[dict] = []

    budget = recorded_budget(account, "t0")
    run_child(fit, settings, lambda m, blob: reports.append(m), clock, budget)
    assert len(reports) == 1 and reports[0]["budget_stop"] and not reports[0]["complete"]
    assert "policy_json" not in reports[0]  # stopped before its first evaluation: nothing scored
    steps = reports[0]["step"]
    assert 1 <= steps < 40
    charges = budget.charges
    assert len(charges) == steps and charges[-2] < budget_s <= charges[-1]  # the first step past the budget
    last_step = charges[-1] - charges[-2]
    charged = reports[0]["device_seconds"]
    assert charged <= budget_s + last_step + 0.05, (charged, budget_s, last_step)  # within one step
    assert charges[0] >= setup  # the set-up is charged
    import ray

    assert ray.get(account.exhausted.remote())
    ray.kill(account)


def test_a_da2_search_stops_within_one_step_of_the_budget_and_is_charged_its_time(synthpose_small, tmp_path,
                                                                                  ray_session):
    """DA2 is budgeted like every method: each step charges the trial; the first step past the budget ends it."""
    from da2_platform.data.topdown import TopDownDataset
    from da2_platform.search.control import open_account
    from da2_platform.search.da2 import DA2Search, run_da2
    from da2_platform.search.trial import TrialClock

    cfg = load_config(None, {"workdir": str(tmp_path), "train.batch_size": 8, "data.synth_seed": 0,
                             "search.da2.steps": 200, "search.da2.sub_policies": 6})
    size = cfg.data.input_size
    paths = synthpose_small
    settings = {"train_annotations": str(paths.train_annotations), "train_images": str(paths.train_images),
                "eval_annotations": str(paths.val_annotations), "eval_images": str(paths.val_images)}
    clock = TrialClock(gpus=0, cpus=1)  # started before the set-up, which is charged
    search = DA2Search(cfg, TopDownDataset(paths.train_annotations, paths.train_images, input_size=size),
                       TopDownDataset(paths.val_annotations, paths.val_images, input_size=size), torch.device("cpu"))
    setup = clock.report()["device_seconds"]
    budget_s = setup + 2.0  # a few steps after the set-up: far fewer than 200
    account = open_account(f"test-da2-{tmp_path.name}", budget_s)
    reports: list[tuple[dict, bool]] = []

    budget = recorded_budget(account, "d0")
    run_da2(search, settings, lambda metrics, checkpoint: reports.append((metrics, checkpoint)), clock, budget)
    last, checkpointed = reports[-1]
    assert last["budget_stop"] and not last["complete"] and not checkpointed
    assert "policy_json" not in last  # stopped before its end: no policy returned
    steps = last["step"]
    assert 1 <= steps < 200 and search.state["step"] == steps
    charges = budget.charges
    assert len(charges) == steps and charges[-2] < budget_s <= charges[-1]  # the first step past the budget
    last_step = charges[-1] - charges[-2]
    assert last["device_seconds"] <= budget_s + last_step + 0.05, (last["device_seconds"], budget_s, last_step)
    assert charges[0] >= setup  # the set-up is charged
    import ray

    assert ray.get(account.exhausted.remote())
    ray.kill(account)


def recorded_budget(account, trial_id: str):
    """A real TrialBudget on the real account that also keeps every charge it made."""
    from da2_platform.search.control import TrialBudget

    class Recorded(TrialBudget):
        def __init__(self, account, trial_id: str) -> None:
            super().__init__(account, trial_id)
            self.charges: list[float] = []

        def charge(self, device_seconds: float) -> bool:
            self.charges.append(device_seconds)
            return super().charge(device_seconds)

    return Recorded(account, trial_id)
