"""DA2 on SynthPose at the CPU demo size: (a) what a DA2 search step costs against a plain training step with the
same policy applied on the device (DA2's initial policy, compiled to torch), per hypergradient mode and update
interval, on the same pre-loaded batches (loading and decoding are outside every timer); (b) val AP of fresh models
trained with the learned policy, with `none` and with `standard-pose` on the same recipe (skipped with
--train-steps 0). Writes benchmarks/results/da2_cost_and_ap.json.

    .venv/bin/python benchmarks/da2_cost_and_ap.py [--cost-steps 30] [--search-steps 300] [--train-steps 600]
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from harness import parse_set, write_result

from da2_platform.config import load_config
from da2_platform.data.splits import prepare_data
from da2_platform.data.topdown import TopDownDataset
from da2_platform.inference import evaluate_model
from da2_platform.search.da2 import BatchStream, DA2Search, with_targets
from da2_platform.training.loop import build_model, device_augment
from da2_platform.training.step import TrainingStep, seed_everything
from search_spaces.fixed import fixed_policy

# cost timers count this process's CPU seconds (one thread): wall time on the shared machine swings with load
CLOCK = time.process_time


def plain_training(cfg, dataset, policy, steps: int, batches: list | None = None) -> tuple[torch.nn.Module, float]:
    """The shared recipe for `steps` steps; returns the model and the seconds spent in steps."""
    seed_everything(cfg.seed)
    model = build_model(cfg, dataset.num_joints)
    step = TrainingStep.from_config(model, cfg, torch.device("cpu"),
                                    device_augment(cfg, policy, dataset.flip_pairs, torch.device("cpu"), cfg.seed))
    stream, seconds = BatchStream(dataset, cfg), 0.0
    for i in range(steps):
        batch = batches[i % len(batches)] if batches else next(stream)
        t = CLOCK()
        step(batch)
        seconds += CLOCK() - t
    return model, seconds


def da2_cost(cfg, train, val, train_batches: list, val_batches: list, steps: int, **da2) -> float:
    """Seconds in DA2 steps (targets, noise, w step, d step) on pre-loaded batches."""
    cfg = cfg.model_copy(update={"search": cfg.search.model_copy(update={
        "da2": cfg.search.da2.model_copy(update={"steps": steps, **da2})})})
    search, seconds, device = DA2Search(cfg, train, val, torch.device("cpu")), 0.0, torch.device("cpu")
    every = cfg.search.da2.policy_update_every
    for i in range(steps):
        t = CLOCK()
        tb = with_targets(train_batches[i % len(train_batches)], cfg, device)
        vb = with_targets(val_batches[i % len(val_batches)], cfg, device) if i % every == 0 else None
        search.step_fn(tb, vb, search.policy.sample_noise(tb.images.shape[0], search.generator))
        seconds += CLOCK() - t
    return seconds


def da2_search(cfg, train, val, **da2) -> tuple[DA2Search, float]:
    cfg = cfg.model_copy(update={"search": cfg.search.model_copy(update={
        "da2": cfg.search.da2.model_copy(update=da2)})})
    search, seconds = DA2Search(cfg, train, val, torch.device("cpu")), 0.0
    while not search.done:
        t = time.perf_counter()
        search.step()
        seconds += time.perf_counter() - t
    return search, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", default="configs/demo.yaml")
    parser.add_argument("--cost-steps", type=int, default=30)
    parser.add_argument("--search-steps", type=int, default=300)
    parser.add_argument("--train-steps", type=int, default=600)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--small-val-batch", type=int, default=4, help="the smaller search-val batch measured")
    parser.add_argument("--val-grad-every", type=int, nargs="*", default=[4],
                        help="also measure these search.da2.val_grad_every settings (every d step)")
    parser.add_argument("--set", nargs="*", default=[], help="dotted config overrides key=value (YAML values)")
    parser.add_argument("--out", default="benchmarks/results/da2_cost_and_ap.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    overrides = parse_set(args.set)
    cfg = load_config(args.config, {"workdir": "work/bench-da2", **overrides})
    data = prepare_data(cfg)
    size = cfg.data.input_size
    search_train = TopDownDataset(data.search_train_annotations, data.train_images, input_size=size)
    search_val = TopDownDataset(data.search_val_annotations, data.search_val_images, input_size=size)
    full_train = TopDownDataset(data.full_train_annotations, data.train_images, input_size=size)
    result: dict = {"config": args.config, "overrides": overrides, "input_size": list(size),
                    "batch_size": cfg.train.batch_size, "threads": args.threads, "cost": {}, "ap": {}}

    # (a) cost ratios on the same pre-loaded batches: plain training without augmentation, with standard-pose,
    # and with DA2's own initial policy compiled for the device (the like-for-like one: DA2 augments too)
    n_batches = min(args.cost_steps, 10)
    train_batches = [next(s) for s in [BatchStream(search_train, cfg)] for _ in range(n_batches)]
    sc = cfg.search.da2
    val_cfg = cfg if sc.val_batch_size is None else cfg.model_copy(
        update={"train": cfg.train.model_copy(update={"batch_size": sc.val_batch_size})})
    val_batches = [next(s) for s in [BatchStream(search_val, val_cfg, salt=10_000)] for _ in range(n_batches)]
    initial = DA2Search(cfg, search_train, search_val, torch.device("cpu")).learned_policy()
    _, plain_seconds = plain_training(cfg, search_train, None, args.cost_steps, train_batches)
    _, augmented_seconds = plain_training(cfg, search_train, fixed_policy("standard-pose"), args.cost_steps,
                                          train_batches)
    _, same_seconds = plain_training(cfg, search_train, initial, args.cost_steps, train_batches)
    result["cost"].update(timer="process CPU seconds", steps=args.cost_steps, estimator=sc.estimator, val_batch_size=sc.val_batch_size,
                          plain_seconds=plain_seconds, plain_standard_pose_seconds=augmented_seconds,
                          plain_same_policy_seconds=same_seconds)
    small_val = [next(s) for s in [BatchStream(search_val, cfg.model_copy(update={"train": cfg.train.model_copy(
        update={"batch_size": args.small_val_batch})}), salt=10_000)] for _ in range(n_batches)]
    # (mode, d step every n w steps, search-val batch, val gradient every n d steps)
    settings = [("central", 1, None, 1), ("forward", 1, None, 1), ("central", 1, args.small_val_batch, 1),
                ("forward", 1, args.small_val_batch, 1), ("central", 3, None, 1), ("forward", 3, None, 1)]
    settings += [(mode, 1, None, k) for k in args.val_grad_every for mode in ("central", "forward")]
    for mode, every, vbs, vge in settings:
        seconds = da2_cost(cfg, search_train, search_val, train_batches, small_val if vbs else val_batches,
                           args.cost_steps, hypergradient=mode, policy_update_every=every, val_batch_size=vbs,
                           val_grad_every=vge)
        key = f"{mode}_every{every}" + (f"_val{vbs}" if vbs else "") + (f"_valgrad{vge}" if vge > 1 else "")
        result["cost"][key] = {"seconds": seconds, "ratio_to_plain": seconds / plain_seconds,
                               "ratio_to_plain_standard_pose": seconds / augmented_seconds,
                               "ratio_to_plain_same_policy": seconds / same_seconds}
        print(json.dumps({key: result["cost"][key]}), flush=True)
    if args.train_steps == 0:
        write_result(args.out, result, args.config, overrides)
        print(json.dumps(result["cost"], indent=2))
        return

    # (b) AP: the learned policy against none and standard-pose, fresh models on the same recipe, val split
    t = time.perf_counter()
    search, search_seconds = da2_search(cfg, search_train, search_val, steps=args.search_steps)
    learned = search.learned_policy()
    result["search"] = {"steps": args.search_steps, "seconds": search_seconds, "wall": time.perf_counter() - t,
                        "policy": learned.to_dict(), "top5": learned.top(5).to_dict()}
    for name, policy in (("learned-da2", learned), ("none", None), ("standard-pose", fixed_policy("standard-pose"))):
        model, seconds = plain_training(cfg, full_train, policy, args.train_steps)
        coco = evaluate_model(model, data.val_annotations, data.val_images, size, torch.device("cpu"),
                              flip_test=cfg.train.flip_test, decoder=cfg.train.decoder)
        result["ap"][name] = {"val_AP": coco["AP"], "val_AR": coco["AR"], "train_seconds": seconds,
                              "steps": args.train_steps}
        print(json.dumps({name: result["ap"][name]}), flush=True)
    write_result(args.out, result, args.config, overrides)
    print(json.dumps(result["cost"], indent=2))


if __name__ == "__main__":
    main()
