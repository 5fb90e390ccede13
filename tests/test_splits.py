"""The three data roles: train, search-val (from train or from the target domain) and val, which no search sees."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from da2_platform.config import load_config
from da2_platform.data.splits import prepare_data
from da2_platform.errors import ConfigError
from da2_platform.search.trial import trial_settings


def _ids(path: Path) -> set[int]:
    return {im["id"] for im in json.loads(Path(path).read_text())["images"]}


def _files(folder: Path) -> set[str]:
    return {p.name for p in Path(folder).iterdir()}


def _synth_cfg(tmp_path: Path, search_val: str):
    return load_config(None, {"workdir": str(tmp_path / "work"), "data.synth_train": 6, "data.synth_val": 3,
                              "data.synth_search_val": 3, "data.search_val": search_val})


def test_target_search_val_comes_from_the_target_split_and_val_never_reaches_a_search(tmp_path: Path):
    cfg = _synth_cfg(tmp_path, "target")
    data = prepare_data(cfg)
    settings = trial_settings(cfg, data)
    # searches score on the target split's own files, train on all of train
    assert Path(settings["eval_images"]) == data.search_val_images != data.train_images
    assert Path(settings["eval_annotations"]) == data.search_val_annotations
    assert data.search_val_images.name == "target" and data.search_train_annotations == data.full_train_annotations
    assert _ids(settings["eval_annotations"]) and _ids(settings["eval_annotations"]) <= {
        int(name.removesuffix(".png")) for name in _files(settings["eval_images"])}
    # val (annotations and images) is named nowhere in what a trial gets
    text = json.dumps({k: v for k, v in settings.items() if k != "cfg"})
    assert str(data.val_annotations) not in text and str(data.val_images) not in text
    assert "person_keypoints_val" not in text and "/images/val" not in text
    # the three splits are disjoint, by image id and by image file
    train, search_val, val = _ids(data.full_train_annotations), _ids(data.search_val_annotations), \
        _ids(data.val_annotations)
    assert len(train) == 6 and len(search_val) == 3 and len(val) == 3
    assert not (train & search_val) and not (train & val) and not (search_val & val)
    folders = [data.train_images, data.search_val_images, data.val_images]
    assert len({str(f) for f in folders}) == 3
    names = [_files(f) for f in folders]
    assert not (names[0] & names[1]) and not (names[0] & names[2]) and not (names[1] & names[2])


def test_from_train_search_val_is_carved_out_of_train_by_image(tmp_path: Path):
    cfg = _synth_cfg(tmp_path, "from_train")
    data = prepare_data(cfg)
    settings = trial_settings(cfg, data)
    assert data.search_val_images == data.train_images == Path(settings["eval_images"])
    search_train, search_val = _ids(data.search_train_annotations), _ids(data.search_val_annotations)
    assert search_train and search_val and not (search_train & search_val)
    assert search_train | search_val == _ids(data.full_train_annotations)
    assert not (search_val & _ids(data.val_annotations))
    assert not list((cfg.workdir / "data").glob("synthpose-*/images/target"))
    text = json.dumps({k: v for k, v in settings.items() if k != "cfg"})
    assert str(data.val_annotations) not in text and str(data.val_images) not in text


def test_coco_target_needs_its_files(tmp_path: Path):
    paths = {f"data.{k}": str(tmp_path / k) for k in ("train_annotations", "train_images", "val_annotations",
                                                      "val_images")}
    with pytest.raises(ConfigError, match="search_val_annotations is not set"):
        load_config(None, {"data.kind": "coco", "data.search_val": "target", **paths})
    cfg = load_config(None, {"data.kind": "coco", "data.search_val": "target", **paths,
                             "data.search_val_annotations": "t.json", "data.search_val_images": "t"})
    assert cfg.data.search_val_annotations.is_absolute() and cfg.data.search_val_images.is_absolute()
