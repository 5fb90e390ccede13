"""Which way the paper's DA2 gradient pushes HorizontalFlip when the flip is searched, and why.

Earlier rounds searched HorizontalFlip with the relaxed estimator and saw its p fall to 0.0001-0.0002 at every
seed while evaluation uses the flip test. Since then the flip is the base augmentation of every method and not
searched (`train.base_augment`), which removes the question from the default runs; this benchmark puts it back
(`search.include_flip: true`, `train.base_augment: []`: all C(18, 2) = 153 pairs, the flip among them) and
measures, at the search's start on the real network (cpu-tiny P2Net from the warm start, the lowlight target
testbed, `da2`'s defaults otherwise), the d gradient on the flip's p against every other op's:

- `exact`: Eq. 11 by double backward (as `da2_hypergradient.py` computes it), and `forward`: what the search's
  default Eq. 12 form computes, over `--draws` draws per seed (train batch, search-val batch, policy noise);
- per op, the mean over its p entries of the push -hypergradient / RMS(p hypergradient of the draw) (positive:
  the d step raises p; the search descends the hypergradient), then its mean over draws and a t value
  (mean / standard error over the draws of all seeds); and the op's rank among the 18 by mean push;
- in three variants that differ from the default in one thing each:
  `flip_val` (the default: the d objective is the flip-test val loss, gates at tau2 0.5),
  `plain_val` (`val_flip_test: false`: the val loss without the flip test, what the first rounds ran),
  `sharp_gates` (`tau2: 0.1`: the op gates near 0 or 1, so a flipped crop is rarely blended with its mirror),
  `central` (for `--search`: Eq. 12's central difference instead of the default forward one),
  `old_settings` (for `--search`: the settings of the rounds whose relaxed searches lost the flip, 24 dealt pairs,
  central Eq. 12 at every step, 300 steps; everything else as today), `old_settings_all_pairs` (the same
  over all 153 pairs), `pairs24` (today's defaults on 24 dealt pairs) and `pairs24_every1_300` (24 pairs, a d step
  at every one of 300 steps, the forward difference): which part of the old settings concentrates pi.

`--search` runs, instead, whole `da2` searches in each variant (150 steps, the search's defaults otherwise, as the
comparison runs them), then the final training of the learned policy (no base flip there either: the policy
decides the flip), and records HorizontalFlip's rate (sum over its sub-policies of pi x p; every op starts at
17 / 153 x 0.5 = 0.056), its rank among the 18 ops, pi's effective sub-policies and the final val AP; one entry
per (variant, seed), kept across reruns.

Writes benchmarks/results/da2_flip_gradient.json (the gradients under `runs` and `summary`, the searches under
`searches`; each mode keeps the other's):

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/da2_flip_gradient.py --seeds 0 1 2 --draws 24
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/da2_flip_gradient.py --seeds 0 1 2 --draws 24 --variants flip_val \
        --after-steps 150 --out benchmarks/results/da2_flip_gradient_after150.json   # at the search's end
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/da2_flip_gradient.py --search --seeds 0 1 2 --variants flip_val plain_val
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/da2_flip_gradient.py --search --seeds 0 1 2 --variants central
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/da2_flip_gradient.py --search --seeds 0 1 --variants old_settings
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/da2_flip_gradient.py --search --seeds 0 --variants old_settings_all_pairs
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/da2_flip_gradient.py --search --seeds 1 --variants old_settings_all_pairs
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/da2_flip_gradient.py --search --seeds 0 1 --variants pairs24 pairs24_every1_300
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from da2_hypergradient import one_draw
from da2_learned_ops import learned
from harness import ensure_warm_start, write_result

from da2_platform.config import load_config
from da2_platform.data.splits import prepare_data
from da2_platform.data.topdown import TopDownDataset
from da2_platform.search.da2 import DA2Search, da2_method_config, with_targets

FLIP = "HorizontalFlip"
VARIANTS = {"flip_val": {}, "plain_val": {"val_flip_test": False}, "sharp_gates": {"tau2": 0.1},
            "central": {"hypergradient": "central"},  # Eq. 12 as the paper writes it, not the default forward form
            # the settings of the rounds that lost the flip: 24 dealt pairs, central Eq. 12 at every step, 300 steps
            "old_settings": {"sub_policies": 24, "hypergradient": "central", "policy_update_every": 1,
                             "steps": 300},
            # the same with today's space (every pair): is the 24-pair space what concentrates pi?
            "old_settings_all_pairs": {"sub_policies": None, "hypergradient": "central", "policy_update_every": 1,
                                       "steps": 300},
            # which part of the old settings collapses pi: the 24-pair space alone (today's schedule) ...
            "pairs24": {"sub_policies": 24},
            # ... or the 24 pairs with the old schedule's many d steps, forward (so not the central difference)
            "pairs24_every1_300": {"sub_policies": 24, "policy_update_every": 1, "steps": 300}}


def variant_config(base, overrides: dict, seed: int):
    da2 = base.search.da2.model_copy(update=overrides)
    search = base.search.model_copy(update={"da2": da2, "include_flip": True})
    train = base.train.model_copy(update={"base_augment": []})
    return base.model_copy(update={"seed": seed, "search": search, "train": train})


def op_push(p_hyper: torch.Tensor, slots: list[tuple[str, ...]]) -> dict[str, float]:
    """Per op: mean over its p entries of -hypergradient / RMS over all p entries (positive: p goes up)."""
    scaled = -p_hyper.double() / p_hyper.double().pow(2).mean().sqrt().clamp_min(1e-30)
    by_op: dict[str, list[float]] = {}
    for k, slot in enumerate(slots):
        for n, name in enumerate(slot):
            by_op.setdefault(name, []).append(float(scaled[k, n]))
    return {name: float(np.mean(values)) for name, values in by_op.items()}


def summary(pushes: list[dict[str, float]]) -> dict:
    ops = sorted(pushes[0])
    mean = {op: float(np.mean([p[op] for p in pushes])) for op in ops}
    sem = {op: float(np.std([p[op] for p in pushes], ddof=1) / np.sqrt(len(pushes))) for op in ops}
    order = sorted(ops, key=lambda op: -mean[op])
    return {"flip_push_mean": round(mean[FLIP], 4), "flip_push_t": round(mean[FLIP] / max(sem[FLIP], 1e-30), 2),
            "flip_rank": order.index(FLIP) + 1, "ops": len(ops), "draws": len(pushes),
            "others_push_mean": round(float(np.mean([mean[op] for op in ops if op != FLIP])), 4),
            "top3": order[:3], "bottom3": order[-3:],
            "per_op_mean": {op: round(mean[op], 4) for op in order}}


def run_searches(base, args, result: dict) -> None:
    """Whole `da2` searches with the flip searched, each variant and seed: the flip's learned rate and the AP."""
    from da2_platform.compare import seed_config
    from da2_platform.data.splits import prepare_data as prepare
    from da2_platform.raycluster import ensure_ray
    from da2_platform.search.children import final_training
    from da2_platform.search.driver import run_search
    from da2_platform.search.methods import spec_builder
    from search_spaces.policy import Policy

    ensure_ray()
    searches = result.setdefault("searches", {})
    for variant in args.variants:
        for seed in args.seeds:
            key = f"{variant}:{seed}"
            if key in searches:
                continue
            cfg = variant_config(seed_config(base, seed, several=True), VARIANTS[variant], seed)
            outcome = run_search(cfg, "da2", spec_builder("da2"), register=False, fresh=True)
            row = outcome.trials[0]
            policy = Policy.from_json(row.policy_json)
            entry = learned(policy)
            order = list(entry["op_rate"])
            curve, seconds = final_training(cfg, prepare(cfg), policy)
            searches[key] = {"flip_rate": round(entry["op_rate"].get(FLIP, 0.0), 4),
                             "flip_rank": order.index(FLIP) + 1 if FLIP in order else len(order) + 1,
                             "ops": len(order), "top3": order[:3],
                             "op_rate_range": [round(min(entry["op_rate"].values()), 4),
                                               round(max(entry["op_rate"].values()), 4)],
                             "effective_sub_policies": round(entry["effective_sub_policies"], 1),
                             "sub_policies": entry["sub_policies"], "final_val_ap": curve[-1]["val_ap"],
                             "search_device_seconds": round(outcome.device_seconds, 1),
                             "final_seconds": round(seconds, 1)}
            print(json.dumps({key: searches[key]}), flush=True)
            if Path(args.out).exists():  # another process's searches too (one per variant may run at once)
                on_disk = json.loads(Path(args.out).read_text())
                for other, entry in on_disk.get("searches", {}).items():
                    searches.setdefault(other, entry)
                result["variants"] = {**on_disk.get("variants", {}), **result["variants"]}
            write_result(args.out, result, args.config, resolved=cfg.model_dump(mode="json"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/bench_cpu.yaml")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--draws", type=int, default=8)
    parser.add_argument("--variants", nargs="+", default=["flip_val", "plain_val", "sharp_gates"],
                        choices=list(VARIANTS))
    parser.add_argument("--after-steps", type=int, default=0,
                        help="gradient mode: run the search this many steps first, then measure (0: at its start)")
    parser.add_argument("--search", action="store_true",
                        help="run whole da2 searches with the flip searched instead of the gradient measurement")
    parser.add_argument("--out", default="benchmarks/results/da2_flip_gradient.json")
    args = parser.parse_args()
    if args.draws < 2:
        parser.error("--draws must be at least 2 (the t value is over draws)")
    torch.set_num_threads(1)
    base = da2_method_config(load_config(args.config), "da2")
    ensure_warm_start(base, args.config)
    previous = json.loads(Path(args.out).read_text()) if Path(args.out).exists() else {}
    previous.pop("provenance", None)
    if args.search:
        result = {"benchmark": "da2_flip_gradient", **previous}
        result.setdefault("variants", {}).update({v: VARIANTS[v] for v in args.variants})
        run_searches(base, args, result)
        print(json.dumps(result["searches"], indent=1))
        return
    result: dict = {"benchmark": "da2_flip_gradient", "draws": args.draws, "seeds": args.seeds,
                    "after_steps": args.after_steps,
                    "variants": {v: VARIANTS[v] for v in args.variants}, "runs": {}, "summary": {},
                    **({"searches": previous["searches"]} if "searches" in previous else {})}
    for variant in args.variants:
        pushes: dict[str, list[dict[str, float]]] = {"exact": [], "forward": []}
        for seed in args.seeds:
            start = time.perf_counter()
            cfg = variant_config(base, VARIANTS[variant], seed)
            data = prepare_data(cfg)
            size = cfg.data.input_size
            search = DA2Search(cfg, TopDownDataset(data.search_train_annotations, data.train_images,
                                                   input_size=size),
                               TopDownDataset(data.search_val_annotations, data.search_val_images, input_size=size),
                               torch.device("cpu"))
            for _ in range(args.after_steps):  # measure at a later state of the search, not at its start
                search.step()
            slots = search.policy.slots
            rates = learned(search.learned_policy())["op_rate"]
            names = [name.removesuffix("_logits") for name, _ in search.policy.named_parameters()]
            p_index = names.index("p")
            seed_pushes: dict[str, list[dict[str, float]]] = {"exact": [], "forward": []}
            for index in range(args.draws):
                train = with_targets(next(search.train_stream), cfg, torch.device("cpu"), search.base_augment)
                val = with_targets(next(search.val_stream), cfg, torch.device("cpu"))
                noise = search.policy.sample_noise(train.images.shape[0], search.generator)
                grads = one_draw(search, train, val, noise, [search.step_fn.fd_scale])
                for kind in ("exact", "forward"):
                    seed_pushes[kind].append(op_push(grads[kind][p_index], slots))
            for kind, rows in seed_pushes.items():
                pushes[kind].extend(rows)
            result["runs"][f"{variant}:{seed}"] = {
                "slots": len(slots), "seconds": round(time.perf_counter() - start, 1),
                "after_steps": args.after_steps, "flip_rate": round(rates.get(FLIP, 0.0), 4),
                "flip_rate_rank": list(rates).index(FLIP) + 1,
                **{kind: summary(seed_pushes[kind]) for kind in seed_pushes}}
            print(json.dumps({"variant": variant, "seed": seed,
                              **{kind: {k: result["runs"][f"{variant}:{seed}"][kind][k]
                                        for k in ("flip_push_mean", "flip_push_t", "flip_rank")}
                                 for kind in seed_pushes}}), flush=True)
            write_result(args.out, result, args.config, resolved=cfg.model_dump(mode="json"))
        result["summary"][variant] = {kind: summary(pushes[kind]) for kind in pushes}
        write_result(args.out, result, args.config, resolved=base.model_dump(mode="json"))
    print(json.dumps({v: {kind: {k: s[kind][k] for k in ("flip_push_mean", "flip_push_t", "flip_rank", "top3")}
                          for kind in s} for v, s in result["summary"].items()}, indent=1))


if __name__ == "__main__":
    main()
