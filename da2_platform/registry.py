"""Policies and trained models in the MLflow Model Registry.

A policy version's source is the `policy/` artifact folder of its search run; its content is the policy JSON
(never a pickle). Lineage travels as tags; the life cycle as aliases: `candidate` on registration, `production`
after a gated `promote`. Training resolves `models:/<name>@production` to an exact version and records it.
"""

from __future__ import annotations

import getpass
import hashlib
import json
import math
import re
import subprocess
from dataclasses import dataclass
from datetime import UTC
from pathlib import Path

from da2_platform import __version__
from da2_platform.config import ExperimentConfig
from da2_platform.errors import Da2Error, TrackingError
from search_spaces.policy import Policy

POLICY_FILE = "policy.json"  # inside a policy version's source folder
_REF = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[\w-]+)|/(?P<version>\d+))$")


def code_version() -> str:
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], check=False, capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).parent).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        sha = ""
    return f"{__version__}+{sha}" if sha else __version__


def _client(tracking_uri: str | None = None):
    """A registry client; a SQLite store that does not exist yet is an error, not a new empty database."""
    import mlflow
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from da2_platform.tracking import check_sqlite_store, point_mlflow_at

    uri = tracking_uri or mlflow.get_tracking_uri()
    if uri.startswith("sqlite:///"):  # an existing MLflow store, read before MLflow may write its schema
        check_sqlite_store(Path(uri.removeprefix("sqlite:///")), uri, read_only=True)
    try:
        if tracking_uri:
            point_mlflow_at(tracking_uri)
        return MlflowClient()
    except (MlflowException, ValueError) as e:
        raise TrackingError(f"tracking URI {uri!r}: {getattr(e, 'message', e)}") from None


def register_policy(cfg: ExperimentConfig, policy: Policy, method: str, run_id: str, search_val_ap: float,
                    device_hours: float, alias: str = "candidate") -> str:
    """New version of cfg.tracking.registered_policy from a finished search run (idempotent per search)."""
    from mlflow.exceptions import MlflowException

    client = _client()
    name = cfg.tracking.registered_policy
    key = hashlib.sha256(f"{cfg.name}|{method}|{policy.to_json()}".encode()).hexdigest()[:16]
    try:
        try:
            client.get_registered_model(name)
        except MlflowException:
            client.create_registered_model(name, description="Augmentation policies for top-down pose estimation "
                                           "(JSON in policy/policy.json of each version's source).")
        for mv in client.search_model_versions(f"name='{name}'"):
            if mv.tags.get("da2.search_key") == key:
                # the same result registered before (a resumed search, or a repeat): it is this search's
                # version, so the alias moves to it just as it would to a new one
                client.set_registered_model_alias(name, alias, mv.version)
                return str(mv.version)
        source = f"{client.get_run(run_id).info.artifact_uri}/policy"
        data_desc = cfg.data.kind if cfg.data.kind == "coco" else f"synthpose(seed={cfg.data.synth_seed})"
        tags = {
            "da2.method": method, "da2.experiment": cfg.name, "da2.search_run_id": run_id,
            "da2.device_hours": f"{device_hours:.6f}", "da2.search_val_ap": f"{search_val_ap:.6f}",
            "da2.dataset": data_desc,
            "da2.search_space": policy.search_space, "da2.schema_version": str(policy.schema_version),
            "da2.code_version": code_version(), "da2.search_key": key,
            # applied before the policy in every training that uses it (train.base_augment)
            "da2.base_augment": json.dumps(cfg.model_dump(mode="json")["train"]["base_augment"]),
        }
        mv = client.create_model_version(name, source=source, run_id=run_id, tags=tags,
                                         description=f"{method} policy of experiment {cfg.name}")
        client.set_registered_model_alias(name, alias, mv.version)
        return str(mv.version)
    except MlflowException as e:
        raise TrackingError(f"registering policy {name!r}: {e.message}") from None


def parse_model_ref(ref: str) -> tuple[str, str | None, str | None]:
    from da2_platform.names import check_name

    m = _REF.match(ref)
    if not m:
        raise TrackingError(f"{ref!r} is not a registry reference (models:/NAME@ALIAS or models:/NAME/VERSION)")
    return check_name(m["name"], ref), m["alias"], m["version"]


def resolve_version(ref: str, tracking_uri: str | None = None):
    """The exact ModelVersion a models:/ reference points at now."""
    from mlflow.exceptions import MlflowException

    name, alias, version = parse_model_ref(ref)
    client = _client(tracking_uri)
    try:
        return client.get_model_version_by_alias(name, alias) if alias else client.get_model_version(name, version)
    except MlflowException as e:
        raise TrackingError(f"{ref}: {e.message}") from None


def fetch_registered_policy(ref: str, tracking_uri: str | None = None):
    """The Policy a models:/ reference points at, read from the model version's own source; returns
    (policy, model version)."""
    import mlflow
    from mlflow.exceptions import MlflowException

    mv = resolve_version(ref, tracking_uri)
    try:
        local = mlflow.artifacts.download_artifacts(artifact_uri=f"{mv.source.rstrip('/')}/{POLICY_FILE}")
    except (MlflowException, OSError) as e:
        raise TrackingError(f"{ref} (version {mv.version}): cannot fetch {POLICY_FILE} from {mv.source}: "
                            f"{e}") from None
    from da2_platform.files import read_input
    from search_spaces.policy import MAX_POLICY_BYTES, PolicyError

    return Policy.from_json(read_input(local, "policy file", MAX_POLICY_BYTES, PolicyError), source=ref), mv


@dataclass
class PromotionDecision:
    allowed: bool
    reason: str
    version: str
    alias: str
    previous: str | None


def promote(name: str, version: str, alias: str = "production", gate: str = "final-ap", min_ap: float | None = None,
            note: str = "", tracking_uri: str | None = None) -> PromotionDecision:
    """Move `alias` to `version` only when the gate holds; record who, when and why as version tags."""
    from datetime import datetime

    from mlflow.exceptions import MlflowException

    client = _client(tracking_uri)
    try:
        candidate = client.get_model_version(name, version)
    except MlflowException as e:
        raise TrackingError(f"{name} version {version}: {e.message}") from None
    try:
        current = client.get_model_version_by_alias(name, alias)
    except MlflowException:
        current = None
    decision = _gate(candidate, current, gate, min_ap, alias)
    if decision.allowed:
        try:
            client.set_registered_model_alias(name, alias, candidate.version)
        except MlflowException as e:
            raise TrackingError(f"--alias {alias!r}: {e.message}") from None
        stamp = datetime.now(UTC).isoformat(timespec="seconds")
        for key, value in {"da2.promoted_to": alias, "da2.promoted_by": getpass.getuser(),
                           "da2.promoted_at": stamp, "da2.promotion_reason": (decision.reason + " " + note).strip()
                           }.items():
            client.set_model_version_tag(name, candidate.version, key, value)
    return decision


ALIAS = re.compile(r"^[A-Za-z0-9_-]{1,255}$")


def check_alias(alias: str) -> str:
    """MLflow's alias rule (letters, digits, `_` and `-`; not `latest` nor `v<number>`), checked up front."""
    if not ALIAS.match(alias) or alias.lower() == "latest" or re.fullmatch(r"[vV]\d+", alias):
        raise TrackingError(f"--alias: {alias!r} is not a valid alias (letters, digits, '_' and '-'; not 'latest' "
                            "or v<number>)")
    return alias


def _gate(candidate, current, gate: str, min_ap: float | None, alias: str) -> PromotionDecision:
    metric = {"final-ap": "da2.final_ap", "search-val-ap": "da2.search_val_ap"}.get(gate)
    if metric == "da2.search_val_ap" and metric not in candidate.tags and "da2.val_ap" in candidate.tags:
        metric = "da2.val_ap"  # a policy version registered before the tag's rename
    prev = current.version if current is not None else None

    def decide(ok: bool, why: str) -> PromotionDecision:
        return PromotionDecision(ok, why, str(candidate.version), alias, str(prev) if prev else None)

    if min_ap is not None and not math.isfinite(min_ap):
        raise TrackingError(f"--min-ap: {min_ap} is not a number between 0 and 1")
    if gate == "none":
        return decide(True, "gate 'none': promoted without a comparison")
    if metric is None:
        raise TrackingError(f"--gate: {gate!r} is not one of final-ap, search-val-ap, none")
    if metric not in candidate.tags:
        return decide(False, f"version {candidate.version} has no {metric} tag (run `da2 compare` or a "
                             "confirmation training first)")
    ap = float(candidate.tags[metric])
    if not math.isfinite(ap):
        return decide(False, f"version {candidate.version}: {metric} is {ap}, not a number")
    if min_ap is not None and ap < min_ap:
        return decide(False, f"{metric} {ap:.4f} is below the required minimum {min_ap:.4f}")
    if current is None or str(current.version) == str(candidate.version):
        return decide(True, f"{metric} {ap:.4f}; no other version holds @{alias}")
    cur_ap = float(current.tags.get(metric, "-inf"))
    if ap > cur_ap:
        return decide(True, f"{metric} {ap:.4f} beats version {current.version} ({cur_ap:.4f}) at @{alias}")
    return decide(False, f"{metric} {ap:.4f} does not beat version {current.version} ({cur_ap:.4f}) at @{alias}")


def tag_final_ap(name: str, version: str, final_ap: float, source: str) -> None:
    client = _client()
    client.set_model_version_tag(name, version, "da2.final_ap", f"{final_ap:.6f}")
    client.set_model_version_tag(name, version, "da2.final_ap_source", source)


def register_trained_model(cfg: ExperimentConfig, checkpoint: Path, metrics: dict, policy_ref: str | None,
                           policy_version: str | None, policy_name: str | None,
                           tracking_uri: str | None = None) -> tuple[str, str]:
    """Log a training run and register its P2Net as an MLflow pytorch model (a version of
    cfg.tracking.registered_model) that `mlflow.pytorch.load_model("models:/p2net/<version>")` loads; the raw
    checkpoint (weights + optimiser, for `da2 predict` and resuming) is kept beside it as an artifact."""
    import mlflow
    from mlflow.exceptions import MlflowException

    from da2_platform.mlflow_model import log_p2net
    from da2_platform.tracking import setup_tracking
    from da2_platform.training.loop import model_from_checkpoint

    experiment_id = setup_tracking(cfg, tracking_uri)
    client = _client()
    name = cfg.tracking.registered_model
    net = model_from_checkpoint(checkpoint)
    with mlflow.start_run(experiment_id=experiment_id, run_name="p2net-train") as run:
        mlflow.set_tags({"da2.kind": "train", "da2.policy_ref": policy_ref or "none",
                         "da2.policy_version": policy_version or "", "da2.policy_name": policy_name or ""})
        mlflow.log_params({"model": cfg.model.preset or cfg.model.backbone, "epochs": cfg.train.epochs,
                           "input_size": "x".join(map(str, cfg.data.input_size)), "lr": cfg.train.lr,
                           "batch_size": cfg.train.batch_size, "policy_ref": policy_ref or "none",
                           "policy_version": policy_version or ""})
        mlflow.log_metrics({k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))})
        mlflow.log_artifact(str(checkpoint), "checkpoint")
        mlflow.log_text(json.dumps(cfg.model_dump(mode="json"), indent=2), "config.json")
        info = log_p2net(net, tuple(cfg.data.input_size), int(net.config.get("num_joints", 17)), seed=cfg.seed)
        try:
            try:
                client.get_registered_model(name)
            except MlflowException:
                client.create_registered_model(name, description="P2Net models trained by da2-platform")
            tags = {"da2.policy_ref": policy_ref or "none", "da2.code_version": code_version(),
                    "da2.val_ap": f"{float(metrics.get('val_AP', 0.0)):.6f}",
                    "da2.checkpoint": f"{run.info.artifact_uri}/checkpoint/{Path(checkpoint).name}"}
            if policy_version:
                tags.update({"da2.policy_version": policy_version, "da2.policy_name": policy_name or ""})
            mv = client.create_model_version(name, source=info.model_uri, run_id=run.info.run_id, tags=tags,
                                             model_id=info.model_id)
        except MlflowException as e:
            raise TrackingError(f"registering model {name!r}: {e.message}") from None
    return run.info.run_id, str(mv.version)


def register_search_model(cfg: ExperimentConfig, uri: str, best: dict, model_file: str, policy_version: str,
                          val_ap: float | None, search_val_ap: float) -> str:
    """One-pass DA2: register the best trial's own network (its last checkpoint) as a `p2net` version whose tags
    name the policy version it trained with, and tag that policy version with the network's version and val AP."""
    from da2_platform.tracking import mlflow_client

    if not best.get("checkpoint"):
        raise Da2Error(f"one-pass {cfg.name!r}: trial {best['trial_id']} left no checkpoint to register")
    name = cfg.tracking.registered_policy
    metrics = {"search_val_AP": search_val_ap, **({"val_AP": float(val_ap)} if val_ap is not None else {})}
    _, model_version = register_trained_model(cfg, Path(best["checkpoint"]) / model_file, metrics,
                                              policy_ref=f"models:/{name}/{policy_version}",
                                              policy_version=policy_version, policy_name=name, tracking_uri=uri)
    client = mlflow_client(uri)
    client.set_model_version_tag(name, policy_version, "da2.model_name", cfg.tracking.registered_model)
    client.set_model_version_tag(name, policy_version, "da2.model_version", model_version)
    if val_ap is not None:
        tag_final_ap(name, policy_version, float(val_ap),
                     f"one-pass DA2 {cfg.name}: the search's own network ({cfg.train.epochs} epochs), val AP")
    return model_version
