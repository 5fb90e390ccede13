"""Which val measure ranks final trainings like val AP? The check behind DA2's flip-test d objective.

For each policy, a final training exactly as compare runs it (benchmarks/policy_sensitivity.py's recipe:
configs/bench_cpu.yaml, the shared warm start, cfg.train.epochs on train), measured at steps 1, 50 and the last
on the 100-image val split: val AP with and without flip test; the P2Net loss (heatmap L2 + OHKM: DA2's plain
val objective); the flip-test heatmap L2 (per-joint pixel mean over labelled joints, of the average of the output
and the flipped-back output of the mirrored crop); and the argmax error in heatmap px, with and without flip test.
Writes benchmarks/results/flip_test_probe.json.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/flip_test_probe.py [--seed 0] [--policies fixed:none ...]

`flip-only` is HorizontalFlip with p 0.5 and nothing else.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from harness import ensure_warm_start, write_result

from da2_platform.config import ExperimentConfig, load_config
from da2_platform.data.splits import prepare_data
from da2_platform.data.topdown import TopDownDataset
from da2_platform.inference import evaluate_model, predict_heatmaps
from da2_platform.policies import resolve_policy
from da2_platform.search.children import child_fit
from da2_platform.search.da2 import make_batch_loss, with_targets
from da2_platform.training.loop import epoch_loader
from pose_models.losses import P2NetLoss
from search_spaces.policy import Policy

FLIP_ONLY = {"schema_version": 1, "search_space": "pose-v1", "name": "flip-only",
             "sub_policies": [{"ops": [{"name": "HorizontalFlip", "p": 0.5, "m": 0.0}], "weight": 1.0}]}


def policy_named(name: str) -> Policy:
    return Policy.from_dict(FLIP_ONLY) if name == "flip-only" else resolve_policy(name).policy


@torch.no_grad()
def val_measures(model, cfg: ExperimentConfig, val_ds: TopDownDataset) -> dict[str, float]:
    device = torch.device("cpu")
    loss = make_batch_loss(P2NetLoss(ohkm_topk=cfg.model.ohkm_topk), cfg, device)
    model.eval()
    sums = {"p2net_loss": 0.0, "flip_test_l2": 0.0, "argmax_err": 0.0, "argmax_err_flip_test": 0.0}
    images = joints = 0
    for samples in epoch_loader(val_ds, cfg, 0):
        batch = with_targets(samples, cfg, device)
        sums["p2net_loss"] += loss(model, batch, reduction="none").sum().item()
        images += len(batch.images)
        b, j, _, w = batch.heatmaps.shape
        labelled = (batch.visible.reshape(b, j) > 0).float()
        target = batch.heatmaps.float()
        truth = target.flatten(2).argmax(-1)
        for key, flip in (("argmax_err", False), ("argmax_err_flip_test", True)):
            pred = predict_heatmaps(model, batch.images, val_ds.flip_pairs, flip)
            if flip:
                sums["flip_test_l2"] += (((pred - target) ** 2).mean((2, 3)) * labelled).sum().item()
            guess = pred.flatten(2).argmax(-1)
            err = ((truth // w - guess // w).float() ** 2 + (truth % w - guess % w).float() ** 2).sqrt()
            sums[key] += (err * labelled).sum().item()
        joints += labelled.sum().item()
    model.train()
    return {k: round(v / (images if k == "p2net_loss" else joints), 6) for k, v in sums.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", default="configs/bench_cpu.yaml")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--policies", nargs="+", default=["fixed:none", "fixed:standard-pose", "flip-only"])
    parser.add_argument("--out", default="benchmarks/results/flip_test_probe.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    raw = load_config(args.config).model_dump(mode="json")
    raw["seed"] = args.seed
    cfg = ExperimentConfig.model_validate(raw)
    ensure_warm_start(cfg, args.config)
    data = prepare_data(cfg)
    settings = {"train_annotations": str(data.full_train_annotations), "train_images": str(data.train_images)}
    val_ds = TopDownDataset(data.val_annotations, data.val_images, input_size=cfg.data.input_size)
    results = {}
    for name in args.policies:
        fit = child_fit(cfg, settings, policy_named(name), torch.device("cpu"))
        last, rows = fit.total_steps(), []

        def on_step(f, metrics, rows=rows, last=last, name=name):
            if f.state.step not in (1, 50, last):
                return
            row = {"step": f.state.step}
            for flip in (True, False):
                row["val_ap_flip_test" if flip else "val_ap_no_flip_test"] = round(evaluate_model(
                    f.model, Path(data.val_annotations), Path(data.val_images), cfg.data.input_size,
                    torch.device("cpu"), flip_test=flip, decoder=cfg.train.decoder)["AP"], 4)
            row.update(val_measures(f.model, cfg, val_ds))
            rows.append(row)
            print(json.dumps({"policy": name, **row}), flush=True)

        fit.run(on_step=on_step)
        results[name] = rows
    write_result(args.out, {"config": args.config, "seed": args.seed, "threads": 1,
                                       "flip_only_policy": FLIP_ONLY, "policies": results})


if __name__ == "__main__":
    main()
