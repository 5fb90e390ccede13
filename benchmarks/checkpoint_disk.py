"""Bytes a search leaves on disk per completed child (issue 14: checkpoints filled the disk).

Runs one small RL search (cpu-tiny, SynthPose, 64x48) on a local Ray in a temp work dir and measures, with a
polling thread, the largest checkpoint footprint of the experiment folder while children run, then what is left
after the search: bytes per completed child and checkpoint folders left. OMP_NUM_THREADS=1, torch 1 thread.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/checkpoint_disk.py  ->  benchmarks/results/checkpoint_disk.json
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
import time
from pathlib import Path

from harness import write_result

OUT = Path(__file__).parent / "results" / "checkpoint_disk.json"


def tree_bytes(root: Path, pattern: str = "**/*") -> int:
    total = 0
    for p in root.glob(pattern):
        try:
            if p.is_file() and not p.is_symlink():
                total += p.stat().st_size
        except OSError:
            continue
    return total


def main(trials: int = 3, child_steps: int = 4) -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import torch

    torch.set_num_threads(1)
    from da2_platform.config import load_config
    from da2_platform.search.driver import run_search
    from da2_platform.search.methods import spec_builder

    with tempfile.TemporaryDirectory(prefix="da2-ckpt-bench-") as tmp:
        cfg = load_config(None, {"workdir": tmp, "name": "ckpt", "data.synth_train": 32, "data.synth_val": 8,
                                 "train.batch_size": 8, "train.eval_batch_size": 16,
                                 "search.rl": {"trials": trials, "child_steps": child_steps, "concurrent": 1,
                                               "sub_policies": 2}})
        experiment = Path(tmp) / "ray_results" / "ckpt-rl"
        peak = {"checkpoint_bytes": 0, "checkpoint_dirs": 0}
        done = threading.Event()

        def watch() -> None:
            while not done.is_set():
                if experiment.is_dir():
                    peak["checkpoint_bytes"] = max(peak["checkpoint_bytes"],
                                                   tree_bytes(experiment, "*/checkpoint_*/**/*"))
                    peak["checkpoint_dirs"] = max(peak["checkpoint_dirs"],
                                                  len(list(experiment.glob("*/checkpoint_*"))))
                time.sleep(0.2)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        start = time.perf_counter()
        outcome = run_search(cfg, "rl", spec_builder("rl"), register=False)
        wall = time.perf_counter() - start
        done.set()
        watcher.join()
        completed = sum(1 for r in outcome.trials if r.status == "completed")
        left = tree_bytes(experiment)
        result = {
            "what": "bytes an RL search leaves in ray_results per completed child (cpu-tiny, 64x48, SynthPose)",
            "trials": len(outcome.trials), "completed": completed, "child_steps": child_steps,
            "reports_per_child": 2, "search_wall_seconds": round(wall, 1),
            "peak_checkpoint_bytes_while_running": peak["checkpoint_bytes"],
            "peak_checkpoint_dirs_while_running": peak["checkpoint_dirs"],
            "experiment_bytes_left": left, "bytes_left_per_completed_child": left // max(1, completed),
            "checkpoint_dirs_left": len(list(experiment.glob("*/checkpoint_*"))),
            "workdir_bytes_left": tree_bytes(Path(tmp)),
            "threads": {"OMP_NUM_THREADS": os.environ["OMP_NUM_THREADS"], "torch": torch.get_num_threads()},
        }
    write_result(OUT, result)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
