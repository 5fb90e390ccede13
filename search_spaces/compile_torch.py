"""Policy -> batched torch module, applied on the device to cropped batches (DA2 search, GPU training).

Each image draws its own sub-policy by weight; each op of it then fires with its probability p. Work is
grouped by op, not by sub-policy: at op slot n, all images whose sub-policy puts op X at slot n (and whose
coin came up) go through X in one call with their own magnitudes, so a policy with hundreds of sub-policies
(RandAugment) still costs at most (slots x ops) batched calls.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import torch
from torch import nn

from search_spaces.batch import PoseBatch
from search_spaces.ops import OP_NAMES, apply_op, random_draws, random_signs

if TYPE_CHECKING:
    from search_spaces.policy import Policy


class PolicyModule(nn.Module):
    """module(batch: PoseBatch) -> PoseBatch; random choices come from `generator` (torch's global RNG if None).

    Magnitudes are constants of the policy, so the module has no parameters; the output is differentiable in
    the input images as `apply_op` is.
    """

    def __init__(
        self, policy: Policy, flip_pairs: Sequence[Sequence[int]], generator: torch.Generator | None = None
    ) -> None:
        super().__init__()
        self.policy = policy
        self.flip_pairs = [tuple(int(j) for j in pair) for pair in flip_pairs]
        self.generator = generator
        slots = max(len(sub.ops) for sub in policy.sub_policies)
        count = len(policy.sub_policies)
        op_index = torch.full((count, slots), -1, dtype=torch.long)
        prob = torch.zeros(count, slots, dtype=torch.float64)
        magnitude = torch.zeros(count, slots, dtype=torch.float64)
        for k, sub in enumerate(policy.sub_policies):
            for n, op in enumerate(sub.ops):
                op_index[k, n] = OP_NAMES.index(op.name)
                prob[k, n] = op.p
                magnitude[k, n] = op.m
        # buffers follow .to(device); they are tables of the policy, not learnable
        self.register_buffer("op_index", op_index, persistent=False)
        self.register_buffer("prob", prob, persistent=False)
        self.register_buffer("magnitude", magnitude, persistent=False)
        self.register_buffer(
            "weights",
            torch.tensor([s.weight for s in policy.sub_policies], dtype=torch.float64),
            persistent=False,
        )

    def forward(self, batch: PoseBatch) -> PoseBatch:
        size = len(batch)
        if size == 0:
            return batch
        device = batch.images.device
        table_device = self.op_index.device
        choice = self._draw(
            lambda g, d: torch.multinomial(self.weights.to(d), size, replacement=True, generator=g)
        )
        choice = choice.to(table_device)
        batch = batch.clone()  # written in place below: one copy per call instead of one per op
        for slot in range(self.op_index.shape[1]):
            ops = self.op_index[choice, slot].to(device)
            prob = self.prob[choice, slot].to(device)
            magnitude = self.magnitude[choice, slot].to(device=device, dtype=batch.images.dtype)
            coin = self._draw(lambda g, d: torch.rand(size, generator=g, device=d, dtype=torch.float64))
            fires = (ops >= 0) & (coin.to(device) < prob)
            signs = random_signs(size, self.generator, device)
            draws = random_draws(size, self.generator, device)
            for op_id in torch.unique(ops[fires]).tolist():
                index = torch.nonzero(fires & (ops == op_id)).squeeze(1)
                part = apply_op(
                    OP_NAMES[op_id],
                    batch.select(index),
                    magnitude[index],
                    sign=signs[index],
                    flip_pairs=self.flip_pairs,
                    draws=draws[index],
                )
                batch.put_(index, part)
        return batch

    def _draw(self, sample: Callable[[torch.Generator | None, torch.device], torch.Tensor]) -> torch.Tensor:
        """Run `sample(generator, device)` on the generator's device (the tables' device for the global RNG)."""
        device = self.generator.device if self.generator is not None else self.weights.device
        return sample(self.generator, device)

    def extra_repr(self) -> str:
        sizes = sorted({len(s.ops) for s in self.policy.sub_policies})
        return f"sub_policies={len(self.policy.sub_policies)}, ops_per_sub_policy={sizes}"


def compile_policy(
    policy: Policy, flip_pairs: Sequence[Sequence[int]], generator: torch.Generator | None = None
) -> PolicyModule:
    """The batched torch module of `policy`: module(batch: PoseBatch) -> PoseBatch, per-image sub-policy choice
    by weight, per-op coin flips by p."""
    return PolicyModule(policy, flip_pairs, generator)
