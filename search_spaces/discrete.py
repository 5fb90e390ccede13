"""The discrete pose search space of the AutoAugment-style baselines (RL controller, Optuna/TPE, PBA).

A point is K x N ops, each three decisions: op type (an index into `op_names`), probability bin and magnitude
bin. Decoded, p = bin / (prob_bins - 1) (11 bins: 0, 0.1, ..., 1) and m = bin / (mag_bins - 1) (10 bins:
0, 1/9, ..., 1), and the K sub-policies get equal weights. The flat order is
[sp0_op0_type, sp0_op0_prob, sp0_op0_mag, sp0_op1_type, ...].
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from search_spaces.ops import OP_NAMES, OPS, searched_op_names
from search_spaces.policy import OpSetting, Policy, PolicyError

_KINDS = ("type", "prob", "mag")


@dataclass(frozen=True)
class DiscreteSpace:
    num_sub_policies: int = 5
    ops_per_sub_policy: int = 2
    op_names: tuple[str, ...] = searched_op_names()  # no HorizontalFlip: the base augmentation has it
    prob_bins: int = 11
    mag_bins: int = 10

    def __post_init__(self) -> None:
        object.__setattr__(self, "op_names", tuple(self.op_names))
        if self.num_sub_policies < 1 or self.ops_per_sub_policy < 1:
            raise ValueError("DiscreteSpace needs at least one sub-policy and one op per sub-policy")
        if self.prob_bins < 2 or self.mag_bins < 2:
            raise ValueError("DiscreteSpace needs at least 2 probability bins and 2 magnitude bins")
        unknown = [name for name in self.op_names if name not in OPS]
        if unknown or not self.op_names:
            raise ValueError(
                f"DiscreteSpace.op_names: unknown ops {unknown}; valid ops: {', '.join(OP_NAMES)}"
            )

    def decisions_per_op(self) -> tuple[int, int, int]:
        """Choices per decision of one op: (op types, probability bins, magnitude bins)."""
        return len(self.op_names), self.prob_bins, self.mag_bins

    def num_decisions(self) -> int:
        return self.num_sub_policies * self.ops_per_sub_policy * 3

    def param_names(self) -> list[str]:
        """Stable names, in flat order: "sp0_op0_type", "sp0_op0_prob", "sp0_op0_mag", "sp0_op1_type", ..."""
        return [
            f"sp{k}_op{n}_{kind}"
            for k in range(self.num_sub_policies)
            for n in range(self.ops_per_sub_policy)
            for kind in _KINDS
        ]

    def to_policy(
        self, decisions: Sequence[int], name: str | None = None, metadata: dict | None = None
    ) -> Policy:
        """Decode flat decisions [op, p_bin, m_bin] * K * N into a policy with equal weights."""
        values = self._check(decisions)
        sub_policies = []
        for k in range(self.num_sub_policies):
            ops = []
            for n in range(self.ops_per_sub_policy):
                base = (k * self.ops_per_sub_policy + n) * 3
                op_id, p_bin, m_bin = values[base : base + 3]
                ops.append(
                    OpSetting(self.op_names[op_id], p_bin / (self.prob_bins - 1), m_bin / (self.mag_bins - 1))
                )
            sub_policies.append(tuple(ops))
        return Policy.uniform(sub_policies, name=name, metadata=metadata)

    def from_policy(self, policy: Policy) -> list[int]:
        """Encode a policy of this space's shape; p and m snap to the nearest bin."""
        if len(policy.sub_policies) != self.num_sub_policies:
            raise PolicyError(
                "sub_policies",
                f"has {len(policy.sub_policies)} sub-policies; this space has {self.num_sub_policies}",
            )
        decisions = []
        for k, sub in enumerate(policy.sub_policies):
            if len(sub.ops) != self.ops_per_sub_policy:
                raise PolicyError(
                    f"sub_policies[{k}].ops",
                    f"has {len(sub.ops)} ops; this space has {self.ops_per_sub_policy}",
                )
            for n, op in enumerate(sub.ops):
                if op.name not in self.op_names:
                    raise PolicyError(
                        f"sub_policies[{k}].ops[{n}].name", f"{op.name!r} is not in this space's ops"
                    )
                decisions += [
                    self.op_names.index(op.name),
                    round(op.p * (self.prob_bins - 1)),
                    round(op.m * (self.mag_bins - 1)),
                ]
        return decisions

    def to_config(self, decisions: Sequence[int]) -> dict[str, int]:
        return dict(zip(self.param_names(), self._check(decisions)))

    def from_config(self, cfg: Mapping[str, int]) -> list[int]:
        missing = [name for name in self.param_names() if name not in cfg]
        if missing:
            raise ValueError(f"config lacks {len(missing)} decisions, first {missing[0]!r}")
        return self._check([cfg[name] for name in self.param_names()])

    def _check(self, decisions: Sequence[int]) -> list[int]:
        values = list(decisions)
        if len(values) != self.num_decisions():
            raise ValueError(f"expected {self.num_decisions()} decisions, got {len(values)}")
        limits = self.decisions_per_op()
        out = []
        for index, (name, value) in enumerate(zip(self.param_names(), values)):
            if isinstance(value, bool) or int(value) != value:
                raise ValueError(f"decision {name} = {value!r} is not a whole number")
            value = int(value)
            if not 0 <= value < limits[index % 3]:
                raise ValueError(f"decision {name} = {value} is outside [0, {limits[index % 3] - 1}]")
            out.append(value)
        return out
