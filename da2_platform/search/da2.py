"""DA2 as a Ray Tune experiment: one trial per seed, checkpointed and restorable.

The trial trains P2Net and the relaxed policy together (`BilevelStep`) on the search-train split, takes its
d steps on the search-val split (never on val), and ends with the learned `Policy`, its search-val AP, the
curves of pi, p and m, and its device-seconds. In one-pass mode (`search.da2.one_pass`) it runs the final
training's schedule and also reports its network's val AP; the driver then registers that network beside the
policy.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from da2_platform.config import DA2Config, ExperimentConfig
from da2_platform.data.heatmaps import flip_heatmaps_back, render_heatmaps
from da2_platform.data.topdown import TopDownDataset
from da2_platform.errors import TrainingError
from da2_platform.files import write_bytes_atomic
from da2_platform.inference import evaluate_model
from da2_platform.search.bilevel import BilevelStep, ScoreStep
from da2_platform.search.relaxed_policy import RelaxedPolicy, op_slots
from da2_platform.search.trial import TrialClock, limit_threads, trial_device
from da2_platform.training.loop import (
    FitState,
    StepSeededAugment,
    augmentation_seed,
    build_model,
    checkpoint_bytes,
    epoch_loader,
    load_checkpoint,
    training_policy,
)
from da2_platform.training.step import (
    TrainingStep,
    autocast_for,
    batch_to_device,
    make_optimizer,
    make_scheduler,
    seed_everything,
)
from pose_models.losses import P2NetLoss
from search_spaces.batch import PoseBatch
from search_spaces.ops import searched_op_names

if TYPE_CHECKING:
    from da2_platform.search.control import TrialBudget

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
        maps = [_full(out.heatmaps), *(_full(h) for h in out.stage_heatmaps)]
        if flip_pairs is not None:
            n = batch.images.shape[0]
            maps = [(m[:n] + flip_heatmaps_back(m[n:], flip_pairs)) / 2 for m in maps]
        out = P2NetOutput(heatmaps=maps[0], stage_heatmaps=maps[1:])
        dtype = maps[0].dtype
        return loss_fn(out, batch.heatmaps.to(dtype), batch.visible.to(dtype), reduction=reduction).total
    return batch_loss


def _full(t: torch.Tensor) -> torch.Tensor:
    """bf16/fp16 outputs up to float32 for the loss; float32 and float64 as they are (a float64 check stays float64)."""
    return t.float() if t.dtype in (torch.bfloat16, torch.float16) else t


# The policy lr's default scales as 1/sqrt(d updates T). Adam moves a logit by about lr per update, so noise alone
# walks it about lr*sqrt(T) in T updates, while a steady signal of per-update SNR s drifts about lr*T*s. A fixed lr
# let chance walk the logits of a 1,000-update planted search 1.6 units (p anywhere in 0.2-0.8), as far as the planted
# op's signal could move p before saturating. The scaled lr holds the walk at 0.87 units at any length, and is exactly
# the 0.05 that the testbed's 300-update searches (and its comparisons) ran with
POLICY_LR_AT, POLICY_LR_REF_UPDATES = 0.05, 300


def d_updates(sc: DA2Config, total_steps: int) -> int:
    """How many d steps a search of `total_steps` w steps makes."""
    return max(1, -(-total_steps // sc.policy_update_every))


def policy_lr(sc: DA2Config, total_steps: int) -> float:
    """`policy_lr` when set, else 0.05 * sqrt(300 / the search's d updates)."""
    if sc.policy_lr is not None:
        return sc.policy_lr
    return POLICY_LR_AT * (POLICY_LR_REF_UPDATES / d_updates(sc, total_steps)) ** 0.5


def make_policy_optimizer(policy: RelaxedPolicy, sc: DA2Config, total_steps: int) -> torch.optim.Adam:
    """The d optimiser: Adam over (p, m) at the policy lr and over pi at the policy lr times pi_lr_scale."""
    lr = policy_lr(sc, total_steps)
    return torch.optim.Adam([{"params": [policy.pi_logits], "lr": lr * sc.pi_lr_scale},
                             {"params": [policy.p_logits, policy.m_logits]}], lr=lr, betas=sc.policy_betas)


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
        trainer = TrainingStep.from_config(model, cfg, device, optimizer=w_opt, loss_fn=loss_fn)
        return ScoreStep(trainer, policy, loss, d_opt, hypergradient=sc.hypergradient, m_sigma=sc.m_sigma,
                         centre_p=sc.centre_p, draws_per_image=sc.draws_per_image, val_loss=val_loss,
                         val_grad_every=sc.val_grad_every, explore=sc.explore)
    return BilevelStep(model, policy, loss, w_opt, d_opt, zeta=sc.zeta or cfg.train.lr,
                       hypergradient=sc.hypergradient, grad_clip=cfg.train.grad_clip, normalise=sc.normalise,
                       val_loss=val_loss)


def with_targets(samples: dict, cfg: ExperimentConfig, device: torch.device,
                 base: Callable[[PoseBatch], PoseBatch] | None = None) -> PoseBatch:
    """Collated samples -> a batch with rendered heatmap targets, after the base augmentation when given."""
    batch = batch_to_device(samples, device)
    if base is not None:
        with torch.no_grad():
            batch = base(batch)
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

    The Ray Tune trainable drives it; benchmarks call it directly with the same code. With `search.da2.one_pass`
    it runs the final training's schedule (train.epochs epochs of its train split, the lr dropping at train's
    milestones), so its network is a trained model."""

    def __init__(self, cfg: ExperimentConfig, train_ds: TopDownDataset, val_ds: TopDownDataset,
                 device: torch.device):
        sc = cfg.search.da2
        self.cfg, self.device = cfg, device
        seed_everything(cfg.seed)
        self.model = build_model(cfg, train_ds.num_joints).to(device)
        slots = op_slots(sc.sub_policies, sc.ops_per_sub_policy, cfg.seed,
                         op_names=searched_op_names(cfg.search.include_flip), design=sc.slot_design)
        self.policy = RelaxedPolicy(slots, train_ds.flip_pairs, tau1=sc.tau1, tau2=sc.tau2,
                                    hard=sc.hard_choice).to(device)
        self.w_opt = make_optimizer(self.model, cfg.train)
        self.w_schedule = make_scheduler(self.w_opt, cfg.train)  # stepped per epoch in one-pass mode only
        self.steps_per_epoch = len(epoch_loader(train_ds, cfg, 0))
        self.total_steps = cfg.train.epochs * self.steps_per_epoch if sc.one_pass else sc.steps
        self.d_opt = make_policy_optimizer(self.policy, sc, self.total_steps)
        self.step_fn = make_da2_step(cfg, self.model, self.policy, self.w_opt, self.d_opt, device,
                                     flip_pairs=train_ds.flip_pairs)
        self.generator = torch.Generator().manual_seed(cfg.seed)
        self.state = {"step": 0, "train_consumed": 0, "val_consumed": 0, "wall": 0.0, "curves": []}
        self.train_stream = BatchStream(train_ds, cfg, 0)
        # the w step trains on base-augmented batches, as every training does; d steps score on plain val batches
        base = training_policy(None, cfg.train)
        self.base_augment = None if base is None else StepSeededAugment(
            base, train_ds.flip_pairs, device, lambda step: augmentation_seed(cfg, step))
        val_cfg = cfg if sc.val_batch_size is None else cfg.model_copy(
            update={"train": cfg.train.model_copy(update={"batch_size": sc.val_batch_size})})
        self.val_stream = BatchStream(val_ds, val_cfg, 0, salt=10_000)

    @property
    def done(self) -> bool:
        return self.state["step"] >= self.total_steps

    def step(self):
        sc = self.cfg.search.da2
        if self.base_augment is not None:
            self.base_augment.step = self.state["step"]
        train = with_targets(next(self.train_stream), self.cfg, self.device, self.base_augment)
        update_d = self.state["step"] % sc.policy_update_every == 0
        val = with_targets(next(self.val_stream), self.cfg, self.device) if update_d else None
        stats = self.step_fn(train, val, self.policy.sample_noise(train.images.shape[0], self.generator))
        self.state["step"] += 1
        if sc.one_pass and self.state["step"] % self.steps_per_epoch == 0:
            self.w_schedule.step()  # an epoch ended: the lr follows train's milestones, as in `Fit`
        if self.state["step"] % sc.curve_every == 0 or self.state["step"] == 1:
            self.state["curves"].append({"step": self.state["step"], **self.policy.snapshot()})
        return stats

    def learned_policy(self):
        method = next(m for m, e in DA2_METHODS.items() if e == self.cfg.search.da2.estimator)
        return self.policy.to_policy({"method": method, "seed": self.cfg.seed, "steps": self.state["step"],
                                      **({"one_pass": True} if self.cfg.search.da2.one_pass else {})})

    def curves_json(self) -> str:
        return json.dumps({"slots": self.policy.slots, "curves": self.state["curves"]})

    def save(self, path: Path, wall: float) -> None:
        """The one checkpoint format (`training.loop`): the network side as every training saves it, so
        `model_from_checkpoint` loads the network a one-pass search trained; the policy side under `da2`."""
        self.state.update(train_consumed=self.train_stream.consumed, val_consumed=self.val_stream.consumed,
                          wall=wall)
        step = self.state["step"]
        fit_state = FitState(epoch=step // self.steps_per_epoch, step=step,
                             epoch_steps=step % self.steps_per_epoch, device_seconds=wall, extra=self.state)
        da2 = {"policy": self.policy.state_dict(), "d_opt": self.d_opt.state_dict(),
               "generator": self.generator.get_state()}
        write_bytes_atomic(path, checkpoint_bytes(self.cfg, self.model, self.w_opt, self.w_schedule, fit_state,
                                                  da2=da2))

    def load(self, path: Path) -> None:
        saved = load_checkpoint(path, expect_config=self.model.config)
        if "da2" not in saved:
            raise TrainingError(f"{path}: a training checkpoint without DA2's policy state (field 'da2')")
        self.model.load_state_dict(saved["model"])
        self.w_opt.load_state_dict(saved["optimizer"])
        self.w_schedule.load_state_dict(saved["scheduler"])
        self.policy.load_state_dict(saved["da2"]["policy"])
        self.d_opt.load_state_dict(saved["da2"]["d_opt"])
        self.generator.set_state(saved["da2"]["generator"])
        self.state = FitState.from_dict(saved["state"]).extra
        self.step_fn.step_count = self.state["step"]
        self.train_stream.consumed = self.state["train_consumed"]
        self.val_stream.consumed = self.state["val_consumed"]


def da2_trainable(config: dict, settings: dict) -> None:
    """Ray Tune function trainable: config = {"seed": s}; settings carries the experiment config and data paths."""
    from ray import tune

    from da2_platform.search.control import TrialBudget

    cfg = ExperimentConfig.model_validate(settings["cfg"]).model_copy(update={"seed": int(config["seed"])})
    # started before the set-up (model, data, the relaxed policy), which is charged to the trial too
    clock = TrialClock(gpus=cfg.search.gpus_per_trial if torch.cuda.is_available() and cfg.search.gpus_per_trial
                       else 0, cpus=cfg.search.cpus_per_trial)
    budget = TrialBudget.for_this_trial()
    if budget is not None and not budget.charge(0.0):  # started after the budget ran out: no set-up either
        tune.report({"step": 0, "complete": False, "budget_stop": True, **clock.report()})
        return
    limit_threads(cfg)
    device = trial_device(cfg)
    train_ds = TopDownDataset(settings["train_annotations"], settings["train_images"], input_size=cfg.data.input_size)
    val_ds = TopDownDataset(settings["eval_annotations"], settings["eval_images"], input_size=cfg.data.input_size)
    search = DA2Search(cfg, train_ds, val_ds, device)
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            search.load(Path(d) / STATE_FILE)
    clock.previous_wall = search.state["wall"]

    def report(metrics: dict, checkpoint: bool) -> None:
        if not checkpoint:
            tune.report(metrics)
            return
        with tempfile.TemporaryDirectory() as tmp:
            search.save(Path(tmp) / STATE_FILE, clock.wall())
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(tmp))

    run_da2(search, settings, report, clock, budget)


def run_da2(search: DA2Search, settings: dict, report: Callable[[dict, bool], None], clock: TrialClock,
            budget: TrialBudget | None = None) -> None:
    """Step `search` to its end: a report with a checkpoint every `checkpoint_every` steps, and at the end with the
    search-val AP, the learned policy and the curves (`report(metrics, checkpoint)`).

    With a `budget`, every step charges the trial's spend; the first step past the search's budget ends the trial
    with a last report (`budget_stop`, charged what it used, no policy returned)."""
    cfg, device = search.cfg, search.device
    sc = cfg.search.da2
    resumed_from = search.state["step"]
    while not search.done:
        stats = search.step()
        step = search.state["step"]
        if budget is not None and not budget.charge(clock.report()["device_seconds"]):
            report({"step": step, "train_loss": stats.train_loss, "complete": False, "budget_stop": True,
                    "resumed_from_step": resumed_from, **clock.report()}, False)
            return
        if step % sc.checkpoint_every and not search.done:
            continue
        metrics = {"step": step, "train_loss": stats.train_loss, "resumed_from_step": resumed_from}
        if search.done:
            def ap_on(split: str) -> float:
                return evaluate_model(search.model, Path(settings[f"{split}_annotations"]),
                                      Path(settings[f"{split}_images"]), cfg.data.input_size, device,
                                      flip_test=cfg.train.flip_test, decoder=cfg.train.decoder,
                                      batch_size=cfg.train.eval_batch_size)["AP"]

            metrics.update(val_ap=ap_on("eval"), policy_json=search.learned_policy().to_json(), complete=True,
                           curves_json=search.curves_json())
            if sc.one_pass:  # the network is the trained model: scored on val, which the search never used
                metrics["one_pass_val_ap"] = ap_on("holdout")
        metrics.update(clock.report())  # evaluation time counts too
        report(metrics, True)


# the two DA2 methods, named apart everywhere (search, compare, report, ledger, registry), and their estimators:
# `da2` is the paper's relaxed estimator (Eq. 3-12), `da2:score` the score-function variant
DA2_METHODS: dict[str, str] = {"da2": "relaxed", "da2:score": "score"}


def da2_method_config(cfg: ExperimentConfig, method: str) -> ExperimentConfig:
    """`cfg` with `search.da2.estimator` set by the method's name (the name decides; the field follows it)."""
    if method not in DA2_METHODS:
        raise ValueError(f"not a DA2 method: {method!r}; DA2 methods: {', '.join(DA2_METHODS)}")
    da2 = cfg.search.da2.model_copy(update={"estimator": DA2_METHODS[method]})
    return cfg.model_copy(update={"search": cfg.search.model_copy(update={"da2": da2})})

