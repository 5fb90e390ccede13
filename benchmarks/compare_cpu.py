"""The comparison as an experiment: every method under one budget, final AP at equal budgets, censored
device-hours to a common target, over seeds. Resumable in pieces; each piece is written to --out as it ends.

Per seed (the seed draws the data, the splits, the init noise, the searchers and PBA's exploration):
1. `search:<seed>:da2`, `search:<seed>:da2:score`: each DA2 method's search (its ledger rows); the costlier one's
   device-seconds is the seed's unit.
2. `search:<seed>:<method>` for the baselines and fixed policies: one search each under the seed's largest budget
   (its largest multiple x the unit), stopped within one step of it (`search.control`).
3. `final:<seed>:<method>:<multiple>`: at each budget, the method's anytime policy (`search.anytime`: what it
   would have returned had it been stopped there) trained with the final recipe and scored on val, in this
   process (`search.children.final_training`); these trainings cost no search. An anytime policy already scored
   at a smaller budget of the same seed is not trained again.
The summary (`da2_platform.yardstick`): per budget and method the mean and std of final AP over the seeds that
reached that budget; `to_target`: each method's device-hours to the best DA2 method's 1x final AP - 0.005, "> B"
when not reached within the largest budget B.

Each piece is its own file, benchmarks/results/compare_cpu/<piece>.json (with its provenance), written atomically
as the piece ends, so a killed run loses only the piece in flight and two processes may run different seeds. The
summary, benchmarks/results/compare_cpu.json and .png, is rebuilt from every piece file after each piece (and by
--summary-only). benchmarks/results/compare_cpu_previous.json is the previous comparison (same-style testbed, each
method against its own best).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/compare_cpu.py --seeds 0 --multiples 1,3,10,30
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/compare_cpu.py --seeds 1 2 --multiples 1,3,10
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/compare_cpu.py --seeds 3 4 --multiples 1,3,10
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/compare_cpu.py --summary-only

The committed comparison ran so: seed 0 to 30x, seeds 1-4 to 10x, all from one warm start (its sha256 in each
piece's provenance). A search's settings do not depend on its budget (the budget only stops it), so a 30x search's
anytime policy at 10x is what a 10x search returns, and seed 0 counts at every budget; the summary's `seeds` per
budget says which seeds it holds. A larger largest multiple than a seed's searches ran under needs its own --out.
benchmarks/results/compare_cpu_8x.json is the earlier run (seeds 0-2 to 8x, seed 0 from another warm start).
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict
from pathlib import Path

import torch
from harness import ensure_warm_start, piece_file, read_pieces, write_piece, write_result

from da2_platform.compare import seed_config
from da2_platform.config import ExperimentConfig, load_config
from da2_platform.data.splits import prepare_data
from da2_platform.files import write_bytes_atomic
from da2_platform.ledger import LedgerRow
from da2_platform.search.anytime import anytime_policy
from da2_platform.search.children import final_training
from da2_platform.yardstick import DA2_METHODS, budgets_from, da2_unit_cost, yardstick_report

METHODS = ["da2", "da2:score", "rl", "optuna", "pba", "fixed:none", "fixed:standard-pose"]


def run_one_search(cfg: ExperimentConfig, method: str, budget_s: float | None) -> dict:
    """One method's search on the local Ray session under `budget_s`; its ledger rows and cost."""
    from da2_platform.search.control import BudgetStopper
    from da2_platform.search.driver import run_search
    from da2_platform.search.methods import spec_builder

    start = time.time()
    outcome = run_search(cfg, method, spec_builder(method), register=False, fresh=True,
                         stopper=BudgetStopper(None, budget_s))
    return {"rows": [asdict(r) for r in outcome.trials], "device_seconds": outcome.device_seconds,
            "wall_seconds": time.time() - start, "budget_device_seconds": budget_s,
            "trials": len(outcome.trials)}


def summarise(pieces: dict, methods: list[str], seeds: list[int]) -> dict:
    """The yardstick over the seeds that have their unit; budgets as multiples of each seed's own unit."""
    per_seed_unit = {}
    for seed in seeds:
        costs = {m: pieces[f"search:{seed}:{m}"]["device_seconds"] for m in DA2_METHODS
                 if f"search:{seed}:{m}" in pieces}
        unit = da2_unit_cost(costs)
        if unit:
            per_seed_unit[seed] = unit
    multiples = sorted({float(k.split(":")[-1]) for k in pieces if k.startswith("final:")})
    if not per_seed_unit or not multiples:
        return {"budgets": [], "to_target": None, "units": per_seed_unit}
    mean_unit = sum(per_seed_unit.values()) / len(per_seed_unit)
    budgets = budgets_from(multiples, mean_unit)
    seeds_at = [[s for s in per_seed_unit if f"final:{s}:da2:{b.multiple:g}" in pieces
                 or f"final:{s}:da2:score:{b.multiple:g}" in pieces] for b in budgets]
    final_ap = {m: [[pieces.get(f"final:{s}:{m}:{b.multiple:g}", {}).get("val_ap") for s in at]
                    for b, at in zip(budgets, seeds_at)] for m in methods}
    report = yardstick_report(budgets, final_ap, list(per_seed_unit), seeds_at)
    for row, at in zip(report["budgets"], seeds_at):  # a larger budget may have run at fewer seeds
        row["seeds"] = at
    report["units"] = {str(s): round(u, 1) for s, u in per_seed_unit.items()}
    report["unit"] = "device-seconds of the costlier DA2 method's search, per seed; budgets use their mean"
    return report


def plot(report: dict, path: Path) -> None:
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    all_seeds = report.get("seeds", [])
    full = [len(b.get("seeds", all_seeds)) == len(all_seeds) for b in report["budgets"]]
    for method in report["budgets"][0]["methods"] if report["budgets"] else []:
        xs, ys, lo, hi, whole = [], [], [], [], []
        for b, is_full in zip(report["budgets"], full, strict=True):
            entry = b["methods"][method]
            if entry["final_ap_mean"] is None:
                continue
            xs.append(b["device_hours"])
            ys.append(entry["final_ap_mean"])
            std = entry["final_ap_std"] or 0.0
            lo.append(ys[-1] - std)
            hi.append(ys[-1] + std)
            whole.append(is_full)
        n = sum(whole)  # the budgets every seed reached come first (budgets only grow)
        if n:
            (line,) = ax.plot(xs[:n], ys[:n], marker="o", label=method)
            ax.fill_between(xs[:n], lo[:n], hi[:n], alpha=0.15, color=line.get_color())
        if len(xs) > n:  # budgets fewer seeds reached: hollow markers, dotted, no band
            color = line.get_color() if n else None
            (dots,) = ax.plot(xs[max(n - 1, 0):], ys[max(n - 1, 0):], linestyle=":", color=color,
                              label=None if n else method)
            ax.plot(xs[n:], ys[n:], linestyle="none", marker="o", markerfacecolor="white",
                    color=dots.get_color())
    target = (report.get("to_target") or {}).get("target_ap")
    if target is not None:
        ax.axhline(target, color="grey", linestyle="--", linewidth=1, label="target (DA2 - 0.005)")
    ax.set_xscale("log")
    ticks = [b["device_hours"] for b in report["budgets"]]
    ax.set_xticks(ticks, [f"{b['multiple']:g}x\n{b['device_hours']:.3f}" for b in report["budgets"]])
    ax.minorticks_off()
    ax.set_xlabel("search budget: multiple of DA2's search, device-hours (log scale)")
    ax.set_ylabel("final val AP (mean, band: std over seeds)")
    seeds = ", ".join(str(s) for s in all_seeds)
    partial = [f"{b['multiple']:g}x: seed{'s' if len(b['seeds']) > 1 else ''} "
               f"{', '.join(str(s) for s in b['seeds'])}" for b, f in zip(report["budgets"], full, strict=True)
               if not f]
    ax.set_title(f"Final AP at equal budgets (CPU target testbed, seeds {seeds}"
                 + (f"; hollow, {'; '.join(partial)} only)" if partial else ")"), fontsize=10)
    ax.legend(fontsize=8, loc="lower right")
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=120)
    write_bytes_atomic(path, buf.getvalue())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/bench_cpu.yaml")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--multiples", default="1,3,8", help="budgets as multiples of DA2's search cost")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--summary-only", action="store_true", help="run nothing: summarise the piece files")
    parser.add_argument("--out", default="benchmarks/results/compare_cpu.json",
                        help="the summary; the pieces go in the folder of the same name without .json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    multiples = [float(m) for m in args.multiples.split(",")]
    methods = args.methods.split(",")
    base = load_config(args.config)
    if not args.summary_only:
        ensure_warm_start(base, args.config)
    out = Path(args.out)
    folder = out.with_suffix("")
    pieces = read_pieces(folder)

    def add(key: str, piece: dict) -> None:
        """Write one piece's file (with its provenance), then the summary of every piece file there is."""
        pieces[key] = piece
        write_piece(folder, key, piece, args.config)
        save()

    def save() -> dict:
        pieces.update(read_pieces(folder))  # another process's seeds too
        seeds = sorted({int(k.split(":")[1]) for k in pieces})
        result = {"benchmark": "compare_cpu", "methods": methods, **summarise(pieces, methods, seeds),
                  "pieces": sorted(pieces), "pieces_folder": str(folder)}
        write_result(out, result, args.config, resolved=base.model_dump(mode="json"))
        if result.get("budgets"):
            plot(result, out.with_suffix(".png"))
        return result

    if not args.summary_only:
        from da2_platform.raycluster import ensure_ray

        ensure_ray()
        for seed in args.seeds:
            cfg = seed_config(base, seed, several=True)
            for method in [m for m in methods if m in DA2_METHODS]:  # first: the seed's unit
                key = f"search:{seed}:{method}"
                if key not in pieces:
                    add(key, run_one_search(cfg, method, None))
                    print(json.dumps({key: round(pieces[key]["device_seconds"], 1)}), flush=True)
            unit = da2_unit_cost({m: pieces[f"search:{seed}:{m}"]["device_seconds"] for m in DA2_METHODS
                                     if f"search:{seed}:{m}" in pieces})
            budgets = budgets_from(multiples, unit)
            for method in [m for m in methods if m not in DA2_METHODS]:
                key = f"search:{seed}:{method}"
                ran = (pieces.get(key) or {}).get("budget_device_seconds")
                if ran is not None and ran < budgets[-1].device_seconds - 1e-6:
                    raise SystemExit(f"error: {folder / piece_file(key)}: budget_device_seconds: the search ran "
                                     f"under {ran:.0f} s, less than the {budgets[-1].multiple:g}x budget "
                                     f"({budgets[-1].device_seconds:.0f} s); a larger largest multiple needs its "
                                     f"own --out")
                if key not in pieces:
                    add(key, run_one_search(cfg, method, budgets[-1].device_seconds))
                    print(json.dumps({key: round(pieces[key]["device_seconds"], 1)}), flush=True)
            data = prepare_data(cfg)
            scored: dict[str, float] = {}  # policy JSON -> final AP, within this seed
            for budget in budgets:
                for method in methods:
                    key = f"final:{seed}:{method}:{budget.multiple:g}"
                    if key in pieces:
                        scored.setdefault(pieces[key].get("policy_json") or "", pieces[key].get("val_ap"))
                        continue
                    rows = [LedgerRow(**r) for r in pieces[f"search:{seed}:{method}"]["rows"]]
                    policy, used = anytime_policy(method, rows, budget.device_seconds)
                    if policy is None:
                        add(key, {"val_ap": None, "trials_used": used, "why": "nothing returned yet"})
                    elif policy.to_json() in scored:
                        add(key, {"val_ap": scored[policy.to_json()], "trials_used": used,
                                  "policy_json": policy.to_json(), "reused": True})
                    else:
                        curve, seconds = final_training(cfg, data, policy)
                        add(key, {"val_ap": curve[-1]["val_ap"], "trials_used": used,
                                  "policy_json": policy.to_json(), "seconds": round(seconds, 1)})
                        scored[policy.to_json()] = curve[-1]["val_ap"]
                    print(json.dumps({key: pieces[key]["val_ap"]}), flush=True)
    result = save()
    print(json.dumps({"budgets": [{"multiple": b["multiple"], "device_hours": b["device_hours"],
                                   "means": {m: v["final_ap_mean"] for m, v in b["methods"].items()}}
                                  for b in result.get("budgets", [])],
                      "to_target": result.get("to_target")}, indent=2))


if __name__ == "__main__":
    main()
