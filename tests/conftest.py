"""Shared fixtures: the shared COCO slice, a small SynthPose set, one real local Ray per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import settings

REPO_ROOT = Path(__file__).resolve().parents[1]
COCO_SAMPLE = REPO_ROOT.parent / "shared" / "fixtures" / "coco_sample"

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

# property tests draw the same examples on every run (a failure on CI reproduces here); HYPOTHESIS_PROFILE=explore
# draws new ones
settings.register_profile("repro", derandomize=True)
settings.register_profile("explore", derandomize=False)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "repro"))


@pytest.fixture(scope="session")
def coco_sample() -> Path:
    """../shared/fixtures/coco_sample (a real COCO val2017 slice); skips where a fresh clone lacks it."""
    if not (COCO_SAMPLE / "test_coco.json").is_file():
        pytest.skip(f"shared COCO fixture absent at {COCO_SAMPLE} (only present beside the project's checkout)")
    return COCO_SAMPLE


@pytest.fixture(scope="session")
def synthpose_small(tmp_path_factory):
    """A small SynthPose data set written once per test session."""
    from da2_platform.data.synthpose import write_synthpose

    out = tmp_path_factory.mktemp("synthpose")
    return write_synthpose(out, train=24, val=8, seed=0)


@pytest.fixture(scope="session")
def ray_session(tmp_path_factory):
    """One real local Ray for the whole session (init costs ~5 s and ~700 MiB)."""
    import ray

    from da2_platform.raycluster import init_local_ray

    tmp = tmp_path_factory.mktemp("ray")
    os.environ.setdefault("RAY_TMPDIR", str(tmp))
    if not ray.is_initialized():
        init_local_ray(num_cpus=2, include_dashboard=False, log_to_driver=False)  # on 127.0.0.1 only
    yield ray
    ray.shutdown()
