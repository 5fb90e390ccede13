"""DA2's search in process: one pass (the paper's one-pass optimisation) runs the final training's schedule, its
checkpoint is the one training format, a resumed search ends where an uninterrupted one does, and the val
gradient is reused between refreshes when asked."""

from __future__ import annotations

from itertools import pairwise

import pytest
import torch

from da2_platform.config import load_config
from da2_platform.data.topdown import TopDownDataset
from da2_platform.errors import TrainingError
from da2_platform.search.da2 import DA2Search
from da2_platform.training.loop import (
    CHECKPOINT_KIND,
    Fit,
    build_model,
    load_checkpoint,
    model_from_checkpoint,
)

INPUT = (64, 48)


def one_pass_config(tmp_path, synth, one_pass: bool = True, **da2):
    return load_config(None, {
        "workdir": str(tmp_path), "data.root": str(synth.root), "data.synth_seed": 0, "data.synth_shift": "none",
        "data.search_val": "from_train", "data.synth_train": 24, "data.synth_val": 8,
        "train.batch_size": 8, "train.epochs": 2, "train.lr_milestones": [1], "train.flip_test": False,
        "search.da2.sub_policies": 4, "search.da2.steps": 3, "search.da2.one_pass": one_pass,
        **{f"search.da2.{k}": v for k, v in da2.items()}})


def datasets(synth):
    train = TopDownDataset(synth.train_annotations, synth.train_images, input_size=INPUT)
    val = TopDownDataset(synth.val_annotations, synth.val_images, input_size=INPUT)
    return train, val


def run(search: DA2Search, steps: int | None = None) -> None:
    stop = search.total_steps if steps is None else steps
    while search.state["step"] < stop:
        search.step()


def test_one_pass_runs_the_final_trainings_schedule(synthpose_small, tmp_path):
    """train.epochs epochs of the train split, not search.da2.steps, with the lr dropping at train's milestone
    exactly as `Fit` drops it; without one-pass the search keeps its own step count and a constant lr."""
    train, val = datasets(synthpose_small)
    cfg = one_pass_config(tmp_path, synthpose_small)
    search = DA2Search(cfg, train, val, torch.device("cpu"))
    fit = Fit(cfg, build_model(cfg, train.num_joints), train, None, torch.device("cpu"))
    assert search.total_steps == fit.total_steps() == 2 * search.steps_per_epoch != cfg.search.da2.steps
    run(search, search.steps_per_epoch)
    assert search.w_opt.param_groups[0]["lr"] == pytest.approx(cfg.train.lr * cfg.train.lr_gamma)

    plain = DA2Search(one_pass_config(tmp_path, synthpose_small, one_pass=False), train, val, torch.device("cpu"))
    assert plain.total_steps == 3
    run(plain)
    assert plain.done and plain.w_opt.param_groups[0]["lr"] == pytest.approx(cfg.train.lr)
    assert search.learned_policy().metadata.get("one_pass") is True
    assert "one_pass" not in plain.learned_policy().metadata


def test_one_pass_checkpoint_is_the_training_format_and_resumes_exactly(synthpose_small, tmp_path):
    """The search's checkpoint loads as a P2Net training checkpoint (`model_from_checkpoint`, weights_only), and a
    search saved mid-epoch and resumed in a new object reaches the same network and policy as one run straight."""
    train, val = datasets(synthpose_small)
    cfg = one_pass_config(tmp_path, synthpose_small)
    straight = DA2Search(cfg, train, val, torch.device("cpu"))
    run(straight)

    first = DA2Search(cfg, train, val, torch.device("cpu"))
    run(first, first.steps_per_epoch + 1)  # past the lr drop, mid-epoch
    path = tmp_path / "da2_state.pt"
    first.save(path, wall=1.5)
    payload = load_checkpoint(path)
    assert payload["kind"] == CHECKPOINT_KIND and set(payload["da2"]) == {"policy", "d_opt", "generator"}
    assert payload["state"]["step"] == first.steps_per_epoch + 1 and payload["state"]["epoch"] == 1
    net = model_from_checkpoint(path)
    for key, value in first.model.state_dict().items():
        assert torch.equal(net.state_dict()[key], value), key

    resumed = DA2Search(cfg, train, val, torch.device("cpu"))
    resumed.load(path)
    assert resumed.state["wall"] == 1.5
    run(resumed)
    assert resumed.done and resumed.state["step"] == straight.state["step"]
    for key, value in straight.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[key], value), key
    for key, value in straight.policy.state_dict().items():
        assert torch.equal(resumed.policy.state_dict()[key], value), key
    assert resumed.w_opt.param_groups[0]["lr"] == straight.w_opt.param_groups[0]["lr"]


@pytest.mark.parametrize("method", ["da2", "da2:score"])
def test_each_da2_method_resumes_exactly_under_its_name(synthpose_small, tmp_path, method):
    """Both estimators: a search saved mid-way and resumed in a new object reaches the same network, policy and
    d optimiser as one run straight, and its policy is named by its method."""
    from da2_platform.search.da2 import da2_method_config

    train, val = datasets(synthpose_small)
    cfg = da2_method_config(one_pass_config(tmp_path, synthpose_small, one_pass=False, steps=4,
                                            policy_update_every=1), method)
    straight = DA2Search(cfg, train, val, torch.device("cpu"))
    run(straight)
    first = DA2Search(cfg, train, val, torch.device("cpu"))
    run(first, 2)
    first.save(tmp_path / "state.pt", wall=0.5)
    resumed = DA2Search(cfg, train, val, torch.device("cpu"))
    resumed.load(tmp_path / "state.pt")
    run(resumed)
    assert resumed.done and resumed.state["step"] == straight.state["step"] == 4
    for ours, theirs in ((resumed.model, straight.model), (resumed.policy, straight.policy)):
        for key, value in theirs.state_dict().items():
            assert torch.equal(ours.state_dict()[key], value), key
    assert resumed.learned_policy().metadata["method"] == straight.learned_policy().metadata["method"] == method
    assert resumed.learned_policy().to_json() == straight.learned_policy().to_json()


def test_a_plain_training_checkpoint_is_not_a_da2_state(synthpose_small, tmp_path):
    train, val = datasets(synthpose_small)
    cfg = one_pass_config(tmp_path, synthpose_small)
    fit = Fit(cfg, build_model(cfg, train.num_joints), train, None, torch.device("cpu"))
    path = fit.save(tmp_path / "checkpoint.pt")
    with pytest.raises(TrainingError, match="without DA2's policy state"):
        DA2Search(cfg, train, val, torch.device("cpu")).load(path)


@pytest.mark.parametrize("every", [1, 2])
def test_val_gradient_is_recomputed_every_n_d_steps(synthpose_small, tmp_path, every):
    """`val_grad_every: 2` runs the val pass at d steps 1, 3, ... and reuses its gradient (and loss) between;
    every d step still moves the policy."""
    train, val = datasets(synthpose_small)
    cfg = one_pass_config(tmp_path, synthpose_small, one_pass=False, steps=4, val_grad_every=every,
                          estimator="score", policy_update_every=1)
    search = DA2Search(cfg, train, val, torch.device("cpu"))
    calls = []
    inner = search.step_fn.val_loss
    search.step_fn.val_loss = lambda *a, **k: calls.append(1) or inner(*a, **k)
    losses, policies = [], [torch.cat([p.detach().flatten() for p in search.policy.parameters()])]
    for _ in range(4):
        losses.append(search.step().val_loss)
        policies.append(torch.cat([p.detach().flatten() for p in search.policy.parameters()]))
    assert len(calls) == 4 // every
    assert all(not torch.equal(a, b) for a, b in pairwise(policies))
    if every == 2:
        assert losses[0] == losses[1] and losses[2] == losses[3] and losses[1] != losses[2]
    else:
        assert len(set(losses)) == 4


def test_val_gradient_reuse_is_da2_score_only(synthpose_small, tmp_path):
    """One config serves both methods: `da2` (relaxed) takes its val pass at every d step whatever
    val_grad_every says; the setting is the variant's."""
    train, val = datasets(synthpose_small)
    cfg = one_pass_config(tmp_path, synthpose_small, one_pass=False, steps=2, val_grad_every=2,
                          policy_update_every=1)
    assert cfg.search.da2.estimator == "relaxed"
    search = DA2Search(cfg, train, val, torch.device("cpu"))
    calls = []
    inner = search.step_fn.val_loss
    search.step_fn.val_loss = lambda *a, **k: calls.append(1) or inner(*a, **k)
    search.step(), search.step()
    assert len(calls) == 2


@pytest.mark.parametrize(("one_pass", "da2", "updates"), [
    (False, {"policy_update_every": 1}, 3), (False, {"steps": 12, "policy_update_every": 4}, 3),
    (True, {"policy_update_every": 1}, None)])
def test_policy_lr_defaults_to_the_drift_rule_over_the_searchs_d_updates(synthpose_small, tmp_path, one_pass, da2,
                                                                          updates):
    """No policy_lr: 0.05 * sqrt(300 / d updates) for p and m, times pi_lr_scale for pi; the d updates are the
    search's own (steps / policy_update_every, or the one-pass schedule's steps)."""
    train, val = datasets(synthpose_small)
    search = DA2Search(one_pass_config(tmp_path, synthpose_small, one_pass=one_pass, **da2), train, val,
                       torch.device("cpu"))
    updates = updates or search.total_steps
    pi_group, pm_group = search.d_opt.param_groups
    assert pi_group["params"] == [search.policy.pi_logits]
    assert pm_group["params"] == [search.policy.p_logits, search.policy.m_logits]
    assert pm_group["lr"] == pytest.approx(0.05 * (300 / updates) ** 0.5)
    assert pi_group["lr"] == pytest.approx(pm_group["lr"] * search.cfg.search.da2.pi_lr_scale)


def test_a_set_policy_lr_is_used_as_it_is(synthpose_small, tmp_path):
    train, val = datasets(synthpose_small)
    search = DA2Search(one_pass_config(tmp_path, synthpose_small, one_pass=False, policy_lr=0.3, pi_lr_scale=0.5),
                       train, val, torch.device("cpu"))
    assert [g["lr"] for g in search.d_opt.param_groups] == [pytest.approx(0.15), pytest.approx(0.3)]
    testbed = DA2Search(one_pass_config(tmp_path, synthpose_small, one_pass=False, steps=900), train, val,
                        torch.device("cpu"))
    assert [g["lr"] for g in testbed.d_opt.param_groups] == [0.05, 0.05]  # 300 d updates: the rule's 0.05
