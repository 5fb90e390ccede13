"""The Policy format (validation, round trip), fixed policies, the discrete space, and both compilers."""

from __future__ import annotations

import copy
import json
import pickle

import numpy as np
import pytest
import torch

from search_spaces import (
    FIXED_POLICY_NAMES,
    OP_NAMES,
    DiscreteSpace,
    OpSetting,
    Policy,
    PolicyError,
    PoseBatch,
    SubPolicy,
    compile_albumentations,
    compile_torch,
    fixed_policy,
)

EXAMPLE = {
    "schema_version": 1,
    "search_space": "pose-v1",
    "name": "example",
    "metadata": {"method": "da2", "run_id": "abc123"},
    "sub_policies": [
        {
            "weight": 0.5,
            "ops": [{"name": "Rotate", "p": 0.7, "m": 0.4}, {"name": "Cutout", "p": 0.2, "m": 0.5}],
        },
        {"weight": 0.5, "ops": [{"name": "ShearX", "p": 0.7, "m": 0.5}]},
    ],
}


def _mutated(path: list, value=None, delete: bool = False) -> dict:
    doc = copy.deepcopy(EXAMPLE)
    target = doc
    for key in path[:-1]:
        target = target[key]
    if delete:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return doc


# --- format ---------------------------------------------------------------------------------------------------


def test_round_trip_is_exact():
    text = json.dumps(EXAMPLE, sort_keys=True, indent=2)
    policy = Policy.from_json(text)
    assert policy.to_json() == text
    assert Policy.from_json(policy.to_json()) == policy
    assert policy.metadata == EXAMPLE["metadata"] and policy.name == "example"
    assert policy.sub_policies[0].ops[1] == OpSetting("Cutout", 0.2, 0.5)


def test_round_trip_of_awkward_floats_and_optional_fields():
    policy = Policy(
        (
            SubPolicy(1 / 3, (OpSetting("Rotate", 0.1 + 0.2, 1 / 7),)),
            SubPolicy(2 / 3, (OpSetting("Equalize", 1, 0),)),
        )
    )
    again = Policy.from_json(policy.to_json())
    assert again == policy and again.to_json() == policy.to_json()
    assert "name" not in policy.to_dict() and "metadata" not in policy.to_dict()
    assert again.sub_policies[1].ops[0].p == 1.0 and isinstance(again.sub_policies[1].ops[0].p, float)


def test_save_and_load(tmp_path):
    import os
    import stat

    from da2_platform.files import current_umask
    from da2_platform.policies import save_policy

    policy = fixed_policy("standard-pose")
    path = save_policy(policy, tmp_path / "sub" / "policy.json")
    assert Policy.load(path) == policy
    assert path.read_text().endswith("\n") and not list(path.parent.glob(".*.tmp"))
    # the mode a plain file gets (0666 less the umask), not the temp file's 0600
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o666 & ~current_umask() != 0o600


BAD_DOCUMENTS = [
    (_mutated(["sub_policies", 1, "ops", 0, "m"], 1.3), "sub_policies[1].ops[0].m: 1.3 is outside [0, 1]"),
    (_mutated(["sub_policies", 0, "ops", 1, "p"], -0.1), "sub_policies[0].ops[1].p: -0.1 is outside [0, 1]"),
    (
        _mutated(["sub_policies", 0, "ops", 0, "name"], "Spin"),
        'sub_policies[0].ops[0].name: unknown op "Spin"; valid ops: ShearX, ShearY',
    ),
    (_mutated(["sub_policies", 0, "ops"], []), "sub_policies[0].ops: must not be empty"),
    (_mutated(["sub_policies"], []), "sub_policies: must not be empty"),
    (_mutated(["sub_policies", 0, "weight"], 0.7), "sub_policies[*].weight: weights sum to 1.2"),
    (_mutated(["sub_policies", 0, "weight"], -0.5), "sub_policies[0].weight: -0.5 is negative"),
    (
        _mutated(["sub_policies", 0, "weight"], True),
        "sub_policies[0].weight: expected a number, got a boolean",
    ),
    (
        _mutated(["sub_policies", 0, "ops", 0, "p"], "0.5"),
        "sub_policies[0].ops[0].p: expected a number, got a string",
    ),
    (
        _mutated(["sub_policies", 0, "ops", 0, "m"], float("nan")),
        "sub_policies[0].ops[0].m: nan is not a finite",
    ),
    (
        _mutated(["sub_policies", 0, "ops", 0, "magnitude"], 0.5),
        "sub_policies[0].ops[0]: unknown key 'magnitude'",
    ),
    (
        _mutated(["sub_policies", 0, "ops", 0, "p"], delete=True),
        "sub_policies[0].ops[0]: missing required key 'p'",
    ),
    (_mutated(["sub_policies", 1], [0.5]), "sub_policies[1]: expected an object, got an array"),
    (_mutated(["schema_version"], 2), "schema_version: unsupported version 2"),
    (_mutated(["schema_version"], delete=True), "(top level): missing required key 'schema_version'"),
    (_mutated(["search_space"], "image-v1"), 'search_space: unknown search space "image-v1"; known: pose-v1'),
    (_mutated(["extra"], 1), "(top level): unknown key 'extra'"),
    (_mutated(["metadata"], [1]), "metadata: expected an object, got an array"),
    (_mutated(["name"], 3), "name: expected a string or null, got a number"),
    ([EXAMPLE], "(top level): expected an object, got an array"),
]


@pytest.mark.parametrize("document, message", BAD_DOCUMENTS, ids=[m.split(":")[0] for _, m in BAD_DOCUMENTS])
def test_validation_names_the_field(document, message):
    with pytest.raises(PolicyError) as caught:
        Policy.from_json(json.dumps(document), source="policy.json")
    assert str(caught.value).startswith(f"policy.json: {message}"), str(caught.value)


def test_malformed_json_and_missing_file_name_the_file(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"schema_version": 1,\n  "search_space": }')
    with pytest.raises(PolicyError, match=r"bad\.json: malformed JSON at line 2, column 19"):
        Policy.load(bad)
    with pytest.raises(PolicyError, match=r"missing\.json: policy file not found"):
        Policy.load(tmp_path / "missing.json")
    binary = tmp_path / "binary.json"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(PolicyError, match=r"binary\.json"):
        Policy.load(binary)


def test_direct_construction_is_validated_too():
    with pytest.raises(PolicyError, match=r"sub_policies\[0\]\.ops\[0\]\.p: 2\.0 is outside \[0, 1\]"):
        Policy((SubPolicy(1.0, (OpSetting("Rotate", 2.0, 0.5),)),))
    with pytest.raises(PolicyError, match="metadata: is not plain JSON"):
        Policy((SubPolicy(1.0, (OpSetting("Rotate", 1.0, 0.5),)),), metadata={"bad": object()})
    error = PolicyError("sub_policies", "must not be empty", "x.json")
    assert str(error) == "x.json: sub_policies: must not be empty" and isinstance(error, ValueError)
    assert pickle.loads(pickle.dumps(error)).args == error.args
    assert str(PolicyError("no policy registered under that name")) == "no policy registered under that name"


def test_top_keeps_the_heaviest_and_renormalises():
    policy = Policy(
        (
            SubPolicy(0.1, (OpSetting("Rotate", 1, 0.1),)),
            SubPolicy(0.6, (OpSetting("Scale", 1, 0.2),)),
            SubPolicy(0.3, (OpSetting("ShearX", 1, 0.3),)),
        ),
        name="p",
        metadata={"k": 1},
    )
    top = policy.top(2)
    assert [s.ops[0].name for s in top.sub_policies] == ["Scale", "ShearX"]
    assert [s.weight for s in top.sub_policies] == pytest.approx([2 / 3, 1 / 3])
    assert top.name == "p" and top.metadata == {"k": 1}
    assert policy.top(10) == policy
    with pytest.raises(PolicyError):
        policy.top(0)


# --- fixed policies ---------------------------------------------------------------------------------------------


def test_fixed_policies():
    for name in FIXED_POLICY_NAMES:
        policy = fixed_policy(name)
        assert Policy.from_json(policy.to_json()) == policy
    standard = fixed_policy("standard-pose")
    assert {op.name for s in standard.sub_policies for op in s.ops} == {"Rotate", "Scale"}  # the base flips
    assert all(s.ops[0].p == 0.6 and s.ops[1].p == 1.0 for s in standard.sub_policies)
    randaugment = fixed_policy("randaugment")
    assert len(randaugment.sub_policies) == 14 * 14
    assert {op.m for s in randaugment.sub_policies for op in s.ops if op.p > 0} == {0.3}
    assert fixed_policy("randaugment:1:30").sub_policies[0].ops[0].m == 1.0
    trivial = fixed_policy("trivialaugment")
    by_op: dict[str, float] = {}
    for sub in trivial.sub_policies:
        by_op[sub.ops[0].name if sub.ops[0].p > 0 else "identity"] = (
            by_op.get(sub.ops[0].name if sub.ops[0].p > 0 else "identity", 0) + sub.weight
        )
    assert len(by_op) == 14 and max(by_op.values()) == pytest.approx(min(by_op.values()))


@pytest.mark.parametrize(
    "name, message",
    [
        ("autoaugment", "known: none, standard-pose, randaugment, trivialaugment"),
        ("randaugment:4:9", "N = 4 must be in [1, 3]"),
        ("randaugment:2:31", "M = 31 must be in [0, 30]"),
        ("randaugment:2", "expected randaugment:N:M"),
    ],
)
def test_unknown_fixed_policy(name, message):
    with pytest.raises(PolicyError) as caught:
        fixed_policy(name)
    assert message in str(caught.value)


def test_none_policy_is_the_identity_in_both_compilers():
    policy = fixed_policy("none")
    image = np.random.default_rng(0).integers(0, 256, (32, 24, 3), dtype=np.uint8)
    keypoints = np.array([[3.0, 4.0], [20.0, 30.0]], dtype=np.float32)
    out = compile_albumentations.compile_policy(policy, [], seed=0)(image, keypoints, np.ones(2, np.float32))
    np.testing.assert_array_equal(out[0], image)
    np.testing.assert_array_equal(out[1], keypoints)
    batch = PoseBatch(
        torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255,
        torch.from_numpy(keypoints)[None],
        torch.ones(1, 2),
    )
    result = compile_torch.compile_policy(policy, [])(batch)
    assert torch.equal(result.images, batch.images) and torch.equal(result.keypoints, batch.keypoints)


# --- discrete space ---------------------------------------------------------------------------------------------


def test_discrete_space_round_trips():
    space = DiscreteSpace()
    assert space.decisions_per_op() == (len(OP_NAMES) - 1, 11, 10)  # every op but the base's HorizontalFlip
    assert space.num_decisions() == 30
    names = space.param_names()
    assert (
        names[:4] == ["sp0_op0_type", "sp0_op0_prob", "sp0_op0_mag", "sp0_op1_type"] and len(set(names)) == 30
    )
    rng = np.random.default_rng(0)
    decisions = [int(rng.integers(0, n)) for _ in range(10) for n in space.decisions_per_op()]
    policy = space.to_policy(decisions, name="rl-trial-3")
    assert len(policy.sub_policies) == 5 and all(len(s.ops) == 2 for s in policy.sub_policies)
    assert [s.weight for s in policy.sub_policies] == [0.2] * 5
    op = policy.sub_policies[0].ops[0]
    assert (op.name, op.p, op.m) == (space.op_names[decisions[0]], decisions[1] / 10, decisions[2] / 9)
    assert space.from_policy(policy) == decisions
    assert space.from_policy(Policy.from_json(policy.to_json())) == decisions
    assert space.from_config(space.to_config(decisions)) == decisions


def test_discrete_space_rejects_bad_decisions():
    space = DiscreteSpace(num_sub_policies=1, ops_per_sub_policy=1)
    with pytest.raises(ValueError, match="expected 3 decisions"):
        space.to_policy([0, 0])
    with pytest.raises(ValueError, match=r"sp0_op0_prob = 11 is outside \[0, 10\]"):
        space.to_policy([0, 11, 0])
    with pytest.raises(ValueError, match="lacks 1 decisions"):
        space.from_config({"sp0_op0_type": 0, "sp0_op0_prob": 1})
    with pytest.raises(PolicyError, match="has 2 sub-policies"):
        space.from_policy(DiscreteSpace(num_sub_policies=2, ops_per_sub_policy=1).to_policy([0, 0, 0] * 2))
    with pytest.raises(ValueError, match="unknown ops"):
        DiscreteSpace(op_names=("Rotate", "Twirl"))


# --- compilers: sub-policy choice by weight, coin flips by p, reproducibility ------------------------------------

# on a constant 0.2 image: Solarize(m=1) gives 0.8; Brightness(m=1) gives 0.5 or 0.0
TWO_WAY = Policy(
    (
        SubPolicy(0.25, (OpSetting("Solarize", 1.0, 1.0),)),
        SubPolicy(0.75, (OpSetting("Brightness", 1.0, 1.0),)),
    )
)
COIN = Policy((SubPolicy(1.0, (OpSetting("Solarize", 0.3, 1.0),)),))


def _fractions_torch(policy: Policy, count: int = 4000) -> float:
    batch = PoseBatch(torch.full((count, 3, 4, 4), 0.2), torch.zeros(count, 1, 2), torch.ones(count, 1))
    out = compile_torch.compile_policy(policy, [], generator=torch.Generator().manual_seed(0))(batch)
    return float((out.images[:, 0, 0, 0] > 0.7).float().mean())


def _fractions_albumentations(policy: Policy, count: int = 2000) -> float:
    pipeline = compile_albumentations.compile_policy(policy, [], seed=0)
    image = np.full((4, 4, 3), 51, dtype=np.uint8)
    hits = sum(
        pipeline(image, np.zeros((1, 2), np.float32), np.ones(1, np.float32))[0][0, 0, 0] > 178
        for _ in range(count)
    )
    return hits / count


def test_sub_policy_choice_follows_the_weights():
    assert _fractions_torch(TWO_WAY) == pytest.approx(0.25, abs=0.03)
    assert _fractions_albumentations(TWO_WAY) == pytest.approx(0.25, abs=0.04)


def test_op_coin_flips_follow_p():
    assert _fractions_torch(COIN) == pytest.approx(0.3, abs=0.03)
    assert _fractions_albumentations(COIN) == pytest.approx(0.3, abs=0.04)


def test_compilers_are_reproducible_from_their_seed():
    policy = fixed_policy("randaugment")
    image = np.random.default_rng(0).integers(0, 256, (32, 24, 3), dtype=np.uint8)
    keypoints, visible = np.array([[12.0, 16.0]], np.float32), np.ones(1, np.float32)

    def run(seed: int) -> list[np.ndarray]:
        pipeline = compile_albumentations.compile_policy(policy, [], seed=seed)
        return [pipeline(image, keypoints, visible)[0] for _ in range(6)]

    assert all(np.array_equal(a, b) for a, b in zip(run(3), run(3)))
    assert not all(np.array_equal(a, b) for a, b in zip(run(3), run(4)))

    batch = PoseBatch(
        torch.from_numpy(image).permute(2, 0, 1)[None].float().expand(8, -1, -1, -1) / 255,
        torch.full((8, 1, 2), 12.0),
        torch.ones(8, 1),
    )
    first = compile_torch.compile_policy(policy, [], generator=torch.Generator().manual_seed(5))(batch).images
    second = compile_torch.compile_policy(policy, [], generator=torch.Generator().manual_seed(5))(batch).images
    other = compile_torch.compile_policy(policy, [], generator=torch.Generator().manual_seed(6))(batch).images
    assert torch.equal(first, second) and not torch.equal(first, other)


def test_albumentations_policy_pickles_and_reseeds_per_dataloader_worker():
    """Workers get distinct random streams (not copies of one), and the pipeline survives pickling (spawn)."""
    from torch.utils.data import DataLoader, Dataset

    pipeline = compile_albumentations.compile_policy(Policy(
        (SubPolicy(1.0, (OpSetting("Brightness", 0.5, 1.0), OpSetting("Solarize", 0.5, 0.5))),)
    ), [], seed=0)
    image = np.full((4, 4, 3), 100, dtype=np.uint8)
    restored = pickle.loads(pickle.dumps(pipeline))
    assert restored(image, np.zeros((1, 2), np.float32), np.ones(1, np.float32))[0].shape == (4, 4, 3)

    class Constant(Dataset):
        def __len__(self) -> int:
            return 16

        def __getitem__(self, index: int) -> int:
            return int(pipeline(image, np.zeros((1, 2), np.float32), np.ones(1, np.float32))[0][0, 0, 0])

    values = list(DataLoader(Constant(), batch_size=None, num_workers=2))
    worker0, worker1 = values[0::2], values[1::2]  # round-robin over the two workers
    assert worker0 != worker1


def test_albumentations_policy_checks_its_inputs():
    pipeline = compile_albumentations.compile_policy(fixed_policy("standard-pose"), [(0, 1)], seed=0)
    with pytest.raises(ValueError, match="uint8 HxWx3"):
        pipeline(np.zeros((8, 8, 3), np.float32), np.zeros((2, 2), np.float32), np.ones(2, np.float32))
    with pytest.raises(ValueError, match=r"keypoints \[J, 2\] and visible \[J\]"):
        pipeline(np.zeros((8, 8, 3), np.uint8), np.zeros((2, 3), np.float32), np.ones(2, np.float32))


def test_standard_pose_as_a_dataset_transform(synthpose_small):
    """The albumentations compilation plugs into TopDownDataset as its `transform`; joints stay in frame."""
    from da2_platform.data.topdown import TopDownDataset

    plain = TopDownDataset(
        synthpose_small.train_annotations, synthpose_small.train_images, input_size=(64, 48)
    )
    transform = compile_albumentations.compile_policy(fixed_policy("standard-pose"), plain.flip_pairs, seed=0)
    dataset = TopDownDataset(
        synthpose_small.train_annotations,
        synthpose_small.train_images,
        input_size=(64, 48),
        transform=transform,
    )
    for i in range(4):
        item = dataset[i]
        assert item["image"].shape == (3, 64, 48) and item["keypoints"].shape == (17, 2)
        shown = item["visible"] > 0
        assert (
            (item["keypoints"][shown] >= 0).all()
            and (item["keypoints"][shown, 0] < 48).all()
            and (item["keypoints"][shown, 1] < 64).all()
        )
        assert item["visible"].sum() <= plain[i]["visible"].sum()


def test_torch_module_moves_heatmaps_and_keeps_the_batch_shape():
    policy = fixed_policy("standard-pose")
    batch = PoseBatch(
        torch.rand(6, 3, 64, 48),
        torch.rand(6, 17, 2) * torch.tensor([47.0, 63.0]),
        torch.ones(6, 17),
        heatmaps=torch.rand(6, 17, 16, 12),
    )
    module = compile_torch.compile_policy(policy, [(1, 2), (3, 4)], generator=torch.Generator().manual_seed(0))
    out = module(batch)
    assert out.images.shape == batch.images.shape and out.heatmaps.shape == batch.heatmaps.shape
    assert out.images.dtype == torch.float32 and len(list(module.parameters())) == 0
    assert not torch.equal(out.keypoints, batch.keypoints)
