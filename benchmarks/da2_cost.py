"""What a DA2 search costs: its step against a plain training step of the same policy, and a whole search against
one search child, per estimator (`da2`: the paper's relaxed one; `da2:score`: the score-function variant).

(a) Step ratio: on the same pre-loaded batches (loading outside every timer), a plain training step with DA2's
initial policy compiled for the device (after the base augmentation, as every training applies it) against a DA2
step (base augmentation, targets, noise, the w step and, every `policy_update_every` steps, the d step), for each
estimator x hypergradient (central, forward) x d-step interval x search-val batch in the grid.
(b) Search over child: one whole DA2 search at the config's defaults (its steps, the final search-val scoring,
model and data set-up) against one RL child (`search.rl.child_steps` steps with a random policy of the same space,
its evaluations, its set-up), both in this process on one thread: the ledger's device-seconds without Ray.

Timers count this process's CPU seconds (one thread), since wall time on a shared machine swings with load.
Writes benchmarks/results/da2_cost.json; resumable per piece (a rerun keeps the pieces already measured):

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/da2_cost.py [--config configs/bench_cpu.yaml] [--steps 20]
        [--no-whole]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from harness import ensure_warm_start, write_result

from da2_platform.config import ExperimentConfig, load_config
from da2_platform.data.splits import prepare_data
from da2_platform.data.topdown import TopDownDataset
from da2_platform.inference import evaluate_model
from da2_platform.search.children import child_fit, run_child
from da2_platform.search.da2 import DA2_METHODS, BatchStream, DA2Search, da2_method_config, with_targets
from da2_platform.search.trial import trial_settings
from da2_platform.training.loop import build_model, device_augment
from da2_platform.training.step import TrainingStep, seed_everything

CLOCK = time.process_time
# (hypergradient, d step every n w steps, search-val batch (None: train's))
GRID = [("central", 1, None), ("forward", 1, None), ("central", 2, None), ("forward", 2, None), ("forward", 1, 8),
        ("forward", 3, None), ("central", 3, None), ("forward", 4, None)]


def recipe(config: dict | None) -> dict | None:
    """What the timings depend on besides the piece's own settings: data, model, training recipe."""
    return None if not config else {k: config[k] for k in ("data", "model", "train")}


def with_da2(cfg: ExperimentConfig, **update) -> ExperimentConfig:
    da2 = cfg.search.da2.model_copy(update=update)
    return cfg.model_copy(update={"search": cfg.search.model_copy(update={"da2": da2})})


def plain_seconds(cfg: ExperimentConfig, dataset, policy, batches: list, steps: int) -> float:
    seed_everything(cfg.seed)
    model = build_model(cfg, dataset.num_joints)
    step = TrainingStep.from_config(model, cfg, torch.device("cpu"),
                                    device_augment(cfg, policy, dataset.flip_pairs, torch.device("cpu"), cfg.seed))
    step(batches[0])  # warm-up
    start = CLOCK()
    for i in range(steps):
        step(batches[i % len(batches)])
    return CLOCK() - start


def da2_step_seconds(cfg: ExperimentConfig, train, val, train_batches, val_batches, steps: int) -> float:
    search, device = DA2Search(cfg, train, val, torch.device("cpu")), torch.device("cpu")
    every = cfg.search.da2.policy_update_every

    def one(i: int) -> None:
        search.base_augment.step = i
        tb = with_targets(train_batches[i % len(train_batches)], cfg, device, search.base_augment)
        vb = with_targets(val_batches[i % len(val_batches)], cfg, device) if i % every == 0 else None
        search.step_fn(tb, vb, search.policy.sample_noise(tb.images.shape[0], search.generator))

    one(0)  # warm-up
    start = CLOCK()
    for i in range(steps):
        one(i)
    return CLOCK() - start


def whole_search_seconds(cfg: ExperimentConfig, data) -> dict:
    """One DA2 search as its trial runs it (set-up, every step, the final search-val scoring), CPU seconds."""
    start = CLOCK()
    size = cfg.data.input_size
    train = TopDownDataset(data.search_train_annotations, data.train_images, input_size=size)
    val = TopDownDataset(data.search_val_annotations, data.search_val_images, input_size=size)
    search = DA2Search(cfg, train, val, torch.device("cpu"))
    setup = CLOCK() - start
    while not search.done:
        search.step()
    steps_done = CLOCK() - start
    ap = evaluate_model(search.model, data.search_val_annotations, data.search_val_images, size, torch.device("cpu"),
                        flip_test=cfg.train.flip_test, decoder=cfg.train.decoder,
                        batch_size=cfg.train.eval_batch_size)["AP"]
    total = CLOCK() - start
    return {"seconds": total, "setup": setup, "steps_seconds": steps_done - setup, "steps": search.state["step"],
            "eval_seconds": total - steps_done, "search_val_ap": ap,
            "policy": search.learned_policy().to_dict()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/bench_cpu.yaml")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per setting")
    parser.add_argument("--no-whole", action="store_true", help="skip (b), the whole search against a child")
    parser.add_argument("--out", default="benchmarks/results/da2_cost.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    base = load_config(args.config)
    ensure_warm_start(base, args.config)
    data = prepare_data(base)
    size = base.data.input_size
    train = TopDownDataset(data.search_train_annotations, data.train_images, input_size=size)
    val = TopDownDataset(data.search_val_annotations, data.search_val_images, input_size=size)
    out = Path(args.out)
    previous = json.loads(out.read_text()) if out.is_file() else {}
    same = recipe(previous.get("config")) == recipe(base.model_dump(mode="json"))  # pieces name their settings
    pieces: dict = previous.get("pieces", {}) if same else {}

    def save() -> dict:
        result = {"benchmark": "da2_cost", "config_path": args.config, "config": base.model_dump(mode="json"),
                  "timer": "process CPU seconds, one thread", "pieces": pieces,
                  "estimators": summary(base, pieces)}
        result.update(provenance())
        write_result(out, result, args.config)
        return result

    n = min(args.steps, 10)
    train_batches = [next(s) for s in [BatchStream(train, base)] for _ in range(n)]
    for method in DA2_METHODS:
        cfg = da2_method_config(base, method)
        initial = DA2Search(cfg, train, val, torch.device("cpu")).learned_policy()
        key = f"plain:{method}"
        if key not in pieces:  # a plain step of the same policy (DA2's start), after the base augmentation
            pieces[key] = {"seconds": plain_seconds(cfg, train, initial, train_batches, args.steps),
                           "steps": args.steps}
            save()
        for mode, every, vbs in GRID:
            key = f"{method}:{mode}:every{every}:val{vbs or cfg.train.batch_size}"
            if key in pieces:
                continue
            if method == "da2:score" and cfg.search.da2.val_grad_every > 1 and every > 1:
                continue
            setting = with_da2(cfg, hypergradient=mode, policy_update_every=every, val_batch_size=vbs)
            vcfg = setting if vbs is None else setting.model_copy(
                update={"train": setting.train.model_copy(update={"batch_size": vbs})})
            val_batches = [next(s) for s in [BatchStream(val, vcfg, salt=10_000)] for _ in range(n)]
            seconds = da2_step_seconds(setting, train, val, train_batches, val_batches, args.steps)
            pieces[key] = {"seconds": seconds, "steps": args.steps,
                           "ratio": seconds / pieces[f"plain:{method}"]["seconds"]}
            print(json.dumps({key: round(pieces[key]["ratio"], 3)}), flush=True)
            save()
    if not args.no_whole:
        if "child:rl" not in pieces:
            pieces["child:rl"] = rl_child(base, data)
            print(json.dumps({"child:rl": round(pieces["child:rl"]["seconds"], 1)}), flush=True)
            save()
        for method in DA2_METHODS:
            key = f"search:{method}"
            if key not in pieces:
                pieces[key] = whole_search_seconds(da2_method_config(base, method), data)
                print(json.dumps({key: round(pieces[key]["seconds"], 1)}), flush=True)
                save()
        for method in DA2_METHODS:  # (c) what each search found: its policy's final AP on val (one seed)
            key = f"final:{method}"
            if key not in pieces and f"search:{method}" in pieces:
                from da2_platform.search.children import final_training
                from search_spaces.policy import Policy

                policy = Policy.from_dict(pieces[f"search:{method}"]["policy"])
                curve, seconds = final_training(base, data, policy)
                pieces[key] = {"val_ap": curve[-1]["val_ap"], "seconds": round(seconds, 1),
                               **policy_shape(policy)}
                print(json.dumps({key: pieces[key]["val_ap"]}), flush=True)
                save()
    result = save()
    print(json.dumps(result["estimators"], indent=2))


def policy_shape(policy) -> dict:
    """How concentrated a learned policy is: pi's effective number of sub-policies (exp of its entropy) and the
    ops most applied per image (sum over sub-policies of pi x p)."""
    import math

    weights = [s.weight for s in policy.sub_policies]
    entropy = -sum(w * math.log(w) for w in weights if w > 0)
    per_op: dict[str, float] = {}
    for sub in policy.sub_policies:
        for op in sub.ops:
            per_op[op.name] = per_op.get(op.name, 0.0) + sub.weight * op.p
    top = sorted(per_op.items(), key=lambda kv: -kv[1])[:5]
    return {"effective_sub_policies": round(math.exp(entropy), 1), "sub_policies": len(weights),
            "applications_per_image": {k: round(v, 3) for k, v in top}}


def rl_child(cfg: ExperimentConfig, data) -> dict:
    """One search child as RL runs it: set-up, search.rl.child_steps steps of a random policy, its evaluations."""
    import numpy as np

    from da2_platform.search.children import discrete_space

    space = discrete_space(cfg.search.rl, cfg.search.include_flip)
    rng = np.random.default_rng(0)
    decisions = [int(rng.integers(limit)) for limit in space.decisions_per_op() * (space.num_decisions() // 3)]
    policy = space.to_policy(decisions)
    settings = {**trial_settings(cfg, data), "space": None, "child_steps": cfg.search.rl.child_steps}
    start = CLOCK()
    fit = child_fit(cfg, settings, policy, torch.device("cpu"))
    aps: list[float] = []
    run_child(fit, settings, lambda metrics, blob: aps.append(metrics["val_ap"]))
    return {"seconds": CLOCK() - start, "steps": cfg.search.rl.child_steps, "evals": len(aps),
            "search_val_ap": aps[-1]}


def summary(cfg: ExperimentConfig, pieces: dict) -> dict:
    """At the config's defaults: the step ratio (central and forward) and the whole search over one child."""
    out = {}
    for method in DA2_METHODS:
        sc = da2_method_config(cfg, method).search.da2
        vbs = sc.val_batch_size or cfg.train.batch_size

        def ratio(mode: str, sc=sc, vbs=vbs, method=method) -> float | None:
            piece = pieces.get(f"{method}:{mode}:every{sc.policy_update_every}:val{vbs}")
            return round(piece["ratio"], 3) if piece else None

        search, child = pieces.get(f"search:{method}"), pieces.get("child:rl")
        out[method] = {"estimator": sc.estimator, "hypergradient": sc.hypergradient,
                       "policy_update_every": sc.policy_update_every, "val_batch_size": vbs,
                       "steps": sc.steps,
                       "step_ratio": ratio(sc.hypergradient),
                       "step_ratio_central": ratio("central"), "step_ratio_forward": ratio("forward"),
                       "search_over_child": round(search["seconds"] / child["seconds"], 3)
                       if search and child else None,
                       "final_ap": pieces.get(f"final:{method}", {}).get("val_ap"),
                       "policy_shape": {k: v for k, v in pieces.get(f"final:{method}", {}).items()
                                        if k not in ("val_ap", "seconds")} or None}
    return out


def provenance() -> dict:
    import platform
    import subprocess

    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=False).stdout
    return {"provenance": {"commit": commit.strip(), "machine": {
        "processor": platform.processor() or platform.machine(), "python": platform.python_version(),
        "torch": torch.__version__, "device": "cpu", "threads": 1}}}


if __name__ == "__main__":
    main()
