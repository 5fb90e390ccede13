"""Augmentation ops (differentiable torch + albumentations twins), the Policy format and the pose search space.

Importing this package stays light (no torch); the compilers and op implementations load on first use.
"""

from search_spaces.batch import PoseBatch
from search_spaces.discrete import DiscreteSpace
from search_spaces.fixed import FIXED_POLICY_NAMES, fixed_policy
from search_spaces.ops import OP_NAMES, OPS, SEARCH_SPACE_NAME, OpSpec, apply_op, op_affine
from search_spaces.policy import OpSetting, Policy, PolicyError, SubPolicy

__all__ = [
    "FIXED_POLICY_NAMES",
    "OPS",
    "OP_NAMES",
    "SEARCH_SPACE_NAME",
    "DiscreteSpace",
    "OpSetting",
    "OpSpec",
    "Policy",
    "PolicyError",
    "PoseBatch",
    "SubPolicy",
    "apply_op",
    "fixed_policy",
    "op_affine",
]
