"""Policy: K weighted sub-policies of N ops (name, probability p, magnitude m), as validated, versioned JSON.

    {"schema_version": 1, "search_space": "pose-v1", "name": "...", "metadata": {...},
     "sub_policies": [{"weight": 0.5, "ops": [{"name": "Rotate", "p": 0.7, "m": 0.4}, ...]}, ...]}

`name` and `metadata` (free JSON: method, run id, ...) are optional; everything else is required. The format is
a pydantic schema (`Policy.json_schema()`): it rejects unknown keys, unknown ops, p or m outside [0, 1] or not
finite, negative weights, weights that do not sum to one (within 1e-6), empty lists, and unknown schema versions
or search spaces; each error names the file and the field path, e.g.
"policy.json: sub_policies[1].ops[0].m: 1.3 is outside [0, 1]".

`Policy`, `SubPolicy` and `OpSetting` are frozen dataclasses (positional, hashable, picklable); constructing a
Policy validates the whole tree through the schema, so errors name the path from the policy down.

`to_json` writes the canonical text (sorted keys, two-space indent, Python's shortest round-trip float repr,
no `name`/`metadata` keys when they are unset), so canonical JSON -> Policy -> JSON is exact.

A Policy is data and knows no compiler: `search_spaces.compile_torch.compile_policy(policy, ...)` builds the
batched GPU module and `search_spaces.compile_albumentations.compile_policy(policy, ...)` the CPU pipeline.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic.fields import FieldInfo

from search_spaces.ops import OP_NAMES, SEARCH_SPACE_NAME

SCHEMA_VERSION = 1
WEIGHT_SUM_TOLERANCE = 1e-6
# compiling a policy builds a pipeline per sub-policy and DA2 holds K x N parameters: bounded like any input
MAX_SUB_POLICIES = 1024  # every unordered triple of 18 ops is 816
MAX_OPS_PER_SUB_POLICY = 16
MAX_POLICY_BYTES = 4 * 1024 * 1024  # 1024 sub-policies of 16 ops are about 1.2 MiB of canonical JSON


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
        _validate(self._document())

    def _document(self) -> dict[str, Any]:
        """The fields as the schema reads them (no conversion, so a wrong type is reported, not coerced)."""
        subs = []
        for k, sub in enumerate(self.sub_policies):
            _expect_instance(sub, SubPolicy, f"sub_policies[{k}]")
            for n, op in enumerate(sub.ops):
                _expect_instance(op, OpSetting, f"sub_policies[{k}].ops[{n}]")
            subs.append(
                {"weight": sub.weight, "ops": [{"name": o.name, "p": o.p, "m": o.m} for o in sub.ops]}
            )
        return {
            "schema_version": self.schema_version,
            "search_space": self.search_space,
            "name": self.name,
            "metadata": self.metadata,
            "sub_policies": subs,
        }

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

    def after_base(self, base: Sequence[OpSetting]) -> Policy:
        """This policy applied after a base augmentation: every sub-policy starts with the `base` ops (as
        AutoAugment applies its policy after the baseline flip and crop). An empty base returns the policy."""
        if not base:
            return self
        return Policy(
            tuple(SubPolicy(sub.weight, (*base, *sub.ops)) for sub in self.sub_policies),
            name=self.name,
            metadata={**self.metadata, "base_augment": [{"name": o.name, "p": o.p, "m": o.m} for o in base]},
        )

    @classmethod
    def from_json(cls, text: str | bytes, source: str = "<string>") -> Policy:
        """Parse and validate policy JSON; anything wrong raises PolicyError naming `source` and the field.

        The text is UTF-8; a leading byte order mark is ignored, as in every file the platform reads."""
        try:
            if isinstance(text, bytes):
                text = text.removeprefix(b"\xef\xbb\xbf").decode("utf-8")
            data = json.loads(text.removeprefix("\ufeff"))
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
            document = _validate(d)
            return cls(
                tuple(
                    SubPolicy(s.weight, tuple(OpSetting(o.name, o.p, o.m) for o in s.ops))
                    for s in document.sub_policies
                ),
                document.search_space,
                document.schema_version,
                document.name,
                document.metadata,
            )
        except PolicyError as e:
            raise e.with_source(source) from None

    @staticmethod
    def json_schema() -> dict[str, Any]:
        """The JSON Schema of a policy file (pydantic's, from PolicySchema)."""
        return PolicySchema.model_json_schema()

    @classmethod
    def load(cls, path: str | os.PathLike) -> Policy:
        path = Path(path)
        if not path.is_file():
            raise PolicyError(None, "policy file not found", str(path))
        try:
            size = path.stat().st_size
            if size > MAX_POLICY_BYTES:  # before reading: a huge file must not fill memory to be refused
                raise PolicyError(None, f"{size} bytes is larger than a policy file may be ({MAX_POLICY_BYTES})",
                                  str(path))
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


def _as_float(value: Any) -> Any:
    """Whole numbers become floats (so 1 and 1.0 serialise alike); anything else is left for validation."""
    if isinstance(value, int) and not isinstance(value, bool):
        try:
            return float(value)
        except OverflowError:
            return value
    return value


# --- the schema: the file format as pydantic models -----------------------------------------------------------


def _supported_version(version: int) -> int:
    if version != SCHEMA_VERSION:
        raise ValueError(f"unsupported version {version!r}; this platform reads version {SCHEMA_VERSION}")
    return version


def _plain_json(metadata: dict) -> dict:
    try:
        json.dumps(metadata, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise ValueError(f"is not plain JSON ({e})") from None
    return metadata


OpName = Literal[tuple(OP_NAMES)]
UnitInterval = Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)]


class _Schema(BaseModel):
    # strict: 1 is a number but "1" and true are not; lists stay JSON arrays
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class OpSettingSchema(_Schema):
    name: OpName = Field(description="An op of the pose-v1 search space.")
    p: UnitInterval = Field(description="Probability that the op is applied.")
    m: UnitInterval = Field(description="Normalised magnitude (0: none, 1: the op's largest).")


class SubPolicySchema(_Schema):
    weight: float = Field(
        ge=0, allow_inf_nan=False, description="Chance of this sub-policy; weights sum to 1."
    )
    ops: list[OpSettingSchema] = Field(min_length=1, max_length=MAX_OPS_PER_SUB_POLICY,
                                       description="Applied in order, each with its own p.")


class PolicySchema(_Schema):
    schema_version: Annotated[int, AfterValidator(_supported_version)] = Field(
        json_schema_extra={"const": SCHEMA_VERSION}
    )
    search_space: Literal[SEARCH_SPACE_NAME]
    name: str | None = None
    metadata: Annotated[dict, AfterValidator(_plain_json)] = Field(
        default_factory=dict, description="Free JSON: method, run id, ..."
    )
    sub_policies: list[SubPolicySchema] = Field(min_length=1, max_length=MAX_SUB_POLICIES)

    @model_validator(mode="after")
    def _weights_sum_to_one(self) -> PolicySchema:
        total = math.fsum(s.weight for s in self.sub_policies)
        if abs(total - 1.0) > WEIGHT_SUM_TOLERANCE:
            raise PolicyError(
                "sub_policies[*].weight",
                f"weights sum to {total!r}, not 1 (tolerance {WEIGHT_SUM_TOLERANCE})",
            )
        return self


def _validate(document: Any) -> PolicySchema:
    try:
        return PolicySchema.model_validate(document)
    except ValidationError as e:
        raise _policy_error(e.errors(include_url=False)[0]) from None


def _expect_instance(value: Any, cls: type, path: str) -> None:
    if not isinstance(value, cls):
        raise PolicyError(path, f"expected {cls.__name__}, got {type(value).__name__}")


# --- pydantic's errors in the format's words -------------------------------------------------------------------

_UNKNOWN_VALUE = {
    "name": "unknown op {value}; valid ops: {choices}",
    "search_space": "unknown search space {value}; known: {choices}",
}


def _policy_error(error: dict) -> PolicyError:
    """PolicyError(field path, reason) for one pydantic error: "sub_policies[1].ops[0].m", "1.3 is outside [0, 1]"."""
    kind, loc, value = error["type"], tuple(error["loc"]), error["input"]
    cause = error.get("ctx", {}).get("error")
    if isinstance(cause, PolicyError):
        return cause
    if kind == "missing":
        return PolicyError(_path(loc[:-1]), f"missing required key {loc[-1]!r}")
    if kind == "extra_forbidden":
        allowed = ", ".join(_schema_field(loc[:-1])[0].model_fields)
        return PolicyError(_path(loc[:-1]), f"unknown key {loc[-1]!r}; allowed keys: {allowed}")
    info = _schema_field(loc)[1]
    reasons = {
        "model_type": lambda: f"expected an object, got {_json_type(value)}",
        "dict_type": lambda: f"expected an object, got {_json_type(value)}",
        "list_type": lambda: f"expected an array, got {_json_type(value)}",
        "too_short": lambda: "must not be empty",
        "too_long": lambda: (
            f"holds {error['ctx']['actual_length']} items; at most {error['ctx']['max_length']} are allowed"
        ),
        "int_type": lambda: f"expected an integer, got {_json_type(value)}",
        "string_type": lambda: (
            f"expected a string{' or null' if _nullable(info) else ''}, got {_json_type(value)}"
        ),
        "float_type": lambda: (
            "is not a finite number"
            if _json_type(value) == "a number"
            else f"expected a number, got {_json_type(value)}"
        ),
        "finite_number": lambda: f"{value} is not a finite number",
        "greater_than_equal": lambda: _out_of_range(value, info),
        "less_than_equal": lambda: _out_of_range(value, info),
        "literal_error": lambda: _unknown_value(value, info, loc[-1]),
        "value_error": lambda: str(cause),
    }
    return PolicyError(_path(loc), reasons[kind]() if kind in reasons else error["msg"])


def _path(loc: tuple) -> str:
    text = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in loc).lstrip(".")
    return text or "(top level)"


def _schema_field(loc: tuple) -> tuple[type[_Schema] | None, FieldInfo | None]:
    """The schema model an error location is inside of, and the field it names (None where there is none)."""
    model, info = PolicySchema, None
    for part in loc:
        if isinstance(part, int):  # an item of a list: the list field's item model
            continue
        info = model.model_fields.get(part) if model is not None else None
        if info is None:
            return None, None
        model = next(
            (a for a in get_args(info.annotation) if isinstance(a, type) and issubclass(a, _Schema)), None
        )
    return model, info


def _nullable(info: FieldInfo | None) -> bool:
    return info is not None and type(None) in get_args(info.annotation)


def _out_of_range(value: Any, info: FieldInfo | None) -> str:
    bounds = {
        name: getattr(m, name)
        for m in (info.metadata if info else ())
        for name in ("ge", "le")
        if hasattr(m, name)
    }
    if "le" not in bounds:
        return f"{float(value)!r} is negative"
    return f"{float(value)!r} is outside [{bounds.get('ge')}, {bounds['le']}]"


def _unknown_value(value: Any, info: FieldInfo | None, key: Any) -> str:
    if not isinstance(value, str):
        return f"expected a string, got {_json_type(value)}"
    choices = get_args(info.annotation) if info else ()
    return _UNKNOWN_VALUE[key].format(value=_describe(value), choices=", ".join(choices))


def _describe(text: str) -> str:
    quoted = json.dumps(text)
    return quoted if len(quoted) <= 40 else quoted[:37] + "..."


def _json_type(value: Any) -> str:
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null"}
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return "a number"
    return names.get(type(value), type(value).__name__)
