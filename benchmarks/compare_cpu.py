"""`da2 compare --seeds` at a larger CPU budget: every method side by side on one local Ray session, seed after
seed, then a fresh training with each best policy, scored on the val split no search saw. Writes the report
(per method mean and spread across seeds, each seed's table and curves), the goal check and the run's facts to
benchmarks/results/compare_cpu.json and the plot (mean line, band across seeds) beside it.

Goals (issue 13), on the means over the seeds: DA2's final AP at least the best baseline's minus 0.5 AP points
(0.005 on the [0, 1] scale) and at least fixed:standard-pose's; RL's device-hours to its near-best search-val AP
at least 50x DA2's, Optuna's at least 10x.

    # the testbed's benchmark config; its warm start (model.init_weights) is trained on first use (~10 min)
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/compare_cpu.py --config configs/bench_cpu.yaml --seeds 0,1,2 \\
        --budget-device-hours 0.5 --fresh
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path

from harness import write_result

from da2_platform.compare import run_compare_seeds
from da2_platform.config import load_config
from da2_platform.files import write_bytes_atomic
from da2_platform.report import NEAR_BEST


def goal_check(report: dict) -> dict:
    """The issue's goals read off the seeds report (means over seeds), with by how much each is met or missed."""
    methods = {m["method"]: m for m in report["methods"]}
    da2 = methods.get("da2")
    baselines = {k: v for k, v in methods.items() if k != "da2"}
    if da2 is None or not baselines:
        return {"evaluated": False, "why": "needs da2 and at least one baseline"}
    out: dict = {"evaluated": True, "near": NEAR_BEST, "seeds": report["seeds"]}
    finals = {k: v["final_ap"] for k, v in baselines.items() if v["final_ap"] is not None}
    if da2["final_ap"] is not None and finals:
        best = max(finals, key=finals.get)
        out["final_ap_vs_best_baseline"] = {
            "da2": da2["final_ap"], "da2_std": da2["final_ap_std"], "best_baseline": best,
            "best_baseline_ap": finals[best], "best_baseline_std": baselines[best]["final_ap_std"],
            "margin": da2["final_ap"] - (finals[best] - NEAR_BEST), "met": da2["final_ap"] >= finals[best] - NEAR_BEST}
        if "fixed:standard-pose" in finals:
            sp = finals["fixed:standard-pose"]
            out["final_ap_vs_standard_pose"] = {"da2": da2["final_ap"], "standard_pose": sp,
                                                "margin": da2["final_ap"] - sp, "met": da2["final_ap"] >= sp}
    for other, limit in (("rl", 50.0), ("optuna", 10.0)):
        if other in methods and da2["device_hours_to_near_best"] > 0:
            ratio = methods[other]["device_hours_to_near_best"] / da2["device_hours_to_near_best"]
            out[f"{other}_near_best_device_hours_per_da2"] = {"ratio": ratio, "goal": limit, "met": ratio >= limit}
    return out


def starting_ap(cfg) -> float:
    """Val AP of the model every training starts from (model.init_weights, or a random init)."""
    import torch

    from da2_platform.data.splits import prepare_data
    from da2_platform.data.topdown import TopDownDataset
    from da2_platform.inference import evaluate_model
    from da2_platform.training.loop import build_model

    data = prepare_data(cfg)
    joints = TopDownDataset(data.val_annotations, data.val_images, input_size=cfg.data.input_size).num_joints
    model = build_model(cfg, joints)
    return evaluate_model(model, data.val_annotations, data.val_images, cfg.data.input_size, torch.device("cpu"),
                          flip_test=cfg.train.flip_test, decoder=cfg.train.decoder)["AP"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/bench_cpu.yaml")
    parser.add_argument("--methods", default="da2,rl,optuna,pba,fixed")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--budget-device-hours", type=float, default=0.5)
    parser.add_argument("--out", default="benchmarks/results/compare_cpu.json")
    parser.add_argument("--fresh", action="store_true", help="delete the config's workdir results first")
    parser.add_argument("--replot", action="store_true", help="only draw --out's plot again from its saved report")
    args = parser.parse_args()
    if args.replot:
        from da2_platform.report import SeedsReport, plot_seeds_report

        saved = json.loads(Path(args.out).read_text())
        write_bytes_atomic(Path(saved["plot"]), plot_seeds_report(SeedsReport.from_dict(saved["report"])))
        print(saved["plot"])
        return

    import torch

    torch.set_num_threads(1)
    cfg = load_config(args.config)
    if cfg.model.init_weights is not None and not Path(cfg.model.init_weights).is_file():
        from da2_platform.warmstart import warm_start

        ws = warm_start(cfg, folder=Path(cfg.model.init_weights).parent, threads=2)  # as the demo trains it
        print(f"warm start: {ws.path} ({ws.seconds:.0f} s)", file=sys.stderr, flush=True)
        if ws.path != Path(cfg.model.init_weights):
            sys.exit(f"error: {args.config}: model.init_weights: the warm start went to {ws.path}")
    if args.fresh:
        for sub in ("ledger", "ray_results", "reports", "mlflow"):
            shutil.rmtree(cfg.workdir / sub, ignore_errors=True)
    start_ap = starting_ap(cfg)  # the shared starting point's val AP, before any method trains it
    print(f"starting point: val AP {start_ap:.4f}", file=sys.stderr, flush=True)
    started = time.time()
    t0 = time.perf_counter()
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    result_ = run_compare_seeds(cfg, methods, seeds, args.budget_device_hours,
                                progress=lambda msg: print(f"[{time.perf_counter() - t0:7.0f} s] {msg}",
                                                           file=sys.stderr, flush=True), fresh=args.fresh)
    wall = time.perf_counter() - t0
    rep = result_.report.to_dict()
    out = Path(args.out)
    result = {
        "benchmark": "compare_cpu", "config": args.config, "methods_requested": methods, "seeds": seeds,
        "budget_device_hours": args.budget_device_hours,
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)), "wall_seconds": wall,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "device": "cpu",
                    "torch_threads": 1, "omp_num_threads": os.environ.get("OMP_NUM_THREADS")},
        "config_resolved": json.loads(cfg.model_dump_json()),
        "searches": [{"seed": run.seed, **o.summary(), "policy": json.loads(o.best_policy.to_json())}
                     for run in result_.seeds for o in run.outcomes],
        "finals": [{"seed": run.seed, "method": f.method, "val_ap": f.val_ap, "device_seconds": f.device_seconds}
                   for run in result_.seeds for f in run.finals],
        "starting_val_ap": start_ap, "mlflow_run_id": result_.mlflow_run_id, "report": rep,
        "goal": goal_check(rep), "plot": str(out.with_suffix(".png")),
    }
    write_result(out, result, args.config)
    write_bytes_atomic(out.with_suffix(".png"), result_.report_png.read_bytes())  # the report's own plot
    print(json.dumps({"wall_seconds": wall, "goal": result["goal"], "table": rep["methods"]}, indent=2))


if __name__ == "__main__":
    main()
