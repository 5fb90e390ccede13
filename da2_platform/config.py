"""Experiment configuration: flat YAML validated into typed objects (no inheritance chains, no `type=` registries).

One `ExperimentConfig` drives every command: the data set, the model, the shared training recipe, each search
method's settings, the cluster resources and MLflow tracking. `da2 <cmd> --config C` loads it with
`load_config`; a bad field is reported with the file and the field path.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from da2_platform.errors import ConfigError
from da2_platform.jobenv import refuse_relative_in_job
from da2_platform.limits import (
    MAX_CONFIG_BYTES,
    MAX_INPUT_SIDE,
    MAX_OPS_PER_SUB_POLICY,
    MAX_SUB_POLICIES,
    MAX_SYNTH_IMAGES,
)


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class DataConfig(_Section):
    """Where the images come from. `synthpose` generates a data set under `root` when it is missing.

    Three roles, the same for every method: train, search-val (what searches score candidates on and DA2 takes
    its d steps on) and val (reported, seen by no search). `search_val` chooses where search-val comes from:
    `from_train` carves `search_val_fraction` of the train images out (searches then train on the rest), `target`
    uses a separate labelled set from the target domain (COCO: `search_val_annotations`/`search_val_images`;
    SynthPose: a third split of `synth_search_val` images in the val style) and searches train on all of train.
    """

    kind: Literal["synthpose", "coco"] = "synthpose"
    root: Path | None = None  # synthpose output folder; default <workdir>/data/synthpose
    synth_train: int = Field(240, ge=1, le=MAX_SYNTH_IMAGES)
    synth_val: int = Field(60, ge=1, le=MAX_SYNTH_IMAGES)
    synth_search_val: int = Field(60, ge=1, le=MAX_SYNTH_IMAGES)  # SynthPose target split (search_val: target only)
    synth_seed: int | None = None  # None: the experiment's seed, so seeds vary the data draw too
    # val/target style against train: `none` (train's), `wide` (every factor at once, far), or a deployment style
    # that moves a few named factors an op of the space can reproduce (da2_platform/data/synthpose.py, SHIFTS)
    synth_shift: Literal["none", "wide", "lowlight", "lowlight-tilt"] = "lowlight"
    train_annotations: Path | None = None
    train_images: Path | None = None
    val_annotations: Path | None = None
    val_images: Path | None = None
    # None: `target` for SynthPose (its target split, drawn in the val style: searches score where val is), and
    # `from_train` for COCO (all a team may have is one labelled set)
    search_val: Literal["from_train", "target"] | None = None
    search_val_annotations: Path | None = None  # COCO with search_val: target
    search_val_images: Path | None = None
    input_size: tuple[int, int] = (64, 48)  # (H, W)
    heatmap_sigma: float | None = Field(None, gt=0)  # None: 2 px at a 64x48 heatmap, scaled with its width
    search_val_fraction: float = Field(0.2, gt=0.0, lt=1.0)  # carved out of train (search_val: from_train)
    loader_workers: int = Field(0, ge=0)

    @field_validator("input_size")
    @classmethod
    def _multiple_of_32(cls, v: tuple[int, int]) -> tuple[int, int]:
        if v[0] % 32 or v[1] % 16 or min(v) <= 0:
            raise ValueError(f"input_size {v} must be (H, W) with H a multiple of 32 and W a multiple of 16")
        if max(v) > MAX_INPUT_SIDE:
            raise ValueError(f"input_size {v} is larger than {MAX_INPUT_SIDE} pixels a side (docs/security.md)")
        return v

    @model_validator(mode="after")
    def _target_files(self) -> DataConfig:
        if self.search_val is None:
            self.search_val = "target" if self.kind == "synthpose" else "from_train"
        if self.kind == "coco" and self.search_val == "target":
            for key in ("search_val_annotations", "search_val_images"):
                if getattr(self, key) is None:
                    raise ValueError(f"search_val is 'target' but {key} is not set (the labelled target-domain "
                                     "set searches score on)")
        return self


class ModelConfig(_Section):
    """P2Net settings; `preset` names one of pose_models.PRESETS, explicit fields override it."""

    preset: str | None = "cpu-tiny"
    backbone: str | None = None
    fusion_channels: int | None = None
    refine_channels: int | None = None
    pretrained_path: Path | None = None  # local ImageNet weights for the backbone (nothing is downloaded)
    init_weights: Path | None = None  # a trained P2Net (checkpoint or state dict) to start every training from
    ohkm_topk: int = Field(10, ge=1)  # the paper keeps the 10 hardest joints

    def build_kwargs(self, num_joints: int) -> dict:
        from pose_models import PRESETS

        kwargs: dict = {}
        if self.preset is not None:
            if self.preset not in PRESETS:
                raise ConfigError(f"model.preset: unknown preset {self.preset!r}; known: {sorted(PRESETS)}")
            kwargs.update(PRESETS[self.preset])
        for key in ("backbone", "fusion_channels", "refine_channels"):
            if getattr(self, key) is not None:
                kwargs[key] = getattr(self, key)
        if self.pretrained_path is not None:
            kwargs["pretrained_path"] = str(self.pretrained_path)
        kwargs["num_joints"] = num_joints
        return kwargs


class BaseOp(_Section):
    """One op of the base augmentation: a registry op name, its probability p and normalised magnitude m."""

    name: str
    p: float = Field(0.5, ge=0, le=1)
    m: float = Field(0.0, ge=0, le=1)

    @field_validator("name")
    @classmethod
    def _known_op(cls, v: str) -> str:
        from search_spaces.ops import OP_NAMES

        if v not in OP_NAMES:
            raise ValueError(f"unknown op {v!r}; valid ops: {', '.join(OP_NAMES)}")
        return v


class TrainConfig(_Section):
    """The one training recipe shared by production training and every search method's children."""

    # applied before the policy in every training (children, DA2's w step, final trainings, production, the warm
    # start), as AutoAugment applies its policy after the baseline flip and crop. HorizontalFlip p 0.5 because
    # evaluation uses the flip test; [] turns it off. The searched space then holds no HorizontalFlip
    # (search.include_flip brings it back).
    base_augment: list[BaseOp] = Field(default_factory=lambda: [BaseOp(name="HorizontalFlip", p=0.5, m=0.0)])

    epochs: int = Field(5, ge=1)  # the CPU demo's; COCO configs set their own
    max_steps_per_epoch: int | None = Field(None, ge=1)
    batch_size: int = Field(16, ge=1)
    optimizer: Literal["adam", "adamw"] = "adam"
    lr: float = Field(1e-3, gt=0)  # the CPU demo's fine-tuning lr; the paper's Adam lr is 5e-4 (COCO configs)
    weight_decay: float = Field(1e-5, ge=0)
    # epochs where lr is multiplied by lr_gamma; None: the last epoch only (epochs - 1; none with one epoch), which settles the final
    # weights of a short fine-tune (benchmarks/results/policy_sensitivity.json); [] keeps lr constant
    lr_milestones: list[int] | None = None
    lr_gamma: float = 0.1
    grad_clip: float | None = 5.0
    bf16: bool = True  # autocast on GPU only
    channels_last: bool = True
    decoder: Literal["standard", "dark"] = "dark"
    flip_test: bool = True
    flip_shift: bool = True  # shift flipped-back heatmaps 1 px (the mirrored crop lands 0.75 heatmap px off)
    augment_on: Literal["device", "loader"] = "device"  # torch compiler after cropping, or albumentations in workers
    workers: int = Field(1, ge=1)  # Ray Train workers (one per GPU on a cluster)
    cpus_per_worker: int = Field(1, ge=1)
    use_gpu: bool | None = None  # None: use GPUs when the cluster has them
    eval_batch_size: int = Field(32, ge=1)


class DA2Config(_Section):
    """DA2 search (Eq. 2-12): K sub-policies of N ops, relaxed and trained with the network weights."""

    # K; None: every unordered N-tuple of the searched ops (C(17, 2) = 136 pairs), so DA2 reaches every policy a
    # baseline can return; a number deals K tuples by `slot_design`
    sub_policies: int | None = Field(None, ge=1, le=MAX_SUB_POLICIES)
    ops_per_sub_policy: int = Field(2, ge=1, le=MAX_OPS_PER_SUB_POLICY)  # N
    tau1: float = Field(0.5, gt=0)  # Gumbel-softmax temperature (sub-policy choice)
    tau2: float = Field(0.5, gt=0)  # relaxed Bernoulli temperature (op on/off)
    hard_choice: bool = True  # one sub-policy per image, straight-through gradient
    # d gradient, set by the method's name (`--method da2` / `da2:score`): "relaxed" = the paper's Eq. 12 finite
    # difference through the relaxed policy; "score" = per-image alignment credits <grad_w l_i, grad_w L_val> with
    # a score-function gradient (the variant, see search/bilevel.py)
    estimator: Literal["score", "relaxed"] = "relaxed"
    # Eq. 12's central difference, or the one-sided one that reuses the w step's own grad_d L_train(w, d) (one pass
    # fewer). Forward with a d step every 3rd w step puts a DA2 step at 1.8x a plain step of the same policy on the
    # CPU benchmark (central, d every step: 4.5x; benchmarks/results/da2_cost.json)
    hypergradient: Literal["central", "forward"] = "forward"
    slot_design: Literal["random", "balanced"] = "balanced"  # balanced: every op in (almost) equally many slots
    policy_update_every: int = Field(3, ge=1)  # a d step after every n-th w step (1: every step)
    zeta: float | None = None  # relaxed: w step size in the unrolled term; None: the w learning rate
    normalise: bool = True  # relaxed: drop -zeta's size and divide the hypergradient by its RMS (Adam eps issue)
    centre_p: bool = False  # score: subtract the slot mean from the p gradient (measured worse: off)
    m_sigma: float = Field(0.5, gt=0)  # score: std of the logit-normal magnitude exploration
    draws_per_image: int = Field(1, ge=1)  # score: policy draws per train image (>1: per-image leave-one-out baseline)
    # the d objective scores the predictor as evaluation does: flip test on the val side (None: train.flip_test).
    # Without it the search cannot see that a policy without HorizontalFlip ruins flip-test AP (measured)
    val_flip_test: bool | None = None
    val_batch_size: int | None = Field(None, ge=1)  # search-val batch of a d step; None: train.batch_size
    val_grad_every: int = Field(1, ge=1)  # da2:score only: recompute grad_w L_val every n d steps, reuse it between
    # score: this share of sub-policy draws is uniform, the rest from pi (importance-weighted). Without it pi
    # concentrated on one sub-policy and an op's other slots got no images, so their p froze (measured, README)
    explore: float = Field(0.2, ge=0, lt=1)
    # Adam moves a logit by about lr per d update, so noise alone walks it about lr*sqrt(T) in T updates while a
    # steady signal drifts lr*T*SNR. None: 0.05 * sqrt(300 / T) for the search's T d updates (0.027 at 1,000), so
    # chance moves a logit under one unit at any search length (search/da2.py, README)
    policy_lr: float | None = Field(None, gt=0)
    # pi's learning rate is the policy lr times this. 0.2 kept pi from starving an op's other slots in planted
    # searches but cost 0.016-0.025 final AP on the testbed, where the policy gains by concentrating (README)
    pi_lr_scale: float = Field(1.0, gt=0)
    policy_betas: tuple[float, float] = (0.9, 0.999)
    steps: int = Field(60, ge=1)
    # one pass (the paper's one-pass optimisation): the search runs the final training's schedule (train.epochs
    # epochs of the search-train split, train's lr milestones) instead of `steps`, and its own network is the
    # trained model: registered beside the policy, scored on val, and compare trains nothing after it
    one_pass: bool = False
    checkpoint_every: int = Field(20, ge=1)
    curve_every: int = Field(2, ge=1)  # snapshot pi, p, m every n steps
    top_n: int = Field(5, ge=1)
    seeds: list[int] = Field(default_factory=lambda: [0])  # one Ray Tune trial per seed


class DiscreteSearchConfig(_Section):
    """Shared by RL, Optuna and PBA: K sub-policies of N ops, p in 11 bins, m in 10 bins."""

    sub_policies: int = Field(5, ge=1, le=MAX_SUB_POLICIES)
    ops_per_sub_policy: int = Field(2, ge=1, le=MAX_OPS_PER_SUB_POLICY)
    trials: int = Field(4, ge=1)  # children at most (PBA: the population); a budget usually ends the search first
    child_steps: int = Field(30, ge=1)
    concurrent: int = Field(2, ge=1)
    evals: int = Field(2, ge=1)  # search-val scorings per child (ASHA's rungs, PBT's perturbation points)
    time_budget_s: float | None = Field(None, gt=0)  # wall-clock cap of the search (Tune time_budget_s)


class RLSearchConfig(DiscreteSearchConfig):
    """RL-AutoAugment: the controller takes one PPO step per `ppo_batch` child rewards (AutoAugment updates it on
    batches of sampled policies), whatever the concurrency; the final policy is the top `top_children` children's
    sub-policies (AutoAugment: the top 5 policies' 25)."""

    ppo_batch: int = Field(8, ge=1)
    top_children: int = Field(5, ge=1)


class OptunaSearchConfig(DiscreteSearchConfig):
    """TPE + ASHA: `startup_trials` random trials before TPE (None: a third of the trials the search can afford,
    at most 10, Optuna's default); ASHA rungs at evaluations 1, 2, 4, ... below `evals` (4 evals: two rungs)."""

    evals: int = Field(4, ge=3)  # at least two ASHA rungs below the last evaluation
    startup_trials: int | None = Field(None, ge=1)


class PBASearchConfig(DiscreteSearchConfig):
    """PBA on PBT: a population of `trials` children (at least 8, as PBA's search script runs 16), exploit and
    explore every `perturbation_interval` evaluations (PBA: every 3 epochs)."""

    trials: int = Field(8, ge=8)
    child_steps: int = Field(15, ge=1)  # the CPU demo's: 8 x 15 steps, evaluated 6 times (two perturbations)
    evals: int = Field(6, ge=2)
    perturbation_interval: int = Field(3, ge=1)


class SearchConfig(_Section):
    da2: DA2Config = Field(default_factory=DA2Config)
    rl: RLSearchConfig = Field(default_factory=RLSearchConfig)
    optuna: OptunaSearchConfig = Field(default_factory=OptunaSearchConfig)
    pba: PBASearchConfig = Field(default_factory=PBASearchConfig)
    fixed: list[str] = Field(default_factory=lambda: ["none", "standard-pose", "randaugment", "trivialaugment"])
    # HorizontalFlip in the searched space (every method's): off by default, since the base augmentation has it
    include_flip: bool = False
    cpus_per_trial: float = Field(1, gt=0)
    gpus_per_trial: float = Field(0, ge=0)
    max_failures: int = Field(2, ge=0)  # retries of a trial whose worker died, each from its last checkpoint
    keep_checkpoints: bool = False  # keep a completed trial's checkpoint (by default only running trials keep one)


class TrackingConfig(_Section):
    uri: str | None = None  # None: embedded SQLite under <workdir>/mlflow; or MLFLOW_TRACKING_URI
    experiment: str | None = None  # MLflow experiment name; default: the config's name
    registered_policy: str = "pose-aug-policy"
    registered_model: str = "p2net"


class ExperimentConfig(_Section):
    name: str = "demo"
    seed: int = 0
    workdir: Path = Path("work/demo")
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    search: SearchConfig = Field(default_factory=SearchConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)

    @field_validator("workdir")
    @classmethod
    def _workdir_not_relative_in_job(cls, v: Path) -> Path:
        refuse_relative_in_job(v, "workdir")  # in a Ray job it would land in Ray's temporary copy of the checkout
        return v

    @field_validator("data")
    @classmethod
    def _data_root_not_relative_in_job(cls, v: DataConfig) -> DataConfig:
        if v.root is not None:
            refuse_relative_in_job(v.root, "data.root")
        return v

    @model_validator(mode="after")
    def _absolute_paths(self) -> ExperimentConfig:
        """Relative paths mean relative to where the command runs; Ray workers run elsewhere, so pin them now."""
        self.workdir = self.workdir.expanduser().resolve()
        for key in ("root", "train_annotations", "train_images", "val_annotations", "val_images",
                    "search_val_annotations", "search_val_images"):
            value = getattr(self.data, key)
            if value is not None:
                setattr(self.data, key, value.expanduser().resolve())
        for key in ("pretrained_path", "init_weights"):
            if getattr(self.model, key) is not None:
                setattr(self.model, key, getattr(self.model, key).expanduser().resolve())
        return self

    @property
    def data_seed(self) -> int:
        """The SynthPose seed: `data.synth_seed`, or the experiment's seed when that is unset."""
        return self.seed if self.data.synth_seed is None else self.data.synth_seed

    @property
    def heatmap_size(self) -> tuple[int, int]:
        return (self.data.input_size[0] // 4, self.data.input_size[1] // 4)


def load_config(path: str | Path | None = None, overrides: dict | None = None) -> ExperimentConfig:
    """Read a YAML config (or the embedded defaults when `path` is None) and apply dotted overrides."""
    raw: dict = {}
    source = "<defaults>"
    if path is not None:
        from da2_platform.files import read_input

        path = Path(path)
        source = str(path)
        text = read_input(path, "config file", MAX_CONFIG_BYTES, ConfigError)  # stat-checked, BOM ignored
        try:
            raw = yaml.safe_load(text) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: malformed YAML: {e}") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of sections")
    for dotted, value in (overrides or {}).items():
        node = raw
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    try:
        cfg = ExperimentConfig.model_validate(raw)
    except ValidationError as e:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in e.errors()
        )
        raise ConfigError(f"{source}: {problems}") from None
    from da2_platform.names import check_name

    for field, value in (("name", cfg.name), ("tracking.registered_policy", cfg.tracking.registered_policy),
                         ("tracking.registered_model", cfg.tracking.registered_model)):
        check_name(value, source, field)  # each becomes a path (docs/security.md)
    return cfg

