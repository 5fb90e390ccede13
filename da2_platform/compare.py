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
from da2_platform.files import read_json, write_json_atomic
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
    yardstick: dict | None = None  # `--budgets`: final AP at equal budgets, censored device-hours to target


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

    `budget_device_hours` caps every search (DA2 and the fixed policies too): it stops within one step (and the
    evaluation or set-up before it) of that many device-hours (the ledger's unit, GPU-hours or CPU-hours), whatever
    else runs beside it.
    """
    say = progress or (lambda msg: None)
    budget_s = None if budget_device_hours is None else budget_device_hours * 3600
    outcomes = run_searches(cfg, expand_methods(methods, cfg), budget_s, tracking_uri, say, fresh, resume)
    say(f"final trainings: a fresh P2Net with each best policy, {cfg.train.epochs} epochs, val AP")
    return outcomes, run_final_trainings(cfg, outcomes)


def run_searches(cfg: ExperimentConfig, chosen: list[str], budget_s: float | None, tracking_uri: str | None,
                 say: Callable[[str], None], fresh: bool = False, resume: bool = False) -> list[SearchOutcome]:
    """The searches of `chosen` at once, each under `budget_s` device-seconds (None: no budget)."""
    from concurrent.futures import ThreadPoolExecutor, as_completed

    from da2_platform.data.splits import prepare_data
    from da2_platform.raycluster import ensure_ray
    from da2_platform.search.control import SearchControl
    from da2_platform.tracking import setup_tracking

    builders = {m: spec_builder(m) for m in chosen}  # an unknown method fails before anything starts
    setup_tracking(cfg, tracking_uri)  # once, before the threads: creating the experiment is not race-free
    prepare_data(cfg)
    ensure_ray()
    control = SearchControl()
    done: dict[str, SearchOutcome] = {}
    say(f"searches: {', '.join(chosen)} side by side"
        + (f", each under a budget of {budget_s / 3600:.4g} device-hours" if budget_s else ""))
    try:
        with ThreadPoolExecutor(max_workers=len(chosen), thread_name_prefix="search") as pool:
            futures = {pool.submit(run_search, cfg, m, builders[m], tracking_uri=tracking_uri, resume=resume,
                                   fresh=fresh, stopper=control.stopper(budget_s)): m
                       for m in chosen}
            try:
                for future in as_completed(futures):
                    outcome = future.result()
                    done[outcome.method] = outcome
                    say(f"search {outcome.method} done: {len(outcome.trials)} trial(s), best trial's last "
                        f"search-val AP {outcome.best_search_val_ap:.4f}, "
                        f"{outcome.device_seconds / 3600:.4f} device-hours")
            except BaseException:  # Ctrl+C or a failed search: stop the others, keep what already finished
                control.stop.set()
                raise
    finally:
        control.close()
    return [done[m] for m in chosen]


@dataclass
class BudgetRun:
    """One seed of `da2 compare --budgets`: the searches, the budgets and each method's final AP at each."""

    outcomes: list[SearchOutcome]
    budgets: list  # yardstick.Budget
    final_ap: dict[str, list[float | None]]  # method -> final AP at each budget (None: nothing returned yet)
    unit_s: float


def run_budgets(cfg: ExperimentConfig, methods: list[str], multiples: list[float], tracking_uri: str | None,
                say: Callable[[str], None], fresh: bool = False, resume: bool = False) -> BudgetRun:
    """The yardstick for one seed: the DA2 methods first (the costlier one's cost is the unit), then every other
    method under the largest budget; at each budget each method's anytime policy is trained with the final
    recipe and scored on val (the same policy is trained once)."""
    from da2_platform.errors import ConfigError
    from da2_platform.search.anytime import anytime_policy
    from da2_platform.yardstick import DA2_METHODS, budgets_from, da2_unit_cost

    chosen = expand_methods(methods, cfg)
    da2s = [m for m in chosen if m in DA2_METHODS]
    if not da2s:
        raise ConfigError("--budgets: the budgets are multiples of DA2's search cost; --methods needs da2 or "
                          "da2:score (or give --budget-device-hours)")
    first = run_searches(cfg, da2s, None, tracking_uri, say, fresh, resume)
    unit = da2_unit_cost({o.method: o.device_seconds for o in first})
    budgets = budgets_from(multiples, unit)
    say(f"budgets: {', '.join(f'{b.multiple:g}x' for b in budgets)} of DA2's {unit / 3600:.4f} device-hours")
    rest = [m for m in chosen if m not in da2s]
    outcomes = first + (run_searches(cfg, rest, budgets[-1].device_seconds, tracking_uri, say, fresh, resume)
                        if rest else [])
    labels: dict[str, str | None] = {}  # method@budget -> the policy JSON it trains (None: nothing yet)
    for o in outcomes:
        for b in budgets:
            policy, _ = anytime_policy(o.method, o.trials, b.device_seconds, cfg.search.rl.top_children)
            labels[f"{o.method}@{b.multiple:g}x"] = None if policy is None else policy.to_json()
    unique = sorted({p for p in labels.values() if p is not None})
    say(f"final trainings: {len(unique)} distinct anytime policies, {cfg.train.epochs} epochs each, val AP")
    rows = train_finals(cfg, [(f"policy{i}", p) for i, p in enumerate(unique)])
    ap_of = {p: rows[f"policy{i}"].val_ap for i, p in enumerate(unique)}
    final_ap = {o.method: [None if labels[f"{o.method}@{b.multiple:g}x"] is None
                           else ap_of[labels[f"{o.method}@{b.multiple:g}x"]] for b in budgets] for o in outcomes}
    return BudgetRun(outcomes, budgets, final_ap, unit)


def own_rows(cfg: ExperimentConfig, outcomes: list[SearchOutcome]) -> list[LedgerRow]:
    """This comparison's ledger rows: its searches' trials and its final trainings, found by search run id."""
    runs = {o.run_id for o in outcomes}
    ledger = CostLedger.for_experiment(cfg.workdir, cfg.name)
    return [r for r in ledger.rows() if r.search_run_id in runs]


def run_compare_seeds(cfg: ExperimentConfig, methods: list[str], seeds: list[int] | None = None,
                      budget_device_hours: float | None = None, tracking_uri: str | None = None,
                      progress: Callable[[str], None] | None = None, fresh: bool = False,
                      resume: bool = False, budgets: list[float] | None = None,
                      planned: dict[str, float] | None = None) -> CompareResult:
    """`run_compare` for each seed in turn on the same Ray session, under one MLflow parent run; then the
    report (per method mean and spread across seeds, beside `planned` search device-hours per seed when given)
    and its plot, written and attached to that run.

    `budgets` (multiples of the costlier DA2 method's search cost): the yardstick instead (`run_budgets` per
    seed): final AP at each budget and the censored device-hours to DA2's AP, in the report's `yardstick`."""
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
    budget_runs: list[BudgetRun] = []
    yardstick = None
    try:
        for seed in seeds:
            seed_cfg = seed_config(cfg, seed, several)
            if several:
                say(f"seed {seed} ({len(runs) + 1} of {len(seeds)}): experiment {seed_cfg.name}")
            if budgets:
                run = run_budgets(seed_cfg, methods, budgets, tracking_uri, say, fresh=fresh, resume=resume)
                budget_runs.append(run)
                outcomes, finals = run.outcomes, []
            else:
                outcomes, finals = run_compare(seed_cfg, methods, budget_device_hours, tracking_uri, progress,
                                               fresh=fresh, resume=resume)
            for o in outcomes:  # the searches' runs nest under the comparison's run
                client.set_tag(o.run_id, "mlflow.parentRunId", parent_id)
                client.set_tag(o.run_id, "da2.seed", str(seed))
            runs.append(SeedRun(seed, seed_cfg.name, outcomes, finals, own_rows(seed_cfg, outcomes)))
        report = build_seeds_report({r.seed: r.rows for r in runs}, cfg.name, planned)
        json_path, png_path = write_seeds_report(cfg.workdir, cfg.name, report)
        if budget_runs:
            yardstick = seeds_yardstick(budget_runs, seeds)
            write_json_atomic(json_path, {**read_json(json_path, "report"), "yardstick": yardstick})
        client.log_artifact(parent_id, str(json_path), "report")
        client.log_artifact(parent_id, str(png_path), "report")
        _log_spreads(client, parent_id, report)
    except BaseException as e:
        client.set_terminated(parent_id, "KILLED" if isinstance(e, KeyboardInterrupt) else "FAILED")
        raise
    client.set_terminated(parent_id, "FINISHED")
    return CompareResult(cfg.name, runs, report, json_path, png_path, parent_id, yardstick)


def seeds_yardstick(runs: list[BudgetRun], seeds: list[int]) -> dict:
    """The yardstick over seeds: budgets at the seeds' mean unit, each seed's final AP at its own multiples."""
    from da2_platform.yardstick import budgets_from, yardstick_report

    unit = sum(r.unit_s for r in runs) / len(runs)
    multiples = [b.multiple for b in runs[0].budgets]
    methods = list(runs[0].final_ap)
    final_ap = {m: [[r.final_ap.get(m, [None] * len(multiples))[i] for r in runs] for i in range(len(multiples))]
                for m in methods}
    out = yardstick_report(budgets_from(multiples, unit), final_ap, seeds)
    out["units_device_seconds"] = [round(r.unit_s, 3) for r in runs]
    return out


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
    from da2_platform.registry import tag_final_ap

    by_method = {o.method: one_pass_row(cfg, o) for o in outcomes if o.one_pass_val_ap is not None}
    by_method.update(train_finals(cfg, [(o.method, o.best_policy.to_json()) for o in outcomes
                                        if o.one_pass_val_ap is None]))
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


def train_finals(cfg: ExperimentConfig, finals: list[tuple[str, str]]) -> dict[str, LedgerRow]:
    """One Tune trial per (label, policy JSON): the final recipe on the full train split, scored on val; the
    rows are `final:<label>`."""
    from ray import tune

    from da2_platform.data.splits import prepare_data
    from da2_platform.ledger import ledger_row
    from da2_platform.search.checkpoints import delete_experiment_checkpoints
    from da2_platform.search.children import child_trainable
    from da2_platform.search.trial import trial_resources

    if not finals:
        return {}
    data = prepare_data(cfg)
    settings = {"cfg": cfg.model_dump(mode="json"), "space": None, "child_steps": None, "evals": 1,
                "train_annotations": str(data.full_train_annotations), "train_images": str(data.train_images),
                "eval_annotations": str(data.val_annotations), "eval_images": str(data.val_images)}
    storage = (cfg.workdir / "ray_results").resolve()
    tuner = tune.Tuner(
        tune.with_resources(tune.with_parameters(child_trainable, settings=settings), trial_resources(cfg)),
        param_space={"final": tune.grid_search([{"method": label, "policy_json": p} for label, p in finals])},
        tune_config=tune.TuneConfig(max_concurrent_trials=max(1, cfg.search.rl.concurrent)),
        run_config=tune.RunConfig(name=f"{cfg.name}-final", storage_path=str(storage), verbose=0,
                                  checkpoint_config=tune.CheckpointConfig(num_to_keep=1)),
    )
    rows = {}
    base = cfg.model_dump(mode="json")["train"]["base_augment"]
    for result in tuner.fit():
        label = result.config["final"]["method"]
        record = {"trial_id": Path(str(result.path)).name, "metrics": dict(result.metrics or {}),
                  "config": {"method": label}, "error": None if result.error is None else str(result.error)}
        rows[label] = ledger_row(cfg.name, f"final:{label}", record, base)
    delete_experiment_checkpoints(storage / f"{cfg.name}-final")  # scored and recorded: the weights are not kept
    return rows


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
