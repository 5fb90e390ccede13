"""AutoAugment's policy controller: an LSTM that emits a discrete policy decision by decision, trained with PPO.

A policy of K sub-policies x N ops is the flat sequence [type, prob bin, magnitude bin] * K * N of
`DiscreteSpace`. At step t the LSTM reads the embedding of decision t-1 (a learned start vector at t = 0) and a
softmax head for the kind of decision t (type / prob / magnitude) picks the next one. Pure torch, no Ray.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from search_spaces.discrete import DiscreteSpace

DECISION_KINDS: tuple[str, str, str] = ("type", "prob", "mag")


class PolicyController(nn.Module):
    """One-layer LSTM (100 hidden units in AutoAugment) with one embedding and one softmax head per decision kind."""

    def __init__(self, space: DiscreteSpace, hidden: int = 100, seed: int = 0):
        super().__init__()
        self.space = space
        self.choices_per_kind: tuple[int, int, int] = tuple(space.decisions_per_op())
        self.num_steps = space.num_decisions()
        if self.num_steps % len(DECISION_KINDS) != 0:
            raise ValueError(f"num_decisions() = {self.num_steps} is not a multiple of {len(DECISION_KINDS)}")
        self.hidden = hidden
        self.start = nn.Parameter(torch.zeros(1, 1, hidden))
        self.embeddings = nn.ModuleList(nn.Embedding(n, hidden) for n in self.choices_per_kind)
        self.lstm = nn.LSTM(hidden, hidden, num_layers=1, batch_first=True)
        self.heads = nn.ModuleList(nn.Linear(hidden, n) for n in self.choices_per_kind)
        # ENAS/AutoAugment-style init, drawn from a private generator so the global RNG stays untouched
        init_generator = torch.Generator().manual_seed(seed)
        for parameter in self.parameters():
            nn.init.uniform_(parameter, -0.1, 0.1, generator=init_generator)

    def kind_of(self, step: int) -> int:
        """0 = op type, 1 = probability bin, 2 = magnitude bin."""
        return step % len(DECISION_KINDS)

    @torch.no_grad()
    def sample(self, generator: torch.Generator | None = None) -> tuple[list[int], float]:
        """One policy as flat decisions, and the log-probability the controller gave it."""
        decisions: list[int] = []
        log_prob = 0.0
        step_input = self.start
        state: tuple[Tensor, Tensor] | None = None
        for step in range(self.num_steps):
            output, state = self.lstm(step_input, state)
            kind = self.kind_of(step)
            log_probs = torch.log_softmax(self.heads[kind](output[:, -1]), dim=-1)
            choice = int(torch.multinomial(log_probs.exp(), 1, generator=generator).item())
            decisions.append(choice)
            log_prob += float(log_probs[0, choice])
            step_input = self.embeddings[kind](torch.tensor([[choice]]))
        return decisions, log_prob

    def evaluate(self, decisions: Tensor) -> tuple[Tensor, Tensor]:
        """Log-probability and entropy (summed over steps) of a batch [B, T] of decision sequences, with gradients."""
        decisions = self._checked(decisions)
        batch = decisions.shape[0]
        previous = torch.zeros(batch, self.num_steps - 1, self.hidden)
        for kind, embedding in enumerate(self.embeddings):
            # previous[:, j] embeds decision j, whose kind is j % 3
            previous[:, kind::3] = embedding(decisions[:, : self.num_steps - 1][:, kind::3])
        inputs = torch.cat([self.start.expand(batch, 1, self.hidden), previous], dim=1)
        outputs, _ = self.lstm(inputs)
        log_prob = torch.zeros(batch)
        entropy = torch.zeros(batch)
        for kind, head in enumerate(self.heads):
            step_log_probs = torch.log_softmax(head(outputs[:, kind::3]), dim=-1)
            chosen = decisions[:, kind::3].unsqueeze(-1)
            log_prob = log_prob + step_log_probs.gather(-1, chosen).squeeze(-1).sum(dim=1)
            entropy = entropy - (step_log_probs.exp() * step_log_probs).sum(dim=(1, 2))
        return log_prob, entropy

    def log_prob(self, decisions: Sequence[int]) -> Tensor:
        """Log-probability of one decision sequence (a 0-d tensor with gradients)."""
        log_prob, _ = self.evaluate(torch.as_tensor([list(decisions)], dtype=torch.long))
        return log_prob[0]

    def _checked(self, decisions: Tensor) -> Tensor:
        if decisions.ndim != 2 or decisions.shape[1] != self.num_steps:
            raise ValueError(f"decisions must have shape [batch, {self.num_steps}], got {tuple(decisions.shape)}")
        for kind, choices in enumerate(self.choices_per_kind):
            column = decisions[:, kind::3]
            if bool((column < 0).any()) or bool((column >= choices).any()):
                raise ValueError(f"{DECISION_KINDS[kind]} decisions must lie in [0, {choices}), "
                                 f"got {sorted(set(column.flatten().tolist()))}")
        return decisions


@dataclass
class PPOStats:
    """What one PPO update did (returned as a dict by `PPOTrainer.update`)."""

    reward_mean: float
    baseline_before: float
    baseline_after: float
    advantage_mean: float
    loss: float
    entropy: float
    approx_kl: float
    clip_fraction: float
    num_updates: int


class PPOTrainer:
    """PPO with a clipped ratio, an entropy bonus and a moving-average reward baseline (AutoAugment's recipe).

    Rewards are compared against the baseline as it stood before the batch; the batch then moves the baseline
    (b <- decay * b + (1 - decay) * r, reward by reward). The very first batch seeds it with its mean reward.
    """

    def __init__(self, controller: PolicyController, lr: float = 3.5e-4, clip: float = 0.2,
                 entropy_weight: float = 1e-5, baseline_decay: float = 0.95, epochs: int = 4):
        if not 0.0 <= baseline_decay < 1.0:
            raise ValueError(f"baseline_decay must lie in [0, 1), got {baseline_decay}")
        if clip <= 0.0 or epochs < 1:
            raise ValueError(f"clip must be > 0 and epochs >= 1, got clip={clip}, epochs={epochs}")
        self.controller = controller
        self.clip = clip
        self.entropy_weight = entropy_weight
        self.baseline_decay = baseline_decay
        self.epochs = epochs
        self.optimizer = torch.optim.Adam(controller.parameters(), lr=lr)
        self.baseline: float | None = None
        self.num_updates = 0

    def update(self, batch: list[tuple[list[int], float, float]]) -> dict:
        """One PPO update on (decisions, log-prob when sampled, reward) triples; returns `PPOStats` as a dict."""
        if not batch:
            raise ValueError("PPO update needs at least one (decisions, old_log_prob, reward) triple")
        decisions = torch.as_tensor([list(item[0]) for item in batch], dtype=torch.long)
        old_log_prob = torch.as_tensor([float(item[1]) for item in batch])
        rewards = [float(item[2]) for item in batch]
        baseline_before = sum(rewards) / len(rewards) if self.baseline is None else self.baseline
        advantages = torch.as_tensor(rewards) - baseline_before

        for _ in range(self.epochs):
            log_prob, entropy = self.controller.evaluate(decisions)
            ratio = torch.exp(log_prob - old_log_prob)
            clipped = torch.clamp(ratio, 1.0 - self.clip, 1.0 + self.clip)
            surrogate = torch.minimum(ratio * advantages, clipped * advantages)
            loss = -surrogate.mean() - self.entropy_weight * entropy.mean()
            self.optimizer.zero_grad()
            loss.backward()
            self.optimizer.step()

        with torch.no_grad():
            log_prob, entropy = self.controller.evaluate(decisions)
            log_ratio = log_prob - old_log_prob
            approx_kl = float((torch.exp(log_ratio) - 1.0 - log_ratio).mean())
            clip_fraction = float(((torch.exp(log_ratio) - 1.0).abs() > self.clip).float().mean())
        baseline = baseline_before
        for reward in rewards:
            baseline = self.baseline_decay * baseline + (1.0 - self.baseline_decay) * reward
        self.baseline = baseline
        self.num_updates += 1
        return vars(PPOStats(
            reward_mean=sum(rewards) / len(rewards), baseline_before=baseline_before, baseline_after=baseline,
            advantage_mean=float(advantages.mean()), loss=float(loss.detach()), entropy=float(entropy.mean()),
            approx_kl=approx_kl, clip_fraction=clip_fraction, num_updates=self.num_updates,
        ))

    def state_dict(self) -> dict:
        """Optimizer state, baseline and update count: tensors and primitives only (torch.load weights_only)."""
        return {"optimizer": self.optimizer.state_dict(), "baseline": self.baseline, "num_updates": self.num_updates}

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.baseline = None if state["baseline"] is None else float(state["baseline"])
        self.num_updates = int(state["num_updates"])
