"""Bad input: a clear DataError naming the file and the annotation id (exit code 2 from the CLI) for what makes
a run meaningless; skip-and-count for a single unusable person."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from da2_platform.cli.main import main
from da2_platform.data.coco import load_coco_keypoints
from da2_platform.data.synthpose import COCO_KEYPOINT_NAMES, COCO_SKELETON
from da2_platform.data.topdown import TopDownDataset
from da2_platform.errors import DataError
from da2_platform.evaluation import evaluate_keypoints


def person(ann_id: int, image_id: int = 1, **changes: Any) -> dict[str, Any]:
    keypoints = [v for j in range(17) for v in (20.0 + 2 * j, 30.0 + 3 * j, 2)]
    ann = {"id": ann_id, "image_id": image_id, "category_id": 1, "bbox": [15.0, 25.0, 40.0, 60.0],
           "area": 1500.0, "iscrowd": 0, "num_keypoints": 17, "keypoints": keypoints}
    ann.update(changes)
    return {k: v for k, v in ann.items() if v is not None}


GOOD = {
    "images": [{"id": 1, "file_name": "a.png", "width": 96, "height": 128},
               {"id": 2, "file_name": "b.png", "width": 96, "height": 128}],
    "annotations": [person(11), person(12, image_id=2)],
    "categories": [{"id": 1, "name": "person", "keypoints": COCO_KEYPOINT_NAMES, "skeleton": COCO_SKELETON}],
}


def write_set(tmp_path: Path, edit: Callable[[dict], None] | None = None) -> tuple[Path, Path]:
    """A two-image COCO keypoints set; `edit` breaks its dict before it is written."""
    data = copy.deepcopy(GOOD)
    if edit is not None:
        edit(data)
    for image in GOOD["images"]:
        cv2.imwrite(str(tmp_path / image["file_name"]), np.full((128, 96, 3), 120, dtype=np.uint8))
    ann_path = tmp_path / "keypoints.json"
    ann_path.write_text(json.dumps(data))
    return ann_path, tmp_path


def inspect_cli(ann_path: Path, image_dir: Path) -> int:
    return main(["data", "inspect", "--annotations", str(ann_path), "--images", str(image_dir),
                 "--input-size", "64x48", "--json"])


def assert_fatal(ann_path: Path, image_dir: Path, capsys: pytest.CaptureFixture[str], *fragments: str) -> None:
    """The loader, the dataset and `da2 data inspect` all refuse, naming the file and what is wrong."""
    for load in (lambda: load_coco_keypoints(ann_path), lambda: TopDownDataset(ann_path, image_dir)):
        with pytest.raises(DataError) as caught:
            load()
        for fragment in fragments:
            assert fragment in str(caught.value)
    capsys.readouterr()
    assert inspect_cli(ann_path, image_dir) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.startswith("error: ")
    for fragment in fragments:
        assert fragment in captured.err


def test_malformed_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    ann_path, image_dir = write_set(tmp_path)
    ann_path.write_text('{"images": [\n  {"id": 1,, }\n')
    assert_fatal(ann_path, image_dir, capsys, str(ann_path), "malformed JSON at line 2")


def test_not_a_coco_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    ann_path, image_dir = write_set(tmp_path, lambda d: d.pop("annotations"))
    assert_fatal(ann_path, image_dir, capsys, str(ann_path), "'annotations'")


def test_missing_image_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    ann_path, image_dir = write_set(tmp_path)
    (image_dir / "b.png").unlink()
    assert load_coco_keypoints(ann_path).instances  # the JSON itself is fine
    with pytest.raises(DataError) as caught:
        TopDownDataset(ann_path, image_dir)
    assert str(image_dir / "b.png") in str(caught.value) and "annotation id 12" in str(caught.value)
    assert inspect_cli(ann_path, image_dir) == 2
    assert "annotation id 12" in capsys.readouterr().err


def test_unreadable_image_file_names_the_annotation(tmp_path: Path):
    ann_path, image_dir = write_set(tmp_path)
    (image_dir / "a.png").write_bytes(b"not a png")
    dataset = TopDownDataset(ann_path, image_dir)
    with pytest.raises(DataError, match="annotation id 11"):
        dataset[0]


def test_wrong_keypoint_length(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    ann_path, image_dir = write_set(tmp_path, lambda d: d["annotations"][1].update(keypoints=[1.0, 2.0, 2] * 16))
    assert_fatal(ann_path, image_dir, capsys, str(ann_path), "annotation id 12", "got 48 values")


def test_unknown_category(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    ann_path, image_dir = write_set(tmp_path, lambda d: d["annotations"][0].update(category_id=7))
    assert_fatal(ann_path, image_dir, capsys, str(ann_path), "annotation id 11", "unknown category_id 7")


def test_unknown_image_id(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    ann_path, image_dir = write_set(tmp_path, lambda d: d["annotations"][0].update(image_id=404))
    assert_fatal(ann_path, image_dir, capsys, str(ann_path), "annotation id 11", "image_id 404")


@pytest.mark.parametrize("bbox, reason", [(None, "no_box"), ([15.0, 25.0, 0.0, 60.0], "zero_area_box"),
                                          ([15.0, 25.0, 40.0, -3.0], "zero_area_box"),
                                          ([500.0, 500.0, 10.0, 10.0], "box_outside_image")])
def test_a_bad_box_skips_and_counts_one_person(tmp_path: Path, capsys: pytest.CaptureFixture[str], bbox, reason):
    def break_box(data: dict) -> None:
        data["annotations"][0] = person(11, bbox=bbox)

    ann_path, image_dir = write_set(tmp_path, break_box)
    dataset = TopDownDataset(ann_path, image_dir, input_size=(64, 48))
    assert dataset.ann_ids == [12] and dataset.skipped == {reason: 1}
    capsys.readouterr()
    assert inspect_cli(ann_path, image_dir) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["persons"] == 2 and report["persons_with_keypoints"] == 1
    assert report["skipped"] == {reason: 1}
    assert report["roundtrip_ap"]["dark"] == pytest.approx(1.0)  # the skipped person is left out of the evaluation too


def test_crowd_regions_are_skipped_but_stay_in_the_evaluation(tmp_path: Path):
    ann_path, image_dir = write_set(tmp_path, lambda d: d["annotations"][0].update(iscrowd=1, num_keypoints=0))
    dataset = TopDownDataset(ann_path, image_dir, input_size=(64, 48))
    assert dataset.ann_ids == [12] and dataset.skipped == {"crowd": 1}
    assert len(dataset.source.evaluation_dataset()["annotations"]) == 2
    truth = {"image_id": 2, "category_id": 1, "keypoints": person(0)["keypoints"], "score": 1.0}
    assert evaluate_keypoints(ann_path, [truth])["AP"] == pytest.approx(1.0)


def test_predictions_are_validated_by_entry(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    ann_path, _ = write_set(tmp_path)
    good = {"image_id": 1, "category_id": 1, "keypoints": person(0)["keypoints"], "score": 0.9}
    cases = [
        ([good, {**good, "keypoints": good["keypoints"][:-3]}], "entry 1", "got 48 values"),
        ([{**good, "image_id": 77}], "entry 0", "image_id 77"),
        ([good, good, {**good, "score": None}], "entry 2", "'score'"),
        ([{**good, "category_id": 3}], "entry 0", "category_id 3"),
        ({"results": []}, "expected a JSON list", ""),
    ]
    for index, (results, where, what) in enumerate(cases):
        results_path = tmp_path / f"results{index}.json"
        results_path.write_text(json.dumps(results))
        with pytest.raises(DataError) as caught:
            evaluate_keypoints(ann_path, results_path)
        assert str(results_path) in str(caught.value) and where in str(caught.value) and what in str(caught.value)
        capsys.readouterr()
        assert main(["evaluate", "--annotations", str(ann_path), "--predictions", str(results_path)]) == 2
        assert where in capsys.readouterr().err
    broken = tmp_path / "broken.json"
    broken.write_text("[{]")
    assert main(["evaluate", "--annotations", str(ann_path), "--predictions", str(broken)]) == 2
    assert f"{broken}: malformed JSON at line 1" in capsys.readouterr().err


def test_bad_cli_options_exit_non_zero(tmp_path: Path):
    ann_path, image_dir = write_set(tmp_path)
    assert main(["data", "inspect", "--annotations", str(ann_path), "--images", str(image_dir),
                 "--input-size", "big"]) == 2
    assert main(["evaluate", "--annotations", str(ann_path), "--predictions", str(ann_path),
                 "--rescore", "magic"]) == 2
