"""Measuring the unit costs: a few steps of each kind, with the code the trials run, on the device they run on.

A child's setup (`child_fit`: data set, model, optimiser, compiled policy) and its plain steps (`Fit.run`, the
shared TrainingStep with a searched policy), one evaluation (`evaluate_model`), one report's checkpoint, and per
estimator a DA2 trial's setup and a whole cycle of its steps (`DA2Search`: every `policy_update_every`-th step
updates d, every `val_grad_every`-th d step recomputes the val gradient). On a SynthPose copy under the plan's
folder; the random state, the thread count and every file outside that folder are left as they were.
"""

from __future__ import annotations

import contextlib
import random
import statistics
import time
from collections.abc import Iterator

import numpy as np
import torch

from da2_platform.config import ExperimentConfig
from da2_platform.errors import ConfigError
from da2_platform.plan.costs import UnitCosts, device_key, held_per_trial, plan_dir, stand_in_data

# Steps after warm-up steps (the first use of each augmentation op and kernel costs extra), each timed alone:
# a cost is the median, which one slow step on a shared machine does not move
WARM_UP, PLAIN_STEPS = 2, 5
DA2_CYCLES, DA2_MAX_STEPS = 3, 48  # whole update cycles of DA2's steps, at least 3 of them


class Clock:
    """Seconds a trial holding its devices would spend. On a GPU, wall time after a sync. On CPUs, the process's
    CPU seconds over its threads when the loading runs in the process (loader_workers 0): a busy machine's
    waiting for a core is not the trial's cost; with loader workers, wall time (their CPU time is not ours)."""

    def __init__(self, device: torch.device, threads: int, loader_workers: int):
        self.device, self.threads = device, max(1, threads)
        self.cpu = device.type != "cuda" and loader_workers == 0
        self.words = (f"process CPU seconds / {self.threads} thread(s)" if self.cpu else "wall seconds")

    def __call__(self) -> float:
        if self.cpu:
            return time.process_time() / self.threads
        _sync(self.device)
        return time.perf_counter()


@contextlib.contextmanager
def _untouched_process_state() -> Iterator[None]:
    """The measurement seeds every generator and limits threads as a trial does; the caller's state comes back."""
    states = random.getstate(), np.random.get_state(), torch.get_rng_state(), torch.get_num_threads()
    try:
        yield
    finally:
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.set_rng_state(states[2])
        torch.set_num_threads(states[3])


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_config(cfg: ExperimentConfig) -> ExperimentConfig:
    """The config as measured: no initial or backbone weights are read (they change no step's cost)."""
    return cfg.model_copy(update={"model": cfg.model.model_copy(update={"init_weights": None,
                                                                       "pretrained_path": None})})


def searched_policy(cfg: ExperimentConfig):
    """A policy of the discrete space the children search, drawn with the config's seed."""
    from da2_platform.search.children import discrete_space

    space = discrete_space(cfg.search.rl, cfg.search.include_flip)
    rng = random.Random(cfg.seed)
    sizes = space.decisions_per_op()
    return space.to_policy([rng.randrange(sizes[i % 3]) for i in range(space.num_decisions())])


def measure_costs(cfg: ExperimentConfig, estimators: set[str]) -> UnitCosts:
    from da2_platform.search.trial import limit_threads, trial_device

    device = trial_device(cfg)
    if cfg.search.gpus_per_trial > 0 and device.type != "cuda":
        raise ConfigError(f"{cfg.name}: search.gpus_per_trial: the trials hold GPUs and this machine has none to "
                          "measure on; plan a small config here and project it with --scale, or run the plan on a "
                          "GPU worker")
    _, held = held_per_trial(cfg)
    started = time.perf_counter()
    clock = Clock(device, int(cfg.search.cpus_per_trial), cfg.data.loader_workers)
    with _untouched_process_state():
        limit_threads(cfg)
        costs = _measure(measure_config(cfg), estimators, device, held, clock)
    costs.measured_seconds = time.perf_counter() - started
    return costs


def _measure(cfg: ExperimentConfig, estimators: set[str], device: torch.device, held: float,
             clock: Clock) -> UnitCosts:
    from da2_platform.data.topdown import TopDownDataset
    from da2_platform.files import write_bytes_atomic
    from da2_platform.inference import evaluate_model
    from da2_platform.search.children import child_fit

    paths, _ = stand_in_data(cfg)
    val_ann, val_img = (paths.target_annotations, paths.target_images) if paths.target_annotations else (
        paths.val_annotations, paths.val_images)
    settings = {"train_annotations": str(paths.train_annotations), "train_images": str(paths.train_images)}

    policy = searched_policy(cfg)
    child_fit(cfg, settings, policy, device)  # the first build loads code a trial's process has loaded already
    start = clock()
    fit = child_fit(cfg, settings, policy, device)
    setup = clock() - start
    marks: list[float] = []

    def mark(f, metrics) -> None:
        marks.append(clock())

    fit.run(max_steps=WARM_UP + PLAIN_STEPS, on_step=mark)  # one run: a second would replay the epoch's loader
    train_step = statistics.median(b - a for a, b in zip(marks[WARM_UP - 1:], marks[WARM_UP:]))

    start = clock()
    eval_ds = TopDownDataset(val_ann, val_img, input_size=cfg.data.input_size, require_keypoints=False)
    evaluate_model(fit.model, val_ann, val_img, cfg.data.input_size, device, flip_test=cfg.train.flip_test,
                   decoder=cfg.train.decoder, batch_size=cfg.train.eval_batch_size)
    eval_crop = (clock() - start) / max(1, len(eval_ds))

    start = clock()
    scratch = plan_dir(cfg) / "scratch.pt"  # a report's checkpoint goes to storage: bytes, then a file
    write_bytes_atomic(scratch, fit.checkpoint_bytes())
    checkpoint = clock() - start
    scratch.unlink(missing_ok=True)

    da2_step, da2_setup = {}, 0.0
    start = clock()
    train_ds = TopDownDataset(paths.train_annotations, paths.train_images, input_size=cfg.data.input_size)
    val_ds = TopDownDataset(val_ann, val_img, input_size=cfg.data.input_size)
    datasets = clock() - start
    for estimator in sorted(estimators):
        seconds, built = _measure_da2(cfg, estimator, train_ds, val_ds, device, clock)
        da2_step[estimator] = seconds * held
        da2_setup = max(da2_setup, datasets + built)
    return UnitCosts(device=device_key(cfg)[1], devices_held=held, source="measured",
                     train_step=train_step * held, da2_step=da2_step, setup=setup * held,
                     da2_setup=da2_setup * held, eval_crop=eval_crop * held, checkpoint=checkpoint * held,
                     notes=[(f"measured on a SynthPose copy at {cfg.data.input_size[0]}x{cfg.data.input_size[1]}, "
                            f"batch {cfg.train.batch_size}: the median of {PLAIN_STEPS} plain steps and of "
                            f"{DA2_CYCLES} DA2 update cycles per estimator after {WARM_UP} warm-up steps, one "
                            f"evaluation of {len(eval_ds)} crops, in {clock.words}; no init or backbone weights "
                            "read")])


def _measure_da2(cfg: ExperimentConfig, estimator: str, train_ds, val_ds, device: torch.device, clock: Clock
                 ) -> tuple[float, float]:
    """(seconds per step over whole update cycles, seconds to build the search) of one estimator."""
    from da2_platform.search.da2 import DA2Search

    sc = cfg.search.da2
    update = {"estimator": estimator, **({"val_grad_every": 1} if estimator != "score" else {})}
    da2 = sc.model_copy(update=update)
    cfg = cfg.model_copy(update={"search": cfg.search.model_copy(update={"da2": da2})})
    cycle = da2.policy_update_every * (da2.val_grad_every if estimator == "score" else 1)
    cycles = max(1, min(DA2_CYCLES, DA2_MAX_STEPS // cycle))
    start = clock()
    search = DA2Search(cfg, train_ds, val_ds, device)
    built = clock() - start
    for _ in range(WARM_UP):
        search.step()
    seconds = []
    for _ in range(cycles):
        start = clock()
        for _ in range(min(cycle, DA2_MAX_STEPS)):
            search.step()
        seconds.append((clock() - start) / min(cycle, DA2_MAX_STEPS))
    return statistics.median(seconds), built
