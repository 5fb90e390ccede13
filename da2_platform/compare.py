"""`da2 compare`: every method on the same task and cluster under one budget, then a fresh full training
with each method's best policy on the same recipe, evaluated on the val split that no search saw; over one or
several seeds, all on one Ray session, under one MLflow parent run that holds the report and the plot.

A comparison counts only its own trials: the report reads the ledger rows of the searches it ran (by their
MLflow run ids) and its own final trainings, never an earlier search's rows of the same experiment.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from da2_platform.config import ExperimentConfig
from da2_platform.ledger import CostLedger, LedgerRow, utc_now
from da2_platform.search.driver import run_search
from da2_platform.search.methods import spec_builder
from da2_platform.search.spec import SearchOutcome


@dataclass
class FinalTraining:
    method: str
    val_ap: float
    device_seconds: float
    registered_version: str | None


@dataclass
class SeedRun:
    """One seed of a comparison: its searches, its final trainings and exactly their ledger rows."""

    seed: int
    experiment: str  # the config name this seed ran under (`<name>-seed<s>` when several seeds run)
    outcomes: list[SearchOutcome]
    finals: list[FinalTraining]
    rows: list[LedgerRow] = field(default_factory=list)


@dataclass
class CompareResult:
    name: str
    seeds: list[SeedRun]
    report: object  # report.SeedsReport
    report_json: Path
    report_png: Path
    mlflow_run_id: str


def expand_methods(methods: list[str], cfg: ExperimentConfig) -> list[str]:
    """`fixed` stands for every fixed policy named in the config."""
    out: list[str] = []
    for m in methods:
        out.extend(f"fixed:{name}" for name in cfg.search.fixed) if m == "fixed" else out.append(m)
    return out




def seed_config(cfg: ExperimentConfig, seed: int, several: bool) -> ExperimentConfig:
    """The config of one seed: every random choice (data order, draws, searchers, DA2's one trial) from `seed`;
    with several seeds its own name (so its Tune folders and ledger are its own) in the same MLflow experiment."""
    search = cfg.search.model_copy(update={"da2": cfg.search.da2.model_copy(update={"seeds": [seed]})})
    tracking = cfg.tracking.model_copy(update={"experiment": cfg.tracking.experiment or cfg.name})
    name = f"{cfg.name}-seed{seed}" if several else cfg.name
    return cfg.model_copy(update={"seed": seed, "name": name, "search": search, "tracking": tracking})


def run_compare(cfg: ExperimentConfig, methods: list[str], budget_device_hours: float | None = None,
                tracking_uri: str | None = None, progress=None, fresh: bool = False, resume: bool = False
                ) -> tuple[list[SearchOutcome], list[FinalTraining]]:
    """One seed (cfg.seed, under cfg.name): every method's search at once in one Ray session (each Tuner in its
    own driver thread; their trials share the cluster's CPUs/GPUs as Ray schedules them), then the final
    trainings.

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
    builders = {m: spec_builder(m) for m in chosen}  # an unknown method fails before anything starts
    setup_tracking(cfg, tracking_uri)  # once, before the threads: creating the experiment is not race-free
    prepare_data(cfg)
    ensure_ray()
    budget_s = None if budget_device_hours is None else budget_device_hours * 3600
    control = SearchControl()
    done: dict[str, SearchOutcome] = {}
    say(f"searches: {', '.join(chosen)} side by side"
        + (f", each under a budget of {budget_device_hours:g} device-hours (DA2 and fixed policies too)"
           if budget_s else ""))
    try:
        with ThreadPoolExecutor(max_workers=len(chosen), thread_name_prefix="search") as pool:
            futures = {pool.submit(run_search, cfg, m, builders[m], tracking_uri=tracking_uri, resume=resume,
                                   fresh=fresh, stopper=control.stopper(budget_s)): m
                       for m in chosen}
            try:
                for future in as_completed(futures):
                    outcome = future.result()
                    done[outcome.method] = outcome
                    say(f"search {outcome.method} done: {len(outcome.trials)} trial(s), best trial's last search-val AP "
                        f"{outcome.best_search_val_ap:.4f}, {outcome.device_seconds / 3600:.4f} device-hours")
            except BaseException:  # Ctrl+C or a failed search: stop the others, keep what already finished
                control.stop.set()
                raise
    finally:
        control.close()
    outcomes = [done[m] for m in chosen]
    say(f"final trainings: a fresh P2Net with each best policy, {cfg.train.epochs} epochs, val AP")
    return outcomes, run_final_trainings(cfg, outcomes)


def own_rows(cfg: ExperimentConfig, outcomes: list[SearchOutcome]) -> list[LedgerRow]:
    """This comparison's ledger rows: its searches' trials and its final trainings, found by search run id."""
    runs = {o.run_id for o in outcomes}
    ledger = CostLedger.for_experiment(cfg.workdir, cfg.name)
    return [r for r in ledger.rows() if r.search_run_id in runs]


def run_compare_seeds(cfg: ExperimentConfig, methods: list[str], seeds: list[int] | None = None,
                      budget_device_hours: float | None = None, tracking_uri: str | None = None,
                      progress: Callable[[str], None] | None = None, fresh: bool = False,
                      resume: bool = False, planned: dict[str, float] | None = None) -> CompareResult:
    """`run_compare` for each seed in turn on the same Ray session, under one MLflow parent run; then the
    report (per method mean and spread across seeds, beside `planned` search device-hours per seed when given)
    and its plot, written and attached to that run."""
    from da2_platform.report import build_seeds_report, write_seeds_report
    from da2_platform.tracking import mlflow_client, resolve_tracking_uri, setup_tracking

    say = progress or (lambda msg: None)
    seeds = list(dict.fromkeys(seeds if seeds else [cfg.seed]))
    several = len(seeds) > 1
    for m in expand_methods(methods, cfg):
        spec_builder(m)  # an unknown method fails before anything starts
    experiment_id = setup_tracking(seed_config(cfg, seeds[0], several), tracking_uri)
    client = mlflow_client(resolve_tracking_uri(cfg, tracking_uri))
    parent = client.create_run(experiment_id, run_name=f"compare-{cfg.name}", tags={
        "da2.kind": "compare", "da2.experiment": cfg.name, "da2.seeds": ",".join(map(str, seeds)),
        "da2.methods": ",".join(methods)})
    parent_id = parent.info.run_id
    client.log_param(parent_id, "budget_device_hours", str(budget_device_hours))
    runs: list[SeedRun] = []
    try:
        for seed in seeds:
            seed_cfg = seed_config(cfg, seed, several)
            if several:
                say(f"seed {seed} ({len(runs) + 1} of {len(seeds)}): experiment {seed_cfg.name}")
            outcomes, finals = run_compare(seed_cfg, methods, budget_device_hours, tracking_uri, progress,
                                           fresh=fresh, resume=resume)
            for o in outcomes:  # the searches' runs nest under the comparison's run
                client.set_tag(o.run_id, "mlflow.parentRunId", parent_id)
                client.set_tag(o.run_id, "da2.seed", str(seed))
            runs.append(SeedRun(seed, seed_cfg.name, outcomes, finals, own_rows(seed_cfg, outcomes)))
        report = build_seeds_report({r.seed: r.rows for r in runs}, cfg.name, planned)
        json_path, png_path = write_seeds_report(cfg.workdir, cfg.name, report)
        client.log_artifact(parent_id, str(json_path), "report")
        client.log_artifact(parent_id, str(png_path), "report")
        _log_spreads(client, parent_id, report)
    except BaseException as e:
        client.set_terminated(parent_id, "KILLED" if isinstance(e, KeyboardInterrupt) else "FAILED")
        raise
    client.set_terminated(parent_id, "FINISHED")
    return CompareResult(cfg.name, runs, report, json_path, png_path, parent_id)


def _log_spreads(client, run_id: str, report) -> None:
    import math
    import re
    import time

    from mlflow.entities import Metric

    stamp = int(time.time() * 1000)
    metrics = []
    for m in report.methods:
        key = re.sub(r"[^A-Za-z0-9_\-./ ]", "_", m.method)
        for name in ("final_ap", "final_ap_std", "search_device_hours", "planned_search_device_hours",
                     "device_hours_to_near_best",
                     "ratio_to_da2", "near_best_ratio_to_da2"):
            value = getattr(m, name)
            if value is not None and math.isfinite(value):
                metrics.append(Metric(f"{key}.{name}", float(value), stamp, 0))
    if metrics:
        client.log_batch(run_id, metrics=metrics)


def run_final_trainings(cfg: ExperimentConfig, outcomes: list[SearchOutcome]) -> list[FinalTraining]:
    """One Tune trial per method: the one training loop (`Fit`, as `da2 train` runs it: cfg.train.epochs epochs)
    on the full train split, scored on val. A one-pass DA2 search trained its network already: its val AP is
    the final one, and its final row costs no device time (the search's own rows hold it)."""
    from ray import tune

    from da2_platform.data.splits import prepare_data
    from da2_platform.ledger import ledger_row
    from da2_platform.registry import tag_final_ap
    from da2_platform.search.checkpoints import delete_experiment_checkpoints
    from da2_platform.search.children import child_trainable
    from da2_platform.search.trial import trial_resources

    data = prepare_data(cfg)
    settings = {"cfg": cfg.model_dump(mode="json"), "space": None, "child_steps": None, "evals": 1,
                "train_annotations": str(data.full_train_annotations), "train_images": str(data.train_images),
                "eval_annotations": str(data.val_annotations), "eval_images": str(data.val_images)}
    finals = [{"method": o.method, "policy_json": o.best_policy.to_json()} for o in outcomes
              if o.one_pass_val_ap is None]
    by_method = {o.method: one_pass_row(cfg, o) for o in outcomes if o.one_pass_val_ap is not None}
    storage = (cfg.workdir / "ray_results").resolve()
    tuner = None if not finals else tune.Tuner(
        tune.with_resources(tune.with_parameters(child_trainable, settings=settings), trial_resources(cfg)),
        param_space={"final": tune.grid_search(finals)},
        tune_config=tune.TuneConfig(max_concurrent_trials=max(1, cfg.search.rl.concurrent)),
        run_config=tune.RunConfig(name=f"{cfg.name}-final", storage_path=str(storage), verbose=0,
                                  checkpoint_config=tune.CheckpointConfig(num_to_keep=1)),
    )
    for result in tuner.fit() if tuner is not None else []:
        method = result.config["final"]["method"]
        record = {"trial_id": Path(str(result.path)).name, "metrics": dict(result.metrics or {}),
                  "config": {"method": method}, "error": None if result.error is None else str(result.error)}
        by_method[method] = ledger_row(cfg.name, f"final:{method}", record)
    delete_experiment_checkpoints(storage / f"{cfg.name}-final")  # scored and recorded: the weights are not kept
    out = []
    for o in outcomes:
        row = by_method[o.method]
        row.search_run_id = o.run_id
        if o.registered_version and row.status == "completed" and o.one_pass_val_ap is None:  # one-pass: tagged
            tag_final_ap(cfg.tracking.registered_policy, o.registered_version, row.val_ap,
                         f"da2 compare {cfg.name}: {cfg.train.epochs} epochs on the full train split, val AP")
        out.append(FinalTraining(o.method, row.val_ap, row.device_seconds, o.registered_version))
    CostLedger.for_experiment(cfg.workdir, cfg.name).append([by_method[o.method] for o in outcomes])
    return out


def one_pass_row(cfg: ExperimentConfig, outcome: SearchOutcome) -> LedgerRow:
    """The final row of a one-pass search: its own network's val AP, no device time of its own."""
    best = max((r for r in outcome.trials if r.status == "completed"), key=lambda r: r.search_val_ap, default=None)
    now = utc_now()
    return LedgerRow(experiment=cfg.name, method=f"final:{outcome.method}",
                     trial_id=f"one-pass-{best.trial_id if best else outcome.run_id}",
                     policy_json=outcome.best_policy.to_json(), device_kind=best.device_kind if best else "cpu",
                     devices_held=0.0, wall_seconds=0.0, device_seconds=0.0, val_ap=float(outcome.one_pass_val_ap),
                     status="completed", start_time=now, end_time=now, steps=best.steps if best else 0,
                     extra_json=json.dumps({"one_pass": True, "model_version": outcome.model_version}))
