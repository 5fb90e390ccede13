"""Planted-shift test of DA2's d gradient: does the search move the policy towards the op the data asks for?

Train crops are SynthPose as generated (upright figures, +-15 deg); the search-val crops of the planted run carry
one shift applied with the platform's own op (rotate: Rotate +-40 deg, scale: Scale +-35 %, blur: GaussianBlur
sigma 2 px, occlusion: Cutout of half the crop width). A paired natural run uses the same seed, model init, train
batches, val crops (unshifted) and policy noise. If the d gradient is op-specific, the shifted op's p gains more in
the planted run than in the natural one, and more than the other ops do.

    .venv/bin/python benchmarks/da2_planted.py --seed 0 --shift rotate --method da2 [--updates 600] --out F.json
    .venv/bin/python benchmarks/da2_planted.py --seed 0 --shift rotate --snr 60 --out snr.json   # SNR mode
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/da2_planted.py --sweep --seeds 0 1 2 3 4 \
        --shifts rotate scale --methods da2 da2:score          # resumable: one file a (shift, method, seed)

Both searches of a pair run DA2 as the platform does at its defaults: every unordered pair of the searched ops
(no flip: it is the base augmentation), the base augmentation (HorizontalFlip p 0.5, seeded per step) on the train
batch before the policy, a d step after every `policy_update_every`-th w step, the method's estimator (`da2`:
relaxed, `da2:score`: score). The sweep writes each piece to benchmarks/results/da2_planted/ and the summary
(z, rank and met per seed; their mean and spread per shift and method) to benchmarks/results/da2_planted.json.

Writes {"shifted_op", "updates", "wall_seconds", "planted": {"ops": {OP: {"mean_p", "mean_m", "pi",
"rank_by_p"}}}, "natural": {...}, "settings": {...}} (mean over the slots holding the op; pi = total weight of
the sub-policies holding it; rank 1 = highest mean p). One CPU thread unless --threads says otherwise.

--snr N measures, at a frozen state (after --warmup steps of the natural run), N paired draws of the d gradient on
the same train batch, w step and policy noise, once with the planted and once with the natural search-val batch:
the per-step SNR (mean / std over draws) of the shifted op's planted-minus-natural p ascent direction, and of the
same minus the other ops' mean (op-specific), for each estimator setting in ESTIMATORS.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import numpy as np
import torch
import yaml
from harness import write_result
from torch import nn

from da2_platform.config import ExperimentConfig
from da2_platform.data.heatmaps import render_heatmaps
from da2_platform.data.splits import write_search_split
from da2_platform.data.synthpose import write_synthpose
from da2_platform.data.topdown import TopDownDataset
from da2_platform.search.bilevel import BilevelStep, ScoreStep
from da2_platform.search.da2 import (
    DA2_METHODS,
    da2_method_config,
    make_da2_step,
    make_policy_optimizer,
    policy_lr,
)
from da2_platform.search.relaxed_policy import RelaxedPolicy, op_slots
from da2_platform.training.loop import StepSeededAugment, augmentation_seed, build_model, training_policy
from da2_platform.training.step import make_optimizer
from pose_models.p2net import P2NetOutput
from search_spaces.batch import PoseBatch
from search_spaces.ops import OP_NAMES, apply_op, searched_op_names

SHIFTS = {  # shift -> (op, magnitude m in [0, 1]); signed ops get a random sign per crop
    "rotate": ("Rotate", 40.0 / 45.0),
    "scale": ("Scale", 1.0),
    "blur": ("GaussianBlur", 1.0),
    "occlusion": ("Cutout", 1.0),
}
SETTINGS = {  # the benchmark's fixed recipe (small enough for one CPU thread); DA2's own settings are its defaults
    "synth_train_images": 160, "data_seed": 0, "input_size": [64, 48], "batch_size": 16, "val_batch_size": 16,
    "model": "small",  # SmallPoseNet; or a ModelConfig dict, e.g. {"preset": "cpu-tiny"}
    "w_lr": 1e-3,
}
ESTIMATORS = {  # SNR mode: DA2Config overrides of each measured setting
    "relaxed": {"estimator": "relaxed", "normalise": True},
    "score": {"estimator": "score", "centre_p": False, "draws_per_image": 1},
    "score_no_explore": {"estimator": "score", "centre_p": False, "draws_per_image": 1, "explore": 0.0},
    "score_2draws": {"estimator": "score", "centre_p": False, "draws_per_image": 2},
    "score_centred": {"estimator": "score", "centre_p": True, "draws_per_image": 1},
    "score_centred_2draws": {"estimator": "score", "centre_p": True, "draws_per_image": 2},
    "score_centred_4draws": {"estimator": "score", "centre_p": True, "draws_per_image": 4},
}


def experiment_config(seed: int, **da2) -> ExperimentConfig:
    s = SETTINGS
    return ExperimentConfig.model_validate({
        "seed": seed, "workdir": "work/bench-da2-planted",
        "data": {"input_size": s["input_size"]},
        "model": s["model"] if isinstance(s["model"], dict) else {},
        "train": {"batch_size": s["batch_size"], "lr": s["w_lr"], "bf16": False},
        "search": {"da2": {"val_batch_size": s["val_batch_size"], **da2}},
    })


def load_crops(workdir: Path) -> tuple[PoseBatch, PoseBatch, list]:
    """All search-train and search-val crops in memory, with heatmap targets."""
    paths = write_synthpose(workdir / "synthpose", train=SETTINGS["synth_train_images"], val=1,
                            seed=SETTINGS["data_seed"])
    train_ann, val_ann = write_search_split(paths.train_annotations, workdir / "splits", 0.25,
                                            SETTINGS["data_seed"])
    size = tuple(SETTINGS["input_size"])
    out = []
    for ann in (train_ann, val_ann):
        ds = TopDownDataset(ann, paths.train_images, input_size=size)
        items = [ds[i] for i in range(len(ds))]
        keypoints = torch.stack([it["keypoints"] for it in items])
        visible = torch.stack([it["visible"] for it in items])
        heatmaps, weights = render_heatmaps(keypoints, visible, size)
        out.append(PoseBatch(images=torch.stack([it["image"] for it in items]), keypoints=keypoints,
                             visible=weights, heatmaps=heatmaps))
    return out[0], out[1], ds.flip_pairs


def shifted(val: PoseBatch, shift: str, seed: int) -> PoseBatch:
    """The val crops with the planted shift, drawn once per crop (seeded)."""
    op, m = SHIFTS[shift]
    g = torch.Generator().manual_seed(10_000 + seed)
    n = len(val)
    sign = torch.randint(0, 2, (n,), generator=g).float() * 2 - 1
    draws = torch.rand(n, 2, generator=g)
    with torch.no_grad():
        return apply_op(op, val, torch.full((n,), m), sign=sign, flip_pairs=[], draws=draws)


class SmallPoseNet(nn.Module):
    """Six 3x3 convs to 17 heatmaps at 1/4 resolution (~40k parameters): the benchmark's network when
    SETTINGS["model"] is "small" (a DA2 step of cpu-tiny P2Net costs ~10x more CPU; the shared machine is busy)."""

    def __init__(self, joints: int = 17, width: int = 32):
        super().__init__()

        def block(cin: int, cout: int, stride: int = 1, dilation: int = 1) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, padding=dilation, dilation=dilation, bias=False),
                                 nn.BatchNorm2d(cout), nn.ReLU(inplace=True))

        self.body = nn.Sequential(block(3, width // 2, 2), block(width // 2, width // 2), block(width // 2, width, 2),
                                  block(width, width), block(width, width, dilation=2), block(width, width, dilation=4))
        self.head = nn.Conv2d(width, joints, 1)

    def forward(self, images: torch.Tensor) -> P2NetOutput:
        heatmaps = self.head(self.body(images))
        return P2NetOutput(heatmaps=heatmaps, stage_heatmaps=[heatmaps])


class Run:
    """One DA2 search (network, policy, both optimisers, its d estimator) on in-memory batches."""

    def __init__(self, cfg: ExperimentConfig, flip_pairs: list):
        sc = cfg.search.da2
        self.cfg = cfg
        torch.manual_seed(cfg.seed)
        self.model = SmallPoseNet() if SETTINGS["model"] == "small" else build_model(cfg, 17)
        slots = op_slots(sc.sub_policies, sc.ops_per_sub_policy, cfg.seed,
                         op_names=searched_op_names(cfg.search.include_flip), design=sc.slot_design)
        self.policy = RelaxedPolicy(slots, flip_pairs, tau1=sc.tau1, tau2=sc.tau2, hard=sc.hard_choice)
        self.w_opt = make_optimizer(self.model, cfg.train)
        self.d_opt = make_policy_optimizer(self.policy, sc, sc.steps)
        self.step = make_da2_step(cfg, self.model, self.policy, self.w_opt, self.d_opt, torch.device("cpu"),
                                  flip_pairs=flip_pairs)
        self.noise = torch.Generator().manual_seed(cfg.seed)

    def op_table(self) -> dict:
        pi = self.policy.pi().detach().numpy()
        p, m = self.policy.p().detach().numpy(), self.policy.m().detach().numpy()
        rows = {}
        for op in OP_NAMES:
            held = [(k, n) for k, slot in enumerate(self.policy.slots) for n, name in enumerate(slot) if name == op]
            if not held:
                continue
            rows[op] = {"mean_p": float(np.mean([p[k, n] for k, n in held])),
                        "mean_m": float(np.mean([m[k, n] for k, n in held])),
                        "pi": float(sum(pi[k] for k in {k for k, _ in held}))}
        for rank, op in enumerate(sorted(rows, key=lambda o: -rows[o]["mean_p"]), start=1):
            rows[op]["rank_by_p"] = rank
        snap = self.policy.snapshot()
        slots = [{"ops": list(slot), "pi": snap["pi"][k], "p": snap["p"][k], "m": snap["m"][k]}
                 for k, slot in enumerate(self.policy.slots)]
        return {"ops": rows, "sub_policies": slots}


def batches(train: PoseBatch, val: PoseBatch, seed: int, batch: int, val_batch: int):
    """Endless (train rows, val rows): seeded epochs over train, seeded draws over val; shared by a pair."""
    rng = np.random.default_rng(seed)
    order: list[int] = []
    while True:
        if len(order) < batch:
            order += rng.permutation(len(train)).tolist()
        rows, order = order[:batch], order[batch:]
        yield torch.tensor(rows), torch.tensor(rng.choice(len(val), size=val_batch, replace=False))


class BaseAugment:
    """The base augmentation as `DA2Search` applies it: seeded per step, heatmaps rendered after it."""

    def __init__(self, cfg: ExperimentConfig, flip_pairs) -> None:
        base = training_policy(None, cfg.train)
        self.cfg = cfg
        self.augment = None if base is None else StepSeededAugment(
            base, flip_pairs, torch.device("cpu"), lambda step: augmentation_seed(cfg, step))

    def __call__(self, batch: PoseBatch, step: int) -> PoseBatch:
        if self.augment is None:
            return batch
        self.augment.step = step
        with torch.no_grad():
            out = self.augment(batch)
        heatmaps, weights = render_heatmaps(out.keypoints, out.visible, self.cfg.data.input_size,
                                            sigma=self.cfg.data.heatmap_sigma)
        return PoseBatch(images=out.images, keypoints=out.keypoints, visible=weights, heatmaps=heatmaps)


def paired_search(args, train, val_nat, val_pl, flip_pairs) -> dict:
    cfg = planted_config(args)
    runs = {"planted": Run(cfg, flip_pairs), "natural": Run(cfg, flip_pairs)}
    vals = {"planted": val_pl, "natural": val_nat}
    base = BaseAugment(cfg, flip_pairs)
    every = cfg.search.da2.policy_update_every
    stream = batches(train, val_nat, args.seed, SETTINGS["batch_size"], SETTINGS["val_batch_size"])
    for step in range(args.updates):
        t_rows, v_rows = next(stream)
        tb = base(train.select(t_rows), step)  # the same base draws for both runs of the pair
        update_d = step % every == 0  # as DA2Search: a d step after every `every`-th w step
        for name, run in runs.items():
            run.step(tb, vals[name].select(v_rows) if update_d else None,
                     run.policy.sample_noise(len(tb), run.noise))
        if args.verbose and (step + 1) % 50 == 0:
            shifted_op = SHIFTS[args.shift][0]
            print(json.dumps({"step": step + 1, **{n: round(r.op_table()["ops"][shifted_op]["mean_p"], 4)
                                                    for n, r in runs.items()}}), flush=True)
    return {name: run.op_table() for name, run in runs.items()}


def d_ascent(step, train: PoseBatch, vals: dict, noise, normalise: bool) -> dict:
    """The d ascent direction of the p logits for each val batch, from ONE w step (restored by the caller)."""
    out = {}
    if isinstance(step, ScoreStep):
        train, groups = step.repeat_images(train)
        choices = step.policy.sample_choices(noise, step.m_sigma, step.explore)
        aug = step.policy.apply_choices(train, choices, noise)
        w_before = [p.detach().clone() for p in step.weights]
        loss_at_w = step.w_step(aug)
        for name, val in vals.items():
            r, _, _ = step.credits(aug, val, w_before, loss_at_w)
            out[name] = -step.policy_grads(choices, r, groups)[1].detach()
    else:
        assert isinstance(step, BilevelStep)
        w_before = [p.detach().clone() for p in step.weights]
        _, d_w = step.w_step(train, noise, keep_d_grad=step.mode == "forward")
        for name, val in vals.items():
            hyper, _, _ = step.hypergradient(train, val, noise, w_before, d_w)
            g = -hyper[1].detach()
            if normalise:
                rms = torch.sqrt(sum((h ** 2).sum() for h in hyper) / sum(h.numel() for h in hyper))
                g = g / rms
            out[name] = g
    return out


def snr_mode(args, train, val_nat, val_pl, flip_pairs) -> dict:
    op = SHIFTS[args.shift][0]
    result = {"shifted_op": op, "draws": args.snr, "warmup": args.warmup, "estimators": {}}
    for label in args.estimators:
        overrides = ESTIMATORS[label]
        cfg = experiment_config(args.seed, **overrides)
        run = Run(cfg, flip_pairs)
        stream = batches(train, val_nat, args.seed, SETTINGS["batch_size"], SETTINGS["val_batch_size"])
        for _ in range(args.warmup):  # natural warm-up: the network learns something first
            t_rows, v_rows = next(stream)
            tb = train.select(t_rows)
            run.step(tb, val_nat.select(v_rows), run.policy.sample_noise(len(tb), run.noise))
        frozen = (copy.deepcopy(run.model.state_dict()), copy.deepcopy(run.w_opt.state_dict()))
        slots = run.policy.slots
        mask = {o: torch.tensor([[1.0 if name == o else 0.0 for name in slot] for slot in slots]) for o in OP_NAMES}
        shift_diff, specific = [], []
        t0 = time.perf_counter()
        for _ in range(args.snr):
            t_rows, v_rows = next(stream)
            tb = train.select(t_rows)
            g = d_ascent(run.step, tb, {"planted": val_pl.select(v_rows), "natural": val_nat.select(v_rows)},
                         run.policy.sample_noise(len(tb), run.noise), overrides.get("normalise", False))
            diff = g["planted"] - g["natural"]
            per_op = {o: float((diff * mask[o]).sum() / mask[o].sum()) for o in OP_NAMES if mask[o].sum() > 0}
            shift_diff.append(per_op[op])
            specific.append(per_op[op] - float(np.mean([v for o, v in per_op.items() if o != op])))
            run.model.load_state_dict(frozen[0])
            run.w_opt.load_state_dict(frozen[1])
        sd, sp = np.array(shift_diff), np.array(specific)
        result["estimators"][label] = {
            "overrides": overrides, "snr_shift": float(sd.mean() / sd.std(ddof=1)),
            "snr_op_specific": float(sp.mean() / sp.std(ddof=1)), "mean_shift": float(sd.mean()),
            "mean_op_specific": float(sp.mean()), "seconds_per_draw": (time.perf_counter() - t0) / args.snr}
        print(json.dumps({label: result["estimators"][label]}), flush=True)
    return result


def planted_config(args) -> ExperimentConfig:
    """The pair's config: the method's estimator (the name decides), the run length, any --da2 overrides."""
    return da2_method_config(experiment_config(args.seed, steps=args.updates, **args.da2), args.method)


def verdict(result: dict) -> dict:
    """The issue's test: the shifted op's planted-minus-natural gain in mean p, against the other ops' gains
    (z in their standard deviations; met when z >= 2 and the op is in the planted run's top 3 by p)."""
    op = result["shifted_op"]
    gains = {o: result["planted"]["ops"][o]["mean_p"] - result["natural"]["ops"][o]["mean_p"]
             for o in result["planted"]["ops"]}
    others = np.array([g for o, g in gains.items() if o != op])
    mean, std = float(others.mean()), float(others.std(ddof=1))
    z = (gains[op] - mean) / std
    rank = result["planted"]["ops"][op]["rank_by_p"]
    return {"gain": gains[op], "others_mean": mean, "others_std": std, "z": z, "rank_by_p": rank,
            "met": bool(z >= 2 and rank <= 3)}


def piece_name(shift: str, method: str, seed: int) -> str:
    return f"{shift}_{method.replace(':', '-')}_s{seed}.json"


def sweep_summary(folder: Path) -> dict:
    """Per shift and method: z, rank and met per seed, and the mean and std of z over the seeds there are."""
    table: dict = {}
    for path in sorted(folder.glob("*.json")):
        piece = json.loads(path.read_text())
        entry = table.setdefault(piece["shift"], {}).setdefault(piece["method"], {"seeds": {}})
        entry["seeds"][str(piece["settings"]["seed"])] = {k: piece["verdict"][k] for k in ("z", "rank_by_p", "met")}
    for methods in table.values():
        for entry in methods.values():
            zs = [v["z"] for v in entry["seeds"].values()]
            entry.update(z_mean=float(np.mean(zs)), z_std=float(np.std(zs, ddof=1)) if len(zs) > 1 else None,
                         met=sum(v["met"] for v in entry["seeds"].values()), of=len(zs))
    return table


def run_sweep(args, parser) -> None:
    """Every (shift, method, seed) piece missing from the folder, each written as it ends, then the summary."""
    folder = Path(args.pieces)
    for shift in args.shifts:
        if shift not in SHIFTS:
            parser.error(f"--shifts: {shift!r} is not one of {', '.join(sorted(SHIFTS))}")
    for method in args.methods:
        if method not in DA2_METHODS:
            parser.error(f"--methods: {method!r} is not a DA2 method ({', '.join(DA2_METHODS)})")
    summary_out = Path(args.out or "benchmarks/results/da2_planted.json")
    for seed in args.seeds:
        for shift in args.shifts:
            for method in args.methods:
                path = folder / piece_name(shift, method, seed)
                if path.exists():
                    continue
                one = argparse.Namespace(**{**vars(args), "seed": seed, "shift": shift, "method": method})
                result = one_run(one)
                write_result(path, {"shift": shift, "method": method, **result})
                print(json.dumps({"piece": path.name, **result["verdict"],
                                  "wall_seconds": round(result["wall_seconds"])}), flush=True)
                write_result(summary_out, {"benchmark": "da2_planted", "updates": args.updates,
                                           "pieces_folder": str(folder), "summary": sweep_summary(folder)})
    write_result(summary_out, {"benchmark": "da2_planted", "updates": args.updates, "pieces_folder": str(folder),
                               "summary": sweep_summary(folder)})


def one_run(args) -> dict:
    start = time.perf_counter()
    train, val_nat, flip_pairs = load_crops(Path(args.workdir))
    val_pl = shifted(val_nat, args.shift, args.seed)
    tables = paired_search(args, train, val_nat, val_pl, flip_pairs)
    cfg_used = planted_config(args)
    result = {"shifted_op": SHIFTS[args.shift][0], "updates": args.updates,
              "wall_seconds": time.perf_counter() - start, **tables,
              "settings": {**SETTINGS, "threads": args.threads, "seed": args.seed, "method": args.method,
                           "base_augment": cfg_used.train.model_dump(mode="json")["base_augment"],
                           "da2": cfg_used.search.da2.model_dump(mode="json"),
                           "policy_lr_used": policy_lr(cfg_used.search.da2, args.updates)}}
    result["verdict"] = verdict(result)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--shift", choices=sorted(SHIFTS))
    parser.add_argument("--method", default="da2", choices=list(DA2_METHODS))
    parser.add_argument("--updates", type=int, default=600)
    parser.add_argument("--out", help="the result (the sweep: its summary, default benchmarks/results/da2_planted.json)")
    parser.add_argument("--sweep", action="store_true", help="every --seeds x --shifts x --methods piece")
    parser.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2, 3, 4])
    parser.add_argument("--shifts", nargs="*", default=["rotate", "scale"])
    parser.add_argument("--methods", nargs="*", default=list(DA2_METHODS))
    parser.add_argument("--pieces", default="benchmarks/results/da2_planted", help="the sweep's piece folder")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--workdir", default="work/bench-da2-planted")
    parser.add_argument("--snr", type=int, default=0, help="SNR mode: number of paired draws")
    parser.add_argument("--warmup", type=int, default=100, help="SNR mode: natural DA2 steps before measuring")
    parser.add_argument("--estimators", nargs="*", default=list(ESTIMATORS), help="SNR mode: which settings")
    parser.add_argument("--da2", nargs="*", default=[], help="DA2Config overrides key=value (YAML values)")
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args()
    if args.updates < 1:
        parser.error("--updates must be at least 1")
    args.da2 = {k: yaml.safe_load(v) for k, v in (item.split("=", 1) for item in args.da2)}
    torch.set_num_threads(args.threads)
    if args.sweep:
        run_sweep(args, parser)
        return
    if args.seed is None or args.shift is None or not args.out:
        parser.error("--seed, --shift and --out are required without --sweep")
    if args.snr:
        train, val_nat, flip_pairs = load_crops(Path(args.workdir))
        result = snr_mode(args, train, val_nat, shifted(val_nat, args.shift, args.seed), flip_pairs)
        result["settings"] = {**SETTINGS, "threads": args.threads, "seed": args.seed}
    else:
        result = one_run(args)
    write_result(args.out, result)
    print(json.dumps({k: v for k, v in result.items() if k not in ("planted", "natural", "settings")}))


if __name__ == "__main__":
    main()
