"""One way to name a policy everywhere: a JSON file, `fixed:NAME`, or a registry URI `models:/NAME@ALIAS` (or
`/VERSION`); and the one way to write a policy file (`save_policy`, atomic, through `da2_platform.files`)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from search_spaces.policy import MAX_POLICY_BYTES, Policy, PolicyError

if TYPE_CHECKING:
    from da2_platform.config import ExperimentConfig

REGISTRY_PREFIX = "models:/"


@dataclass(frozen=True)
class ResolvedPolicy:
    policy: Policy
    reference: str  # what the user wrote
    registry_version: str | None = None  # the exact model version when resolved from the registry
    registry_name: str | None = None


def resolve_policy(ref: str, config: ExperimentConfig | str | os.PathLike | None = None,
                   tracking_uri: str | None = None) -> ResolvedPolicy:
    """The policy `ref` names. A models:/ reference is read from the registry of the tracking store that
    `tracking_uri`, MLFLOW_TRACKING_URI or `config` (an experiment config or its file; None: the defaults) names,
    as every command resolves it; the store is checked (read only) before it is opened."""
    if ref.startswith("fixed:"):
        from search_spaces.fixed import fixed_policy

        return ResolvedPolicy(fixed_policy(ref.removeprefix("fixed:")), ref)
    if ref.startswith(REGISTRY_PREFIX):
        from da2_platform.config import ExperimentConfig, load_config
        from da2_platform.registry import fetch_registered_policy, parse_model_ref
        from da2_platform.tracking import check_tracking, resolve_tracking_uri

        parse_model_ref(ref)  # a malformed reference or a name outside the name rule: before any store is opened
        cfg = config if isinstance(config, ExperimentConfig) else load_config(config)
        uri = resolve_tracking_uri(cfg, tracking_uri)
        check_tracking(uri, read_only=True)
        policy, version = fetch_registered_policy(ref, uri)
        return ResolvedPolicy(policy, ref, registry_version=str(version.version), registry_name=version.name)
    return ResolvedPolicy(read_policy_file(ref, f"{ref}: no such policy file (or use fixed:NAME, models:/NAME@ALIAS)"),
                          ref)


def read_policy_file(path: str | Path, missing: str | None = None) -> Policy:
    """A policy JSON file, read as every input is (stat-checked, bounded, BOM ignored; docs/security.md)."""
    from da2_platform.files import read_input

    if missing is not None and not os.path.lexists(path):
        raise PolicyError(missing)
    return Policy.from_json(read_input(path, "policy file", MAX_POLICY_BYTES, PolicyError), source=str(path))


def save_policy(policy: Policy, path: str | os.PathLike) -> Path:
    """Write the policy's canonical JSON atomically, with the mode a plain file gets (0666 less the umask)."""
    from da2_platform.files import write_text_atomic

    return write_text_atomic(path, policy.to_json() + "\n")
