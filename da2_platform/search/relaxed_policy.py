"""The relaxed policy d = (pi, p, m) of DA2 (paper Eq. 2-8), applied to a batch of crops on the device.

- sub-policy choice: Gumbel-softmax over log pi with temperature tau1 (Eq. 2-4). By default a hard one-hot sample
  with a straight-through gradient, so one sub-policy is computed per image; `hard=False` mixes all K (costly).
- op on/off: relaxed Bernoulli b = sigmoid((log p/(1-p) + log u/(1-u)) / tau2), O(x) = b O(x, m) + (1-b) x (Eq. 5-7).
- magnitude: the op's own gradient where it has one, straight-through otherwise (Eq. 8, inside search_spaces).
Heatmap targets travel with the images: geometric ops warp them with the same affine, and both are weighted by the
same c_k and b, so the loss sees a consistent (image, target) pair.

All the randomness of one forward pass lives in a `PolicyNoise`, so the bi-level step can evaluate the same
augmentation at w, w+ and w- (Eq. 12) and get a low-variance finite difference.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from search_spaces.batch import PoseBatch
from search_spaces.ops import OP_NAMES, OPS, SEARCH_SPACE_NAME, apply_op
from search_spaces.policy import OpSetting, Policy, SubPolicy


def op_slots(num_sub_policies: int, ops_per_sub_policy: int, seed: int,
             op_names: tuple[str, ...] = tuple(OP_NAMES)) -> list[tuple[str, ...]]:
    """Which ops each sub-policy holds: K distinct ordered tuples of distinct ops, drawn with the config's seed.

    When K covers every tuple (e.g. K >= 18*17 for N=2) the whole space is searched, as in the paper.
    """
    combos = list(itertools.permutations(op_names, ops_per_sub_policy))
    rng = np.random.default_rng(seed)
    if num_sub_policies >= len(combos):
        return combos
    picked = rng.choice(len(combos), size=num_sub_policies, replace=False)
    return [combos[i] for i in sorted(picked)]


@dataclass
class PolicyNoise:
    """One draw of every random variable of a relaxed-policy forward pass."""

    gumbel: torch.Tensor  # [B, K]  g = -log(-log u)
    bernoulli_u: torch.Tensor  # [B, N]  u of the relaxed Bernoulli of each op slot
    sign: torch.Tensor  # [B, N]  +-1 for signed ops
    draws: torch.Tensor  # [B, N, 2]  uniform numbers the ops read for placement (cutout centre, blur angle)


class RelaxedPolicy(nn.Module):
    """Learnable pi (K), p (K x N) and m (K x N), kept as unconstrained logits."""

    def __init__(self, slots: list[tuple[str, ...]], flip_pairs: list[tuple[int, int]], tau1: float = 0.5,
                 tau2: float = 0.5, hard: bool = True, init_p: float = 0.5, init_m: float = 0.5):
        super().__init__()
        unknown = sorted({name for slot in slots for name in slot} - set(OPS))
        if unknown:
            raise ValueError(f"unknown ops in DA2 slots: {unknown}")
        self.slots = [tuple(s) for s in slots]
        self.flip_pairs = [tuple(p) for p in flip_pairs]
        self.tau1, self.tau2, self.hard = tau1, tau2, hard
        k, n = len(slots), len(slots[0])
        self.pi_logits = nn.Parameter(torch.zeros(k))
        self.p_logits = nn.Parameter(torch.full((k, n), float(np.log(init_p / (1 - init_p)))))
        self.m_logits = nn.Parameter(torch.full((k, n), float(np.log(init_m / (1 - init_m)))))

    @property
    def num_sub_policies(self) -> int:
        return len(self.slots)

    @property
    def ops_per_sub_policy(self) -> int:
        return len(self.slots[0])

    def pi(self) -> torch.Tensor:
        return F.softmax(self.pi_logits, dim=0)

    def p(self) -> torch.Tensor:
        return torch.sigmoid(self.p_logits)

    def m(self) -> torch.Tensor:
        return torch.sigmoid(self.m_logits)

    def sample_noise(self, batch_size: int, generator: torch.Generator) -> PolicyNoise:
        k, n = self.num_sub_policies, self.ops_per_sub_policy
        u = torch.rand(batch_size, k, generator=generator).clamp(1e-9, 1 - 1e-9)
        ub = torch.rand(batch_size, n, generator=generator).clamp(1e-6, 1 - 1e-6)
        sign = torch.randint(0, 2, (batch_size, n), generator=generator).float() * 2 - 1
        draws = torch.rand(batch_size, n, 2, generator=generator)
        return PolicyNoise(-torch.log(-torch.log(u)), ub, sign, draws)

    def choice_weights(self, noise: PolicyNoise) -> torch.Tensor:
        """c of Eq. 3, [B, K]; hard: one-hot forward value with the softmax's gradient (straight-through)."""
        log_pi = F.log_softmax(self.pi_logits, dim=0)
        soft = F.softmax((log_pi + noise.gumbel.to(log_pi.device)) / self.tau1, dim=1)
        if not self.hard:
            return soft
        one_hot = F.one_hot(soft.argmax(dim=1), soft.shape[1]).to(soft.dtype)
        return one_hot - soft.detach() + soft

    def op_gates(self, k: int, noise_u: torch.Tensor) -> torch.Tensor:
        """b of Eq. 6-7 for sub-policy k, [B, N]: relaxed Bernoulli samples with P(b -> 1) = p."""
        logit_u = torch.log(noise_u) - torch.log1p(-noise_u)
        return torch.sigmoid((self.p_logits[k].unsqueeze(0) + logit_u.to(self.p_logits.device)) / self.tau2)

    def forward(self, batch: PoseBatch, noise: PolicyNoise) -> PoseBatch:
        if batch.heatmaps is None:
            raise ValueError("RelaxedPolicy needs heatmap targets in the batch (render them before augmenting)")
        c = self.choice_weights(noise)
        chosen = c.detach().argmax(dim=1)
        ks = range(self.num_sub_policies) if not self.hard else sorted(set(chosen.tolist()))
        images = torch.zeros_like(batch.images)
        heatmaps = torch.zeros_like(batch.heatmaps)
        keypoints, visible = batch.keypoints.clone(), batch.visible.clone()
        for k in ks:
            rows = (chosen == k).nonzero().squeeze(1) if self.hard else torch.arange(batch.images.shape[0])
            if rows.numel() == 0:
                continue
            rows = rows.to(batch.images.device)
            out = self._apply_sub_policy(k, _rows(batch, rows), noise, rows)
            ck = c[rows, k].view(-1, 1, 1, 1)
            images = images.index_add(0, rows, ck * out.images)
            heatmaps = heatmaps.index_add(0, rows, ck * out.heatmaps)
            if self.hard or k == int(c.detach().mean(0).argmax()):  # soft mixing: joints follow the likeliest
                keypoints[rows], visible[rows] = out.keypoints, out.visible
        return PoseBatch(images=images, keypoints=keypoints, visible=visible, heatmaps=heatmaps)

    def _apply_sub_policy(self, k: int, sub: PoseBatch, noise: PolicyNoise, rows: torch.Tensor) -> PoseBatch:
        cpu_rows = rows.cpu()
        gates = self.op_gates(k, noise.bernoulli_u[cpu_rows])
        m = self.m()[k]
        for n, name in enumerate(self.slots[k]):
            b = gates[:, n]
            magnitude = m[n].expand(len(rows))
            out = apply_op(name, sub, magnitude, sign=noise.sign[cpu_rows, n].to(sub.images.device),
                           flip_pairs=self.flip_pairs, draws=noise.draws[cpu_rows, n].to(sub.images.device))
            bi = b.view(-1, 1, 1, 1)
            on = (b.detach() > 0.5).view(-1, 1)
            sub = PoseBatch(
                images=bi * out.images + (1 - bi) * sub.images,
                heatmaps=bi * out.heatmaps + (1 - bi) * sub.heatmaps,
                keypoints=torch.where(on.unsqueeze(-1), out.keypoints, sub.keypoints),
                visible=torch.where(on, out.visible, sub.visible),
            )
        return sub

    def to_policy(self, metadata: dict | None = None) -> Policy:
        """The learned K sub-policies as a Policy (weights pi, probabilities p, magnitudes m)."""
        pi = self.pi().detach().cpu().double().numpy()
        pi = pi / pi.sum()
        p, m = self.p().detach().cpu().tolist(), self.m().detach().cpu().tolist()
        subs = tuple(
            SubPolicy(weight=float(pi[k]), ops=tuple(
                OpSetting(name=name, p=round(float(p[k][n]), 6), m=round(float(m[k][n]), 6))
                for n, name in enumerate(slot)))
            for k, slot in enumerate(self.slots)
        )
        subs = _renormalise(subs)
        return Policy(sub_policies=subs, search_space=SEARCH_SPACE_NAME, name="da2",
                      metadata=dict(metadata or {}))

    def snapshot(self) -> dict[str, list]:
        """pi, p, m as plain lists (for the search curves)."""
        return {"pi": self.pi().detach().cpu().tolist(), "p": self.p().detach().cpu().tolist(),
                "m": self.m().detach().cpu().tolist()}


def _rows(batch: PoseBatch, rows: torch.Tensor) -> PoseBatch:
    return PoseBatch(images=batch.images[rows], keypoints=batch.keypoints[rows], visible=batch.visible[rows],
                     heatmaps=batch.heatmaps[rows])


def _renormalise(subs: tuple[SubPolicy, ...]) -> tuple[SubPolicy, ...]:
    """Round weights to 6 decimals and put the rounding remainder on the largest, so they sum to exactly 1."""
    weights = [round(s.weight, 6) for s in subs]
    top = int(np.argmax(weights))
    weights[top] = round(1.0 - sum(w for i, w in enumerate(weights) if i != top), 6)
    return tuple(SubPolicy(weight=w, ops=s.ops) for w, s in zip(weights, subs))
