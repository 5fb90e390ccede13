"""RL-AutoAugment as a Ray Tune Searcher: the LSTM controller proposes each child's policy, PPO learns from its AP.

Tune asks `suggest(trial_id)` for a config, runs the child as a trial, and calls `on_trial_complete` with its last
result; every `batch_size` rewards the controller takes one PPO step. Ray Tune checkpoints the searcher through
`save` / `restore` (Tuner.restore included), so an interrupted search resumes with the same controller, optimizer,
baseline, sampling RNG, pending trials and history. Use it in any Tuner:

    searcher = RLAutoAugmentSearcher(DiscreteSpace(), metric="val_ap", mode="max", batch_size=4, seed=0)
    Tuner(trainable, tune_config=TuneConfig(search_alg=searcher, num_samples=32, max_concurrent_trials=4))

Children read the policy from `config["policy_json"]` (or rebuild it with `space.from_config(config)`).
"""

from __future__ import annotations

import io
import logging
import math
import os
import pickle  # only for its UnpicklingError: states load through torch.load(weights_only=True)
import uuid
from typing import Any

import torch
from ray.tune.search import Searcher
from ray.tune.search.variant_generator import parse_spec_vars

from baselines.rl_autoaugment.controller import PolicyController, PPOTrainer
from pose_models.weights import load_refusal
from search_spaces.discrete import DiscreteSpace
from search_spaces.policy import Policy

logger = logging.getLogger(__name__)

STATE_FORMAT = 1
POLICY_JSON_KEY = "policy_json"
_TRAINER_OPTIONS = ("lr", "clip", "entropy_weight", "baseline_decay", "epochs")


class RLAutoAugmentSearcher(Searcher):
    """AutoAugment's controller + PPO behind Ray Tune's Searcher API.

    `controller_kwargs`: `hidden` (LSTM width, 100) for the controller; `lr`, `clip`, `entropy_weight`,
    `baseline_decay`, `epochs` for `PPOTrainer`.
    """

    def __init__(self, space: DiscreteSpace | None = None, metric: str = "val_ap", mode: str = "max",
                 batch_size: int = 4, seed: int = 0, **controller_kwargs: Any):
        if mode not in ("max", "min"):
            raise ValueError(f"mode must be 'max' or 'min', got {mode!r}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        unknown = sorted(set(controller_kwargs) - {"hidden", *_TRAINER_OPTIONS})
        if unknown:
            raise TypeError(f"unknown controller options {unknown}; valid: hidden, {', '.join(_TRAINER_OPTIONS)}")
        super().__init__(metric=metric, mode=mode)
        self.space = space if space is not None else DiscreteSpace()
        self.batch_size = batch_size
        self.seed = seed
        self.controller = PolicyController(self.space, hidden=controller_kwargs.get("hidden", 100), seed=seed)
        self.trainer = PPOTrainer(self.controller, **{k: v for k, v in controller_kwargs.items() if k != "hidden"})
        self._generator = torch.Generator().manual_seed(seed)
        self._pending: dict[str, dict] = {}  # trial_id -> {"decisions", "log_prob"} of suggested, unfinished trials
        self._batch: list[dict] = []  # completed children not yet used by a PPO update
        self.history: list[dict] = []  # {"trial_id", "decisions", "reward"} per completed child, in order
        self.updates: list[dict] = []  # PPOTrainer.update stats, one per update

    def set_search_properties(self, metric: str | None, mode: str | None, config: dict, **spec: Any) -> bool:
        """Takes metric/mode from TuneConfig; constant param_space entries pass through to every child."""
        _, domain_vars, grid_vars = parse_spec_vars(config or {})
        if domain_vars or grid_vars:
            # Tune then raises its own error: the controller owns the search space
            return False
        if metric:
            self._metric = metric
        if mode:
            if mode not in ("max", "min"):
                raise ValueError(f"mode must be 'max' or 'min', got {mode!r}")
            self._mode = mode
        return True

    def suggest(self, trial_id: str) -> dict:
        decisions, log_prob = self.controller.sample(self._generator)
        self._pending[trial_id] = {"decisions": decisions, "log_prob": log_prob}
        config: dict[str, Any] = dict(self.space.to_config(decisions))
        config[POLICY_JSON_KEY] = self.space.to_policy(decisions).to_json()
        return config

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        pending = self._pending.pop(trial_id, None)
        if pending is None:
            return
        value = None if error or not result else result.get(self.metric)
        if value is None or not math.isfinite(float(value)):
            logger.warning("trial %s finished without a finite %r (error=%s); no reward", trial_id, self.metric, error)
            return
        value = float(value)
        self.history.append({"trial_id": trial_id, "decisions": pending["decisions"], "reward": value})
        reward = value if self.mode == "max" else -value
        self._batch.append({"decisions": pending["decisions"], "log_prob": pending["log_prob"], "reward": reward})
        if len(self._batch) >= self.batch_size:
            stats = self.trainer.update([(c["decisions"], c["log_prob"], c["reward"]) for c in self._batch])
            self.updates.append(stats)
            self._batch = []

    def best_policy(self) -> Policy:
        """The policy of the best completed child so far."""
        if not self.history:
            raise ValueError("no child has completed with a reward yet")
        pick = max if self.mode == "max" else min
        return self.space.to_policy(pick(self.history, key=lambda entry: entry["reward"])["decisions"])

    def get_state(self) -> dict:
        """Everything needed to continue the search: tensors and primitives only (loads with weights_only)."""
        return {
            "format": STATE_FORMAT,
            "metric": self.metric,
            "mode": self.mode,
            "batch_size": self.batch_size,
            "seed": self.seed,
            "space": self._space_signature(),
            "controller": self.controller.state_dict(),
            "trainer": self.trainer.state_dict(),
            "generator": self._generator.get_state(),
            "pending": {trial_id: dict(p) for trial_id, p in self._pending.items()},
            "batch": [dict(c) for c in self._batch],
            "history": [dict(h) for h in self.history],
            "updates": [dict(u) for u in self.updates],
        }

    def set_state(self, state: dict, source: str = "<state>") -> None:
        if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
            found = state.get("format") if isinstance(state, dict) else type(state).__name__
            raise ValueError(f"{source}: field 'format' must be {STATE_FORMAT}, got {found!r}")
        missing = [key for key in self.get_state() if key not in state]
        if missing:
            raise ValueError(f"{source}: searcher state lacks field(s) {missing}")
        if state["space"] != self._space_signature():
            raise ValueError(f"{source}: field 'space' {state['space']} does not match this searcher's space "
                             f"{self._space_signature()}")
        self._metric, self._mode = state["metric"], state["mode"]
        self.batch_size, self.seed = int(state["batch_size"]), int(state["seed"])
        try:
            self.controller.load_state_dict(state["controller"])
        except RuntimeError as exc:  # e.g. saved with another `hidden` width
            raise ValueError(f"{source}: field 'controller' does not fit this controller: {exc}") from None
        self.trainer.load_state_dict(state["trainer"])
        self._generator.set_state(state["generator"])
        self._pending = {trial_id: dict(p) for trial_id, p in state["pending"].items()}
        self._batch = [dict(c) for c in state["batch"]]
        self.history = [dict(h) for h in state["history"]]
        self.updates = [dict(u) for u in state["updates"]]

    def save(self, checkpoint_path: str) -> None:
        """torch.save of `get_state()`, written to a temp file then renamed over `checkpoint_path`."""
        buffer = io.BytesIO()
        torch.save(self.get_state(), buffer)
        directory = os.path.dirname(os.path.abspath(checkpoint_path))
        temp_path = os.path.join(directory, f".{os.path.basename(checkpoint_path)}.{uuid.uuid4().hex}.tmp")
        try:
            with open(temp_path, "wb") as handle:
                handle.write(buffer.getvalue())
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temp_path, checkpoint_path)
        finally:
            if os.path.exists(temp_path):
                os.remove(temp_path)

    def restore(self, checkpoint_path: str) -> None:
        try:
            state = torch.load(checkpoint_path, weights_only=True)
        except FileNotFoundError:
            raise ValueError(f"{checkpoint_path}: searcher state file not found") from None
        except (pickle.UnpicklingError, RuntimeError, EOFError) as exc:  # foreign, truncated or non-torch file
            raise ValueError(f"{checkpoint_path}: not a RLAutoAugmentSearcher state ({load_refusal(exc)})") from None
        self.set_state(state, source=str(checkpoint_path))

    def _space_signature(self) -> dict:
        return {"decisions_per_op": list(self.space.decisions_per_op()), "param_names": self.space.param_names()}
