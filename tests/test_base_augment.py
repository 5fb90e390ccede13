"""The base augmentation (HorizontalFlip p 0.5 before every policy), the searched space without the flip, and the
target styles of SynthPose."""

from __future__ import annotations

import json

import pytest
import torch

from da2_platform.config import load_config
from da2_platform.data.synthpose import SHIFTS, STYLES, TRAIN_STYLE, write_synthpose
from da2_platform.data.topdown import TopDownDataset
from da2_platform.errors import ConfigError
from da2_platform.search.children import discrete_space
from da2_platform.search.relaxed_policy import op_slots
from da2_platform.training.loop import Fit, build_model, training_policy
from da2_platform.training.step import batch_to_device
from search_spaces.discrete import DiscreteSpace
from search_spaces.fixed import fixed_policy
from search_spaces.ops import OP_NAMES, flip_permutation, searched_op_names


def _batch_and_augment(synthpose_small, tmp_path, overrides: dict):
    cfg = load_config(None, {"workdir": str(tmp_path), "model.preset": "cpu-tiny", **overrides})
    ds = TopDownDataset(synthpose_small.train_annotations, synthpose_small.train_images,
                        input_size=cfg.data.input_size)
    samples = torch.utils.data.default_collate([ds[i] for i in range(len(ds))])
    batch = batch_to_device(samples, torch.device("cpu"))
    fit = Fit(cfg, build_model(cfg, ds.num_joints), ds, fixed_policy("none"), torch.device("cpu"))
    return batch, fit, ds


def test_default_base_augment_mirrors_about_half_the_crops_and_swaps_joints(synthpose_small, tmp_path):
    batch, fit, ds = _batch_and_augment(synthpose_small, tmp_path, {})
    assert fit.augment is not None  # fixed:none still gets the base flip
    fit.augment.step = 0
    out = fit.augment(batch)
    width = batch.images.shape[-1]
    mirrored = torch.flip(batch.images, dims=[-1])
    same = [(out.images[i] - batch.images[i]).abs().max().item() < 1e-6 for i in range(len(batch))]
    flipped = [(out.images[i] - mirrored[i]).abs().max().item() < 1e-6 for i in range(len(batch))]
    assert all(a or b for a, b in zip(same, flipped)), "every crop is either the raw crop or its mirror"
    count, n = sum(flipped), len(batch)
    assert n >= 30 and 0.3 * n <= count <= 0.7 * n, f"{count} of {n} crops mirrored"
    perm = flip_permutation(ds.flip_pairs, ds.num_joints)
    for i in (i for i in range(n) if flipped[i]):
        keep = batch.visible[i, perm] > 0
        expected_x = (width - 1) - batch.keypoints[i, perm, 0]
        assert torch.allclose(out.keypoints[i, keep, 0], expected_x[keep], atol=1e-4)  # left <-> right swapped
        assert torch.allclose(out.keypoints[i, keep, 1], batch.keypoints[i, perm, 1][keep], atol=1e-4)


def test_no_base_augment_leaves_the_raw_crop(synthpose_small, tmp_path):
    batch, fit, _ = _batch_and_augment(synthpose_small, tmp_path, {"train.base_augment": []})
    assert fit.augment is not None  # the (never firing) none policy still compiles
    fit.augment.step = 0
    out = fit.augment(batch)
    assert torch.equal(out.images, batch.images) and torch.equal(out.keypoints, batch.keypoints)
    assert training_policy(None, fit.cfg.train) is None


def test_the_policy_follows_the_base_and_reports_alone(synthpose_small, tmp_path):
    _, fit, _ = _batch_and_augment(synthpose_small, tmp_path, {})
    assert fit.policy == fixed_policy("none")  # what the child reports and the registry records
    first_ops = {sub.ops[0].name for sub in fit.applied_policy.sub_policies}
    assert first_ops == {"HorizontalFlip"}
    assert fit.applied_policy.metadata["base_augment"] == [{"name": "HorizontalFlip", "p": 0.5, "m": 0.0}]


def test_the_default_searched_space_holds_no_flip():
    assert "HorizontalFlip" in OP_NAMES
    assert "HorizontalFlip" not in searched_op_names()
    assert "HorizontalFlip" not in DiscreteSpace().op_names
    cfg = load_config(None)
    assert "HorizontalFlip" not in discrete_space(cfg.search.rl, cfg.search.include_flip).op_names
    assert all("HorizontalFlip" not in slot for slot in op_slots(24, 2, 0))
    assert "HorizontalFlip" in discrete_space(cfg.search.rl, include_flip=True).op_names
    assert "HorizontalFlip" not in {op.name for sub in fixed_policy("standard-pose").sub_policies for op in sub.ops}


def test_base_augment_names_a_known_op():
    with pytest.raises(ConfigError, match="base_augment"):
        load_config(None, {"train.base_augment": [{"name": "Mirror", "p": 0.5}]})


@pytest.mark.parametrize("shift", ["lowlight", "lowlight-tilt"])
def test_a_target_style_is_deterministic_per_seed_and_disjoint_from_train_and_val(tmp_path, shift):
    assert shift in SHIFTS and STYLES[shift] != TRAIN_STYLE
    a = write_synthpose(tmp_path / "a", train=3, val=3, seed=5, shift=shift, target=3)
    b = write_synthpose(tmp_path / "b", train=3, val=3, seed=5, shift=shift, target=3)
    c = write_synthpose(tmp_path / "c", train=3, val=3, seed=6, shift=shift, target=3)
    for split in ("train_images", "val_images", "target_images"):
        files = sorted(p.name for p in getattr(a, split).iterdir())
        assert files and all((getattr(a, split) / f).read_bytes() == (getattr(b, split) / f).read_bytes()
                             for f in files)
    assert any((a.target_images / f).read_bytes() != (c.target_images / f).read_bytes()
               for f in (p.name for p in a.target_images.iterdir()))

    def ids(path):
        return {im["id"] for im in json.loads(path.read_text())["images"]}

    train, val, target = ids(a.train_annotations), ids(a.val_annotations), ids(a.target_annotations)
    assert target and not (target & train) and not (target & val) and not (train & val)
    style = json.loads(a.target_annotations.read_text())["info"]["style"]
    assert style["brightness_offset"] < 0 and style["contrast"][1] < 1  # dim, flat light
    assert json.loads(a.train_annotations.read_text())["info"]["style"]["brightness_offset"] == 0


def test_seeds_draw_different_training_images(tmp_path):
    from da2_platform.data.splits import prepare_data

    datas = [prepare_data(load_config(None, {"workdir": str(tmp_path), "seed": s, "data.synth_train": 2, "data.synth_search_val": 1,
                                             "data.synth_val": 1})) for s in (0, 1)]
    first = [min(d.train_images.iterdir()).read_bytes() for d in datas]
    assert datas[0].train_images != datas[1].train_images and first[0] != first[1]
    pinned = load_config(None, {"workdir": str(tmp_path), "seed": 1, "data.synth_seed": 0})
    assert pinned.data_seed == 0
