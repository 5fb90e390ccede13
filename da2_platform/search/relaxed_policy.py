"""The relaxed policy d = (pi, p, m) of DA2 (paper Eq. 2-8), applied to a batch of crops on the device.

- sub-policy choice: Gumbel-softmax over log pi with temperature tau1 (Eq. 2-4). By default a hard one-hot sample
  with a straight-through gradient, so one sub-policy is computed per image; `hard=False` mixes all K (costly).
- op on/off: relaxed Bernoulli b = sigmoid((log p/(1-p) + log u/(1-u)) / tau2), O(x) = b O(x, m) + (1-b) x (Eq. 5-7).
- magnitude: the op's own gradient where it has one, straight-through otherwise (Eq. 8, inside search_spaces).
Heatmap targets travel with the images: geometric ops warp them with the same affine, and both are weighted by the
same c_k and b, so the loss sees a consistent (image, target) pair.

All the randomness of one forward pass lives in a `PolicyNoise`, so the bi-level step can evaluate the same
augmentation at w, w+ and w- (Eq. 12) and get a low-variance finite difference.

The score-function estimator (`estimator: score`) does not relax anything: `sample_choices` draws a hard
sub-policy, hard on/off gates and a magnitude per image from the same noise, `apply_choices` applies exactly that
(what the exported policy will do), and the bi-level step credits each draw with its log-probability gradient.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from search_spaces.batch import PoseBatch
from search_spaces.ops import OPS, SEARCH_SPACE_NAME, apply_op, searched_op_names
from search_spaces.policy import OpSetting, Policy, SubPolicy


def op_slots(num_sub_policies: int | None, ops_per_sub_policy: int, seed: int,
             op_names: tuple[str, ...] = searched_op_names(), design: str = "random") -> list[tuple[str, ...]]:
    """Which ops each sub-policy holds.

    `num_sub_policies` None (DA2's default): every unordered N-tuple of distinct ops, in registry order (C(17, 2)
    = 136 pairs of the searched ops), as DADA searches all pairs of its ops, so every policy a baseline can return
    is reachable. A number K: K distinct ordered tuples of distinct ops, drawn with the config's seed; when K
    covers every ordered tuple (e.g. K >= 17*16 for N=2) all of them.
    `design="balanced"` deals the K*N slots so every op appears floor(K*N/|ops|) or one more times (a random
    draw of 24 pairs from 18 ops leaves some ops out entirely, and a search cannot pick an op it never holds).
    """
    if num_sub_policies is None:
        return list(itertools.combinations(op_names, ops_per_sub_policy))
    if design not in ("random", "balanced"):
        raise ValueError(f"slot design must be 'random' or 'balanced', not {design!r}")
    combos = list(itertools.permutations(op_names, ops_per_sub_policy))
    rng = np.random.default_rng(seed)
    if num_sub_policies >= len(combos):
        return combos
    if design == "balanced" and ops_per_sub_policy <= len(op_names):
        return _balanced_slots(num_sub_policies, ops_per_sub_policy, list(op_names), rng)
    picked = rng.choice(len(combos), size=num_sub_policies, replace=False)
    return [combos[i] for i in sorted(picked)]


def _balanced_slots(k: int, n: int, names: list[str], rng: np.random.Generator) -> list[tuple[str, ...]]:
    """K tuples of N distinct ops whose K*N entries cover the ops as evenly as possible (seeded retries)."""
    for _ in range(1000):
        deck: list[str] = []
        while len(deck) < k * n:
            deck += [names[i] for i in rng.permutation(len(names))]
        rows = [tuple(deck[i * n:(i + 1) * n]) for i in range(k)]
        if all(len(set(r)) == n for r in rows) and len(set(rows)) == k:
            return rows
    raise ValueError(f"could not deal {k} balanced sub-policies of {n} ops from {len(names)} ops")


@dataclass
class PolicyNoise:
    """One draw of every random variable of a relaxed-policy forward pass."""

    gumbel: torch.Tensor  # [B, K]  g = -log(-log u)
    bernoulli_u: torch.Tensor  # [B, N]  u of the relaxed Bernoulli of each op slot
    sign: torch.Tensor  # [B, N]  +-1 for signed ops
    draws: torch.Tensor  # [B, N, 2]  uniform numbers the ops read for placement (cutout centre, blur angle)
    m_noise: torch.Tensor | None = None  # [B, N]  standard normal: magnitude exploration of the score estimator


@dataclass
class PolicyChoices:
    """One hard draw of the policy per image (score-function estimator)."""

    k: torch.Tensor  # [B] long: the sub-policy
    on: torch.Tensor  # [B, N] float 0/1: the op gates
    m: torch.Tensor  # [B, N] magnitudes in (0, 1) actually applied
    z: torch.Tensor  # [B, N] the standard-normal perturbation of logit m behind `m`
    # [B] pi(k) / q(k): importance weight of each draw when k came from the exploring mixture q (None: q = pi)
    weight: torch.Tensor | None = None


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
        z = torch.randn(batch_size, n, generator=generator)
        return PolicyNoise(-torch.log(-torch.log(u)), ub, sign, draws, z)

    # -- hard sampling (score-function estimator) ------------------------------------------------------------
    @torch.no_grad()
    def sample_choices(self, noise: PolicyNoise, m_sigma: float, explore: float = 0.0) -> PolicyChoices:
        """k ~ Cat(pi) (Gumbel-max), gate ~ Bernoulli(p), m = sigmoid(logit m + m_sigma z); all from `noise`.

        explore > 0 draws k from q = (1 - explore) pi + explore / K instead, so every sub-policy keeps getting
        images (and its p and m keep learning) however far pi concentrates; `weight` = pi(k) / q(k) then keeps
        the score-function gradient an unbiased estimate of the gradient under pi."""
        log_pi = F.log_softmax(self.pi_logits, dim=0).detach().cpu()
        weight = None
        if explore > 0:
            pi = log_pi.exp()
            q = (1 - explore) * pi + explore / pi.numel()
            log_pi = q.log()
        k = (log_pi + noise.gumbel.to(log_pi.dtype).cpu()).argmax(dim=1)
        if explore > 0:
            weight = pi[k] / q[k]
        p = self.p().detach().cpu()[k]
        on = (noise.bernoulli_u.cpu() < p).to(p.dtype)
        z = noise.m_noise.cpu().to(p.dtype) if noise.m_noise is not None else torch.zeros_like(p)
        m = torch.sigmoid(self.m_logits.detach().cpu()[k] + m_sigma * z)
        return PolicyChoices(k=k, on=on, m=m, z=z, weight=weight)

    @torch.no_grad()
    def apply_choices(self, batch: PoseBatch, choices: PolicyChoices, noise: PolicyNoise) -> PoseBatch:
        """The batch augmented by the hard draw: per image, its sub-policy's ops that are on, in slot order."""
        if batch.heatmaps is None:
            raise ValueError("RelaxedPolicy needs heatmap targets in the batch (render them before augmenting)")
        out = PoseBatch(images=batch.images.clone(), keypoints=batch.keypoints.clone(),
                        visible=batch.visible.clone(), heatmaps=batch.heatmaps.clone())
        device = batch.images.device
        for n in range(self.ops_per_sub_policy):  # slot by slot; within a slot, one call per op (see forward)
            names = [self.slots[k][n] for k in choices.k.tolist()]
            for name in sorted(set(names)):
                rows = torch.tensor([i for i, x in enumerate(names) if x == name and choices.on[i, n] > 0],
                                    dtype=torch.long)
                if rows.numel() == 0:
                    continue
                drows = rows.to(device)
                res = apply_op(name, _rows(out, drows), choices.m[rows, n].to(device, batch.images.dtype),
                               sign=noise.sign[rows, n].to(device, batch.images.dtype), flip_pairs=self.flip_pairs,
                               draws=noise.draws[rows, n].to(device, batch.images.dtype))
                out.images[drows], out.heatmaps[drows] = res.images, res.heatmaps
                out.keypoints[drows], out.visible[drows] = res.keypoints, res.visible
        return out

    def log_prob_grads(self, choices: PolicyChoices, advantage: torch.Tensor, m_sigma: float
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """sum_i A_i grad log q(draw_i) for (pi_logits, p_logits, m_logits): the score-function ascent direction.

        d log Cat(k)/d logits = onehot(k) - pi; d log Bern(b; p)/d logit p = b - p (only at the image's k);
        d log N(logit m_i; logit m, s)/d logit m = z / s, counted only where the op was on (else m did nothing)."""
        kk, nn_ = self.num_sub_policies, self.ops_per_sub_policy
        a = advantage.detach().cpu().to(torch.float64)
        if choices.weight is not None:  # k drawn from an exploring mixture: importance-weight each draw
            a = a * choices.weight.to(torch.float64)
        pi = self.pi().detach().cpu().to(torch.float64)
        onehot = F.one_hot(choices.k, kk).to(torch.float64)
        g_pi = (a.view(-1, 1) * (onehot - pi)).sum(0)
        p = self.p().detach().cpu().to(torch.float64)[choices.k]
        on = choices.on.to(torch.float64)
        g_p = torch.zeros(kk, nn_, dtype=torch.float64).index_add_(0, choices.k, a.view(-1, 1) * (on - p))
        g_m = torch.zeros(kk, nn_, dtype=torch.float64).index_add_(
            0, choices.k, a.view(-1, 1) * on * choices.z.to(torch.float64) / m_sigma)
        return g_pi, g_p, g_m

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
        if self.hard:
            return self._forward_hard(batch, noise, c, chosen)
        ks = range(self.num_sub_policies)
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

    def _forward_hard(self, batch: PoseBatch, noise: PolicyNoise, c: torch.Tensor, chosen: torch.Tensor
                      ) -> PoseBatch:
        """One sub-policy per image (Eq. 3 with a hard sample). The same values as applying each chosen
        sub-policy to its images, with the work grouped by op: at slot n, every image whose sub-policy holds op X
        there goes through X in one call with its own gate and magnitude, so K = 136 sub-policies cost at most
        (slots x ops) calls per batch, not one per image."""
        cpu_chosen = chosen.cpu()
        logit_u = torch.log(noise.bernoulli_u) - torch.log1p(-noise.bernoulli_u)
        gates = torch.sigmoid((self.p_logits[chosen] + logit_u.to(self.p_logits.device)) / self.tau2)  # [B, N]
        m = self.m()[chosen]  # [B, N]
        sub = batch
        for n in range(self.ops_per_sub_policy):
            names = [self.slots[k][n] for k in cpu_chosen.tolist()]
            images, heatmaps = sub.images, sub.heatmaps
            keypoints, visible = sub.keypoints.clone(), sub.visible.clone()
            for name in sorted(set(names)):
                rows = torch.tensor([i for i, x in enumerate(names) if x == name], dtype=torch.long)
                drows = rows.to(batch.images.device)
                part = _rows(sub, drows)
                out = apply_op(name, part, m[drows, n], sign=noise.sign[rows, n].to(batch.images.device),
                               flip_pairs=self.flip_pairs, draws=noise.draws[rows, n].to(batch.images.device))
                b = gates[drows, n]
                bi = b.view(-1, 1, 1, 1)
                images = images.index_copy(0, drows, bi * out.images + (1 - bi) * part.images)
                heatmaps = heatmaps.index_copy(0, drows, bi * out.heatmaps + (1 - bi) * part.heatmaps)
                on = (b.detach() > 0.5).view(-1, 1)
                keypoints[drows] = torch.where(on.unsqueeze(-1), out.keypoints, part.keypoints)
                visible[drows] = torch.where(on, out.visible, part.visible)
            sub = PoseBatch(images=images, keypoints=keypoints, visible=visible, heatmaps=heatmaps)
        ck = c.gather(1, chosen.view(-1, 1).to(c.device)).view(-1, 1, 1, 1)  # 1 forward, the softmax's gradient
        return PoseBatch(images=ck * sub.images, keypoints=sub.keypoints, visible=sub.visible,
                         heatmaps=ck * sub.heatmaps)

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
