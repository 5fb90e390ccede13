"""Property tests: any valid policy compiles and runs safely; any invalid JSON gets a PolicyError, never a crash."""

from __future__ import annotations

import json
import math

import numpy as np
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from search_spaces import (
    OP_NAMES,
    OPS,
    OpSetting,
    Policy,
    PolicyError,
    PoseBatch,
    SubPolicy,
    compile_albumentations,
    compile_torch,
)

SIZE = (64, 48)
JOINTS = 5
FLIP_PAIRS = [(1, 2), (3, 4)]
unit = st.floats(min_value=0.0, max_value=1.0, allow_nan=False)


def op_settings(names: list[str]) -> st.SearchStrategy[OpSetting]:
    return st.builds(OpSetting, st.sampled_from(names), unit, unit)


@st.composite
def policies(draw, names: list[str] = OP_NAMES, max_sub_policies: int = 4, max_ops: int = 3) -> Policy:
    """A random valid policy over `names` (weights drawn, then normalised)."""
    ops = draw(
        st.lists(
            st.lists(op_settings(names), min_size=1, max_size=max_ops), min_size=1, max_size=max_sub_policies
        )
    )
    raw = draw(st.lists(st.floats(min_value=0.01, max_value=1.0), min_size=len(ops), max_size=len(ops)))
    total = math.fsum(raw)
    return Policy(tuple(SubPolicy(w / total, tuple(o)) for w, o in zip(raw, ops)))


def _crop_inputs(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (*SIZE, 3), dtype=np.uint8)
    keypoints = (rng.random((JOINTS, 2)) * [SIZE[1] - 1, SIZE[0] - 1]).astype(np.float32)
    visible = (rng.random(JOINTS) < 0.8).astype(np.float32)
    return image, keypoints, visible


def _assert_joints_sane(keypoints: np.ndarray, visible: np.ndarray, visible_before: np.ndarray) -> None:
    assert keypoints.shape == (JOINTS, 2) and np.isfinite(keypoints).all()
    assert set(np.unique(visible)) <= {0.0, 1.0}
    # visibility only ever drops (by a flip it moves with its joint), and visible joints are in frame
    assert visible.sum() <= visible_before.sum()
    shown = visible > 0
    assert (
        (keypoints[shown] >= 0).all()
        and (keypoints[shown, 0] < SIZE[1]).all()
        and (keypoints[shown, 1] < SIZE[0]).all()
    )


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(policy=policies(), seed=st.integers(0, 2**16))
# a joint translated in from below the frame (found by a random run): its heatmap holds only a Gaussian's tail
@example(policy=Policy(sub_policies=(SubPolicy(weight=1.0, ops=(OpSetting(name="TranslateY", p=1.0, m=0.8125),)),),
                       search_space="pose-v1"), seed=8)
def test_valid_policies_round_trip_and_run_in_both_compilers(policy, seed):
    assert Policy.from_json(policy.to_json()) == policy
    assert Policy.from_json(policy.to_json()).to_json() == policy.to_json()

    image, keypoints, visible = _crop_inputs(seed)
    out_image, out_kp, out_vis = compile_albumentations.compile_policy(policy, FLIP_PAIRS, seed=seed)(image, keypoints, visible)
    assert out_image.shape == image.shape and out_image.dtype == np.uint8
    _assert_joints_sane(out_kp, out_vis, visible)

    from da2_platform.data.heatmaps import render_heatmaps

    batch_kp = torch.from_numpy(np.stack([keypoints, keypoints[::-1].copy()]))
    batch_vis = torch.from_numpy(np.stack([visible, visible[::-1].copy()]))
    heatmaps, _ = render_heatmaps(batch_kp, batch_vis, SIZE)
    batch = PoseBatch(
        torch.from_numpy(np.stack([image, image])).permute(0, 3, 1, 2).float() / 255,
        batch_kp,
        batch_vis,
        heatmaps,
    )
    out = compile_torch.compile_policy(policy, FLIP_PAIRS, generator=torch.Generator().manual_seed(seed))(batch)
    assert out.images.shape == batch.images.shape and out.images.dtype == torch.float32
    assert out.heatmaps.shape == heatmaps.shape and torch.isfinite(out.images).all()
    assert out.images.min() >= 0.0 and out.images.max() <= 1.0
    for b in range(2):
        _assert_joints_sane(out.keypoints[b].numpy(), out.visible[b].numpy(), batch_vis[b].numpy())
    # heatmap targets went through the same affines as the joints: a visible joint well inside, before and after
    # (a joint moved in from outside brings only the tail of its rendered Gaussian), still peaks there
    stride = SIZE[1] / heatmaps.shape[3]

    def well_inside(point, shape) -> bool:
        return 1.5 <= point[0] <= shape[1] - 2.5 and 1.5 <= point[1] <= shape[0] - 2.5

    for b, j in zip(*torch.nonzero(out.visible > 0, as_tuple=True)):
        peak = out.heatmaps[b, j]
        point = out.keypoints[b, j] / stride
        if peak.max() < 0.3 or not (well_inside(point, peak.shape) and well_inside(batch_kp[b, j] / stride, peak.shape)):
            continue
        y, x = divmod(int(peak.argmax()), peak.shape[1])
        assert abs(x - float(point[0])) <= 1.0 and abs(y - float(point[1])) <= 1.0, (b, j, (x, y), point)


# --- invalid documents --------------------------------------------------------------------------------------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=12,
)
VALID = {
    "schema_version": 1,
    "search_space": "pose-v1",
    "sub_policies": [{"weight": 1.0, "ops": [{"name": "Rotate", "p": 0.5, "m": 0.5}]}],
}
OP_FIELD = ("sub_policies", 0, "ops", 0)


def _set(doc: dict, path: tuple, value) -> dict:
    doc = json.loads(json.dumps(doc))
    target = doc
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return doc


def _delete(doc: dict, path: tuple) -> dict:
    doc = json.loads(json.dumps(doc))
    target = doc
    for key in path[:-1]:
        target = target[key]
    del target[path[-1]]
    return doc


out_of_unit = (
    st.floats(allow_nan=True, allow_infinity=True).filter(lambda v: not 0.0 <= v <= 1.0)
    | st.integers().filter(lambda v: v not in (0, 1))
    | st.text(max_size=4)
    | st.booleans()
    | st.none()
    | st.lists(unit)
)
invalid_documents = st.one_of(
    st.tuples(st.sampled_from(["p", "m"]), out_of_unit).map(
        lambda kv: _set(VALID, OP_FIELD + (kv[0],), kv[1])
    ),
    st.text(max_size=12).filter(lambda s: s not in OPS).map(lambda s: _set(VALID, OP_FIELD + ("name",), s)),
    st.sampled_from(["name", "p", "m"]).map(lambda k: _delete(VALID, OP_FIELD + (k,))),
    st.sampled_from(["schema_version", "search_space", "sub_policies"]).map(lambda k: _delete(VALID, (k,))),
    st.text(min_size=1, max_size=8)
    .filter(lambda k: k not in ("name", "p", "m"))
    .map(lambda k: _set(VALID, OP_FIELD + (k,), 1)),
    st.floats(allow_nan=True)
    .filter(lambda w: not (abs(w - 1.0) <= 1e-6))
    .map(lambda w: _set(VALID, ("sub_policies", 0, "weight"), w)),
    st.just(_set(VALID, ("sub_policies",), [])),
    st.just(_set(VALID, ("sub_policies", 0, "ops"), [])),
    json_values.filter(lambda v: not isinstance(v, dict)),
    json_values.filter(lambda v: v != 1).map(lambda v: _set(VALID, ("schema_version",), v)),
    json_values.filter(lambda v: v != "pose-v1").map(lambda v: _set(VALID, ("search_space",), v)),
    json_values.filter(lambda v: not isinstance(v, list)).map(lambda v: _set(VALID, ("sub_policies",), v)),
)


@settings(max_examples=300, deadline=None)
@given(document=invalid_documents)
def test_invalid_documents_always_get_a_policy_error(document):
    text = json.dumps(
        document
    )  # NaN/Infinity go out as JSON's non-standard literals, which Python reads back
    try:
        Policy.from_json(text, source="fuzz.json")
    except PolicyError as e:
        assert str(e).startswith("fuzz.json: ")
    else:
        raise AssertionError(f"accepted an invalid policy: {text}")


@settings(max_examples=300, deadline=None)
@given(text=st.text(max_size=60) | json_values.map(json.dumps) | st.binary(max_size=40))
def test_arbitrary_input_is_a_policy_or_a_policy_error(text):
    try:
        Policy.from_json(text, source="fuzz.json")
    except PolicyError:
        pass


op_entries = json_values | st.fixed_dictionaries(
    {"name": st.sampled_from(OP_NAMES), "p": unit, "m": unit})  # valid entries too, so acceptance is tested


@settings(max_examples=200, deadline=None)
@given(entry=op_entries)
@example(entry={"name": "Rotate", "p": 0.25, "m": 1.0})
@example(entry={"name": "Rotate", "p": 0.25})
def test_arbitrary_op_entries_are_a_policy_error_or_exactly_that_op(entry):
    """Any value in an op's place is refused with a PolicyError, or it was a valid op entry and the policy
    holds exactly that op."""
    try:
        policy = Policy.from_dict(_set(VALID, OP_FIELD, entry), source="fuzz.json")
    except PolicyError as e:
        assert str(e).startswith("fuzz.json: ")
        return
    assert isinstance(entry, dict) and set(entry) == {"name", "p", "m"} and entry["name"] in OPS
    assert policy.sub_policies[0].ops[0] == OpSetting(entry["name"], float(entry["p"]), float(entry["m"]))
