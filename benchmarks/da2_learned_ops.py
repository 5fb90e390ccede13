"""What DA2's searches learned on the target testbed: how far each policy moved from its start, and toward which ops.

Reads the DA2 search pieces of the comparison (benchmarks/results/compare_cpu/search_<seed>_<method>.json; trains
nothing) and, per method and seed, writes
- `effective_sub_policies`: exp(entropy of pi); the start is uniform over all K pairs (K = 136), so K means pi
  has not moved and 1 means one sub-policy holds all the weight;
- `op_rate`: per op, the expected rate at which a train crop gets it, sum over the sub-policies holding it of
  pi_k * p_k,n; at the start every op has 16 / 136 * 0.5 = 0.059;
- `target_ops`: the ops the lowlight target needs (those of configs/policies/oracle-lowlight.json), their rate
  and rank among the 17 searched ops (1 = applied most), beside their mean rank if the rates were random (9).
Writes benchmarks/results/da2_learned_ops.json:

    .venv/bin/python benchmarks/da2_learned_ops.py
"""

from __future__ import annotations

import argparse
import json
import math
from collections import defaultdict
from pathlib import Path

import numpy as np
from harness import write_result

from search_spaces.ops import searched_op_names
from search_spaces.policy import Policy

DA2 = {"da2": "da2", "da2_score": "da2:score"}  # piece-file spelling -> method


def learned(policy: Policy) -> dict:
    total = sum(sub.weight for sub in policy.sub_policies)
    weights = [sub.weight / total for sub in policy.sub_policies]
    entropy = -sum(w * math.log(w) for w in weights if w > 0)
    rate: dict[str, float] = defaultdict(float)
    for w, sub in zip(weights, policy.sub_policies, strict=True):
        for op in sub.ops:
            rate[op.name] += w * op.p
    return {"effective_sub_policies": math.exp(entropy), "sub_policies": len(weights),
            "op_rate": dict(sorted(rate.items(), key=lambda kv: -kv[1]))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pieces", default="benchmarks/results/compare_cpu")
    parser.add_argument("--oracle", default="configs/policies/oracle-lowlight.json")
    parser.add_argument("--out", default="benchmarks/results/da2_learned_ops.json")
    args = parser.parse_args()
    target = sorted({op.name for sub in Policy.load(args.oracle).sub_policies for op in sub.ops})
    ops = list(searched_op_names(False))
    runs: dict = defaultdict(dict)
    for path in sorted(Path(args.pieces).glob("search_*_*.json")):
        seed, spelled = path.stem.split("_", 2)[1:]
        if spelled not in DA2:
            continue
        rows = json.loads(path.read_text())["rows"]
        row = next((r for r in rows if r.get("policy_json")), None)
        if row is None:
            continue
        entry = learned(Policy.from_json(row["policy_json"]))
        ranks = {op: rank for rank, op in enumerate(entry["op_rate"], start=1)}
        entry["target_ops"] = {op: {"rate": entry["op_rate"].get(op, 0.0), "rank": ranks.get(op, len(ops))}
                               for op in target}
        entry["search_val_ap"] = row.get("search_val_ap")
        runs[DA2[spelled]][seed] = entry
    summary = {}
    for method, seeds in runs.items():
        summary[method] = {
            "seeds": sorted(seeds),
            "effective_sub_policies_mean": float(np.mean([s["effective_sub_policies"] for s in seeds.values()])),
            "target_rank_mean": {op: float(np.mean([s["target_ops"][op]["rank"] for s in seeds.values()]))
                                 for op in target},
            "op_rate_range_mean": [float(np.mean([min(s["op_rate"].values()) for s in seeds.values()])),
                                   float(np.mean([max(s["op_rate"].values()) for s in seeds.values()]))]}
    write_result(args.out, {"benchmark": "da2_learned_ops", "pieces": args.pieces, "target_ops": target,
                            "start": {"effective_sub_policies": 136, "op_rate": 16 / 136 * 0.5,
                                      "random_rank_mean": (len(ops) + 1) / 2},
                            "summary": summary, "runs": runs})
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
