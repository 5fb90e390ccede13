"""The testbed's policy landscape: final val AP of named, oracle and random policies over seeds.

A search method can only be judged where the right policy is both valuable and hard to find. On a config (the
CPU benchmark's target testbed by default), each policy gets a final training exactly as `da2 compare` runs one
(`search.children.final_training`: cfg.train.epochs on the full train split from the shared warm start, the base
augmentation before the policy, scored once on val), at every seed (the seed draws the data set, the data order
and the augmentation draws). Policies:
- `fixed:none` (the base augmentation only), `fixed:standard-pose`, `fixed:randaugment`, `fixed:trivialaugment`;
- `oracle`: written by hand for the shift (`--oracle`, default configs/policies/oracle-<shift>.json);
- 16 random policies in AutoAugment's format (5 sub-policies x 2 ops of the searched space, p on 11 bins, m on
  10), drawn once with seeds 0-15 of `random_policy`: the same 16 at every seed.

Resumable in pieces: each (policy, seed) result is written to --out as it finishes, and a rerun skips the pieces
already there (for the same config). Writes benchmarks/results/landscape_cpu.json:

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/landscape.py [--config configs/bench_cpu.yaml] [--seeds 0 1 2]
        [--only fixed:none oracle random:0 ...] [--out benchmarks/results/landscape_cpu.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from harness import ensure_warm_start, seed_stats, write_result

from da2_platform.config import ExperimentConfig, load_config
from da2_platform.data.splits import prepare_data
from da2_platform.policies import resolve_policy
from da2_platform.search.children import final_training
from search_spaces.discrete import DiscreteSpace
from search_spaces.policy import Policy

NAMED = ["fixed:none", "fixed:standard-pose", "fixed:randaugment", "fixed:trivialaugment"]
RANDOM_POLICIES = 16


def random_policy(index: int, space: DiscreteSpace | None = None) -> Policy:
    """Random policy `index`: every decision of AutoAugment's format drawn uniformly with seed `index`."""
    space = space or DiscreteSpace()
    rng = np.random.default_rng([7, index])
    limits = space.decisions_per_op() * (space.num_sub_policies * space.ops_per_sub_policy)
    decisions = [int(rng.integers(limit)) for limit in limits]
    return space.to_policy(decisions, name=f"random:{index}", metadata={"method": "random", "seed": index})


def _saved_config(result: dict) -> dict | None:
    """The resolved config a saved result ran with (`provenance.config` held it before harness.py)."""
    saved = result.get("provenance", {})
    return saved.get("config_resolved") or (saved["config"] if isinstance(saved.get("config"), dict) else None)


def policies_for(cfg: ExperimentConfig, oracle: Path) -> dict[str, Policy]:
    out = {name: resolve_policy(name).policy for name in NAMED}
    out["oracle"] = Policy.load(oracle)
    space = DiscreteSpace()
    for i in range(RANDOM_POLICIES):
        out[f"random:{i}"] = random_policy(i, space)
    return out


def recipe(config: dict | None) -> dict | None:
    """What decides a final training: the data, the model and the training recipe (not the search settings)."""
    if not config:
        return None
    data = {k: v for k, v in config["data"].items() if k != "search_val"}  # search-val: no final training reads it
    return {"data": data, "model": config["model"], "train": config["train"]}


def summary(runs: dict, names: list[str], seeds: list[int]) -> dict:
    def stats(name: str) -> dict:
        values = [runs[f"{name}@{s}"]["val_ap"] for s in seeds if f"{name}@{s}" in runs]
        return seed_stats(values)

    named = {name: stats(name) for name in names if not name.startswith("random:")}
    per_random = {name: stats(name) for name in names if name.startswith("random:")}
    complete = [v["mean"] for v in per_random.values() if len(v["per_seed"]) == len(seeds)]
    random = {"per_policy": per_random, "complete": len(complete),
              "median": round(statistics.median(complete), 4) if complete else None,
              "best": round(max(complete), 4) if complete else None,
              "worst": round(min(complete), 4) if complete else None}
    checks = None
    mean = {k: v["mean"] for k, v in named.items()}
    if all(mean.get(k) is not None for k in ("fixed:none", "fixed:standard-pose", "oracle")) and complete:
        stds = [v["std"] for v in named.values() if v["std"] is not None]
        checks = {
            "oracle_minus_standard_pose": round(mean["oracle"] - mean["fixed:standard-pose"], 4),
            "standard_pose_minus_none": round(mean["fixed:standard-pose"] - mean["fixed:none"], 4),
            "oracle_minus_best_random": round(mean["oracle"] - random["best"], 4),
            "standard_pose_minus_median_random": round(mean["fixed:standard-pose"] - random["median"], 4),
            "max_named_seed_std": max(stds) if stds else None,
        }
        checks["holds"] = {
            "oracle - standard-pose >= 0.05": checks["oracle_minus_standard_pose"] >= 0.05,
            "standard-pose - none >= 0.02": checks["standard_pose_minus_none"] >= 0.02,
            "best random <= oracle - 0.02": checks["oracle_minus_best_random"] >= 0.02,
            "median random <= standard-pose": checks["standard_pose_minus_median_random"] >= 0,
            "named seed std <= 0.01": checks["max_named_seed_std"] is not None
            and checks["max_named_seed_std"] <= 0.01,
        }
    return {"policies": named, "random": random, "checks": checks}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/bench_cpu.yaml")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--only", nargs="+", help="train only these policies (names as in the JSON)")
    parser.add_argument("--oracle", type=Path, help="the hand-written oracle (default configs/policies/"
                                                    "oracle-<shift>.json)")
    parser.add_argument("--out", default="benchmarks/results/landscape_cpu.json")
    parser.add_argument("--merge", nargs="+", type=Path, default=[],
                        help="take the runs of these result files (pieces run in parallel, same config)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    base = load_config(args.config)
    oracle = args.oracle or Path("configs/policies") / f"oracle-{base.data.synth_shift}.json"
    if not oracle.is_file():
        raise SystemExit(f"error: {oracle}: oracle policy not found (give --oracle)")
    ensure_warm_start(base, args.config)
    policies = policies_for(base, oracle)
    names = [n for n in policies if not args.only or n in args.only]
    out = Path(args.out)
    previous = json.loads(out.read_text()) if out.is_file() else {}
    same = recipe(_saved_config(previous)) == recipe(base.model_dump(mode="json"))
    runs = previous.get("runs", {}) if same else {}
    for other in args.merge:
        piece = json.loads(other.read_text())
        if recipe(_saved_config(piece)) != recipe(base.model_dump(mode="json")):
            raise SystemExit(f"error: {other}: provenance.config_resolved: another recipe than {args.config}")
        runs.update({k: v for k, v in piece.get("runs", {}).items() if k not in runs})

    def write() -> dict:
        result = {"benchmark": "landscape", "seeds": args.seeds,
                  "std": "sample standard deviation over seeds (n-1)", "oracle_file": str(oracle),
                  "policy_definitions": {n: policies[n].to_dict() for n in policies if not n.startswith("fixed:")},
                  **summary(runs, list(policies), args.seeds), "runs": runs}
        write_result(out, result, args.config, resolved=base.model_dump(mode="json"))
        return result

    for seed in args.seeds:
        raw = base.model_dump(mode="json")
        raw["seed"] = seed
        cfg = ExperimentConfig.model_validate(raw)
        data = prepare_data(cfg)
        for name in names:
            key = f"{name}@{seed}"
            if key in runs:  # a rerun after an interruption keeps what was measured
                continue
            curve, seconds = final_training(cfg, data, policies[name])
            runs[key] = {"policy": name, "seed": seed, "val_ap": curve[-1]["val_ap"], "seconds": round(seconds, 1),
                         "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
            print(json.dumps(runs[key]), flush=True)
            write()
    result = write()
    print(json.dumps({"policies": {k: v["mean"] for k, v in result["policies"].items()},
                      "random": {k: result["random"][k] for k in ("median", "best", "worst")},
                      "checks": result["checks"]}, indent=2))


if __name__ == "__main__":
    main()
