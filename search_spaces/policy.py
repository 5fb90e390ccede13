"""Policy: K weighted sub-policies of N ops (name, probability p, magnitude m), as validated, versioned JSON.

    {"schema_version": 1, "search_space": "pose-v1", "name": "...", "metadata": {...},
     "sub_policies": [{"weight": 0.5, "ops": [{"name": "Rotate", "p": 0.7, "m": 0.4}, ...]}, ...]}

`name` and `metadata` (free JSON: method, run id, ...) are optional; everything else is required. Validation
rejects unknown keys, unknown ops (listing the valid ones), p or m outside [0, 1] or not finite, negative
weights, weights that do not sum to one (within 1e-6), empty lists, and unknown schema versions or search
spaces; each error names the field path, e.g. "sub_policies[1].ops[0].m: 1.3 is outside [0, 1]", and the file.

`to_json` writes the canonical text (sorted keys, two-space indent, Python's shortest round-trip float repr,
no `name`/`metadata` keys when they are unset), so canonical JSON -> Policy -> JSON is exact.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from search_spaces.ops import OP_NAMES, OPS, SEARCH_SPACE_NAME

if TYPE_CHECKING:
    import torch

    from search_spaces.compile_albumentations import AlbumentationsPolicy
    from search_spaces.compile_torch import PolicyModule

SCHEMA_VERSION = 1
WEIGHT_SUM_TOLERANCE = 1e-6
_POLICY_KEYS = ("schema_version", "search_space", "name", "metadata", "sub_policies")
_REQUIRED_POLICY_KEYS = ("schema_version", "search_space", "sub_policies")
_SUB_POLICY_KEYS = ("weight", "ops")
_OP_KEYS = ("name", "p", "m")


class PolicyError(ValueError):
    """A policy is malformed: the message is "<source>: <field path>: <reason>" (source when known).

    PolicyError(field, reason, source) or, for errors that concern no one field, PolicyError(message).
    """

    def __init__(self, field: str | None, reason: str | None = None, source: str | None = None) -> None:
        if reason is None:
            field, reason = None, field or "invalid policy"
        self.field = field
        self.reason = reason
        self.source = source
        super().__init__(": ".join(part for part in (source, field, reason) if part))

    def __reduce__(self):  # keeps the three parts through pickling (Ray ships exceptions between processes)
        return (PolicyError, (self.field, self.reason, self.source))

    def with_source(self, source: str) -> PolicyError:
        return PolicyError(self.field, self.reason, source)


@dataclass(frozen=True)
class OpSetting:
    """One op of a sub-policy: registry name, probability p and normalised magnitude m, both in [0, 1]."""

    name: str
    p: float
    m: float

    def __post_init__(self) -> None:
        object.__setattr__(self, "p", _as_float(self.p))
        object.__setattr__(self, "m", _as_float(self.m))


@dataclass(frozen=True)
class SubPolicy:
    """Ops applied in sequence, chosen with probability `weight` among the policy's sub-policies."""

    weight: float
    ops: tuple[OpSetting, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "weight", _as_float(self.weight))
        object.__setattr__(self, "ops", tuple(self.ops))


@dataclass(frozen=True)
class Policy:
    """An augmentation policy; constructing one validates it (PolicyError naming the field)."""

    sub_policies: tuple[SubPolicy, ...]
    search_space: str = SEARCH_SPACE_NAME
    schema_version: int = SCHEMA_VERSION
    name: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "sub_policies", tuple(self.sub_policies))
        object.__setattr__(self, "metadata", dict(self.metadata or {}))
        _check_values(self)

    # --- construction -------------------------------------------------------------------------------------

    @classmethod
    def uniform(
        cls,
        sub_policies: Sequence[Sequence[OpSetting]],
        name: str | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> Policy:
        """Equal weights 1/K over the given op sequences."""
        count = len(sub_policies)
        if count == 0:
            raise PolicyError("sub_policies", "must not be empty")
        return cls(
            tuple(SubPolicy(1.0 / count, tuple(ops)) for ops in sub_policies),
            name=name,
            metadata=metadata or {},
        )

    @classmethod
    def from_json(cls, text: str | bytes, source: str = "<string>") -> Policy:
        """Parse and validate policy JSON; anything wrong raises PolicyError naming `source` and the field."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise PolicyError(
                None, f"malformed JSON at line {e.lineno}, column {e.colno}: {e.msg}", source
            ) from None
        except UnicodeDecodeError as e:
            raise PolicyError(None, f"not UTF-8 text ({e.reason})", source) from None
        except RecursionError:
            raise PolicyError(None, "JSON nested too deeply", source) from None
        return cls.from_dict(data, source=source)

    @classmethod
    def from_dict(cls, d: Any, source: str = "<dict>") -> Policy:
        try:
            return _parse_policy(d)
        except PolicyError as e:
            raise e.with_source(source) from None

    @classmethod
    def load(cls, path: str | os.PathLike) -> Policy:
        path = Path(path)
        if not path.is_file():
            raise PolicyError(None, "policy file not found", str(path))
        try:
            data = path.read_bytes()
        except OSError as e:
            raise PolicyError(None, f"cannot read policy file ({e.strerror})", str(path)) from None
        return cls.from_json(data, source=str(path))

    # --- serialisation ------------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"schema_version": self.schema_version, "search_space": self.search_space}
        if self.name is not None:
            out["name"] = self.name
        if self.metadata:
            out["metadata"] = json.loads(json.dumps(self.metadata))
        out["sub_policies"] = [
            {"weight": s.weight, "ops": [{"name": o.name, "p": o.p, "m": o.m} for o in s.ops]}
            for s in self.sub_policies
        ]
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, indent=2, allow_nan=False)

    def save(self, path: str | os.PathLike) -> Path:
        """Write the canonical JSON atomically (temp file beside it, then rename)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(self.to_json() + "\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return path

    # --- views --------------------------------------------------------------------------------------------

    def top(self, n: int) -> Policy:
        """The n heaviest sub-policies (ties keep their order), weights renormalised to sum to one."""
        if n < 1:
            raise PolicyError("n", f"top(n) needs n >= 1, got {n}")
        order = sorted(range(len(self.sub_policies)), key=lambda k: -self.sub_policies[k].weight)[:n]
        chosen = [self.sub_policies[k] for k in sorted(order)]
        total = math.fsum(s.weight for s in chosen)
        weights = [s.weight / total for s in chosen] if total > 0 else [1.0 / len(chosen)] * len(chosen)
        return Policy(
            tuple(SubPolicy(w, s.ops) for w, s in zip(weights, chosen)),
            self.search_space,
            self.schema_version,
            self.name,
            dict(self.metadata),
        )

    @property
    def num_ops(self) -> int:
        return sum(len(s.ops) for s in self.sub_policies)

    # --- compilers ----------------------------------------------------------------------------------------

    def to_torch(
        self, flip_pairs: Sequence[Sequence[int]], generator: torch.Generator | None = None
    ) -> PolicyModule:
        """A batched module: module(batch: PoseBatch) -> PoseBatch, per-image sub-policy choice by weight,
        per-op coin flips by p (see search_spaces.compile_torch)."""
        from search_spaces.compile_torch import compile_policy

        return compile_policy(self, flip_pairs, generator)

    def to_albumentations(
        self, flip_pairs: Sequence[Sequence[int]], seed: int | None = None
    ) -> AlbumentationsPolicy:
        """A picklable callable (image_uint8_hwc, keypoints [J, 2], visible [J]) -> same, wrapping an A.Compose
        (see search_spaces.compile_albumentations)."""
        from search_spaces.compile_albumentations import compile_policy

        return compile_policy(self, flip_pairs, seed)


def _as_float(value: Any) -> Any:
    """Whole numbers become floats (so 1 and 1.0 serialise alike); anything else is left for validation."""
    if isinstance(value, int) and not isinstance(value, bool):
        try:
            return float(value)
        except OverflowError:
            return value
    return value


# --- validation ---------------------------------------------------------------------------------------------


def _describe(value: Any) -> str:
    text = json.dumps(value) if _is_json_scalar(value) else type(value).__name__
    return text if len(text) <= 40 else text[:37] + "..."


def _is_json_scalar(value: Any) -> bool:
    return (
        value is None
        or isinstance(value, (bool, str))
        or (isinstance(value, float) and math.isfinite(value))
        or (isinstance(value, int) and abs(value) < 10**30)
    )


def _json_type(value: Any) -> str:
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null"}
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return "a number"
    return names.get(type(value), type(value).__name__)


def _expect_object(value: Any, path: str, allowed: Sequence[str], required: Sequence[str]) -> dict:
    if not isinstance(value, dict):
        raise PolicyError(path, f"expected an object, got {_json_type(value)}")
    unknown = [k for k in value if k not in allowed]
    if unknown:
        raise PolicyError(path, f"unknown key {unknown[0]!r}; allowed keys: {', '.join(allowed)}")
    for key in required:
        if key not in value:
            raise PolicyError(path, f"missing required key {key!r}")
    return value


def _expect_list(value: Any, path: str) -> list:
    if not isinstance(value, list):
        raise PolicyError(path, f"expected an array, got {_json_type(value)}")
    if not value:
        raise PolicyError(path, "must not be empty")
    return value


def _number(value: Any, path: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise PolicyError(path, f"expected a number, got {_json_type(value)}")
    try:
        number = float(value)
    except OverflowError:
        raise PolicyError(path, "is not a finite number") from None
    if not math.isfinite(number):
        raise PolicyError(path, f"{number} is not a finite number")
    return number


def _parse_policy(data: Any) -> Policy:
    top = _expect_object(data, "(top level)", _POLICY_KEYS, _REQUIRED_POLICY_KEYS)
    version = top["schema_version"]
    if isinstance(version, bool) or not isinstance(version, int):
        raise PolicyError("schema_version", f"expected an integer, got {_json_type(version)}")
    if not isinstance(top["search_space"], str):
        raise PolicyError("search_space", f"expected a string, got {_json_type(top['search_space'])}")
    name = top.get("name")
    if name is not None and not isinstance(name, str):
        raise PolicyError("name", f"expected a string or null, got {_json_type(name)}")
    metadata = top.get("metadata", {})
    if not isinstance(metadata, dict):
        raise PolicyError("metadata", f"expected an object, got {_json_type(metadata)}")
    sub_policies = []
    for k, raw_sub in enumerate(_expect_list(top["sub_policies"], "sub_policies")):
        path = f"sub_policies[{k}]"
        sub = _expect_object(raw_sub, path, _SUB_POLICY_KEYS, _SUB_POLICY_KEYS)
        weight = _number(sub["weight"], f"{path}.weight")
        ops = []
        for n, raw_op in enumerate(_expect_list(sub["ops"], f"{path}.ops")):
            op_path = f"{path}.ops[{n}]"
            op = _expect_object(raw_op, op_path, _OP_KEYS, _OP_KEYS)
            if not isinstance(op["name"], str):
                raise PolicyError(f"{op_path}.name", f"expected a string, got {_json_type(op['name'])}")
            ops.append(
                OpSetting(op["name"], _number(op["p"], f"{op_path}.p"), _number(op["m"], f"{op_path}.m"))
            )
        sub_policies.append(SubPolicy(weight, tuple(ops)))
    return Policy(tuple(sub_policies), top["search_space"], version, name, metadata)


def _check_values(policy: Policy) -> None:
    """Value checks shared by JSON loading and direct construction (DA2, fixed policies, the RL decoder)."""
    if policy.schema_version != SCHEMA_VERSION:
        raise PolicyError(
            "schema_version",
            f"unsupported version {policy.schema_version!r}; this platform reads version {SCHEMA_VERSION}",
        )
    if policy.search_space != SEARCH_SPACE_NAME:
        raise PolicyError(
            "search_space",
            f"unknown search space {_describe(policy.search_space)}; known: {SEARCH_SPACE_NAME}",
        )
    if policy.name is not None and not isinstance(policy.name, str):
        raise PolicyError("name", "expected a string or None")
    try:
        json.dumps(policy.metadata, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise PolicyError("metadata", f"is not plain JSON ({e})") from None
    if not policy.sub_policies:
        raise PolicyError("sub_policies", "must not be empty")
    for k, sub in enumerate(policy.sub_policies):
        path = f"sub_policies[{k}]"
        if not isinstance(sub, SubPolicy):
            raise PolicyError(path, f"expected a SubPolicy, got {type(sub).__name__}")
        weight = _number(sub.weight, f"{path}.weight")
        if weight < 0:
            raise PolicyError(f"{path}.weight", f"{weight!r} is negative")
        if not sub.ops:
            raise PolicyError(f"{path}.ops", "must not be empty")
        for n, op in enumerate(sub.ops):
            op_path = f"{path}.ops[{n}]"
            if not isinstance(op, OpSetting):
                raise PolicyError(op_path, f"expected an OpSetting, got {type(op).__name__}")
            if op.name not in OPS:
                raise PolicyError(
                    f"{op_path}.name", f"unknown op {_describe(op.name)}; valid ops: {', '.join(OP_NAMES)}"
                )
            for key in ("p", "m"):
                value = _number(getattr(op, key), f"{op_path}.{key}")
                if not 0.0 <= value <= 1.0:
                    raise PolicyError(f"{op_path}.{key}", f"{value!r} is outside [0, 1]")
    total = math.fsum(float(s.weight) for s in policy.sub_policies)
    if abs(total - 1.0) > WEIGHT_SUM_TOLERANCE:
        raise PolicyError(
            "sub_policies[*].weight", f"weights sum to {total!r}, not 1 (tolerance {WEIGHT_SUM_TOLERANCE})"
        )
