"""Experiment configs: the embedded defaults are the demo config; bad files name the file and the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from da2_platform.config import load_config
from da2_platform.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


def test_embedded_defaults_equal_the_demo_config():
    assert load_config(None).model_dump() == load_config(REPO / "configs" / "demo.yaml").model_dump()


@pytest.mark.parametrize("name", ["demo", "coco_r50_256x192", "coco_r101_256x192", "coco_r101_384x288"])
def test_shipped_configs_validate(name):
    cfg = load_config(REPO / "configs" / f"{name}.yaml")
    assert cfg.data.input_size[0] % 32 == 0 and cfg.model.preset


def test_relative_paths_are_pinned_where_the_command_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = load_config(None, {"workdir": "runs/a", "data.root": "data/sp"})
    assert cfg.workdir == tmp_path / "runs" / "a" and cfg.data.root == tmp_path / "data" / "sp"


def test_bad_configs_name_the_file_and_the_field(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("train:\n  lr: -1\nsearch:\n  da2: {tau1: 0}\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(path) in str(err.value) and "train.lr" in str(err.value) and "search.da2.tau1" in str(err.value)
    path.write_text("train: {epochs: 2\n")
    with pytest.raises(ConfigError, match="malformed YAML"):
        load_config(path)
    path.write_text("trian: {}\n")
    with pytest.raises(ConfigError, match="trian"):
        load_config(path)
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")
