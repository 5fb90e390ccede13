"""`da2 compare`: every method on the same task and cluster under one budget, then a fresh full training
with each method's best policy on the same recipe, evaluated on the val split that no search saw."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from da2_platform.config import ExperimentConfig
from da2_platform.ledger import CostLedger
from da2_platform.search.driver import SearchOutcome, run_search
from da2_platform.search.methods import job_factory


@dataclass
class FinalTraining:
    method: str
    val_ap: float
    device_seconds: float
    registered_version: str | None


def expand_methods(methods: list[str], cfg: ExperimentConfig) -> list[str]:
    """`fixed` stands for every fixed policy named in the config."""
    out: list[str] = []
    for m in methods:
        out.extend(f"fixed:{name}" for name in cfg.search.fixed) if m == "fixed" else out.append(m)
    return out


def apply_budget(cfg: ExperimentConfig, budget_device_hours: float | None) -> ExperimentConfig:
    """Give each black-box search at most the budget: as a Tune wall-clock budget over its concurrent trials."""
    if budget_device_hours is None:
        return cfg
    data = cfg.model_dump()
    for key in ("rl", "optuna", "pba"):
        sc = data["search"][key]
        per_wall_second = sc["concurrent"] * max(cfg.search.gpus_per_trial or cfg.search.cpus_per_trial, 1e-9)
        sc["time_budget_s"] = budget_device_hours * 3600 / per_wall_second
    return ExperimentConfig.model_validate(data)


def run_compare(cfg: ExperimentConfig, methods: list[str], budget_device_hours: float | None = None,
                tracking_uri: str | None = None, progress=None) -> tuple[list[SearchOutcome], list[FinalTraining]]:
    cfg = apply_budget(cfg, budget_device_hours)
    outcomes = []
    for method in expand_methods(methods, cfg):
        if progress:
            progress(f"search: {method}")
        outcomes.append(run_search(cfg, method, job_factory(method), tracking_uri=tracking_uri))
    if progress:
        progress(f"final trainings: a fresh P2Net with each best policy, {cfg.train.epochs} epochs, val AP")
    return outcomes, run_final_trainings(cfg, outcomes)


def run_final_trainings(cfg: ExperimentConfig, outcomes: list[SearchOutcome]) -> list[FinalTraining]:
    """One Tune trial per method: the shared child recipe on the full train split, scored on val."""
    from ray import tune

    from da2_platform.data.splits import prepare_data
    from da2_platform.registry import tag_final_ap
    from da2_platform.search.children import child_trainable
    from da2_platform.search.driver import ledger_row
    from da2_platform.search.trial import trial_resources

    data = prepare_data(cfg)
    settings = {"cfg": cfg.model_dump(mode="json"), "space": None, "child_steps": None, "evals": 1,
                "train_annotations": str(data.full_train_annotations), "train_images": str(data.train_images),
                "eval_annotations": str(data.val_annotations), "eval_images": str(data.val_images)}
    finals = [{"method": o.method, "policy_json": o.best_policy.to_json()} for o in outcomes]
    storage = (cfg.workdir / "ray_results").resolve()
    tuner = tune.Tuner(
        tune.with_resources(tune.with_parameters(child_trainable, settings=settings), trial_resources(cfg)),
        param_space={"final": tune.grid_search(finals)},
        tune_config=tune.TuneConfig(max_concurrent_trials=max(1, cfg.search.rl.concurrent)),
        run_config=tune.RunConfig(name=f"{cfg.name}-final", storage_path=str(storage), verbose=0),
    )
    by_method = {}
    for result in tuner.fit():
        method = result.config["final"]["method"]
        record = {"trial_id": Path(str(result.path)).name, "metrics": dict(result.metrics or {}),
                  "config": {"method": method}, "error": None if result.error is None else str(result.error)}
        by_method[method] = ledger_row(cfg, f"final:{method}", record)
    out = []
    for o in outcomes:
        row = by_method[o.method]
        row.search_run_id = o.run_id
        if o.registered_version and row.status == "completed":
            tag_final_ap(cfg.tracking.registered_policy, o.registered_version, row.val_ap,
                         f"da2 compare {cfg.name}: {cfg.train.epochs} epochs on the full train split, val AP")
        out.append(FinalTraining(o.method, row.val_ap, row.device_seconds, o.registered_version))
    CostLedger.for_experiment(cfg.workdir, cfg.name).append([by_method[o.method] for o in outcomes])
    return out
