"""Child training for the black-box methods (RL, Optuna, PBA, fixed policies): a Ray Tune trainable.

A child trains a fresh P2Net with one policy on the search-train split using the shared `TrainingStep`, and
reports its search-val AP at `evals` points (ASHA stops weak children there; PBT exploits and explores there).
The policy comes from the trial's config: `policy_json` (RL Searcher, fixed), or the discrete decisions
(Optuna, PBA), decoded with the same `DiscreteSpace` the searchers use.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch

from da2_platform.config import DiscreteSearchConfig, ExperimentConfig
from da2_platform.data.topdown import TopDownDataset
from da2_platform.errors import ConfigError
from da2_platform.inference import evaluate_model
from da2_platform.search.da2_job import BatchStream
from da2_platform.search.trial import TrialClock, limit_threads, trial_device
from da2_platform.training.loop import build_model, device_augment, epoch_loader
from da2_platform.training.step import TrainingStep, make_optimizer, seed_everything
from pose_models.losses import P2NetLoss
from search_spaces.discrete import DiscreteSpace
from search_spaces.policy import Policy

STATE_FILE = "child_state.pt"
EVALS_PER_CHILD = 2  # report points per child: ASHA's rungs and PBT's perturbation points


def discrete_space(sc: DiscreteSearchConfig) -> DiscreteSpace:
    return DiscreteSpace(num_sub_policies=sc.sub_policies, ops_per_sub_policy=sc.ops_per_sub_policy)


def policy_from_trial_config(config: dict, space: DiscreteSpace | None) -> Policy:
    if "policy_json" in config:
        return Policy.from_json(config["policy_json"], source="trial config")
    return space.to_policy(space.from_config(config))


def child_trainable(config: dict, settings: dict) -> None:
    from ray import tune

    cfg = ExperimentConfig.model_validate(settings["cfg"])
    space = DiscreteSpace(**settings["space"]) if settings.get("space") else None
    limit_threads(cfg)
    device = trial_device(cfg)
    seed_everything(cfg.seed)
    train_ds = TopDownDataset(settings["train_annotations"], settings["train_images"], input_size=cfg.data.input_size)
    child_steps = int(settings.get("child_steps") or cfg.train.epochs * len(epoch_loader(train_ds, cfg, 0)))
    model = build_model(cfg, train_ds.num_joints).to(device)
    optimizer = make_optimizer(model, cfg.train)
    state = {"step": 0, "consumed": 0, "wall": 0.0, "schedule": []}
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:  # Tune restore, or PBT exploiting a better trial's weights
        with checkpoint.as_directory() as d:
            saved = torch.load(Path(d) / STATE_FILE, map_location="cpu", weights_only=True)
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        state = json.loads(saved["state_json"])
    # after a PBT explore the config holds the new policy; final trainings carry {"method", "policy_json"}
    policy = policy_from_trial_config(config.get("final", config), space)
    clock = TrialClock(gpus=cfg.search.gpus_per_trial if device.type == "cuda" else 0,
                       cpus=cfg.search.cpus_per_trial, previous_wall=state["wall"])
    augment = device_augment(cfg, policy, train_ds.flip_pairs, device, seed=cfg.seed * 7 + state["step"])
    step_fn = TrainingStep(model, P2NetLoss(ohkm_topk=cfg.model.ohkm_topk), optimizer, cfg.train,
                           cfg.data.input_size, device, augment, cfg.data.heatmap_sigma)
    step_fn.step = state["step"]
    stream = BatchStream(train_ds, cfg, state["consumed"])
    every = max(1, child_steps // int(settings.get("evals", EVALS_PER_CHILD)))
    while state["step"] < child_steps:
        metrics = step_fn(next(stream))
        state["step"] = step_fn.step
        if state["step"] % every and state["step"] != child_steps:
            continue
        coco = evaluate_model(model, Path(settings["eval_annotations"]), Path(settings["eval_images"]),
                              cfg.data.input_size,
                              device, flip_test=cfg.train.flip_test, decoder=cfg.train.decoder,
                              batch_size=cfg.train.eval_batch_size)
        state["schedule"].append({"step": state["step"], "policy": policy.to_dict()})
        state.update(consumed=stream.consumed, wall=clock.wall())
        report = {"step": state["step"], "train_loss": metrics.loss, "val_ap": coco["AP"],
                  "policy_json": policy.to_json(), "complete": state["step"] >= child_steps,
                  "schedule_json": json.dumps(state["schedule"]), **clock.report()}
        with tempfile.TemporaryDirectory() as tmp:
            torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                        "state_json": json.dumps(state)}, Path(tmp) / STATE_FILE)
            tune.report(report, checkpoint=tune.Checkpoint.from_directory(tmp))


# -- one job builder per method ------------------------------------------------------------------------------

def _settings(cfg: ExperimentConfig, data, sc: DiscreteSearchConfig | None, child_steps: int) -> dict:
    from da2_platform.search.driver import trial_settings

    space = None if sc is None else {"num_sub_policies": sc.sub_policies, "ops_per_sub_policy": sc.ops_per_sub_policy}
    return {**trial_settings(cfg, data), "space": space, "child_steps": child_steps}


def _search_params(cfg: ExperimentConfig, sc: DiscreteSearchConfig | None, **extra) -> dict:
    base = {"model": cfg.model.preset or cfg.model.backbone, "input_size": "x".join(map(str, cfg.data.input_size)),
            "batch_size": cfg.train.batch_size}
    return {**base, **(sc.model_dump() if sc else {}), **extra}


def make_rl_job(cfg: ExperimentConfig, data):
    from ray import tune

    from baselines.rl_autoaugment.searcher import RLAutoAugmentSearcher
    from da2_platform.search.driver import TuneJob

    sc = cfg.search.rl
    searcher = RLAutoAugmentSearcher(discrete_space(sc), metric="val_ap", mode="max",
                                     batch_size=max(1, sc.concurrent), seed=cfg.seed)
    return TuneJob(
        method="rl",
        trainable=tune.with_parameters(child_trainable, settings=_settings(cfg, data, sc, sc.child_steps)),
        param_space={},
        tune_config={"search_alg": searcher, "num_samples": sc.trials, "max_concurrent_trials": sc.concurrent,
                     "metric": "val_ap", "mode": "max", "time_budget_s": sc.time_budget_s},
        search_params=_search_params(cfg, sc, controller="LSTM-100 + PPO"),
        expected_trials=sc.trials,
        allow_partial=sc.time_budget_s is not None,
    )


def make_optuna_job(cfg: ExperimentConfig, data):
    from ray import tune

    from baselines.optuna_search import make_asha, make_optuna_search, optuna_param_space
    from da2_platform.search.driver import TuneJob

    sc = cfg.search.optuna
    space = discrete_space(sc)
    return TuneJob(
        method="optuna",
        trainable=tune.with_parameters(child_trainable, settings=_settings(cfg, data, sc, sc.child_steps)),
        param_space=optuna_param_space(space),
        tune_config={"search_alg": make_optuna_search(space, seed=cfg.seed), "num_samples": sc.trials,
                     "max_concurrent_trials": sc.concurrent, "time_budget_s": sc.time_budget_s,
                     "scheduler": make_asha(max_t=EVALS_PER_CHILD, grace_period=1, reduction_factor=2)},
        search_params=_search_params(cfg, sc, sampler="TPE", scheduler="ASHA"),
        expected_trials=sc.trials,
        allow_partial=True,  # ASHA stops weak children before they complete
    )


def make_pba_job(cfg: ExperimentConfig, data):
    from ray import tune

    from baselines.pba import best_schedule, make_pba
    from da2_platform.search.driver import TuneJob

    sc = cfg.search.pba
    pbt, start = make_pba(discrete_space(sc), seed=cfg.seed)

    def artifacts(results: list[dict]) -> dict[str, bytes]:
        schedule = best_schedule(results)
        return {"policy/schedule.json": schedule.encode()} if schedule else {}

    return TuneJob(
        method="pba",
        trainable=tune.with_parameters(child_trainable, settings=_settings(cfg, data, sc, sc.child_steps)),
        param_space=start,
        tune_config={"scheduler": pbt, "num_samples": sc.trials, "max_concurrent_trials": sc.concurrent,
                     "time_budget_s": sc.time_budget_s},
        search_params=_search_params(cfg, sc, scheduler="PopulationBasedTraining"),
        artifacts=artifacts,
        keep_checkpoints=None,
        expected_trials=sc.trials,
        allow_partial=sc.time_budget_s is not None,
    )


def make_fixed_job(name: str) -> Callable:
    def make(cfg: ExperimentConfig, data):
        from ray import tune

        from da2_platform.search.driver import TuneJob
        from search_spaces.fixed import fixed_policy

        policy = fixed_policy(name)
        steps = cfg.search.rl.child_steps
        return TuneJob(
            method=f"fixed:{name}",
            trainable=tune.with_parameters(child_trainable, settings=_settings(cfg, data, None, steps)),
            param_space={"policy_json": policy.to_json()},
            tune_config={"num_samples": 1},
            search_params=_search_params(cfg, None, policy=name, child_steps=steps),
        )
    return make


def job_factory(method: str) -> Callable:
    if method == "rl":
        return make_rl_job
    if method == "optuna":
        return make_optuna_job
    if method == "pba":
        return make_pba_job
    if method.startswith("fixed:"):
        from search_spaces.fixed import fixed_policy

        fixed_policy(method.removeprefix("fixed:"))  # unknown names fail now, before any compute
        return make_fixed_job(method.removeprefix("fixed:"))
    raise ConfigError(f"unknown search method {method!r}")
