"""Load a local backbone weights file (e.g. ImageNet-trained timm weights) into a P2Net backbone.

The file is read with torch.load(weights_only=True), never as an arbitrary pickle. It may be a bare state dict
or one wrapped under "state_dict" / "model" (training-script checkpoints), may carry a "module." prefix (DDP),
and may hold the classifier and other head layers of the full timm model, which the feature pyramid drops.
"""

from __future__ import annotations

import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

WRAPPER_KEYS = ("state_dict", "model")
STRIPPED_PREFIXES = ("module.", "backbone.body.", "backbone.")
MAX_NAMED_KEYS = 5


class BackboneWeightsError(ValueError):
    """A weights file cannot be read or does not fit the backbone; the message names the file."""


# torch's own advice in its refusal: retry with weights_only=False, or allowlist the global the file names
_TORCH_ADVICE = re.compile(r"weights_only|safe_globals|trust|Check the documentation|Please file an issue",
                           re.IGNORECASE)


def load_refusal(error: BaseException) -> str:
    """Why torch.load(weights_only=True) refused a file, without torch's advice to retry with weights_only=False
    or to allowlist what the file asks for (either would run whatever code it holds): "UnpicklingError: Trying to
    load unsupported GLOBAL posix.system whose module posix is blocked."."""
    sentences = re.split(r"(?<=[.:])\s+|\n+", str(error))
    kept = [s.strip() for s in sentences if s.strip() and not _TORCH_ADVICE.search(s)]
    reason = " ".join(kept)[:300] or "it holds objects other than tensors and plain values"
    return f"{type(error).__name__}: {reason}"


@dataclass
class LoadedBackboneWeights:
    path: Path
    loaded: int  # tensors copied into the backbone
    ignored: list[str] = field(default_factory=list)  # file keys of the full model that the pyramid drops


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """The tensors of a weights file, unwrapped from a "state_dict" / "model" entry and stripped of a
    "module." / "backbone." prefix."""
    path = Path(path)
    if not path.is_file():
        raise BackboneWeightsError(f"{path}: backbone weights file not found")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (
        pickle.UnpicklingError,
        RuntimeError,
        EOFError,
        OSError,
        ValueError,
    ) as e:  # corrupt, or not just tensors
        raise BackboneWeightsError(f"{path}: not a readable weights file ({load_refusal(e)})") from None
    while isinstance(obj, dict) and any(k in obj for k in WRAPPER_KEYS) and not _is_state_dict(obj):
        obj = next(obj[k] for k in WRAPPER_KEYS if k in obj)
    if not isinstance(obj, dict) or not obj or not _is_state_dict(obj):
        raise BackboneWeightsError(
            f"{path}: expected a state dict of tensors (optionally under 'state_dict' or 'model'), "
            f"found {type(obj).__name__}"
        )
    for prefix in STRIPPED_PREFIXES:
        if all(k.startswith(prefix) for k in obj):
            obj = {k[len(prefix) :]: v for k, v in obj.items()}
    return obj


def _is_state_dict(obj: dict) -> bool:
    return bool(obj) and all(isinstance(k, str) and isinstance(v, Tensor) for k, v in obj.items())


def _canonical(key: str) -> str:
    # timm's feature wrappers flatten "stages.0" into "stages_0"; compare names with both spellings unified
    return key.replace(".", "_")


def _full_model_keys(model_name: str) -> set[str]:
    import timm

    with torch.device("meta"):  # only the key names are needed: allocate nothing
        full = timm.create_model(model_name, pretrained=False)
    return {_canonical(k) for k in full.state_dict()}


def _named(keys: list[str]) -> str:
    more = f" and {len(keys) - MAX_NAMED_KEYS} more" if len(keys) > MAX_NAMED_KEYS else ""
    return ", ".join(keys[:MAX_NAMED_KEYS]) + more


def load_backbone_weights(backbone: nn.Module, path: str | Path, model_name: str) -> LoadedBackboneWeights:
    """Copy the tensors of `path` into `backbone` (a timm features_only model of `model_name`).

    Every backbone tensor must be in the file with the same shape; the file may hold extra keys only where the
    full timm model has them (classifier, final head). Otherwise BackboneWeightsError names the file and keys."""
    path = Path(path)
    source = {_canonical(k): (k, v) for k, v in read_state_dict(path).items()}
    target = backbone.state_dict()
    # older checkpoints may lack BatchNorm's step counter, which does not affect the forward pass
    missing = [k for k in target if _canonical(k) not in source and not k.endswith("num_batches_tracked")]
    if missing:
        raise BackboneWeightsError(
            f"{path}: does not fit backbone {model_name!r}: {len(missing)} of its tensors are missing "
            f"from the file ({_named(missing)})"
        )
    mismatched = [
        f"{k} (file {list(source[_canonical(k)][1].shape)}, backbone {list(v.shape)})"
        for k, v in target.items()
        if _canonical(k) in source and source[_canonical(k)][1].shape != v.shape
    ]
    if mismatched:
        raise BackboneWeightsError(
            f"{path}: does not fit backbone {model_name!r}: shape mismatch at {_named(mismatched)}"
        )
    used = {_canonical(k) for k in target}
    extra = [name for canon, (name, _) in source.items() if canon not in used]
    if extra:
        unknown = [name for name in extra if _canonical(name) not in _full_model_keys(model_name)]
        if unknown:
            raise BackboneWeightsError(
                f"{path}: does not fit backbone {model_name!r}: the file holds tensors that timm's {model_name} "
                f"does not have ({_named(unknown)})"
            )
    state = {k: source[_canonical(k)][1] for k in target if _canonical(k) in source}
    backbone.load_state_dict(state, strict=False)
    return LoadedBackboneWeights(path=path, loaded=len(state), ignored=extra)
