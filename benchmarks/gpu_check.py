"""One prepared device check: everything a GPU worker runs, measured in one command of at most 8 minutes.

Sections (each in its own process with its own time cap, so a crash, a hang or a failed compile is recorded
in the JSON with its error and the other sections still run):

- data          SynthPose written once (the crops every other section uses, rendered at the input size)
- train_step    P2Net (paper-r50, 256x192, bf16 autocast, channels_last, batch 64) with the shared training
                step: images/s, model FLOPs (forward + backward, torch.utils.flop_counter) and MFU against
                the H200's dense bf16 peak
- gpu_policy    the torch compilation of a policy on the device: crops/s for fixed:standard-pose and a random
                5x2 policy at batch 256
- da2_step      DA2's bi-level step (central and forward hypergradients) against the plain augmented step
- cpu_feed      a DataLoader with the albumentations compilation and N workers: crops/s, against the demand of
                the training step (its images/s)
- compare       `da2 compare --json` with fractional GPUs per child (search.gpus_per_trial 0.25), to completion;
                its ledger's device-hours and a check that every row counts the fraction it held
- train_ray     `da2 train --json` for one epoch on Ray Train with train.use_gpu, to completion
- train_compile the training step with torch.compile (guarded by the section's cap): images/s and MFU

`--smoke` runs the same code paths on the CPU at tiny sizes (cpu-tiny at 64x48, batch 4, a few steps; the
compare with fixed:none and 2 RL children, gpus_per_trial 0) in about 3 minutes.

    .venv/bin/python benchmarks/gpu_check.py                        # on a GPU machine, <= 8 min
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/gpu_check.py --smoke --out benchmarks/results/gpu_check_smoke.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from harness import PEAK_BF16_DENSE_FLOPS, PEAK_SOURCE, mfu, peak_flops, write_result

REPO_ROOT = Path(__file__).resolve().parents[1]
RESULTS = REPO_ROOT / "benchmarks" / "results"


# run order: the required figures first; the compiled step last, on whatever time is left (up to its cap)
SECTIONS = ("data", "train_step", "gpu_policy", "da2_step", "cpu_feed", "compare", "train_ray", "train_compile")


@dataclass
class Plan:
    """Sizes and time caps of one run; the GPU plan and the smoke plan run the same code."""

    mode: str
    preset: str
    input_size: tuple[int, int]
    batch: int
    warmup: int
    steps: int
    policy_batch: int
    policy_seconds: float
    da2_steps: int  # timed d-steps and w-only steps per mode
    feed_workers: tuple[int, ...]
    feed_seconds: float
    compile_backend: str
    synth_train: int
    synth_val: int
    threads: int | None  # torch threads in the sections (None: torch's default)
    budget_s: float  # the whole run
    caps: dict[str, float]
    compare: dict = field(default_factory=dict)
    train: dict = field(default_factory=dict)
    seed: int = 0


GPU_PLAN = Plan(
    mode="gpu", preset="paper-r50", input_size=(256, 192), batch=64, warmup=5, steps=20,
    policy_batch=256, policy_seconds=5.0, da2_steps=6, feed_workers=(1, 4, 16), feed_seconds=6.0,
    compile_backend="inductor", synth_train=160, synth_val=16, threads=None, budget_s=470.0,
    caps={"data": 60, "train_step": 90, "gpu_policy": 60, "da2_step": 120, "cpu_feed": 90, "train_compile": 150,
          "compare": 150, "train_ray": 120},
    compare={"methods": "da2,rl,fixed:none", "gpus_per_trial": 0.25, "cpus_per_trial": 2, "batch": 32,
             "child_steps": 12, "rl_trials": 4, "rl_concurrent": 4, "da2_steps": 8, "da2_sub_policies": 8},
    train={"use_gpu": True, "batch": 64, "loader_workers": 4},
)

SMOKE_PLAN = Plan(
    mode="smoke", preset="cpu-tiny", input_size=(64, 48), batch=4, warmup=1, steps=2,
    policy_batch=16, policy_seconds=1.0, da2_steps=1, feed_workers=(1, 2), feed_seconds=2.0,
    compile_backend="eager", synth_train=8, synth_val=3, threads=1, budget_s=175.0,
    caps={"data": 30, "train_step": 30, "gpu_policy": 20, "da2_step": 45, "cpu_feed": 30, "train_compile": 30,
          "compare": 120, "train_ray": 90},
    compare={"methods": "fixed:none,rl", "gpus_per_trial": 0, "cpus_per_trial": 1, "batch": 4,
             "child_steps": 2, "rl_trials": 2, "rl_concurrent": 2, "da2_steps": 2, "da2_sub_policies": 2},
    train={"use_gpu": False, "batch": 4, "loader_workers": 0},
)


# -- helpers shared by the sections (they run in the section's own process) ----------------------------------

def _device():
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _synthpose(plan: Plan, workspace: Path):
    from da2_platform.data.synthpose import write_synthpose

    return write_synthpose(workspace / "synthpose", train=plan.synth_train, val=plan.synth_val, seed=plan.seed)


def _dataset(plan: Plan, workspace: Path):
    from da2_platform.data.topdown import TopDownDataset

    paths = _synthpose(plan, workspace)
    return TopDownDataset(paths.train_annotations, paths.train_images, input_size=plan.input_size)


def _samples(dataset, count: int) -> dict:
    """`count` SynthPose crops (cycling through the set) collated like a DataLoader batch."""
    from torch.utils.data import default_collate

    return default_collate([dataset[i % len(dataset)] for i in range(count)])


def _pose_batch(samples: dict, device):
    from da2_platform.training.step import batch_to_device

    return batch_to_device(samples, device)


def random_policy(seed: int):
    """A random 5x2 policy of the discrete space (the one RL, Optuna and PBA search)."""
    import numpy as np

    from search_spaces import DiscreteSpace

    space = DiscreteSpace(num_sub_policies=5, ops_per_sub_policy=2)
    rng = np.random.default_rng(seed)
    decisions = [int(rng.integers(0, n)) for _ in range(10) for n in space.decisions_per_op()]
    return space.to_policy(decisions, name="random-5x2")


def _policies(plan: Plan) -> dict:
    from search_spaces import fixed_policy

    return {"standard-pose": fixed_policy("standard-pose"), "random-5x2": random_policy(plan.seed)}


def _experiment_cfg(plan: Plan):
    """The defaults with the plan's batch, input size, bf16 and channels_last: what the training step reads."""
    from da2_platform.config import ExperimentConfig

    return ExperimentConfig.model_validate({"data": {"input_size": list(plan.input_size)},
                                            "train": {"batch_size": plan.batch, "bf16": True, "channels_last": True}})


def _timed_steps(step, batch, warmup: int, steps: int, device) -> tuple[float, float]:
    """(seconds of the first call, mean seconds per step after `warmup` calls)."""
    start = time.perf_counter()
    step(batch)
    _sync(device)
    first = time.perf_counter() - start
    for _ in range(max(0, warmup - 1)):
        step(batch)
    _sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step(batch)
    _sync(device)
    return first, (time.perf_counter() - start) / steps


def _model_flops(step, batch) -> int:
    """FLOPs of one training step as torch.utils.flop_counter counts them (convolutions and matmuls, forward and
    backward); the optimizer's elementwise update is not model FLOPs."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        step(batch)
    return int(counter.get_total_flops())


def _peak(device) -> tuple[float | None, str]:
    import torch

    if device.type != "cuda":
        return None, "cpu"
    name = torch.cuda.get_device_name(device)
    return peak_flops(name), name


def _throughput_entry(plan: Plan, device, flops_per_step: int, first_s: float, step_s: float) -> dict:
    peak, name = _peak(device)
    images_per_s = plan.batch / step_s
    achieved = flops_per_step / step_s
    return {"device": name, "preset": plan.preset, "input_size": list(plan.input_size), "batch": plan.batch,
            "bf16_autocast": device.type == "cuda", "channels_last": True, "warmup": plan.warmup,
            "steps": plan.steps, "first_step_s": round(first_s, 3), "step_s": step_s,
            "images_per_s": round(images_per_s, 2), "model_gflops_per_image": flops_per_step / plan.batch / 1e9,
            "achieved_tflops": achieved / 1e12, "mfu": mfu(flops_per_step, step_s, name),
            "peak_flops": peak}


def _training_step(plan: Plan, compiled: bool = False):
    import torch

    from da2_platform.training.step import TrainingStep, make_optimizer, seed_everything
    from pose_models import build_p2net

    device = _device()
    seed_everything(plan.seed)
    model = build_p2net(plan.preset, num_joints=17).to(device).to(memory_format=torch.channels_last)
    cfg = _experiment_cfg(plan)
    net = torch.compile(model, backend=plan.compile_backend) if compiled else model
    return TrainingStep.from_config(net, cfg, device, optimizer=make_optimizer(model, cfg.train)), model, device


# -- the sections -----------------------------------------------------------------------------------------------

def section_data(plan: Plan, workspace: Path) -> dict:
    paths = _synthpose(plan, workspace)
    dataset = _dataset(plan, workspace)
    return {"train_images": plan.synth_train, "val_images": plan.synth_val, "train_crops": len(dataset),
            "root": str(paths.root), "machine": _machine()}


def section_train_step(plan: Plan, workspace: Path) -> dict:
    step, _, device = _training_step(plan)
    batch = _pose_batch(_samples(_dataset(plan, workspace), plan.batch), device)
    first, step_s = _timed_steps(step, batch, plan.warmup, plan.steps, device)
    flops = _model_flops(step, batch)
    out = _throughput_entry(plan, device, flops, first, step_s)
    if device.type == "cuda":
        import torch

        out["max_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    return out


def section_train_compile(plan: Plan, workspace: Path) -> dict:
    eager, _, device = _training_step(plan)
    batch = _pose_batch(_samples(_dataset(plan, workspace), plan.batch), device)
    flops = _model_flops(eager, batch)  # the compiled graph computes the same model FLOPs
    del eager
    step, _, device = _training_step(plan, compiled=True)
    first, step_s = _timed_steps(step, batch, plan.warmup, plan.steps, device)
    return {**_throughput_entry(plan, device, flops, first, step_s), "backend": plan.compile_backend,
            "compile_s": round(first, 1)}


def section_gpu_policy(plan: Plan, workspace: Path) -> dict:
    import torch

    from search_spaces import compile_torch

    device = _device()
    dataset = _dataset(plan, workspace)
    batch = _pose_batch(_samples(dataset, plan.policy_batch), device)
    out: dict = {"device": _peak(device)[1], "input_size": list(plan.input_size), "batch": plan.policy_batch}
    for name, policy in _policies(plan).items():
        generator = torch.Generator(device=device).manual_seed(plan.seed)
        module = compile_torch.compile_policy(policy, dataset.flip_pairs, generator=generator).to(device)
        with torch.no_grad():
            module(batch)  # warm-up
            _sync(device)
            done, start = 0, time.perf_counter()
            while time.perf_counter() - start < plan.policy_seconds:
                module(batch)
                done += plan.policy_batch
            _sync(device)
            wall = time.perf_counter() - start
        out[name] = {"crops": done, "wall_s": round(wall, 3), "crops_per_s": round(done / wall, 1)}
    return out


def section_da2_step(plan: Plan, workspace: Path) -> dict:
    """Per-step seconds of DA2 (as the DA2 trial builds it) and of the plain augmented step on the same batches.

    The w-only step and the step with a d update are timed apart; a search with a d update every n-th step
    costs (d + (n - 1) w) / n per step."""
    import torch

    from da2_platform.config import load_config
    from da2_platform.search.da2 import DA2Search, with_targets
    from da2_platform.training.loop import build_model, device_augment
    from da2_platform.training.step import TrainingStep, seed_everything
    from search_spaces import fixed_policy

    device = _device()
    dataset = _dataset(plan, workspace)
    cfg = load_config(None, {"workdir": str(workspace / "da2"), "model.preset": plan.preset,
                             "data.input_size": list(plan.input_size), "train.batch_size": plan.batch})
    train_samples = _samples(dataset, plan.batch)
    val_samples = {k: v.flip(0) for k, v in train_samples.items()}  # another batch of the same crops
    plain_batch = _pose_batch(train_samples, device)
    out: dict = {"device": _peak(device)[1], "input_size": list(plan.input_size), "batch": plan.batch,
                 "estimator": getattr(cfg.search.da2, "estimator", "relaxed"),
                 "sub_policies": cfg.search.da2.sub_policies, "policy_update_every": cfg.search.da2.policy_update_every,
                 "timed_steps": plan.da2_steps}

    def plain(channels_last_model: bool) -> float:
        seed_everything(plan.seed)
        model = build_model(cfg, dataset.num_joints).to(device)
        if channels_last_model:  # as `Fit` (da2 train); search children leave the model contiguous
            model = model.to(memory_format=torch.channels_last)
        step = TrainingStep.from_config(
            model, cfg, device,
            device_augment(cfg, fixed_policy("standard-pose"), dataset.flip_pairs, device, plan.seed))
        return _timed_steps(step, plain_batch, plan.warmup, plan.da2_steps, device)[1]

    out["plain_augmented_s"] = plain(False)
    out["plain_augmented_channels_last_model_s"] = plain(True)
    w_only = None
    for mode in ("central", "forward"):
        mcfg = cfg.model_copy(update={"search": cfg.search.model_copy(update={
            "da2": cfg.search.da2.model_copy(update={"hypergradient": mode})})})
        search = DA2Search(mcfg, dataset, dataset, device)
        train = with_targets(train_samples, mcfg, device)
        val = with_targets(val_samples, mcfg, device)

        def run(with_val: bool, search=search, train=train, val=val) -> None:
            noise = search.policy.sample_noise(plan.batch, search.generator)
            search.step_fn(train, val if with_val else None, noise)

        _, d_step = _timed_steps(lambda _: run(True), None, plan.warmup, plan.da2_steps, device)
        if w_only is None:  # the w-only step does not depend on the hypergradient mode
            _, w_only = _timed_steps(lambda _: run(False), None, plan.warmup, plan.da2_steps, device)
            out["da2_w_only_s"] = w_only
        out[f"{mode}_d_step_s"] = d_step
        for every in sorted({1, 3, cfg.search.da2.policy_update_every}):
            per_step = (d_step + (every - 1) * w_only) / every
            out[f"{mode}_every{every}"] = {"step_s": per_step,
                                           "ratio_to_plain_augmented": per_step / out["plain_augmented_s"]}
        del search
    return out


def section_cpu_feed(plan: Plan, workspace: Path) -> dict:
    """Crops/s of the loader path: read the image, crop, albumentations policy, collate, in N workers."""
    import torch
    from torch.utils.data import DataLoader, RandomSampler

    from search_spaces import compile_albumentations

    dataset = _dataset(plan, workspace)
    out: dict = {"input_size": list(plan.input_size), "batch": plan.batch, "cpu_count": os.cpu_count(),
                 "workers": list(plan.feed_workers)}
    for name, policy in _policies(plan).items():
        dataset.transform = compile_albumentations.compile_policy(policy, dataset.flip_pairs, seed=plan.seed)
        rates = {}
        for workers in plan.feed_workers:
            sampler = RandomSampler(dataset, replacement=True, num_samples=10**7,
                                    generator=torch.Generator().manual_seed(plan.seed))
            loader = DataLoader(dataset, batch_size=plan.batch, sampler=sampler, num_workers=workers,
                                drop_last=True)
            batches = iter(loader)
            for _ in range(max(1, workers)):  # the workers' start and their first batches
                next(batches)
            done, start = 0, time.perf_counter()
            while time.perf_counter() - start < plan.feed_seconds:
                next(batches)
                done += plan.batch
            wall = time.perf_counter() - start
            del batches
            rates[str(workers)] = {"crops": done, "wall_s": round(wall, 3), "crops_per_s": round(done / wall, 1)}
        out[name] = rates
    return out


def _da2_cli() -> list[str]:
    beside = Path(sys.executable).parent / "da2"
    return [str(beside)] if beside.is_file() else [sys.executable, "-m", "da2_platform"]


def _cli_env(workspace: Path) -> dict:
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_TMPDIR": str(workspace / "ray"),
           "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    env.pop("RAY_ADDRESS", None)  # a local Ray of our own, never a cluster someone else runs
    env.pop("MLFLOW_TRACKING_URI", None)  # the workdir's own SQLite store
    (workspace / "ray").mkdir(parents=True, exist_ok=True)
    return env


def _experiment_config(plan: Plan, workspace: Path, name: str, batch: int, extra: dict) -> Path:
    import yaml

    cfg = {"name": name, "seed": plan.seed, "workdir": str(workspace / name),
           "data": {"kind": "synthpose", "root": str(workspace / "synthpose"), "synth_train": plan.synth_train,
                    "synth_val": plan.synth_val, "synth_seed": plan.seed, "input_size": list(plan.input_size)},
           "model": {"preset": plan.preset},
           "train": {"epochs": 1, "batch_size": batch, "eval_batch_size": max(16, batch)}}
    for section, values in extra.items():
        cfg.setdefault(section, {}).update(values)
    path = workspace / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def _run_cli(args: list[str], workspace: Path, log_name: str) -> tuple[dict, float]:
    cmd = _da2_cli() + args
    start = time.perf_counter()
    with open(workspace / f"{log_name}.stderr", "w") as err:
        proc = subprocess.run(cmd, check=False, env=_cli_env(workspace), stdout=subprocess.PIPE, stderr=err, text=True,
                              cwd=workspace)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        tail = (workspace / f"{log_name}.stderr").read_text(errors="replace")[-1500:]
        raise RuntimeError(f"{' '.join(args[:1])} exited with {proc.returncode}: {tail}")
    return json.loads(proc.stdout), wall


def ledger_check(rows: list, gpus_per_trial: float, cpus_per_trial: float, gpu: bool) -> dict:
    """Every row counts what its trial held: device-seconds = devices held x wall, the GPU fraction on a GPU."""
    expect_kind, expect_held = ("gpu", gpus_per_trial) if gpu else ("cpu", cpus_per_trial)
    bad = [r.trial_id for r in rows if r.device_kind != expect_kind or not math.isclose(r.devices_held, expect_held)
           or not math.isclose(r.device_seconds, r.devices_held * r.wall_seconds, rel_tol=1e-6, abs_tol=1e-9)]
    return {"rows": len(rows), "expected_kind": expect_kind, "expected_devices_held": expect_held,
            "rows_not_counting_what_they_held": bad, "ok": bool(rows) and not bad}


def max_overlap(rows: list) -> int:
    """The most trials that ran at once, from the ledger's start and end times."""
    events = []
    for r in rows:
        if r.start_time and r.end_time:
            events += [(datetime.fromisoformat(r.start_time), 1), (datetime.fromisoformat(r.end_time), -1)]
    running = best = 0
    for _, delta in sorted(events, key=lambda e: (e[0], e[1])):
        running += delta
        best = max(best, running)
    return best


def section_compare(plan: Plan, workspace: Path) -> dict:
    import torch

    from da2_platform.ledger import CostLedger

    c = plan.compare
    gpu = torch.cuda.is_available() and c["gpus_per_trial"] > 0
    sub = {"sub_policies": 2, "trials": c["rl_trials"], "child_steps": c["child_steps"],
           "concurrent": c["rl_concurrent"]}
    path = _experiment_config(plan, workspace, "gpucheck-compare", c["batch"], {
        "search": {"gpus_per_trial": c["gpus_per_trial"], "cpus_per_trial": c["cpus_per_trial"], "rl": sub,
                   "da2": {"steps": c["da2_steps"], "sub_policies": c["da2_sub_policies"], "checkpoint_every": 4,
                           "seeds": [plan.seed]}},
        "train": {"use_gpu": gpu}})
    report, wall = _run_cli(["compare", "--config", str(path), "--methods", c["methods"], "--json"], workspace,
                            "compare")
    rows = CostLedger.for_experiment(workspace / "gpucheck-compare", "gpucheck-compare").rows()
    search_rows = [r for r in rows if not r.method.startswith("final:")]
    final_rows = [r for r in rows if r.method.startswith("final:")]
    methods = {m["method"]: {"trials": m["trials"], "search_device_hours": m["search_device_hours"],
                             "best_search_val_ap": m["best_search_val_ap"], "final_ap": m["final_ap"]} for m in report["methods"]}
    return {"methods_run": c["methods"], "gpus_per_trial": c["gpus_per_trial"], "cpus_per_trial": c["cpus_per_trial"],
            "wall_s": round(wall, 1), "methods": methods,
            "completed": all(m["final_ap"] is not None for m in report["methods"]) and len(methods) == len(
                c["methods"].split(",")),
            "search_device_hours": sum(r.device_seconds for r in search_rows) / 3600,
            "final_training_device_hours": sum(r.device_seconds for r in final_rows) / 3600,
            "search_wall_hours": sum(r.wall_seconds for r in search_rows) / 3600,
            "max_trials_at_once": max_overlap(search_rows),
            "statuses": sorted({r.status for r in rows}),
            "ledger_counts_fractions": ledger_check(rows, c["gpus_per_trial"], c["cpus_per_trial"], gpu)}


def section_train_ray(plan: Plan, workspace: Path) -> dict:
    t = plan.train
    path = _experiment_config(plan, workspace, "gpucheck-train", t["batch"], {
        "train": {"use_gpu": t["use_gpu"], "workers": 1}, "data": {"loader_workers": t["loader_workers"]}})
    out, wall = _run_cli(["train", "--config", str(path), "--epochs", "1", "--no-register", "--json"], workspace,
                         "train")
    held = 1.0  # one worker holding one GPU, or its cpus_per_worker (1) CPUs
    return {"use_gpu": t["use_gpu"], "batch": t["batch"], "wall_s": round(wall, 1),
            "trainer_wall_s": out["wall_seconds"], "device_seconds": out["device_seconds"],
            "device_hours": out["device_seconds"] / 3600,
            # the run reports its steps' seconds x devices; the trainer held its devices for its whole wall
            "held_device_hours": out["wall_seconds"] * held / 3600, "epoch": out.get("epoch"), "steps": out.get("step"),
            "val_AP": out.get("val_AP"), "completed": out.get("epoch") == 1 and out["device_seconds"] > 0}


SECTION_FUNCTIONS = {
    "data": section_data, "train_step": section_train_step, "gpu_policy": section_gpu_policy,
    "da2_step": section_da2_step, "cpu_feed": section_cpu_feed, "train_compile": section_train_compile,
    "compare": section_compare, "train_ray": section_train_ray,
}


def run_sections_here(names: list[str], workspace: Path) -> None:
    """The section worker: run the sections in order in this one process (imports are paid once), writing a
    start marker before each and its result (or its error) after it. The parent enforces the caps."""
    plan = Plan(**json.loads((workspace / "plan.json").read_text()))
    plan.input_size = tuple(plan.input_size)
    if plan.threads:
        import torch

        torch.set_num_threads(plan.threads)
    for name in names:
        (workspace / f"{name}.started").write_text(str(time.time()))
        start = time.perf_counter()
        try:
            result = {"status": "ok", **SECTION_FUNCTIONS[name](plan, workspace)}
        except Exception as e:  # noqa: BLE001 -- any failure is recorded; the next section still runs
            result = {"status": "error", "error": f"{type(e).__name__}: {e}"[-2000:],
                      "traceback": traceback.format_exc()[-3000:]}
        result["seconds"] = round(time.perf_counter() - start, 1)
        _release_memory()
        path = workspace / f"{name}.result.json"
        path.with_suffix(".tmp").write_text(json.dumps(result, default=str))
        path.with_suffix(".tmp").replace(path)


def _release_memory() -> None:
    import gc

    gc.collect()
    if "torch" in sys.modules and sys.modules["torch"].cuda.is_available():
        sys.modules["torch"].cuda.empty_cache()


# -- the driver ---------------------------------------------------------------------------------------------

class SectionRunner:
    """Runs the sections in a worker process group; a section past its cap, or a worker that dies (a crash, a
    CUDA abort), is recorded, the group (Ray and compile workers included) is stopped, and a fresh worker goes
    on with the sections after it."""

    def __init__(self, workspace: Path, plan: Plan, wall0: float,
                 on_done=lambda name, result: None) -> None:
        self.workspace, self.plan, self.wall0, self.on_done = workspace, plan, wall0, on_done
        self.results: dict[str, dict] = {}

    def run(self, names: list[str]) -> dict[str, dict]:
        pending = list(names)
        while pending:
            if self._left() < 5:
                for name in pending:
                    self._record(name, {"status": "skipped", "error": "no time left in the run's budget",
                                        "seconds": 0.0, "cap_s": 0.0})
                break
            pending = self._one_worker(pending)
        return self.results

    def _left(self) -> float:
        return self.plan.budget_s - (time.perf_counter() - self.wall0)

    def _record(self, name: str, result: dict) -> None:
        self.results[name] = result
        self.on_done(name, result)

    def _one_worker(self, names: list[str]) -> list[str]:
        """Start a worker for `names`; return the sections still to run when it ends or is stopped."""
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])
               .rstrip(os.pathsep)}
        log_path = self.workspace / f"worker-{names[0]}.log"
        with open(log_path, "w") as log:
            proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--run-sections",
                                     ",".join(names), "--workspace", str(self.workspace)], env=env, stdout=log,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        pending, started_at = list(names), None
        while pending:
            name = pending[0]
            result_path = self.workspace / f"{name}.result.json"
            if result_path.is_file():
                result = json.loads(result_path.read_text())
                self._record(name, {**result, "cap_s": round(self.plan.caps[name], 1)})
                pending.pop(0)
                started_at = None
                continue
            if started_at is None and (self.workspace / f"{name}.started").is_file():
                started_at = time.perf_counter()
            cap = min(self.plan.caps[name], self._left() + (time.perf_counter() - started_at if started_at else 0))
            over_cap = started_at is not None and time.perf_counter() - started_at > cap
            if over_cap or self._left() <= 0:
                _stop_worker(proc)
                seconds = time.perf_counter() - started_at if started_at else 0.0
                why = f"stopped after its cap of {cap:.0f} s" if over_cap else "stopped: the run's budget ran out"
                self._record(name, {"status": "timeout", "error": why, "seconds": round(seconds, 1),
                                    "cap_s": round(cap, 1)})
                return pending[1:]
            if proc.poll() is not None and not result_path.is_file():
                tail = log_path.read_text(errors="replace")[-1500:]
                self._record(name, {"status": "error", "cap_s": round(cap, 1),
                                    "error": f"section worker exited with {proc.returncode}: {tail}",
                                    "seconds": round(time.perf_counter() - started_at, 1) if started_at else 0.0})
                return pending[1:]
            time.sleep(0.2)
        proc.wait()
        return pending


def _stop_worker(proc: subprocess.Popen, grace_s: float = 10.0) -> None:
    """SIGTERM everything the worker started (its session: a `da2` child that outlives its worker, its local Ray
    and Ray's workers, which sit in process groups of their own), then SIGKILL whatever is left of it."""
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))
    from da2_platform.procs import stop_session

    left = stop_session(proc, grace_s=grace_s)
    if left:
        print(f"gpu_check: processes {left} outlived SIGKILL", file=sys.stderr)


def _machine() -> dict:
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"gpu": gpu, "cuda": torch.version.cuda, "torch": torch.__version__, "python": platform.python_version(),
            "cpu_count": os.cpu_count(), "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
            "load_average_1min": round(os.getloadavg()[0], 2), "platform": platform.platform()}


def summarise(sections: dict, smoke: bool) -> tuple[dict, list[dict]]:
    """The headline figures and the issue's goals (met or missed, by how much)."""
    def get(section: str, *keys):
        node = sections.get(section, {})
        if node.get("status") != "ok":
            return None
        for k in keys:
            node = node.get(k) if isinstance(node, dict) else None
        return node

    eager_ips, compiled_ips = get("train_step", "images_per_s"), get("train_compile", "images_per_s")
    demand = max(v for v in (eager_ips, compiled_ips, 0.0) if v is not None) or None
    feed = {}
    for policy in ("standard-pose", "random-5x2"):
        rates = get("cpu_feed", policy) or {}
        feed[policy] = {w: {"crops_per_s": r["crops_per_s"],
                            "ratio_to_demand": r["crops_per_s"] / demand if demand else None}
                        for w, r in rates.items()}
    summary = {
        "train_images_per_s": eager_ips, "train_images_per_s_compiled": compiled_ips,
        "mfu": get("train_step", "mfu"), "mfu_compiled": get("train_compile", "mfu"),
        "model_gflops_per_image": get("train_step", "model_gflops_per_image"),
        "gpu_policy_crops_per_s": {p: get("gpu_policy", p, "crops_per_s") for p in ("standard-pose", "random-5x2")},
        "da2_ratio_to_plain_augmented": {f"{m}_every{n}": get("da2_step", f"{m}_every{n}", "ratio_to_plain_augmented")
                                         for m in ("central", "forward") for n in (1, 3)},
        "feed_demand_images_per_s": demand, "cpu_feed": feed,
        "compare_completed": get("compare", "completed"),
        "compare_search_device_hours": get("compare", "search_device_hours"),
        "compare_final_device_hours": get("compare", "final_training_device_hours"),
        "compare_max_trials_at_once": get("compare", "max_trials_at_once"),
        "ledger_counts_fractions": get("compare", "ledger_counts_fractions", "ok"),
        "train_completed": get("train_ray", "completed"), "train_device_hours": get("train_ray", "device_hours"),
    }
    best_mfu = max((v for v in (summary["mfu"], summary["mfu_compiled"]) if v is not None), default=None)
    worst_policy = min((v for v in summary["gpu_policy_crops_per_s"].values() if v is not None), default=None)
    every = get("da2_step", "policy_update_every") or 1
    central = get("da2_step", f"central_every{every}", "ratio_to_plain_augmented")
    feed16 = min((r.get("16", {}).get("ratio_to_demand") or math.inf for r in feed.values() if r), default=None)
    goals = [
        _goal("MFU of P2Net-R50 256x192 bf16 (best of eager/compiled)", ">=", 0.40, best_mfu),
        _goal("GPU policy crops/s at batch 256 (slower of the two policies)", ">=", 20_000, worst_policy),
        _goal(f"DA2 central step / plain augmented step (a d step every {every} step(s), the config's default)",
              "<=", 2.0, central),
        _goal("CPU feed with 16 workers / GPU step demand (slower policy)", ">=", 1.0,
              None if feed16 in (None, math.inf) else feed16),
    ]
    if smoke:
        for g in goals:
            g.update(met=None, off_by=None, note="smoke run on the CPU: goals apply to the GPU run only")
    return summary, goals


def _goal(what: str, op: str, target: float, measured: float | None) -> dict:
    if measured is None:
        return {"goal": what, "target": f"{op} {target:g}", "measured": None, "met": None,
                "note": "not measured (see the section's status)"}
    met = measured >= target if op == ">=" else measured <= target
    gap = (measured - target) / target
    return {"goal": what, "target": f"{op} {target:g}", "measured": measured, "met": met,
            "off_by": None if met else f"{abs(gap):.0%} {'short' if op == '>=' else 'over'}"}


def _key_figure(name: str, r: dict) -> str:
    if r.get("status") != "ok":
        return (r.get("error") or "").splitlines()[0][:70] if r.get("error") else ""
    if name in ("train_step", "train_compile"):
        mfu = f", MFU {r['mfu']:.1%}" if r.get("mfu") is not None else ""
        return f"{r['images_per_s']:.1f} images/s, {r['model_gflops_per_image']:.2f} GFLOP/image{mfu}"
    if name == "gpu_policy":
        return f"{r['standard-pose']['crops_per_s']:.0f} / {r['random-5x2']['crops_per_s']:.0f} crops/s"
    if name == "da2_step":
        return (f"{r.get('estimator', '?')}: central {r['central_every1']['ratio_to_plain_augmented']:.2f}x (d every step), "
                f"{r['central_every3']['ratio_to_plain_augmented']:.2f}x (every 3rd); forward "
                f"{r['forward_every1']['ratio_to_plain_augmented']:.2f}x (every step)")
    if name == "cpu_feed":
        return ", ".join(f"{w}w {v['crops_per_s']:.0f}" for w, v in r["standard-pose"].items()) + " crops/s"
    if name == "compare":
        return (f"completed={r['completed']}, search {r['search_device_hours']:.5f} device-h, "
                f"fractions ok={r['ledger_counts_fractions']['ok']}, {r['max_trials_at_once']} at once")
    if name == "train_ray":
        return f"completed={r['completed']}, {r['device_hours']:.5f} device-h, val AP {r['val_AP']}"
    if name == "data":
        return f"{r['train_crops']} train crops"
    return ""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="the same code paths on the CPU at tiny sizes")
    parser.add_argument("--out", type=Path, default=None,
                        help="JSON to write (default benchmarks/results/gpu_check.json, or gpu_check_smoke.json)")
    parser.add_argument("--sections", default=",".join(SECTIONS), help="comma-separated subset, in run order")
    parser.add_argument("--budget-s", type=float, default=None, help="time budget of the whole run")
    parser.add_argument("--slack", type=float, default=1.0,
                        help="multiply every section's cap and the budget (a busy machine)")
    parser.add_argument("--keep-workspace", action="store_true", help="keep the temporary workdir (logs, ledger)")
    parser.add_argument("--run-sections", help=argparse.SUPPRESS)
    parser.add_argument("--workspace", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.run_sections:
        run_sections_here(args.run_sections.split(","), args.workspace)
        return 0

    chosen = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = [s for s in chosen if s not in SECTIONS]
    if unknown:
        print(f"error: --sections: unknown section(s) {unknown}; known: {', '.join(SECTIONS)}", file=sys.stderr)
        return 2
    if "data" not in chosen:
        chosen.insert(0, "data")
    plan = SMOKE_PLAN if args.smoke else GPU_PLAN
    if args.budget_s is not None:
        plan.budget_s = args.budget_s
    if args.slack <= 0:
        print(f"error: --slack: must be positive, got {args.slack}", file=sys.stderr)
        return 2
    plan.budget_s *= args.slack
    plan.caps = {k: v * args.slack for k, v in plan.caps.items()}
    out = args.out or RESULTS / ("gpu_check_smoke.json" if args.smoke else "gpu_check.json")
    started, wall0 = datetime.now(UTC).isoformat(timespec="seconds"), time.perf_counter()
    workspace = Path(tempfile.mkdtemp(prefix="gpucheck-"))
    (workspace / "plan.json").write_text(json.dumps(asdict(plan)))
    def show(name: str, r: dict) -> None:
        print(f"{name:14s} {r['status']:8s} {r['seconds']:6.1f} s  {_key_figure(name, r)}", file=sys.stderr,
              flush=True)

    try:
        sections = SectionRunner(workspace, plan, wall0, on_done=show).run(chosen)
    finally:
        if not args.keep_workspace:
            import shutil

            shutil.rmtree(workspace, ignore_errors=True)
    summary, goals = summarise(sections, args.smoke)
    report = {"schema_version": 1, "mode": plan.mode, "started": started,
              "wall_s": round(time.perf_counter() - wall0, 1), "budget_s": plan.budget_s,
              "command": " ".join([Path(sys.executable).name, "benchmarks/gpu_check.py", *(argv or sys.argv[1:])]),
              "machine": sections.get("data", {}).get("machine"),
              "peak": {"bf16_dense_flops": PEAK_BF16_DENSE_FLOPS, "source": PEAK_SOURCE},
              "plan": asdict(plan), "sections": sections, "summary": summary, "goals": goals}
    if args.keep_workspace:
        report["workspace"] = str(workspace)
    write_result(out, report)
    print(f"\n{'section':14s} {'status':8s} {'seconds':>7s}  key figure")
    for name, r in sections.items():
        print(f"{name:14s} {r['status']:8s} {r['seconds']:7.1f}  {_key_figure(name, r)}")
    for g in goals:
        measured = "-" if g["measured"] is None else f"{g['measured']:.3g}"
        print(f"goal: {g['goal']}: {measured} (target {g['target']}) met={g['met']}")
    print(f"wrote {out} ({report['wall_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
