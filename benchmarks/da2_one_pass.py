"""One-pass DA2 against two-pass DA2 on the CPU target testbed, at their own cost and at equal cost.

- **two-pass** (the default): a DA2 search (`search.da2.steps` steps), then a final training with its policy
  (`search.children.final_training`, as the comparison trains it); its cost is the search's device-seconds plus
  the final training's. Run here, beside the one-pass runs, so both share the warm start, the seeds and the
  machine.
- **one-pass** (`search.da2.one_pass`): one DA2 search over the final training's schedule; its own network is the
  trained model, scored on val (`one_pass_val_ap`). Run here at
  - `schedule`: the final recipe's `train.epochs` (cheaper than two-pass: no second training);
  - `equal_cost`: `--equal-epochs` epochs (default twice the recipe's, the lr dropping at the last epoch as the
    recipe does), which is about two-pass's device-seconds on this testbed; the JSON gives each run's cost, so
    the match is measured, not assumed.
- **control** `two_pass_policy_long`: the two-pass search's policy trained over the equal-cost schedule (no
  search cost counted). It differs from `equal_cost` only in that the policy is fixed, not learned while the
  network trains, so it says how much of one-pass's AP is the longer schedule.
Per (seed, method, variant) one piece, benchmarks/results/da2_one_pass/<piece>.json, written as it ends, so a
rerun skips what is there; the summary benchmarks/results/da2_one_pass.json (mean and std over seeds of AP and
device-seconds, per method and variant) is rebuilt after each piece, and by --summary-only.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/da2_one_pass.py --seeds 0 1 2
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/da2_one_pass.py --summary-only
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

import torch
from harness import ensure_warm_start, read_pieces, seed_stats, write_piece, write_result

from da2_platform.compare import seed_config
from da2_platform.config import ExperimentConfig, load_config

OUT = Path("benchmarks/results/da2_one_pass.json")


def one_pass_config(cfg: ExperimentConfig, epochs: int | None) -> ExperimentConfig:
    """`cfg` with `search.da2.one_pass` on, over `epochs` epochs (None: the recipe's), the lr dropping where the
    recipe drops it relative to its end."""
    raw = cfg.model_dump(mode="json")
    raw["search"]["da2"]["one_pass"] = True
    if epochs is not None:
        shift = epochs - raw["train"]["epochs"]
        raw["train"]["lr_milestones"] = [m + shift for m in raw["train"]["lr_milestones"]]
        raw["train"]["epochs"] = epochs
    return ExperimentConfig.model_validate(raw)


def _search(cfg: ExperimentConfig, method: str):
    """One DA2 search on the local Ray session, unregistered, from scratch."""
    from da2_platform.search.driver import run_search
    from da2_platform.search.methods import spec_builder

    return run_search(cfg, method, spec_builder(method), register=False, fresh=True)


def run_one_pass(cfg: ExperimentConfig, method: str) -> dict:
    start = time.time()
    outcome = _search(cfg, method)
    if outcome.one_pass_val_ap is None:
        raise SystemExit(f"error: {method}: one_pass_val_ap: the one-pass search returned no trained model")
    row = outcome.trials[0]
    return {"val_ap": float(outcome.one_pass_val_ap), "device_seconds": outcome.device_seconds,
            "wall_seconds": time.time() - start, "steps": row.steps, "epochs": cfg.train.epochs,
            "lr_milestones": cfg.train.lr_milestones, "policy_json": row.policy_json}


def run_two_pass(cfg: ExperimentConfig, method: str) -> dict:
    from da2_platform.data.splits import prepare_data
    from da2_platform.search.children import final_training
    from search_spaces.policy import Policy

    start = time.time()
    outcome = _search(cfg, method)
    row = outcome.trials[0]
    curve, seconds = final_training(cfg, prepare_data(cfg), Policy.from_json(row.policy_json))
    return {"val_ap": curve[-1]["val_ap"], "device_seconds": outcome.device_seconds + seconds,
            "search_device_seconds": outcome.device_seconds, "final_seconds": seconds,
            "wall_seconds": time.time() - start, "steps": row.steps, "policy_json": row.policy_json}


def run_fixed_long(cfg: ExperimentConfig, policy_json: str, epochs: int) -> dict:
    """The control: a final training of a fixed policy over the one-pass equal-cost schedule."""
    from da2_platform.data.splits import prepare_data
    from da2_platform.search.children import final_training
    from search_spaces.policy import Policy

    long = one_pass_config(cfg, epochs)
    curve, seconds = final_training(long, prepare_data(long), Policy.from_json(policy_json))
    return {"val_ap": curve[-1]["val_ap"], "device_seconds": seconds, "steps": curve[-1].get("step"),
            "epochs": epochs, "lr_milestones": long.train.lr_milestones}


VARIANTS = ("two_pass", "schedule", "equal_cost", "two_pass_policy_long")  # in run order: the control needs two_pass


def summarise(pieces: dict, seeds: list[int], methods: list[str]) -> dict:
    """Per method and variant, final val AP and device-seconds over the seeds that ran it."""
    out: dict = {}
    for method in methods:
        out[method] = {}
        for variant in VARIANTS:
            runs = [pieces[k] for k in (f"{seed}:{method}:{variant}" for seed in seeds) if k in pieces]
            out[method][variant] = {"val_ap": seed_stats([r["val_ap"] for r in runs]),
                                    "device_seconds": seed_stats([r["device_seconds"] for r in runs])}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/bench_cpu.yaml")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--methods", default="da2", help="comma-separated: da2, da2:score")
    parser.add_argument("--equal-epochs", type=int, default=None,
                        help="epochs of the equal-cost one-pass run (default: twice train.epochs)")
    parser.add_argument("--summary-only", action="store_true", help="run nothing: summarise the piece files")
    args = parser.parse_args()
    torch.set_num_threads(1)
    base = load_config(args.config)
    methods = args.methods.split(",")
    for method in methods:
        if method not in ("da2", "da2:score"):
            parser.error(f"--methods: {method}: one-pass is a DA2 mode (da2, da2:score)")
    equal_epochs = args.equal_epochs or 2 * base.train.epochs
    folder = OUT.with_suffix("")
    pieces = read_pieces(folder)

    def save() -> None:
        seeds = sorted({int(k.split(":")[0]) for k in pieces})
        ran = sorted({k.split(":", 1)[1].rsplit(":", 1)[0] for k in pieces})  # every method's pieces, not --methods'
        write_result(OUT, {"benchmark": "da2_one_pass", "equal_epochs": equal_epochs,
                           "summary": summarise(pieces, seeds, ran), "seeds": seeds,
                           "pieces_folder": str(folder)}, args.config)

    def run(cfg: ExperimentConfig, seed: int, method: str, variant: str) -> dict:
        if variant == "two_pass":
            return run_two_pass(cfg, method)
        if variant == "two_pass_policy_long":
            return run_fixed_long(cfg, pieces[f"{seed}:{method}:two_pass"]["policy_json"], equal_epochs)
        return run_one_pass(one_pass_config(cfg, equal_epochs if variant == "equal_cost" else None), method)

    if not args.summary_only:
        from da2_platform.raycluster import ensure_ray

        ensure_warm_start(base, args.config)
        ensure_ray()
        for seed, method, variant in itertools.product(args.seeds, methods, VARIANTS):
            key = f"{seed}:{method}:{variant}"
            if key in pieces:
                continue
            pieces[key] = run(seed_config(base, seed, several=True), seed, method, variant)
            write_piece(folder, key, pieces[key], args.config)
            print(json.dumps({key: {k: pieces[key][k] for k in ("val_ap", "device_seconds", "steps")}}), flush=True)
            save()
    save()
    print(json.dumps(json.loads(OUT.read_text())["summary"], indent=1))


if __name__ == "__main__":
    main()
