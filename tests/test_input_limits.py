"""Bounded inputs (issue 28): sizes, file sizes and counts past their stated limit (da2_platform/limits.py,
docs/security.md) are one `error:` line and exit 2 before anything is allocated, read or written; one rule for
byte order marks; one message for files that are not regular files; COCO's visibility and num_keypoints checked,
and --check-images compares decoded sizes with the JSON."""

from __future__ import annotations

import json
import os
import resource
import signal
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml
from cli_helpers import refused, snapshot
from test_data_errors import person, write_set

from da2_platform.cli.main import main
from da2_platform.limits import (
    MAX_ANNOTATIONS_BYTES,
    MAX_CONFIG_BYTES,
    MAX_POLICY_BYTES,
    MAX_PREDICTIONS_BYTES,
)
from search_spaces.fixed import fixed_policy

# -- image and crop sizes ---------------------------------------------------------------------------------------


def test_synth_image_size_is_bounded_and_leaves_no_folder(tmp_path, capsys):
    out = tmp_path / "synth"
    refused(["data", "synth", "--out", str(out), "--image-size", "60000x60000", "--train", "1", "--val", "1"],
            capsys, "--image-size: 60000x60000 is larger than 4096 pixels a side", tmp_path)
    assert not out.exists()


def test_synth_counts_are_bounded(tmp_path, capsys):
    out = tmp_path / "synth"
    refused(["data", "synth", "--out", str(out), "--train", "10000000", "--val", "1"], capsys,
            "at most 200000 images a split, got train=10000000", tmp_path)
    assert not out.exists()


def test_inspect_and_render_input_sizes_are_bounded(tmp_path, capsys):
    ann, images = write_set(tmp_path)
    refused(["data", "inspect", "--annotations", str(ann), "--images", str(images), "--input-size", "20000x20000"],
            capsys, "--input-size: 20000x20000 is larger than 1024 pixels a side", tmp_path)
    refused(["policy", "render", "fixed:standard-pose", "--annotations", str(ann), "--images", str(images),
             "--input-size", "30000x30000", "--out", str(tmp_path / "grid.png")], capsys,
            "--input-size: 30000x30000 is larger than 1024 pixels a side", tmp_path)
    refused(["model-info", "--input-size", "99999999999x1"], capsys, "--input-size: expected HEIGHTxWIDTH", tmp_path)


def write_config(tmp_path: Path, **sections) -> Path:
    workdir = tmp_path / "w"
    workdir.mkdir(exist_ok=True)
    cfg = {"name": "bounded", "workdir": str(workdir), **sections}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.parametrize(("sections", "expect"), [
    ({"data": {"input_size": [2048, 2048]}}, "data.input_size: Value error, input_size (2048, 2048) is larger than 1024"),
    ({"search": {"da2": {"sub_policies": 5000}}}, "search.da2.sub_policies: Input should be less than or equal to 1024"),
    ({"search": {"rl": {"ops_per_sub_policy": 64}}}, "search.rl.ops_per_sub_policy: Input should be less than or equal"),
    ({"data": {"synth_train": 10**7}}, "data.synth_train: Input should be less than or equal to 200000"),
])
def test_config_sizes_and_counts_are_bounded(tmp_path, capsys, sections, expect):
    cfg = write_config(tmp_path, **sections)
    refused(["search", "--method", "fixed:none", "--config", str(cfg)], capsys, expect, tmp_path)


def test_a_policy_with_too_many_sub_policies_is_refused(tmp_path, capsys):
    sub = {"weight": 1 / 1025, "ops": [{"name": "Rotate", "p": 0.5, "m": 0.5}]}
    path = tmp_path / "huge.json"
    path.write_text(json.dumps({"schema_version": 1, "search_space": "pose-v1", "sub_policies": [sub] * 1025}))
    refused(["policy", "validate", str(path)], capsys,
            f"{path}: sub_policies: holds 1025 items; at most 1024 are allowed", tmp_path)


# -- file sizes: stat before reading ----------------------------------------------------------------------------


def sparse(path: Path, size: int) -> Path:
    with open(path, "wb") as f:
        f.truncate(size)  # a hole: no disk used, and no memory unless something reads it
    return path


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def test_oversized_files_are_refused_before_they_are_read(tmp_path, capsys):
    ann, images = write_set(tmp_path)
    big = tmp_path / "big"
    big.mkdir()
    cases = [
        (["policy", "validate", str(sparse(big / "policy.json", MAX_POLICY_BYTES + 1))], "limit on policy files"),
        (["search", "--method", "fixed:none", "--config", str(sparse(big / "config.yaml", MAX_CONFIG_BYTES + 1))],
         "limit on config files"),
        (["data", "inspect", "--annotations", str(sparse(big / "ann.json", MAX_ANNOTATIONS_BYTES + 1)), "--images",
          str(images)], "is over the 512 MiB limit on annotations files"),
        (["evaluate", "--annotations", str(ann), "--predictions",
          str(sparse(big / "pred.json", MAX_PREDICTIONS_BYTES + 1))], "limit on predictions files"),
        (["evaluate", "--annotations", str(ann), "--predictions", str(sparse(big / "pred2.json", 2 * 1024**3))],
         "2147483648 bytes is over the 512 MiB limit on predictions files"),
    ]
    for args, _ in cases:  # the same commands on missing files first: their imports are not what is measured
        assert main([str(tmp_path / "missing") if "big" in a else a for a in args]) == 2
    capsys.readouterr()
    start = peak_rss_mib()
    for args, expect in cases:
        refused(args, capsys, expect, tmp_path)
    assert peak_rss_mib() - start < 64  # nothing near the files' sizes (0.5-2 GiB) was ever read into memory


# -- one rule for byte order marks ------------------------------------------------------------------------------

BOM = b"\xef\xbb\xbf"


def test_a_utf8_bom_is_ignored_in_coco_predictions_policies_and_yaml(tmp_path, capsys):
    ann, images = write_set(tmp_path)
    ann.write_bytes(BOM + ann.read_bytes())
    assert main(["data", "inspect", "--annotations", str(ann), "--images", str(images), "--input-size", "64x48",
                 "--json"]) == 0, capsys.readouterr().err
    capsys.readouterr()
    predictions = tmp_path / "pred.json"
    predictions.write_bytes(BOM + json.dumps([{"image_id": 1, "category_id": 1, "keypoints": person(0)["keypoints"],
                                               "score": 1.0}]).encode())
    assert main(["evaluate", "--annotations", str(ann), "--predictions", str(predictions), "--json"]) == 0
    capsys.readouterr()
    policy = tmp_path / "policy.json"
    policy.write_bytes(BOM + fixed_policy("standard-pose").to_json().encode())
    assert main(["policy", "validate", str(policy), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["valid"]
    from da2_platform.config import load_config

    cfg = tmp_path / "bom.yaml"
    cfg.write_bytes(BOM + b"name: bom\nseed: 3\n")
    assert load_config(cfg).seed == 3
    policy.write_bytes(BOM + b"{\xef\xbb\xbf}")  # a mark inside the text is no mark: malformed JSON
    assert main(["policy", "validate", str(policy)]) == 2
    assert "malformed JSON" in capsys.readouterr().err


# -- one message for files that are not regular files -----------------------------------------------------------


@pytest.fixture
def alarm():
    """Fail instead of hanging if anything opens a FIFO for reading (the open would wait for a writer)."""
    def stuck(signum, frame):
        raise TimeoutError("a FIFO was opened for reading")

    old = signal.signal(signal.SIGALRM, stuck)
    signal.alarm(60)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


def test_a_fifo_is_not_reported_as_not_found(tmp_path, capsys, alarm):
    ann, images = write_set(tmp_path)
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    expect = f"{fifo}: is a named pipe (FIFO), not a regular file"
    for args in (["policy", "validate", str(fifo)],
                 ["search", "--method", "fixed:none", "--config", str(fifo)],
                 ["data", "inspect", "--annotations", str(fifo), "--images", str(images)],
                 ["evaluate", "--annotations", str(ann), "--predictions", str(fifo)],
                 ["predict", "--checkpoint", str(fifo), "--annotations", str(ann), "--images", str(images), "--out",
                  str(tmp_path / "r.json")]):
        refused(args, capsys, expect, tmp_path)
    refused(["policy", "validate", str(tmp_path)], capsys, f"{tmp_path}: is a folder, not a regular file", tmp_path)


def test_an_image_that_is_a_fifo_is_named(tmp_path, capsys, alarm):
    ann, images = write_set(tmp_path)
    (images / "b.png").unlink()
    os.mkfifo(images / "b.png")
    for extra in ([], ["--check-images"]):
        line = refused(["data", "inspect", "--annotations", str(ann), "--images", str(images), "--input-size",
                        "64x48", *extra], capsys, "is a named pipe (FIFO), not a regular file", tmp_path)
        assert str(images / "b.png") in line


# -- COCO checks ------------------------------------------------------------------------------------------------


def test_visibility_outside_0_1_2_is_refused(tmp_path, capsys):
    def visibility_3(data):
        data["annotations"][0]["keypoints"][3 * 4 + 2] = 3

    ann, images = write_set(tmp_path, visibility_3)
    refused(["data", "inspect", "--annotations", str(ann), "--images", str(images), "--input-size", "64x48"],
            capsys, "annotation id 11: keypoints: joint 4 (right_ear) has visibility 3", tmp_path)


def test_num_keypoints_that_disagrees_is_a_warning_or_with_strict_an_error(tmp_path, capsys):
    ann, images = write_set(tmp_path, lambda d: d["annotations"][1].update(num_keypoints=3))
    args = ["data", "inspect", "--annotations", str(ann), "--images", str(images), "--input-size", "64x48"]
    assert main([*args, "--json"]) == 0
    captured = capsys.readouterr()
    assert "1 annotation(s) give a num_keypoints that differs from their labelled joints (first: id 12)" in \
        captured.err
    assert json.loads(captured.out)["persons"] == 2
    refused([*args, "--strict"], capsys, "annotation id 12: num_keypoints: 3, but 17 joints are labelled", tmp_path)


def test_check_images_compares_decoded_sizes_with_the_json(tmp_path, capsys):
    ann, images = write_set(tmp_path, lambda d: d["images"][0].update(width=640, height=425))
    cv2.imwrite(str(images / "a.png"), np.zeros((1, 1, 3), dtype=np.uint8))  # a 1x1 image the JSON calls 640x425
    refused(["data", "inspect", "--annotations", str(ann), "--images", str(images), "--input-size", "64x48",
             "--check-images"], capsys, "a.png (decoded 1x1 px (width x height), the file says 640x425)", tmp_path)


def test_a_file_with_too_many_images_is_refused(tmp_path, monkeypatch):
    from da2_platform.data import coco
    from da2_platform.errors import DataError

    ann, _ = write_set(tmp_path)
    monkeypatch.setattr(coco, "MAX_COCO_IMAGES", 1)  # the rule, not a million entries
    before = snapshot(tmp_path)
    with pytest.raises(DataError, match="images: 2 entries, more than the 1 a file may hold"):
        coco.load_coco_keypoints(ann)
    assert snapshot(tmp_path) == before
