"""Child training for the black-box methods (RL, Optuna, PBA, fixed policies) and compare's final trainings.

A child trains a fresh P2Net with one policy using the one training loop (`Fit`, the same code as `da2 train`),
either for `child_steps` steps on search-train (search children) or for cfg.train.epochs epochs on the full train
split (final trainings), and reports its AP on the eval split at `evals` points (ASHA stops weak children there;
PBT exploits and explores there). The policy comes from the trial's config: `policy_json` (RL Searcher, fixed,
final trainings) or the discrete decisions (Optuna, PBA), decoded with the same `DiscreteSpace` the searchers use.
Each method's `SearchSpec` is built in `da2_platform.search.methods`.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from da2_platform.config import DiscreteSearchConfig, ExperimentConfig
from da2_platform.data.topdown import TopDownDataset
from da2_platform.inference import evaluate_model
from da2_platform.search.trial import TrialClock, limit_threads, trial_device, trial_settings
from da2_platform.training.loop import CHECKPOINT_FILE, Fit, build_model
from da2_platform.training.step import StepMetrics, seed_everything
from search_spaces.discrete import DiscreteSpace
from search_spaces.ops import searched_op_names
from search_spaces.policy import Policy

if TYPE_CHECKING:
    from da2_platform.search.control import TrialBudget

EVALS_PER_CHILD = 2  # report points per child: ASHA's rungs and PBT's perturbation points

# report(metrics, checkpoint bytes or None): tune.report in a trial, anything else in tests and benchmarks
Report = Callable[[dict, bytes | None], None]


def discrete_space(sc: DiscreteSearchConfig, include_flip: bool = False) -> DiscreteSpace:
    """The baselines' space: K x N ops over the searched ops (`search.include_flip` adds HorizontalFlip)."""
    return DiscreteSpace(num_sub_policies=sc.sub_policies, ops_per_sub_policy=sc.ops_per_sub_policy,
                         op_names=searched_op_names(include_flip))


def policy_from_trial_config(config: dict, space: DiscreteSpace | None) -> Policy:
    if "policy_json" in config:
        return Policy.from_json(config["policy_json"], source="trial config")
    return space.to_policy(space.from_config(config))


def child_fit(cfg: ExperimentConfig, settings: dict, policy: Policy, device: torch.device) -> Fit:
    """The child's `Fit`: a fresh (or init_weights) P2Net on the child's training split."""
    seed_everything(cfg.seed)
    train_ds = TopDownDataset(settings["train_annotations"], settings["train_images"], input_size=cfg.data.input_size)
    model = build_model(cfg, train_ds.num_joints).to(device)
    held = cfg.search.gpus_per_trial if device.type == "cuda" else cfg.search.cpus_per_trial
    return Fit(cfg, model, train_ds, policy, device, devices_held=held)


class BudgetStop(Exception):
    """The search's budget was spent: the trial made its last report and ends now."""


def trial_clock(cfg: ExperimentConfig, device: torch.device) -> TrialClock:
    """The clock of a trial, started when the trial starts, so its set-up (model, data, weights) is charged."""
    return TrialClock(gpus=cfg.search.gpus_per_trial if device.type == "cuda" else 0, cpus=cfg.search.cpus_per_trial)


def run_child(fit: Fit, settings: dict, report: Report, clock: TrialClock | None = None,
              budget: TrialBudget | None = None) -> None:
    """Train `fit` for settings["child_steps"] steps (or its epochs when None), evaluating at `evals` points.

    Each report carries the AP, the policy, the PBA schedule so far (the policy this child trained with from
    each report on) and the trial's device-seconds; the checkpoint is `Fit`'s, with the schedule in its state.
    With a `budget`, every step charges the trial's spend; the first step past the search's budget ends the
    trial with a last report (`budget_stop`, and the last AP it measured if any)."""
    cfg, policy, device = fit.cfg, fit.policy, fit.device
    child_steps = settings.get("child_steps")
    total = int(child_steps) if child_steps else fit.total_steps()
    every = max(1, total // int(settings.get("evals", EVALS_PER_CHILD)))
    clock = clock or trial_clock(cfg, device)
    clock.previous_wall = float(fit.state.extra.get("wall", 0.0))
    schedule = fit.state.extra.setdefault("schedule", [])
    last: dict = {}

    def on_step(f: Fit, metrics: StepMetrics) -> None:
        step = f.state.step
        if budget is not None and not budget.charge(clock.report()["device_seconds"]):
            scored = {"val_ap": last["val_ap"], "policy_json": policy.to_json()} if last else {}
            report({"step": step, "train_loss": metrics.loss, "complete": False, "budget_stop": True, **scored,
                    "schedule_json": json.dumps(schedule), **clock.report()}, None)
            raise BudgetStop
        if step % every and step != total:
            return
        coco = evaluate_model(f.model, Path(settings["eval_annotations"]), Path(settings["eval_images"]),
                              cfg.data.input_size, device, flip_test=cfg.train.flip_test, decoder=cfg.train.decoder,
                              batch_size=cfg.train.eval_batch_size)
        schedule.append({"step": step, "policy": policy.to_dict()})
        last["val_ap"] = coco["AP"]
        f.state.extra["wall"] = clock.wall()
        report({"step": step, "train_loss": metrics.loss, "val_ap": coco["AP"], "policy_json": policy.to_json(),
                "complete": step >= total, "schedule_json": json.dumps(schedule), **clock.report()},
               f.checkpoint_bytes())

    try:
        fit.run(max_steps=total if child_steps else None, on_step=on_step)
    except BudgetStop:
        return


def child_trainable(config: dict, settings: dict) -> None:
    """The Ray Tune function trainable of every child and final training."""
    from ray import tune

    from da2_platform.search.control import TrialBudget

    cfg = ExperimentConfig.model_validate(settings["cfg"])
    device = trial_device(cfg)
    clock = trial_clock(cfg, device)  # from the trial's start: its set-up is charged
    budget = TrialBudget.for_this_trial()
    if budget is not None and not budget.charge(0.0):  # started after the budget ran out: no set-up either
        tune.report({"step": 0, "complete": False, "budget_stop": True, **clock.report()})
        return
    space = DiscreteSpace(**settings["space"]) if settings.get("space") else None
    limit_threads(cfg)
    # after a PBT explore the config holds the new policy; final trainings carry {"method", "policy_json"}
    fit = child_fit(cfg, settings, policy_from_trial_config(config.get("final", config), space), device)
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:  # Tune restore, or PBT exploiting a better trial's weights
        with checkpoint.as_directory() as d:
            fit.load(Path(d) / CHECKPOINT_FILE)

    def report(metrics: dict, blob: bytes | None) -> None:
        if blob is None:  # the last report of a trial its search's budget stopped
            tune.report(metrics)
            return
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / CHECKPOINT_FILE).write_bytes(blob)
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(tmp))

    run_child(fit, settings, report, clock, budget)


def child_settings(cfg: ExperimentConfig, data, sc: DiscreteSearchConfig | None, child_steps: int | None) -> dict:
    """What every child of a search shares (passed with tune.with_parameters)."""
    space = None if sc is None else {"num_sub_policies": sc.sub_policies, "ops_per_sub_policy": sc.ops_per_sub_policy,
                                     "op_names": list(searched_op_names(cfg.search.include_flip))}
    evals = {} if sc is None else {"evals": sc.evals}
    return {**trial_settings(cfg, data), "space": space, "child_steps": child_steps, **evals}


def search_params(cfg: ExperimentConfig, sc: DiscreteSearchConfig | None, **extra) -> dict:
    """The MLflow params of a black-box search."""
    base = {"model": cfg.model.preset or cfg.model.backbone, "input_size": "x".join(map(str, cfg.data.input_size)),
            "batch_size": cfg.train.batch_size, "augment_on": cfg.train.augment_on}
    return {**base, **(sc.model_dump() if sc else {}), **extra}


def final_training(cfg: ExperimentConfig, data, policy: Policy, evals: int = 1,
                   device: torch.device | None = None) -> tuple[list[dict], float]:
    """One final training in this process, as `compare` runs it in a trial (cfg.train.epochs on the full train
    split from the config's init weights, scored on val `evals` times); returns the val AP curve
    ([{step, val_ap}], the last is the final AP) and its seconds. Benchmarks use it without Ray."""
    import time

    settings = {**trial_settings(cfg, data), "space": None, "child_steps": None, "evals": evals,
                "train_annotations": str(data.full_train_annotations), "train_images": str(data.train_images),
                "eval_annotations": str(data.val_annotations), "eval_images": str(data.val_images)}
    reports: list[dict] = []
    start = time.perf_counter()
    fit = child_fit(cfg, settings, policy, device or torch.device("cpu"))
    run_child(fit, settings, lambda metrics, blob: reports.append(metrics))
    curve = [{"step": int(r["step"]), "val_ap": round(float(r["val_ap"]), 4)} for r in reports]
    return curve, time.perf_counter() - start
