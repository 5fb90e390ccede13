"""Names that become paths stay where they belong (issue 28): one rule for experiment, report, search and registered
model names, checked before anything is read, written or deleted; COCO file names stay inside --images."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml
from cli_helpers import refused, snapshot

from da2_platform.data.synthpose import COCO_KEYPOINT_NAMES
from da2_platform.errors import ConfigError
from da2_platform.names import check_name, name_problem


@pytest.mark.parametrize("name", ["demo", "coco_r50-256x192", "exp.v2", "A1", "x" * 128])
def test_names_the_rule_accepts(name):
    assert name_problem(name) is None and check_name(name, "cfg.yaml") == name


@pytest.mark.parametrize(("name", "reason"), [
    ("", "is empty"), ("../escaped", "path separator"), ("a/b", "path separator"), ("a\\b", "path separator"),
    ("..", "holds '..'"), ("a..b", "holds '..'"), (".hidden", "does not start with a letter or digit"),
    ("-x", "does not start with a letter or digit"), ("a b", "character outside the rule"),
    ("caf\u00e9", "character outside the rule"), ("a\x00b", "character outside the rule"),
    ("x" * 129, "129 characters long"),
])
def test_names_the_rule_refuses(name, reason):
    with pytest.raises(ConfigError, match=r"^cfg\.yaml: name: .*" + reason.replace("(", r"\(").replace(".", r"\.")):
        check_name(name, "cfg.yaml")


def write_config(tmp_path: Path, name: str, workdir: Path) -> Path:
    workdir.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"name": name, "workdir": str(workdir),
                                    "data": {"synth_train": 8, "synth_val": 4}}))
    return path


def outside_search(tmp_path: Path) -> Path:
    """The folder `name: ../../../escaped` pointed a fixed:none search at: <tmp>/escaped-fixed-none."""
    folder = tmp_path / "escaped-fixed-none"
    folder.mkdir()
    (folder / "tuner.pkl").write_bytes(b"someone else's search")
    (folder / "keep").mkdir()
    return folder


@pytest.mark.parametrize("flag", ["--resume", "--fresh"])
def test_a_config_name_that_climbs_out_is_refused_before_resume_or_fresh(tmp_path, capsys, flag):
    workdir = tmp_path / "x" / "w"
    cfg = write_config(tmp_path, "../../../escaped", workdir)
    outside = outside_search(tmp_path)
    assert (workdir / "ray_results" / "../../../escaped-fixed-none").resolve() == outside.resolve()
    before = snapshot(outside)
    refused(["search", "--method", "fixed:none", "--config", str(cfg), flag], capsys,
            f"{cfg}: name: '../../../escaped' holds a path separator", tmp_path)
    assert snapshot(outside) == before  # --fresh deleted nothing, --resume read nothing
    assert not (workdir / "ray_results").exists()


def test_a_search_folder_that_is_a_link_out_of_the_workdir_is_refused(tmp_path, capsys):
    workdir = tmp_path / "w"
    cfg = write_config(tmp_path, "demo", workdir)
    outside = outside_search(tmp_path)
    (workdir / "ray_results").mkdir()
    (workdir / "ray_results" / "demo-fixed-none").symlink_to(outside)
    before = snapshot(outside)
    refused(["search", "--method", "fixed:none", "--config", str(cfg), "--fresh"], capsys,
            "demo-fixed-none leads outside", tmp_path)
    assert snapshot(outside) == before


def test_report_of_a_name_with_a_separator_writes_nothing(tmp_path, capsys):
    from da2_platform.ledger import CostLedger, LedgerRow

    workdir = tmp_path / "w"
    row = LedgerRow(experiment="tiny", method="fixed:none", trial_id="t0", policy_json="{}", device_kind="cpu",
                    devices_held=0.0, wall_seconds=1.0, device_seconds=1.0, search_val_ap=0.1, status="completed",
                    start_time="2026-01-01T00:00:00", end_time="2026-01-01T00:00:01")
    CostLedger.for_experiment(workdir, "tiny").append([row])  # W/ledger/tiny.parquet: what ../ledger/tiny reached
    refused(["report", "../ledger/tiny", "--workdir", str(workdir), "--json"], capsys,
            "EXPERIMENT: name: '../ledger/tiny' holds a path separator", tmp_path)
    assert not list(workdir.rglob("tiny.json")) and not list(workdir.rglob("tiny.png"))


@pytest.mark.parametrize(("args", "expect"), [
    (["promote", "1", "--name", "../x"], "--name: name: '../x' holds a path separator"),
    (["policy", "show", "models:/..@production"], "models:/..@production: name: '..' holds '..'"),
])
def test_registered_model_names_follow_the_rule(tmp_path, capsys, args, expect):
    refused([*args, "--workdir" if args[0] == "promote" else "--tracking-uri",
             str(tmp_path) if args[0] == "promote" else f"sqlite:///{tmp_path / 'none.db'}"], capsys, expect, tmp_path)


def test_a_config_registered_model_name_follows_the_rule(tmp_path, capsys):
    cfg = write_config(tmp_path, "demo", tmp_path / "w")
    data = yaml.safe_load(cfg.read_text())
    data["tracking"] = {"registered_model": "p2net/../../x"}
    cfg.write_text(yaml.safe_dump(data))
    refused(["train", "--config", str(cfg)], capsys, "tracking.registered_model: 'p2net/../../x' holds a path",
            tmp_path)


@pytest.mark.parametrize("file_name", ["../outside/secret.png", "sub/../../outside/secret.png", "/etc/hostname"])
def test_a_coco_file_name_outside_images_is_refused(tmp_path, capsys, file_name):
    outside = tmp_path / "outside"
    outside.mkdir()
    cv2.imwrite(str(outside / "secret.png"), np.full((64, 48, 3), 200, dtype=np.uint8))
    images = tmp_path / "images"
    images.mkdir()
    keypoints = [v for j in range(17) for v in (10.0 + j, 10.0 + j, 2)]
    coco = {"images": [{"id": 1, "file_name": file_name, "width": 48, "height": 64}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [5.0, 5.0, 30.0, 40.0],
                             "area": 1200.0, "iscrowd": 0, "num_keypoints": 17, "keypoints": keypoints}],
            "categories": [{"id": 1, "name": "person", "keypoints": COCO_KEYPOINT_NAMES}]}
    ann = tmp_path / "keypoints.json"
    ann.write_text(json.dumps(coco))
    before = snapshot(outside)
    for extra in ([], ["--check-images"]):
        refused(["data", "inspect", "--annotations", str(ann), "--images", str(images), "--input-size", "64x48",
                 *extra], capsys, f"image id 1: file_name: {file_name!r} leads outside --images", tmp_path)
    assert snapshot(outside) == before


def test_a_coco_file_name_in_a_subfolder_is_fine(tmp_path):
    from da2_platform.data.coco import load_coco_keypoints

    coco = {"images": [{"id": 1, "file_name": "train2017/a.png", "width": 48, "height": 64}], "annotations": [],
            "categories": [{"id": 1, "name": "person", "keypoints": COCO_KEYPOINT_NAMES}]}
    ann = tmp_path / "keypoints.json"
    ann.write_text(json.dumps(coco))
    assert load_coco_keypoints(ann).image_file(tmp_path, 1) == tmp_path / "train2017" / "a.png"
