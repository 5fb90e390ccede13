"""`da2 plan`: the arithmetic against hand-computed cases, a plan from a ledger, named errors, and no search."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from da2_platform.cli.main import main
from da2_platform.config import load_config
from da2_platform.ledger import CostLedger, LedgerRow
from da2_platform.plan.bill import Resources, price, report_cost, side_by_side
from da2_platform.plan.costs import UnitCosts
from da2_platform.plan.work import DataSizes, asha_expected_evals, work_function

SIZES = DataSizes(train=100, search_train=80, search_val=10, val=20, source="hand")
COSTS = UnitCosts(device="cpu (hand)", devices_held=1.0, source="hand", train_step=0.5, da2_step={"score": 1.5},
                  setup=2.0, da2_setup=3.0, eval_crop=0.1, checkpoint=0.25)
TWO_CPUS = Resources(workers=1, devices=2)


def hand_config(tmp_path: Path, **search):
    return load_config(None, {
        "name": "hand", "workdir": str(tmp_path / "w"),
        "train.epochs": 2, "train.batch_size": 16,
        "search.rl": {"trials": 10, "child_steps": 20, "concurrent": 2, "evals": 2},
        "search.optuna": {"trials": 4, "child_steps": 20, "concurrent": 2, "evals": 4},
        "search.pba": {"trials": 8, "child_steps": 30, "concurrent": 2, "evals": 6, "perturbation_interval": 3},
        "search.da2": {"steps": 30, "checkpoint_every": 10, "seeds": [0, 1], "estimator": "score"},
        **search})


def priced(cfg, method: str, budget_s: float | None = None):
    return price(work_function(method)(cfg, method, SIZES), COSTS, SIZES, TWO_CPUS, budget_s)


def test_the_plan_adds_up_a_hand_computed_case(tmp_path):
    cfg = hand_config(tmp_path)
    # an RL child: setup 2 + 20 steps x 0.5 + 2 evaluations x 10 crops x 0.1 + 2 checkpoints x 0.25 = 14.5
    rl = priced(cfg, "rl")
    assert rl.search_device_seconds == pytest.approx(10 * 14.5)
    assert rl.concurrent == 2 and rl.wall_seconds == pytest.approx(145 / 2)
    # the final training: 2 epochs x (100 crops // 16 = 6 steps): 2 + 12 x 0.5 + 20 crops x 0.1 + 0.25 = 10.25
    assert rl.final_device_seconds == pytest.approx(10.25) and rl.finals == 1
    # Optuna under ASHA, rungs at evaluations 1 and 2 of 4, half going on at each: 1 + 1/2 + 1/4 + 1/4 = 2
    # evaluations (and reports), 10 of 20 steps on average: 2 + 10 x 0.5 + 2 x 10 x 0.1 + 2 x 0.25 = 9.5
    assert asha_expected_evals(2) == 1.5 and asha_expected_evals(4) == 2.0
    optuna = priced(cfg, "optuna")
    assert optuna.search_device_seconds == pytest.approx(4 * 9.5)
    # PBA, 8 children of 30 steps scored 6 times, perturbing at the 3rd (not the 6th, the last): a quarter of
    # the population restarts once (its setup again): 2 x 1.25 + 30 x 0.5 + 6 x 10 x 0.1 + 6 x 0.25 = 25
    assert priced(cfg, "pba").search_device_seconds == pytest.approx(8 * 25)
    # DA2: one trial per seed, both at once: 3 + 30 x 1.5 + 10 crops x 0.1 + 3 checkpoints x 0.25 = 49.75
    da2 = priced(cfg, "da2:score")
    assert da2.search_device_seconds == pytest.approx(2 * 49.75) and da2.concurrent == 2
    assert da2.wall_seconds == pytest.approx(49.75) and da2.buys == "30 of 30 DA2 steps"
    # a fixed policy trains one child as long as an RL child
    assert priced(cfg, "fixed:none").search_device_seconds == pytest.approx(14.5)


def test_a_budget_caps_the_search_within_a_step_and_says_what_it_buys(tmp_path):
    cfg = hand_config(tmp_path)
    rl_work = work_function("rl")(cfg, "rl", SIZES)
    # the budget account stops the search within a step: each of the 2 running children ends its step, half a
    # 0.5 s step on average
    rl = priced(cfg, "rl", budget_s=50)
    assert rl.search_device_seconds == pytest.approx(50 + 2 * 0.5 / 2)
    # before the account, the first report past the budget stopped it: between two reports 10 steps x 0.5 +
    # 10 crops x 0.1 + a checkpoint 0.25 = 6.25, half of it on average
    assert report_cost(rl_work.search, COSTS, SIZES) == pytest.approx(6.25)
    legacy = price(rl_work, COSTS, SIZES, TWO_CPUS, 50, stop_at="report")
    assert legacy.search_device_seconds == pytest.approx(50 + 6.25 / 2)
    assert rl.bought == pytest.approx(50 / 14.5) and rl.unbudgeted_device_seconds == pytest.approx(145)
    assert priced(cfg, "rl", budget_s=1000).search_device_seconds == pytest.approx(145)  # done before the budget
    # DA2 under a budget buys steps: each seed's share less its setup, evaluation and checkpoints, at 1.5 s a step
    da2 = priced(cfg, "da2:score", budget_s=60)
    assert da2.bought == pytest.approx((30 - 4.75) / 1.5)


def test_a_comparison_runs_the_searches_side_by_side_then_the_finals(tmp_path):
    cfg = hand_config(tmp_path)
    plans = [priced(cfg, m) for m in ("rl", "da2:score", "fixed:none")]
    total = side_by_side(plans, 1.0, TWO_CPUS, final_concurrency=2, seeds=3)
    searches = max(72.5, 49.75, 14.5, (145 + 99.5 + 14.5) / 2)
    finals = max(10.25, 3 * 10.25 / 2)
    assert total["wall_hours"] == pytest.approx(3 * (searches + finals) / 3600)
    assert total["search_device_hours"] == pytest.approx(3 * 259 / 3600)
    assert total["final_device_hours"] == pytest.approx(3 * 3 * 10.25 / 3600)


def test_budgets_are_multiples_of_da2s_cost_and_each_retrains_where_the_policy_can_differ(tmp_path):
    from da2_platform.plan.planner import make_plan

    cfg = hand_config(tmp_path, **{"search.da2": {"steps": 30, "checkpoint_every": 10, "seeds": [0],
                                                  "estimator": "score"}})
    plan = make_plan(cfg, "da2:score,rl,fixed:none", budgets=[1, 3, 30], workers=1, devices_per_worker=2,
                     costs=COSTS, sizes=SIZES)
    reference = 49.75
    assert [b["device_hours"] for b in plan.budgets] == pytest.approx([reference / 3600, 3 * reference / 3600,
                                                                       30 * reference / 3600])
    rl = next(m for m in plan.methods if m.method == "rl")
    assert plan.budgets[0]["methods"]["rl"]["bought"] == pytest.approx(reference / 14.5)
    assert rl.finals == 2  # RL's 145 s end before 3x (149 s): one policy at 1x, the same one from 3x on
    assert rl.search_device_seconds == pytest.approx(145)


def test_projection_to_coco_scales_by_flops_and_prints_its_assumptions(tmp_path):
    from da2_platform.plan.planner import make_plan
    from da2_platform.plan.projection import model_size

    cfg = hand_config(tmp_path)
    plan = make_plan(cfg, "da2:score,rl", scale="coco-r50-256x192", costs=COSTS)
    small, _ = model_size(cfg)
    r50, _ = model_size(load_config("configs/coco_r50_256x192.yaml"))
    step = (6 * r50 * 1e9 * 32) / (6 * small * 1e9 * 16 / 0.5)
    assert plan.costs.train_step == pytest.approx(step) and plan.costs.da2_step["score"] == pytest.approx(3 * step)
    assert plan.sizes.train == 149_813 and plan.experiment == "coco-r50-256x192"
    rl = next(m for m in plan.methods if m.method == "rl")
    assert rl.concurrent == 1  # one GPU by default, a trial holds one
    text = " ".join(plan.assumptions)
    assert "measured:" in text and "scaled:" in text and "not scaled:" in text and "COCO 2017" in text
    at_rate = make_plan(cfg, "rl", scale="coco-r50-256x192", tflops=100.0, costs=COSTS)
    assert at_rate.costs.train_step == pytest.approx(6 * r50 * 1e9 * 32 / 100e12)


# -- the command ---------------------------------------------------------------------------------------------------

def tiny_config(tmp_path: Path) -> Path:
    workdir = tmp_path / "w"
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "config.yaml"
    path.write_text(yaml.safe_dump({
        "name": "tiny", "workdir": str(workdir),
        "data": {"synth_train": 24, "synth_val": 8},
        "train": {"epochs": 1, "batch_size": 8, "eval_batch_size": 16},
        "search": {"da2": {"sub_policies": 6, "steps": 4, "checkpoint_every": 2, "seeds": [0]},
                   "rl": {"trials": 3, "child_steps": 20, "concurrent": 1}}}))
    return path


def ledger_row(method: str, trial: str, steps: int, seconds: float) -> LedgerRow:
    ap = {"val_ap": 0.1} if method.startswith("final:") else {"search_val_ap": 0.1}
    return LedgerRow(experiment="tiny", method=method, trial_id=trial, policy_json="{}", device_kind="cpu",
                     devices_held=1.0, wall_seconds=seconds, device_seconds=seconds, status="completed",
                     start_time="", end_time="", steps=steps, **ap)


@pytest.fixture
def no_measurement(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the plan measured")

    monkeypatch.setattr("da2_platform.plan.measure.measure_costs", refuse)


def test_a_plan_from_the_ledger_measures_nothing(tmp_path, capsys, no_measurement):
    cfg_path = tiny_config(tmp_path)
    workdir = tmp_path / "w"
    CostLedger.for_experiment(workdir, "tiny").append([
        ledger_row("rl", "a", 20, 10.0), ledger_row("rl", "b", 10, 6.0),  # 16 s over 30 steps
        ledger_row("final:rl", "f", 12, 9.0), ledger_row("da2", "d", 4, 6.0)])
    rc = main(["plan", "--config", str(cfg_path), "--methods", "da2,rl", "--json"])
    out = capsys.readouterr()
    assert rc == 0, out.err
    plan = json.loads(out.out)
    assert plan["costs"]["source"].startswith("ledger") and plan["costs"]["amortized"]
    by = {m["method"]: m for m in plan["methods"]}
    assert by["rl"]["search_device_seconds"] == pytest.approx(3 * 20 * 16 / 30)
    assert by["da2"]["search_device_seconds"] == pytest.approx(4 * 6.0 / 4)
    steps = (plan["sizes"]["train"] // 8)  # one epoch of the full train split at batch 8
    assert by["rl"]["final_device_seconds"] == pytest.approx(steps * 9.0 / 12)
    assert not (workdir / "plan" / "costs").exists()  # nothing measured, nothing cached
    # --source ledger refuses what the ledger cannot answer, by name
    other = tiny_config(tmp_path / "other")
    CostLedger.for_experiment(tmp_path / "other" / "w", "tiny").append([ledger_row("rl", "a", 20, 10.0)])
    rc = main(["plan", "--config", str(other), "--methods", "da2:score", "--source", "ledger"])
    err = capsys.readouterr().err
    assert rc == 2 and "error: da2 plan: --source: ledger:" in err and "score estimator" in err


@pytest.mark.parametrize("flags, named", [
    (["--workers", "0"], "da2 plan: --workers:"),
    (["--workers", "two"], "da2 plan: --workers:"),
    (["--gpus-per-worker", "-1"], "da2 plan: --gpus-per-worker:"),
    (["--gpus-per-worker", "0.5"], "da2 plan: --gpus-per-worker: a trial holds 1"),
    (["--methods", "da3"], "da2 plan: --methods: unknown method 'da3'"),
    (["--methods", "fixed:nope"], "da2 plan: --methods: fixed:nope:"),
    (["--methods", ","], "da2 plan: --methods: no method"),
    (["--budget-device-hours", "nan"], "da2 plan: --budget-device-hours:"),
    (["--budgets", "1,x"], "da2 plan: --budgets:"),
    (["--budgets", "1", "--budget-device-hours", "1"], "da2 plan: --budgets and --budget-device-hours: give one"),
    (["--budgets", "1", "--methods", "rl"], "da2 plan: --budgets: budgets are multiples of DA2's cost"),
    (["--tflops", "100"], "da2 plan: --tflops:"),
    (["--scale", "coco-r9-1x1"], "da2 plan: --scale: unknown scale 'coco-r9-1x1'"),
    (["--source", "guess"], "da2 plan: --source:"),
    (["--seeds", "a"], "da2 plan: --seeds:"),
])
def test_bad_flags_are_named_errors(tmp_path, capsys, no_measurement, flags, named):
    rc = main(["plan", "--config", str(tiny_config(tmp_path)), *flags])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: ") and named in err, err


def test_a_bad_config_names_its_file_and_field(tmp_path, capsys, no_measurement):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"search": {"rl": {"trials": 0}}}))
    rc = main(["plan", "--config", str(path)])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith(f"error: {path}: search.rl.trials:"), err


def test_the_plan_runs_no_search_and_writes_only_its_cache(tmp_path, capsys, monkeypatch):
    """A real measurement on a tiny config: no Ray, no Tune folder, no MLflow run, nothing outside <workdir>/plan;
    one JSON object on stdout; the second plan reads the cache."""
    import mlflow
    import ray

    def refuse(*args, **kwargs):
        raise AssertionError("the plan started a search")

    monkeypatch.setattr(ray, "init", refuse)
    monkeypatch.setattr("da2_platform.search.driver.run_search", refuse)
    monkeypatch.setattr(mlflow.MlflowClient, "create_run", refuse)
    monkeypatch.setattr(mlflow, "start_run", refuse)
    cfg_path = tiny_config(tmp_path)
    workdir = tmp_path / "w"
    rc = main(["plan", "--config", str(cfg_path), "--methods", "da2,rl,fixed:none", "--json"])
    out = capsys.readouterr()
    assert rc == 0, out.err
    plan = json.loads(out.out)  # exactly one JSON object
    assert plan["costs"]["source"] == "measured" and set(plan["costs"]["da2_step"]) == {"relaxed", "score"}
    assert all(plan["costs"][k] > 0 for k in ("train_step", "setup", "eval_crop"))
    assert {m["method"] for m in plan["methods"]} == {"da2", "rl", "fixed:none"}
    written = {p.relative_to(workdir).parts[0] for p in workdir.rglob("*") if p.is_file()}
    assert written == {"config.yaml", "plan"}
    assert not (workdir / "ray_results").exists() and not (workdir / "mlflow").exists()
    rc = main(["plan", "--config", str(cfg_path), "--methods", "da2,rl", "--json"])
    again = json.loads(capsys.readouterr().out)
    assert rc == 0 and again["costs"]["source"].startswith("cache")


def test_compare_reports_planned_beside_spent_and_goes_on_without_a_plan(tmp_path, capsys, monkeypatch):
    from da2_platform.cli.compare import plan_first
    from da2_platform.report import build_seeds_report

    rows = [ledger_row("rl", "a", 20, 36.0)]
    report = build_seeds_report({0: rows}, "tiny", planned={"rl": 0.011})
    rl = report.methods[0]
    assert rl.planned_search_device_hours == 0.011 and rl.search_device_hours == pytest.approx(0.01)
    row = report.table_rows()[0]
    columns = report.TABLE_COLUMNS
    assert row[columns.index("planned device-h")] == 0.011 and row[columns.index("search device-h")] == 0.01

    def broken(*args, **kwargs):
        raise RuntimeError("no costs")

    monkeypatch.setattr("da2_platform.plan.planner.make_plan", broken)
    assert plan_first(load_config(tiny_config(tmp_path)), "rl", None, None, "tiny") is None
    assert "plan" in capsys.readouterr().err
