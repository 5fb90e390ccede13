"""Does the testbed tell policies apart? Final val AP of fixed policies and DA2's uniform start, over seeds.

On configs/bench_cpu.yaml (the config the CPU comparisons use), for each seed: a final training exactly as
`da2 compare` runs it (the shared child recipe: `child_fit` + `run_child`, cfg.train.epochs on the full train
split from the shared warm start, scored once on val) with fixed:none, fixed:standard-pose, fixed:randaugment,
fixed:trivialaugment and DA2's starting point (24 two-op sub-policies, uniform pi, p = m = 0.5). In-process, no
Ray: the same training code without the Tune wrapper. Writes benchmarks/results/policy_sensitivity.json.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/policy_sensitivity.py [--seeds 0 1 2] [--config configs/bench_cpu.yaml]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from harness import ensure_warm_start, seed_stats, write_result

from da2_platform.config import ExperimentConfig, load_config
from da2_platform.data.splits import prepare_data
from da2_platform.data.topdown import TopDownDataset
from da2_platform.policies import resolve_policy
from da2_platform.search.children import child_fit, run_child
from da2_platform.search.relaxed_policy import RelaxedPolicy, op_slots
from da2_platform.warmstart import PretrainSettings
from search_spaces.policy import Policy

FIXED = ["fixed:none", "fixed:standard-pose", "fixed:randaugment", "fixed:trivialaugment"]
UNIFORM = "da2-start:uniform-24x2"


def uniform_policy(cfg: ExperimentConfig, flip_pairs) -> Policy:
    """DA2's starting point: its K x N op slots (drawn with the config's seed), pi uniform, p = m = 0.5."""
    da2 = cfg.search.da2
    design = getattr(da2, "slot_design", "random")
    slots = op_slots(da2.sub_policies, da2.ops_per_sub_policy, cfg.seed, design=design)
    return RelaxedPolicy(slots, flip_pairs, init_p=0.5, init_m=0.5).to_policy({"source": UNIFORM})


def final_ap(cfg: ExperimentConfig, data, policy: Policy, evals: int = 1) -> tuple[list[dict], float]:
    """One final training as compare runs it; returns its val AP curve ([{step, val_ap}], the last is the final
    AP) and seconds. `evals` > 1 adds evaluations along the way (no effect on the training itself)."""
    settings = {"cfg": cfg.model_dump(mode="json"), "space": None, "child_steps": None, "evals": evals,
                "train_annotations": str(data.full_train_annotations), "train_images": str(data.train_images),
                "eval_annotations": str(data.val_annotations), "eval_images": str(data.val_images)}
    reports: list[dict] = []
    start = time.perf_counter()
    fit = child_fit(cfg, settings, policy, torch.device("cpu"))
    run_child(fit, settings, lambda metrics, blob: reports.append(metrics))
    curve = [{"step": int(r["step"]), "val_ap": round(float(r["val_ap"]), 4)} for r in reports]
    return curve, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", default="configs/bench_cpu.yaml")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--policies", nargs="+", default=[*FIXED, UNIFORM])
    parser.add_argument("--pretrain-steps", type=int, default=PretrainSettings().steps)
    parser.add_argument("--evals", type=int, default=1, help="val evaluations per training (the curve)")
    parser.add_argument("--summary-only", action="store_true",
                        help="train nothing: summarise the runs already in --out (e.g. merged from parallel runs)")
    parser.add_argument("--out", default="benchmarks/results/policy_sensitivity.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    base = load_config(args.config)
    pretrain = PretrainSettings(steps=args.pretrain_steps)
    ensure_warm_start(base, args.config, pretrain)
    data = prepare_data(base)
    flip_pairs = TopDownDataset(data.full_train_annotations, data.train_images,
                                input_size=base.data.input_size).flip_pairs
    policies = {name: (uniform_policy(base, flip_pairs) if name == UNIFORM else resolve_policy(name).policy)
                for name in args.policies}
    out = Path(args.out)
    previous = json.loads(out.read_text()) if out.is_file() else {}
    runs = previous.get("runs", {}) if previous.get("config") == args.config else {}
    for seed in args.seeds:
        raw = base.model_dump(mode="json")
        raw["seed"] = seed
        cfg = ExperimentConfig.model_validate(raw)
        for name, policy in policies.items():
            key = f"{name}@{seed}"
            if key in runs or args.summary_only:  # a rerun after an interruption keeps what was measured
                continue
            curve, seconds = final_ap(cfg, data, policy, args.evals)
            runs[key] = {"policy": name, "seed": seed, "val_ap": curve[-1]["val_ap"], "curve": curve,
                         "seconds": round(seconds, 1)}
            print(json.dumps(runs[key]), flush=True)
            write_result(out, _summary(args, base, pretrain, runs, policies), args.config)
    result = _summary(args, base, pretrain, runs, policies)
    write_result(out, result, args.config)
    print(json.dumps({k: result[k] for k in ("per_policy", "done_when")}, indent=2))


def _summary(args, cfg: ExperimentConfig, pretrain: PretrainSettings, runs: dict, policies: dict) -> dict:
    per_policy = {}
    for name in policies:
        values = [runs[f"{name}@{s}"]["val_ap"] for s in args.seeds if f"{name}@{s}" in runs]
        per_policy[name] = seed_stats(values)
    done_when = None
    a, b = per_policy.get("fixed:standard-pose"), per_policy.get("fixed:none")
    if a and b and a["std"] is not None and b["std"] is not None:
        gap, noise = a["mean"] - b["mean"], max(a["std"], b["std"])
        done_when = {"gap_standard_pose_minus_none": round(gap, 4), "max_seed_std": noise,
                     "gap_over_max_std": round(gap / noise, 2) if noise else None,
                     "holds": gap >= 3 * noise and gap >= 0.05}
    steps_per_epoch = -(-runs_crops(cfg) // cfg.train.batch_size) if runs else None
    return {
        "config": args.config, "seeds": args.seeds, "threads": 1, "device": "cpu", "torch": torch.__version__,
        "recipe": {"model": cfg.model.build_kwargs(17) | {"init_weights": "warm start"},
                   "epochs": cfg.train.epochs, "steps_per_epoch": steps_per_epoch, "lr": cfg.train.lr,
                   "batch_size": cfg.train.batch_size, "input_size": list(cfg.data.input_size),
                   "train_images": cfg.data.synth_train, "val_images": cfg.data.synth_val,
                   "shift": cfg.data.synth_shift},
        "warm_start": {"steps": pretrain.steps, "images": pretrain.images, "seed": pretrain.seed, "lr": pretrain.lr,
                       "policy": "fixed:standard-pose"},
        "std": "sample standard deviation over seeds (n-1)",
        "uniform_policy": policies.get(UNIFORM).to_dict() if UNIFORM in policies else None,
        "per_policy": per_policy, "done_when": done_when, "runs": runs,
    }


def runs_crops(cfg: ExperimentConfig) -> int:
    data = prepare_data(cfg)
    return len(TopDownDataset(data.full_train_annotations, data.train_images, input_size=cfg.data.input_size))


if __name__ == "__main__":
    main()
