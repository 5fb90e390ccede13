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


BUDGETED = ("rl", "optuna", "pba")  # the black-box searches; DA2 and the fixed policies have a fixed cost


def run_compare(cfg: ExperimentConfig, methods: list[str], budget_device_hours: float | None = None,
                tracking_uri: str | None = None, progress=None) -> tuple[list[SearchOutcome], list[FinalTraining]]:
    """Every method's search at once in one Ray session (each Tuner in its own driver thread; their trials
    share the cluster's CPUs/GPUs as Ray schedules them), then the final trainings.

    `budget_device_hours` caps each black-box search: it stops once its trials have used that many
    device-hours (the ledger's unit, GPU-hours or CPU-hours), whatever else runs beside it.
    """
    from concurrent.futures import ThreadPoolExecutor, as_completed

    from da2_platform.data.splits import prepare_data
    from da2_platform.raycluster import ensure_ray
    from da2_platform.search.control import SearchControl
    from da2_platform.tracking import setup_tracking

    say = progress or (lambda msg: None)
    chosen = expand_methods(methods, cfg)
    factories = {m: job_factory(m) for m in chosen}  # an unknown method fails before anything starts
    setup_tracking(cfg, tracking_uri)  # once, before the threads: creating the experiment is not race-free
    prepare_data(cfg)
    ensure_ray()
    budget_s = None if budget_device_hours is None else budget_device_hours * 3600
    control = SearchControl()
    done: dict[str, SearchOutcome] = {}
    say(f"searches: {', '.join(chosen)} side by side"
        + (f", each black-box search capped at {budget_device_hours:g} device-hours" if budget_s else ""))
    try:
        with ThreadPoolExecutor(max_workers=len(chosen), thread_name_prefix="search") as pool:
            futures = {pool.submit(run_search, cfg, m, factories[m], tracking_uri=tracking_uri,
                                   stopper=control.stopper(budget_s if m in BUDGETED else None)): m
                       for m in chosen}
            try:
                for future in as_completed(futures):
                    outcome = future.result()
                    done[outcome.method] = outcome
                    say(f"search {outcome.method} done: {len(outcome.trials)} trial(s), best search-val AP "
                        f"{outcome.best_val_ap:.4f}, {outcome.device_seconds / 3600:.4f} device-hours")
            except BaseException:  # Ctrl+C or a failed search: stop the others, keep what already finished
                control.stop.set()
                raise
    finally:
        control.close()
    outcomes = [done[m] for m in chosen]
    say(f"final trainings: a fresh P2Net with each best policy, {cfg.train.epochs} epochs, val AP")
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
