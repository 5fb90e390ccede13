"""The prepared device check (benchmarks/gpu_check.py): device-seconds count the GPU fraction a trial holds, the
ledger check flags rows that do not, and `--smoke` runs every section's code path on the CPU to completion."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from da2_platform.ledger import LedgerRow, device_seconds
from da2_platform.search.trial import TrialClock

REPO_ROOT = Path(__file__).resolve().parents[1]
SCRIPT = REPO_ROOT / "benchmarks" / "gpu_check.py"


def load_gpu_check():
    """benchmarks/ is not a package: load the script as a module (registered first, as its dataclasses need)."""
    if "gpu_check" not in sys.modules:
        sys.path.insert(0, str(SCRIPT.parent))  # its own helpers (harness.py), as running it as a script has
        spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
        module = importlib.util.module_from_spec(spec)
        sys.modules["gpu_check"] = module
        spec.loader.exec_module(module)
    return sys.modules["gpu_check"]


def row(trial_id: str, held: float, wall: float, device: float, kind: str = "gpu", start: str = "",
        end: str = "") -> LedgerRow:
    return LedgerRow(experiment="e", method="rl", trial_id=trial_id, policy_json="", device_kind=kind,
                     devices_held=held, wall_seconds=wall, device_seconds=device, search_val_ap=0.0, status="completed",
                     start_time=start, end_time=end)


def test_a_quarter_gpu_counts_a_quarter_of_the_wall_time():
    wall = 123.4
    assert device_seconds(wall, 0.25, 1) == ("gpu", 0.25, pytest.approx(0.25 * wall))
    assert device_seconds(wall, 0, 2) == ("cpu", 2.0, pytest.approx(2 * wall))  # CPU-only cluster: CPUs held


def test_trial_clock_reports_the_fraction_it_holds_across_a_restore():
    clock = TrialClock(gpus=0.25, cpus=2, previous_wall=100.0)
    time.sleep(0.05)
    report = clock.report()
    assert report["device_kind"] == "gpu" and report["devices_held"] == 0.25
    assert report["wall_seconds"] >= 100.05
    assert report["device_seconds"] == pytest.approx(0.25 * report["wall_seconds"])


def test_ledger_check_flags_rows_that_count_more_than_they_held():
    gc = load_gpu_check()
    good = [row("a", 0.25, 40.0, 10.0), row("b", 0.25, 8.0, 2.0)]
    assert gc.ledger_check(good, gpus_per_trial=0.25, cpus_per_trial=2, gpu=True)["ok"]
    whole_gpu = row("c", 1.0, 40.0, 40.0)  # a child on a quarter GPU counted as a whole one
    check = gc.ledger_check([*good, whole_gpu], gpus_per_trial=0.25, cpus_per_trial=2, gpu=True)
    assert not check["ok"] and check["rows_not_counting_what_they_held"] == ["c"]
    wrong_product = row("d", 0.25, 40.0, 40.0)
    assert gc.ledger_check([wrong_product], 0.25, 2, gpu=True)["rows_not_counting_what_they_held"] == ["d"]
    assert not gc.ledger_check([], 0.25, 2, gpu=True)["ok"]  # no rows proves nothing


def test_max_overlap_counts_trials_sharing_the_device():
    gc = load_gpu_check()
    t = "2026-12-01T10:00:{:02d}+00:00"
    rows = [row("a", 0.25, 1, 0.25, start=t.format(0), end=t.format(10)),
            row("b", 0.25, 1, 0.25, start=t.format(2), end=t.format(12)),
            row("c", 0.25, 1, 0.25, start=t.format(5), end=t.format(6)),
            row("d", 0.25, 1, 0.25, start=t.format(10), end=t.format(20))]  # starts as a ends
    assert gc.max_overlap(rows) == 3


def test_goals_say_by_how_much_one_is_missed():
    gc = load_gpu_check()
    sections = {"train_step": {"status": "ok", "images_per_s": 1000.0, "mfu": 0.30},
                "train_compile": {"status": "timeout"},
                "gpu_policy": {"status": "ok", "standard-pose": {"crops_per_s": 30000.0},
                               "random-5x2": {"crops_per_s": 25000.0}},
                "da2_step": {"status": "error", "error": "boom"},
                "cpu_feed": {"status": "ok", "standard-pose": {"16": {"crops_per_s": 1500.0}},
                             "random-5x2": {"16": {"crops_per_s": 800.0}}}}
    summary, goals = gc.summarise(sections, smoke=False)
    by_goal = {g["goal"].split(" ")[0]: g for g in goals}
    assert by_goal["MFU"]["met"] is False and by_goal["MFU"]["off_by"] == "25% short"
    assert by_goal["GPU"]["met"] is True and by_goal["GPU"]["measured"] == 25000.0
    assert by_goal["DA2"]["met"] is None  # not measured: its section failed
    assert by_goal["CPU"]["measured"] == pytest.approx(0.8) and by_goal["CPU"]["off_by"] == "20% short"
    assert summary["cpu_feed"]["standard-pose"]["16"]["ratio_to_demand"] == pytest.approx(1.5)


def test_unknown_section_is_refused_with_exit_2(tmp_path):
    proc = subprocess.run([sys.executable, str(SCRIPT), "--smoke", "--sections", "train_step,warp_drive",
                           "--out", str(tmp_path / "x.json")], capture_output=True, text=True, check=False)
    assert proc.returncode == 2 and "error: --sections" in proc.stderr and "warp_drive" in proc.stderr
    assert not (tmp_path / "x.json").exists()


def test_smoke_runs_every_section_on_the_cpu_to_completion(tmp_path):
    """Part of `make test` (issue 17: the smoke passes there). 11 min on the shared 2-core machine at load average
    15-30, about 3 min on a quiet one; --slack 5 widens every cap so a busy machine does not turn slow sections
    into failures."""
    out = tmp_path / "smoke.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(SCRIPT), "--smoke", "--slack", "5", "--out", str(out)], env=env,
                          capture_output=True, text=True, check=False, timeout=1500)
    assert proc.returncode == 0, proc.stderr[-3000:]
    check_smoke_report(json.loads(out.read_text()))


def test_one_peak_table_gives_an_h100_and_an_h200_their_mfu():
    load_gpu_check()
    import harness  # benchmarks/harness.py, on the path once gpu_check is loaded

    assert harness.peak_flops("NVIDIA H100 80GB HBM3") == harness.peak_flops("NVIDIA H200") == 989.4e12
    assert harness.peak_flops("NVIDIA H100 PCIe") == 756e12 and harness.peak_flops("cpu") is None
    assert harness.mfu(989.4e12, 2.0, "NVIDIA H100 80GB HBM3") == pytest.approx(0.5)
    assert harness.mfu(1e12, 1.0, "cpu") is None


def test_the_committed_smoke_json_is_a_complete_smoke_run():
    """benchmarks/results/gpu_check_smoke.json, which benchmarks/README.md cites, holds what a smoke run writes."""
    report = json.loads((SCRIPT.parent / "results" / "gpu_check_smoke.json").read_text())
    check_smoke_report(report)
    assert report["provenance"]["commit"] and report["provenance"]["machine"]["cores"] > 0


def check_smoke_report(report: dict) -> None:
    """What a complete smoke run's JSON holds (a fresh run's, and the committed gpu_check_smoke.json)."""
    peaks = report["peak"]["bf16_dense_flops"]
    assert report["mode"] == "smoke" and peaks["H100"] == peaks["H200"] == 989.4e12 and report["peak"]["source"]
    sections = report["sections"]
    assert list(sections) == ["data", "train_step", "gpu_policy", "da2_step", "cpu_feed", "compare", "train_ray",
                              "train_compile"]
    for name, result in sections.items():
        if name != "train_compile":  # a compile past its cap is a recorded outcome, not a failure
            assert result["status"] == "ok", (name, result.get("error"))
        assert result["status"] in ("ok", "timeout", "error") and result["seconds"] >= 0 and result["cap_s"] > 0

    train = sections["train_step"]
    assert train["images_per_s"] > 0 and train["model_gflops_per_image"] > 0 and train["mfu"] is None  # CPU
    assert all(sections["gpu_policy"][p]["crops_per_s"] > 0 for p in ("standard-pose", "random-5x2"))
    da2 = sections["da2_step"]
    for key in ("central_every1", "central_every3", "forward_every1", "forward_every3"):
        assert da2[key]["step_s"] > 0 and da2[key]["ratio_to_plain_augmented"] > 0
    feed = sections["cpu_feed"]
    assert all(feed[p][w]["crops_per_s"] > 0 for p in ("standard-pose", "random-5x2") for w in ("1", "2"))

    compare = sections["compare"]
    assert compare["completed"] and compare["search_device_hours"] > 0
    assert set(compare["methods"]) == {"fixed:none", "rl"} and compare["methods"]["rl"]["trials"] == 2
    check = compare["ledger_counts_fractions"]
    assert check["ok"] and check["expected_kind"] == "cpu" and check["rows"] == 5  # 3 search + 2 final rows
    train_ray = sections["train_ray"]
    assert train_ray["completed"] and train_ray["device_hours"] > 0 and train_ray["epoch"] == 1

    summary = report["summary"]
    assert summary["feed_demand_images_per_s"] > 0
    assert summary["cpu_feed"]["standard-pose"]["1"]["ratio_to_demand"] > 0
    assert summary["compare_completed"] and summary["train_completed"] and summary["ledger_counts_fractions"]
    assert all(g["met"] is None for g in report["goals"])  # goals are for the GPU run


@pytest.mark.slow
def test_a_section_past_its_cap_is_recorded_and_leaves_nothing_running(tmp_path):
    """`compare` cannot finish in what is left of a 30 s budget (Ray, MLflow, two searches and two final
    trainings; 90 s was enough on a quiet machine): it is recorded as a timeout, and its `da2`
    process and local Ray (same process group) are gone afterwards."""
    out = tmp_path / "capped.json"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--smoke", "--sections", "compare", "--budget-s", "30",
                           "--keep-workspace", "--out", str(out)], env={**os.environ, "OMP_NUM_THREADS": "1"},
                          capture_output=True, text=True, check=False, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    workspace = report["workspace"]
    try:
        assert report["sections"]["data"]["status"] == "ok"
        assert report["sections"]["compare"]["status"] == "timeout"
        assert report["summary"]["compare_completed"] is None
        time.sleep(2)
        left = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, check=True).stdout
        assert workspace not in left, [line for line in left.splitlines() if workspace in line]
    finally:
        import shutil

        shutil.rmtree(workspace, ignore_errors=True)
