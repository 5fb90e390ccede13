"""Hand-made policies in the Policy format: the baselines every search is compared with.

- "none": no augmentation. The format requires ops in every sub-policy, so "none" is one sub-policy holding
  a single op that never fires (p = 0) and would be the identity if it did (Brightness, m = 0). Both compilers
  skip it, so it costs nothing.
- "standard-pose": the usual top-down recipe of the common COCO configs (HRNet / SimpleBaseline) less its flip,
  which the base augmentation (`train.base_augment`, HorizontalFlip p = 0.5) applies before every policy:
  rotation with p = 0.6, scale always. Their magnitudes are drawn per image from a spread, which the
  format expresses as 3 x 3 equally weighted sub-policies (rotation 15/30/45 deg x scale +-0.12/0.23/0.35).
- "randaugment" / "randaugment:N:M": N ops picked uniformly (with replacement) from RandAugment's 14 choices
  (13 ops of our space + identity), all at magnitude M of 30 (m = M / 30, p = 1): one sub-policy per ordered
  N-tuple, equal weights. Default N = 2, M = 9 (m = 0.3); N is at most 3 (14^3 sub-policies).
- "trivialaugment": one op picked uniformly from the same 14 choices, its magnitude uniform over 11 bins
  (m = 0, 0.1, ..., 1): one sub-policy per (op, bin), weighted so that each op is equally likely.
"""

from __future__ import annotations

import itertools

from search_spaces.ops import OPS
from search_spaces.policy import OpSetting, Policy, PolicyError, SubPolicy

FIXED_POLICY_NAMES: list[str] = ["none", "standard-pose", "randaugment", "trivialaugment"]

IDENTITY_OP = OpSetting("Brightness", p=0.0, m=0.0)  # never fires; the identity if it did
RANDAUGMENT_OPS = (
    "AutoContrast",
    "Equalize",
    "Rotate",
    "Solarize",
    "Color",
    "Posterize",
    "Contrast",
    "Brightness",
    "Sharpness",
    "ShearX",
    "ShearY",
    "TranslateX",
    "TranslateY",
)
RANDAUGMENT_DEFAULT_N = 2
RANDAUGMENT_DEFAULT_M = 9
RANDAUGMENT_MAX_M = 30
RANDAUGMENT_MAX_N = 3
TRIVIALAUGMENT_BINS = 11


def fixed_policy(name: str) -> Policy:
    """The fixed policy called `name` (see the module docstring); an unknown name raises PolicyError."""
    if name == "none":
        return Policy((SubPolicy(1.0, (IDENTITY_OP,)),), name="none", metadata={"method": "fixed"})
    if name == "standard-pose":
        return _standard_pose()
    if name == "randaugment" or name.startswith("randaugment:"):
        return _randaugment(*_randaugment_arguments(name))
    if name == "trivialaugment":
        return _trivialaugment()
    raise PolicyError(
        "fixed policy",
        f"unknown name {name!r}; known: {', '.join(FIXED_POLICY_NAMES)} "
        f"(randaugment also as randaugment:N:M)",
    )


def _standard_pose() -> Policy:
    steps = (1.0 / 3.0, 2.0 / 3.0, 1.0)
    sub_policies = [
        (
            OpSetting("Rotate", 0.6, rotate),
            OpSetting("Scale", 1.0, scale),
        )
        for rotate, scale in itertools.product(steps, steps)
    ]
    return Policy.uniform(
        sub_policies,
        name="standard-pose",
        metadata={"method": "fixed", "recipe": "rotate <= 45 deg p 0.6, scale +-0.35 (after the base flip)"},
    )


def _randaugment_arguments(name: str) -> tuple[int, int]:
    if name == "randaugment":
        return RANDAUGMENT_DEFAULT_N, RANDAUGMENT_DEFAULT_M
    parts = name.split(":")
    if len(parts) != 3 or not all(p.isdigit() for p in parts[1:]):
        raise PolicyError("fixed policy", f"{name!r}: expected randaugment:N:M with whole numbers N and M")
    count, magnitude = int(parts[1]), int(parts[2])
    if not 1 <= count <= RANDAUGMENT_MAX_N:
        raise PolicyError("fixed policy", f"{name!r}: N = {count} must be in [1, {RANDAUGMENT_MAX_N}]")
    if not 0 <= magnitude <= RANDAUGMENT_MAX_M:
        raise PolicyError("fixed policy", f"{name!r}: M = {magnitude} must be in [0, {RANDAUGMENT_MAX_M}]")
    return count, magnitude


def _randaugment(count: int, magnitude: int) -> Policy:
    m = magnitude / RANDAUGMENT_MAX_M
    choices = (*RANDAUGMENT_OPS, None)  # None: the identity
    sub_policies = []
    for picks in itertools.product(choices, repeat=count):
        ops = tuple(OpSetting(name, 1.0, m) for name in picks if name is not None)
        sub_policies.append(ops or (IDENTITY_OP,))
    return Policy.uniform(
        sub_policies,
        name=f"randaugment:{count}:{magnitude}",
        metadata={"method": "fixed", "n": count, "m": magnitude},
    )


def _trivialaugment() -> Policy:
    per_op = 1.0 / (len(RANDAUGMENT_OPS) + 1)
    sub_policies = [SubPolicy(per_op, (IDENTITY_OP,))]
    for name in RANDAUGMENT_OPS:
        if not OPS[name].has_magnitude:
            sub_policies.append(SubPolicy(per_op, (OpSetting(name, 1.0, 0.0),)))
            continue
        for k in range(TRIVIALAUGMENT_BINS):
            m = k / (TRIVIALAUGMENT_BINS - 1)
            sub_policies.append(SubPolicy(per_op / TRIVIALAUGMENT_BINS, (OpSetting(name, 1.0, m),)))
    return Policy(tuple(sub_policies), name="trivialaugment", metadata={"method": "fixed"})
