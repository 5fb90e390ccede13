"""`da2 compare`: every method on the same task and cluster under one budget, then a fresh full training
with each method's best policy on the same recipe, evaluated on the val split that no search saw."""

from __future__ import annotations

from dataclasses import dataclass

from da2_platform.config import ExperimentConfig
from da2_platform.ledger import CostLedger, LedgerRow, device_seconds, utc_now
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
    from da2_platform.registry import tag_final_ap
    from da2_platform.training.ray_train import run_training

    cfg = apply_budget(cfg, budget_device_hours)
    outcomes = []
    for method in expand_methods(methods, cfg):
        if progress:
            progress(f"search: {method}")
        outcomes.append(run_search(cfg, method, job_factory(method), tracking_uri=tracking_uri))
    finals = []
    ledger = CostLedger.for_experiment(cfg.workdir, cfg.name)
    for outcome in outcomes:
        if progress:
            progress(f"final training with the best {outcome.method} policy")
        started = utc_now()
        trained = run_training(cfg, outcome.best_policy.to_json(), fresh=True,
                               run_name=f"final-{cfg.name}-{outcome.method.replace(':', '-')}")
        ap = float(trained.metrics.get("val_AP", 0.0))
        kind, held, _ = device_seconds(trained.wall_seconds, 0, 1)
        ledger.append([LedgerRow(
            experiment=cfg.name, method=f"final:{outcome.method}", trial_id=trained.run_name,
            policy_json=outcome.best_policy.to_json(), device_kind="gpu" if cfg.train.use_gpu else kind,
            devices_held=float(cfg.train.workers), wall_seconds=trained.wall_seconds,
            device_seconds=trained.device_seconds, val_ap=ap, status="completed", start_time=started,
            end_time=utc_now(), steps=int(trained.metrics.get("step", 0)), search_run_id=outcome.run_id)])
        if outcome.registered_version:
            tag_final_ap(cfg.tracking.registered_policy, outcome.registered_version, ap,
                         f"da2 compare {cfg.name}: {cfg.train.epochs} epochs on the full train split, val AP")
        finals.append(FinalTraining(outcome.method, ap, trained.device_seconds, outcome.registered_version))
    return outcomes, finals
