"""DA2 as a Ray Tune experiment: one trial per seed, checkpointed and restorable.

The trial trains P2Net and the relaxed policy together (`BilevelStep`) on the search-train split, takes its
d steps on the search-val split (never on val), and ends with the learned `Policy`, its search-val AP, the
curves of pi, p and m, and its device-seconds.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from da2_platform.config import ExperimentConfig
from da2_platform.data.heatmaps import flip_heatmaps_back, render_heatmaps
from da2_platform.data.topdown import TopDownDataset
from da2_platform.inference import evaluate_model
from da2_platform.search.bilevel import BilevelStep, ScoreStep
from da2_platform.search.relaxed_policy import RelaxedPolicy, op_slots
from da2_platform.search.trial import TrialClock, limit_threads, trial_device
from da2_platform.training.loop import build_model, epoch_loader
from da2_platform.training.step import (
    TrainingStep,
    autocast_for,
    batch_to_device,
    make_optimizer,
    seed_everything,
)
from pose_models.losses import P2NetLoss
from search_spaces.batch import PoseBatch

if TYPE_CHECKING:
    from da2_platform.search.driver import TuneJob

STATE_FILE = "da2_state.pt"


def make_batch_loss(loss_fn: P2NetLoss, cfg: ExperimentConfig, device: torch.device, flip_pairs=None):
    """loss(model, batch, reduction) of P2Net's outputs; with `flip_pairs`, of the flip-test predictor that
    evaluation scores: every output averaged with the flipped-back output of the mirrored batch (one forward pass
    of 2B images)."""
    from pose_models.p2net import P2NetOutput

    def batch_loss(model: torch.nn.Module, batch: PoseBatch, reduction: str = "mean") -> torch.Tensor:
        images = batch.images if flip_pairs is None else torch.cat([batch.images, batch.images.flip(3)])
        with autocast_for(device, cfg.train.bf16):
            out = model(images)
        maps = [out.heatmaps.float(), *(h.float() for h in out.stage_heatmaps)]
        if flip_pairs is not None:
            n = batch.images.shape[0]
            maps = [(m[:n] + flip_heatmaps_back(m[n:], flip_pairs)) / 2 for m in maps]
        out = P2NetOutput(heatmaps=maps[0], stage_heatmaps=maps[1:])
        return loss_fn(out, batch.heatmaps.float(), batch.visible.float(), reduction=reduction).total
    return batch_loss


def make_da2_step(cfg: ExperimentConfig, model: torch.nn.Module, policy: RelaxedPolicy, w_opt, d_opt,
                  device: torch.device, flip_pairs=None) -> BilevelStep | ScoreStep:
    """The configured d estimator around (model, policy, both optimisers). The val side scores the predictor
    the way evaluation does: with flip test when `search.da2.val_flip_test` (default: `train.flip_test`)."""
    sc = cfg.search.da2
    loss_fn = P2NetLoss(ohkm_topk=cfg.model.ohkm_topk)
    loss = make_batch_loss(loss_fn, cfg, device)
    flip_val = cfg.train.flip_test if sc.val_flip_test is None else sc.val_flip_test
    if flip_val and flip_pairs is None:
        raise ValueError("the flip-test val objective needs the dataset's flip pairs")
    val_loss = make_batch_loss(loss_fn, cfg, device, flip_pairs) if flip_val else loss
    if sc.estimator == "score":
        trainer = TrainingStep(model, loss_fn, w_opt, cfg.train, cfg.data.input_size, device,
                               sigma=cfg.data.heatmap_sigma)
        return ScoreStep(trainer, policy, loss, d_opt, hypergradient=sc.hypergradient, m_sigma=sc.m_sigma,
                         centre_p=sc.centre_p, draws_per_image=sc.draws_per_image, val_loss=val_loss)
    return BilevelStep(model, policy, loss, w_opt, d_opt, zeta=sc.zeta or cfg.train.lr,
                       hypergradient=sc.hypergradient, grad_clip=cfg.train.grad_clip, normalise=sc.normalise,
                       val_loss=val_loss)


def with_targets(samples: dict, cfg: ExperimentConfig, device: torch.device) -> PoseBatch:
    batch = batch_to_device(samples, device)
    heatmaps, weights = render_heatmaps(batch.keypoints, batch.visible, cfg.data.input_size,
                                        sigma=cfg.data.heatmap_sigma)
    return PoseBatch(images=batch.images, keypoints=batch.keypoints, visible=weights, heatmaps=heatmaps)


class BatchStream:
    """Endless, resumable batches: epoch e is the seeded order of `epoch_loader`, position = batches consumed."""

    def __init__(self, dataset, cfg: ExperimentConfig, consumed: int = 0, salt: int = 0):
        self.dataset, self.cfg, self.consumed, self.salt = dataset, cfg, consumed, salt
        self._iter = None

    def __next__(self) -> dict:
        if self._iter is None:
            per_epoch = len(epoch_loader(self.dataset, self.cfg, 0))
            epoch, offset = divmod(self.consumed, per_epoch)
            self._iter = iter(epoch_loader(self.dataset, self.cfg, self.salt + epoch))
            for _ in range(offset):
                next(self._iter)
        try:
            batch = next(self._iter)
        except StopIteration:
            self._iter = None
            return self.__next__()
        self.consumed += 1
        return batch


class DA2Search:
    """One DA2 search (network + relaxed policy + both optimisers + data streams), steppable and resumable.

    The Ray Tune trainable drives it; benchmarks call it directly with the same code."""

    def __init__(self, cfg: ExperimentConfig, train_ds: TopDownDataset, val_ds: TopDownDataset,
                 device: torch.device):
        sc = cfg.search.da2
        self.cfg, self.device = cfg, device
        seed_everything(cfg.seed)
        self.model = build_model(cfg, train_ds.num_joints).to(device)
        slots = op_slots(sc.sub_policies, sc.ops_per_sub_policy, cfg.seed, design=sc.slot_design)
        self.policy = RelaxedPolicy(slots, train_ds.flip_pairs, tau1=sc.tau1, tau2=sc.tau2,
                                    hard=sc.hard_choice).to(device)
        self.w_opt = make_optimizer(self.model, cfg.train)
        self.d_opt = torch.optim.Adam(self.policy.parameters(), lr=sc.policy_lr, betas=sc.policy_betas)
        self.step_fn = make_da2_step(cfg, self.model, self.policy, self.w_opt, self.d_opt, device,
                                     flip_pairs=train_ds.flip_pairs)
        self.generator = torch.Generator().manual_seed(cfg.seed)
        self.state = {"step": 0, "train_consumed": 0, "val_consumed": 0, "wall": 0.0, "curves": []}
        self.train_stream = BatchStream(train_ds, cfg, 0)
        val_cfg = cfg if sc.val_batch_size is None else cfg.model_copy(
            update={"train": cfg.train.model_copy(update={"batch_size": sc.val_batch_size})})
        self.val_stream = BatchStream(val_ds, val_cfg, 0, salt=10_000)

    @property
    def done(self) -> bool:
        return self.state["step"] >= self.cfg.search.da2.steps

    def step(self):
        sc = self.cfg.search.da2
        train = with_targets(next(self.train_stream), self.cfg, self.device)
        update_d = self.state["step"] % sc.policy_update_every == 0
        val = with_targets(next(self.val_stream), self.cfg, self.device) if update_d else None
        stats = self.step_fn(train, val, self.policy.sample_noise(train.images.shape[0], self.generator))
        self.state["step"] += 1
        if self.state["step"] % sc.curve_every == 0 or self.state["step"] == 1:
            self.state["curves"].append({"step": self.state["step"], **self.policy.snapshot()})
        return stats

    def learned_policy(self):
        return self.policy.to_policy({"method": "da2", "seed": self.cfg.seed, "steps": self.state["step"]})

    def curves_json(self) -> str:
        return json.dumps({"slots": self.policy.slots, "curves": self.state["curves"]})

    def save(self, path: Path, wall: float) -> None:
        self.state.update(train_consumed=self.train_stream.consumed, val_consumed=self.val_stream.consumed,
                          wall=wall)
        torch.save({"model": self.model.state_dict(), "policy": self.policy.state_dict(),
                    "w_opt": self.w_opt.state_dict(), "d_opt": self.d_opt.state_dict(),
                    "generator": self.generator.get_state(), "state_json": json.dumps(self.state)}, path)

    def load(self, path: Path) -> None:
        saved = torch.load(path, map_location="cpu", weights_only=True)
        self.model.load_state_dict(saved["model"])
        self.policy.load_state_dict(saved["policy"])
        self.w_opt.load_state_dict(saved["w_opt"])
        self.d_opt.load_state_dict(saved["d_opt"])
        self.generator.set_state(saved["generator"])
        self.state = json.loads(saved["state_json"])
        self.step_fn.step_count = self.state["step"]
        self.train_stream.consumed = self.state["train_consumed"]
        self.val_stream.consumed = self.state["val_consumed"]


def da2_trainable(config: dict, settings: dict) -> None:
    """Ray Tune function trainable: config = {"seed": s}; settings carries the experiment config and data paths."""
    from ray import tune

    cfg = ExperimentConfig.model_validate(settings["cfg"]).model_copy(update={"seed": int(config["seed"])})
    sc = cfg.search.da2
    limit_threads(cfg)
    device = trial_device(cfg)
    train_ds = TopDownDataset(settings["train_annotations"], settings["train_images"], input_size=cfg.data.input_size)
    val_ds = TopDownDataset(settings["eval_annotations"], settings["eval_images"], input_size=cfg.data.input_size)
    search = DA2Search(cfg, train_ds, val_ds, device)
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            search.load(Path(d) / STATE_FILE)
    resumed_from = search.state["step"]
    clock = TrialClock(gpus=cfg.search.gpus_per_trial if device.type == "cuda" else 0,
                       cpus=cfg.search.cpus_per_trial, previous_wall=search.state["wall"])
    while not search.done:
        stats = search.step()
        step = search.state["step"]
        if step % sc.checkpoint_every and not search.done:
            continue
        metrics = {"step": step, "train_loss": stats.train_loss, "resumed_from_step": resumed_from}
        if search.done:
            coco = evaluate_model(search.model, Path(settings["eval_annotations"]), Path(settings["eval_images"]),
                                  cfg.data.input_size, device, flip_test=cfg.train.flip_test,
                                  decoder=cfg.train.decoder, batch_size=cfg.train.eval_batch_size)
            metrics.update(val_ap=coco["AP"], policy_json=search.learned_policy().to_json(), complete=True,
                           curves_json=search.curves_json())
        metrics.update(clock.report())  # evaluation time counts too
        with tempfile.TemporaryDirectory() as tmp:
            search.save(Path(tmp) / STATE_FILE, clock.wall())
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(tmp))


def make_da2_job(cfg: ExperimentConfig, data) -> TuneJob:
    from ray import tune

    from da2_platform.search.curves import plot_policy_curves
    from da2_platform.search.driver import TuneJob, trial_settings

    sc = cfg.search.da2

    def artifacts(results: list[dict]) -> dict[str, bytes]:
        files = {}
        for r in results:
            curves = r["metrics"].get("curves_json")
            if curves:
                seed = r["config"].get("seed")
                files[f"curves/seed{seed}.json"] = curves.encode()
                files[f"curves/seed{seed}.png"] = plot_policy_curves(json.loads(curves))
        return files

    return TuneJob(
        method="da2",
        trainable=tune.with_parameters(da2_trainable, settings=trial_settings(cfg, data)),
        param_space={"seed": tune.grid_search(list(sc.seeds))},
        tune_config={"max_concurrent_trials": max(1, len(sc.seeds))},
        search_params={**sc.model_dump(mode="json"), "model": cfg.model.preset or cfg.model.backbone,
                       "input_size": "x".join(map(str, cfg.data.input_size)), "batch_size": cfg.train.batch_size},
        artifacts=artifacts,
        expected_trials=len(sc.seeds),
    )
