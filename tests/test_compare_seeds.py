"""`da2 compare --seeds`: the spread of each method across seeds, its plot, one MLflow parent run per compare, and
a comparison that counts only its own trials."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from da2_platform.ledger import CostLedger, LedgerRow
from da2_platform.report import SeedsReport, band_across_seeds, build_seeds_report, plot_seeds_report


def row(method: str, trial: str, hours: float, ap: float, end: str) -> LedgerRow:
    return LedgerRow(experiment="hand", method=method, trial_id=trial, policy_json="{}", device_kind="gpu",
                     devices_held=1.0, wall_seconds=hours * 3600, device_seconds=hours * 3600,
                     status="completed", start_time=end, end_time=end,
                     **({"val_ap": ap} if method.startswith("final:") else {"search_val_ap": ap}))


SEED0 = [row("da2", "d", 0.5, 0.60, "2026-01-01T00:30"),
         row("rl", "a", 2.0, 0.50, "2026-01-01T01:00"), row("rl", "b", 2.0, 0.62, "2026-01-01T02:00"),
         row("rl", "c", 2.0, 0.621, "2026-01-01T03:00"),
         row("final:da2", "fd", 1.0, 0.70, "2026-01-02T00:00"), row("final:rl", "fr", 1.0, 0.66, "2026-01-02T00:00")]
SEED1 = [row("da2", "d", 1.5, 0.58, "2026-01-01T00:30"),
         row("rl", "a", 4.0, 0.64, "2026-01-01T01:00"), row("rl", "b", 4.0, 0.50, "2026-01-01T02:00"),
         row("final:da2", "fd", 1.0, 0.72, "2026-01-02T00:00"), row("final:rl", "fr", 1.0, 0.70, "2026-01-02T00:00")]


def test_seeds_report_gives_means_spreads_and_ratios_to_da2():
    report = build_seeds_report({0: SEED0, 1: SEED1}, "hand")
    by = {m.method: m for m in report.methods}
    assert [m.method for m in report.methods] == ["da2", "rl"] and report.seeds == [0, 1]
    da2, rl = by["da2"], by["rl"]
    assert da2.seeds == rl.seeds == 2 and rl.trials == 2.5
    assert da2.final_ap == pytest.approx(0.71) and da2.final_ap_std == pytest.approx(0.0141421, rel=1e-4)
    assert rl.final_ap == pytest.approx(0.68) and rl.final_ap_std == pytest.approx(0.0282843, rel=1e-4)
    assert da2.search_device_hours == pytest.approx(1.0) and rl.search_device_hours == pytest.approx(7.0)
    # near-best: seed 0 reaches 0.621 - 0.005 at its 2nd trial (4 h), seed 1 at its 1st (4 h)
    assert rl.device_hours_to_near_best == pytest.approx(4.0) and rl.device_hours_to_near_best_std == 0.0
    assert rl.ratio_to_da2 == pytest.approx(7.0) and rl.near_best_ratio_to_da2 == pytest.approx(4.0)
    assert da2.ratio_to_da2 == pytest.approx(1.0)
    one = build_seeds_report({0: SEED0}, "hand")
    assert one.methods[0].final_ap_std is None  # one seed has no spread
    encoded = json.loads(json.dumps(report.to_dict()))
    assert set(encoded["per_seed"]) == {"0", "1"} and encoded["methods"][1]["method"] == "rl"
    assert len(report.table_rows()) == 2 and len(report.table_rows()[0]) == len(report.TABLE_COLUMNS)


def test_band_across_seeds_is_the_range_of_the_best_so_far_curves():
    x, mean, low, high = band_across_seeds([[(1.0, 0.2), (3.0, 0.5)], [(2.0, 0.4)]], points=5)
    at = {round(float(h), 6): (float(m), float(lo), float(hi)) for h, m, lo, hi in zip(x, mean, low, high)}
    assert min(at) == 2.0  # from where both seeds have a trial: before, a mean of seed 0 alone would then fall
    assert at[2.0] == pytest.approx((0.3, 0.2, 0.4))
    assert at[3.0] == pytest.approx((0.45, 0.4, 0.5))
    # a best-so-far mean never falls, even when the weaker seed ends later (seed 1 here: one trial at 5.0)
    _, mean, _, _ = band_across_seeds([[(1.0, 0.5), (2.0, 0.6)], [(5.0, 0.1)]], points=9)
    assert len(mean) and (mean[1:] >= mean[:-1]).all() and mean[0] == pytest.approx(0.35)


def test_a_saved_seeds_report_reads_back_as_it_was():
    report = build_seeds_report({0: SEED0, 1: SEED1}, "hand")
    again = SeedsReport.from_dict(json.loads(json.dumps(report.to_dict())))
    assert again == report and plot_seeds_report(again)[:4] == b"\x89PNG"


def test_the_plot_uses_no_pyplot_state():
    png = plot_seeds_report(build_seeds_report({0: SEED0, 1: SEED1}, "hand"))
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    code = ("import sys; from tests.test_compare_seeds import SEED0, SEED1; "
            "from da2_platform.report import build_seeds_report, plot_seeds_report, plot_report, build_report; "
            "plot_seeds_report(build_seeds_report({0: SEED0, 1: SEED1}, 'x')); plot_report(build_report(SEED0, 'x')); "
            "assert 'matplotlib.pyplot' not in sys.modules, 'pyplot imported'")
    done = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).parents[1], capture_output=True, text=True,
                          check=False)
    assert done.returncode == 0, done.stderr[-2000:]


def test_seeds_option_is_checked():
    from da2_platform.cli.compare import parse_seeds
    from da2_platform.errors import ConfigError

    assert parse_seeds("0, 1,2") == [0, 1, 2] and parse_seeds(None) is None
    for bad in ("0,x", "", "-1"):
        with pytest.raises(ConfigError, match="--seeds: expected comma-separated whole numbers"):
            parse_seeds(bad)


# -- real searches ------------------------------------------------------------------------------------------------

def write_config(workdir: Path, synth, name: str = "cmp") -> Path:
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / f"{name}.yaml"
    path.write_text(yaml.safe_dump({
        "name": name, "seed": 0, "workdir": str(workdir), "tracking": {"experiment": "cmp"},
        "data": {"root": str(synth.root), "synth_train": 24, "synth_val": 8, "synth_seed": 0, "synth_shift": "none",
                 "search_val": "from_train"},
        "train": {"epochs": 1, "batch_size": 8, "max_steps_per_epoch": 1, "eval_batch_size": 16, "flip_test": False},
        "search": {"rl": {"child_steps": 1}},
    }))
    return path


@pytest.mark.slow
def test_compare_over_seeds_counts_its_own_trials_under_one_parent_run(synthpose_small, tmp_path, ray_session,
                                                                        capsys):
    from cli_helpers import run_json
    from mlflow import MlflowClient

    workdir = tmp_path / "w"
    # an earlier standalone search of what becomes seed 0's experiment: its trial is not the comparison's
    first = run_json(["search", "--method", "fixed:none", "--config",
                      str(write_config(workdir, synthpose_small, "cmp-seed0")), "--json"], capsys)
    assert first["trials"] == 1
    cfg = str(write_config(workdir, synthpose_small))
    out = run_json(["compare", "--config", cfg, "--methods", "fixed:none", "--seeds", "0,1", "--fresh", "--json"], capsys)
    ledger = CostLedger.for_experiment(workdir, "cmp-seed0").rows()
    assert sum(r.method == "fixed:none" for r in ledger) == 2  # the ledger holds both searches' trials
    by = {m["method"]: m for m in out["methods"]}
    assert set(by) == {"fixed:none"} and out["seeds"] == [0, 1]  # (DA2's ratios: the hand-ledger test above)
    for m in by.values():
        assert m["seeds"] == 2 and m["trials"] == 1  # the comparison counts its own trial per seed, not 2
        assert 0.0 <= m["final_ap"] <= 1.0 and m["final_ap_std"] is not None
        assert m["search_device_hours"] > 0 and m["device_hours_to_near_best"] > 0
    assert set(out["per_seed"]) == {"0", "1"}
    assert Path(out["plot"]).read_bytes()[:4] == b"\x89PNG"

    uri = f"sqlite:///{(workdir / 'mlflow' / 'mlflow.db').resolve()}"
    client = MlflowClient(tracking_uri=uri)
    parent = client.get_run(out["mlflow_run_id"])
    assert parent.data.tags["da2.kind"] == "compare" and parent.info.status == "FINISHED"
    assert {a.path for a in client.list_artifacts(parent.info.run_id, "report")} == {"report/cmp.json",
                                                                                    "report/cmp.png"}
    nested = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert sorted((r.data.tags["da2.method"], r.data.tags["da2.seed"]) for r in nested) == [
        ("fixed:none", "0"), ("fixed:none", "1")]
