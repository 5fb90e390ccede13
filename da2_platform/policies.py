"""One way to name a policy everywhere: a JSON file, `fixed:NAME`, or a registry URI `models:/NAME@ALIAS`."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from search_spaces.policy import MAX_POLICY_BYTES, Policy, PolicyError


@dataclass(frozen=True)
class ResolvedPolicy:
    policy: Policy
    reference: str  # what the user wrote
    registry_version: str | None = None  # the exact model version when resolved from the registry
    registry_name: str | None = None


def resolve_policy(ref: str, tracking_uri: str | None = None) -> ResolvedPolicy:
    if ref.startswith("fixed:"):
        from search_spaces.fixed import fixed_policy

        return ResolvedPolicy(fixed_policy(ref.removeprefix("fixed:")), ref)
    if ref.startswith("models:/"):
        from da2_platform.registry import fetch_registered_policy

        policy, version = fetch_registered_policy(ref, tracking_uri)
        return ResolvedPolicy(policy, ref, registry_version=str(version.version), registry_name=version.name)
    return ResolvedPolicy(read_policy_file(ref, f"{ref}: no such policy file (or use fixed:NAME, models:/NAME@ALIAS)"),
                          ref)


def read_policy_file(path: str | Path, missing: str | None = None) -> Policy:
    """A policy JSON file, read as every input is (stat-checked, bounded, BOM ignored; docs/security.md)."""
    from da2_platform.files import read_input

    if missing is not None and not os.path.lexists(path):
        raise PolicyError(missing)
    return Policy.from_json(read_input(path, "policy file", MAX_POLICY_BYTES, PolicyError), source=str(path))
