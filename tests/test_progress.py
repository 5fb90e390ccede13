"""Our own progress lines while a search runs: trials running and done, best search-val AP (of any report, and of
the trials' last reports), device-hours against the budget, an ETA; on stderr, so `--json` keeps stdout to one
object."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import yaml

from da2_platform.cli.main import main
from da2_platform.search.progress import SearchProgress


def test_progress_line_counts_trials_best_ap_budget_and_eta():
    progress = SearchProgress("rl", expected_trials=4, budget_device_seconds=3600.0)
    a, b = SimpleNamespace(trial_id="a"), SimpleNamespace(trial_id="b")
    progress.started -= 100  # 100 s into the search
    progress.running |= {"a", "b"}
    progress.on_trial_result(0, [], a, {"val_ap": 0.25, "device_seconds": 600.0})
    progress.on_trial_result(0, [], a, {"val_ap": 0.0625, "device_seconds": 900.0})  # a's last report is lower
    progress.on_trial_result(0, [], b, {"val_ap": 0.125, "device_seconds": 900.0})
    progress.running.discard("a")
    progress.done.add("a")
    text = progress.text()
    assert text.startswith("rl: 1 running, 1/4 done")
    # the best of any report so far, and the best of the trials' last reports (what the search picks its policy by)
    assert "best search-val AP so far 0.2500 (best last report 0.1250)" in text
    assert "0.5000 of 1.0000 device-h" in text
    assert "ETA 1m40s" in text  # half the budget in 100 s leaves 100 s; 3 trials left at 100 s each is more


@pytest.mark.slow
def test_search_prints_progress_on_stderr_and_one_json_object_on_stdout(synthpose_small, tmp_path, ray_session,
                                                                         capsys):
    workdir = tmp_path / "w"
    workdir.mkdir()
    config = workdir / "config.yaml"
    config.write_text(yaml.safe_dump({
        "name": "progress", "workdir": str(workdir),
        "data": {"root": str(synthpose_small.root), "synth_train": 24, "synth_val": 8, "synth_seed": 0, "synth_shift": "none",
                 "search_val": "from_train"},
        "train": {"epochs": 1, "batch_size": 8, "max_steps_per_epoch": 2, "eval_batch_size": 16},
        "search": {"rl": {"trials": 2, "child_steps": 2, "concurrent": 2, "sub_policies": 2}},
    }))
    assert main(["search", "--method", "rl", "--config", str(config), "--json"]) == 0
    captured = capsys.readouterr()
    out = json.loads(captured.out)
    assert out["trials"] == 2
    lines = [line.strip() for line in captured.err.splitlines() if line.strip().startswith("rl: ")]
    assert any("running" in line and "/2 done" in line for line in lines), captured.err[-2000:]
    assert "rl: 0 running, 2/2 done" in lines[-1] and "best search-val AP so far 0." in lines[-1]
