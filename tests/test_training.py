"""The shared training step and loop: learning, NaN stops, safe checkpoints, flip test, Ray Train with resume."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from da2_platform.config import load_config
from da2_platform.data.topdown import TopDownDataset
from da2_platform.errors import TrainingError
from da2_platform.inference import predict_dataset
from da2_platform.training.loop import Fit, build_model, load_checkpoint
from da2_platform.training.step import TrainingStep, make_optimizer
from pose_models.losses import P2NetLoss
from pose_models.p2net import P2NetOutput

INPUT = (64, 48)


def small_config(tmp_path: Path, synth, **train):
    return load_config(None, {"workdir": str(tmp_path), "data.root": str(synth.root), "data.synth_seed": 0, "data.synth_shift": "none",
        "data.search_val": "from_train", "data.synth_train": 24,
                              "data.synth_val": 8, "train.batch_size": 8, **{f"train.{k}": v for k, v in train.items()}})


def first_batch(synth, n: int = 8) -> dict:
    ds = TopDownDataset(synth.train_annotations, synth.train_images, input_size=INPUT)
    return torch.utils.data.default_collate([ds[i] for i in range(n)])


def test_tiny_model_overfits_a_small_batch(synthpose_small, tmp_path):
    cfg = small_config(tmp_path, synthpose_small, lr=3e-3, grad_clip=None)
    model = build_model(cfg)
    step = TrainingStep(model, P2NetLoss(), make_optimizer(model, cfg.train), cfg.train, INPUT, torch.device("cpu"))
    samples = first_batch(synthpose_small)
    losses = [step(samples).loss for _ in range(60)]
    assert np.mean(losses[-5:]) < np.mean(losses[:5]) / 3, (losses[:5], losses[-5:])


def test_non_finite_loss_stops_with_a_clear_error(synthpose_small, tmp_path):
    cfg = small_config(tmp_path, synthpose_small)
    model = build_model(cfg)
    step = TrainingStep(model, P2NetLoss(), make_optimizer(model, cfg.train), cfg.train, INPUT, torch.device("cpu"))
    samples = first_batch(synthpose_small)
    samples["image"][0, 0, 0, 0] = float("nan")
    with pytest.raises(TrainingError, match=r"training loss is nan at step 0"):
        step(samples)


def test_checkpoint_from_another_architecture_is_refused(synthpose_small, tmp_path):
    cfg = small_config(tmp_path, synthpose_small)
    ds = TopDownDataset(synthpose_small.train_annotations, synthpose_small.train_images, input_size=INPUT)
    fit = Fit(cfg, build_model(cfg), ds, None, torch.device("cpu"))
    path = fit.save(tmp_path / "ck.pt")
    assert load_checkpoint(path, expect_config=fit.model.config)["state"]["epoch"] == 0
    other = load_config(None, {"model.fusion_channels": 48}).model.build_kwargs(17)
    from pose_models import build_p2net

    with pytest.raises(TrainingError, match="another architecture.*fusion_channels"):
        load_checkpoint(path, expect_config=build_p2net(**other).config)
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(TrainingError, match="junk.pt: not a loadable checkpoint"):
        load_checkpoint(tmp_path / "junk.pt")


class MirrorEquivariantNet(torch.nn.Module):
    """Flip-equivariant by construction: left joints look at the left half, right joints at the mirrored half."""

    def __init__(self, flip_pairs):
        super().__init__()
        self.flip_pairs = flip_pairs
        self.probe = torch.nn.Parameter(torch.zeros(1))

    def forward(self, images: torch.Tensor) -> P2NetOutput:
        red = images[:, :1]
        w = images.shape[-1]
        left = torch.zeros_like(red)
        left[..., : w // 3] = 1
        right = left.flip(-1)
        maps = [torch.nn.functional.avg_pool2d(red, 4)] * 17
        for a, b in self.flip_pairs:
            maps[a] = torch.nn.functional.avg_pool2d(red * left * (1 + 0.1 * a), 4)
            maps[b] = torch.nn.functional.avg_pool2d(red * right * (1 + 0.1 * a), 4)
        out = torch.cat(maps, dim=1) + self.probe
        return P2NetOutput(heatmaps=out, stage_heatmaps=[out])


def test_flip_test_of_a_flip_equivariant_model_changes_nothing(synthpose_small):
    ds = TopDownDataset(synthpose_small.val_annotations, synthpose_small.val_images, input_size=INPUT)
    net = MirrorEquivariantNet(ds.flip_pairs)
    plain = predict_dataset(net, ds, torch.device("cpu"), flip_test=False, decoder="dark")
    flipped = predict_dataset(net, ds, torch.device("cpu"), flip_test=True, decoder="dark", flip_shift=False)
    assert len(plain) == len(ds) > 0
    for a, b in zip(plain, flipped):
        np.testing.assert_allclose(a["keypoints"], b["keypoints"], atol=1e-3)


@pytest.fixture
def run_cli(capsys):
    from da2_platform.cli.main import main

    def run(args: list[str]) -> dict:
        rc = main(args)
        captured = capsys.readouterr()
        assert rc == 0, captured.err[-3000:]
        return json.loads(captured.out)
    return run


def _train_cfg(workdir: Path, synth, epochs: int) -> Path:
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "cfg.yaml"
    path.write_text(yaml.safe_dump({
        "name": "resume", "workdir": str(workdir),
        "data": {"root": str(synth.root), "synth_train": 24, "synth_val": 8, "synth_seed": 0, "synth_shift": "none",
                 "search_val": "from_train"},
        "train": {"epochs": epochs, "batch_size": 8, "max_steps_per_epoch": 2, "eval_batch_size": 16},
    }))
    return path


@pytest.mark.slow
def test_ray_train_one_epoch_then_resume_matches_uninterrupted(synthpose_small, tmp_path, ray_session, run_cli):
    interrupted = tmp_path / "interrupted"
    first = run_cli(["train", "--config", str(_train_cfg(interrupted, synthpose_small, 1)), "--policy",
                     "fixed:standard-pose", "--no-register", "--json"])
    assert first["epoch"] == 1 and first["step"] == 2
    assert 0.0 <= first["val_AP"] <= 1.0  # evaluated on val with pycocotools after the (last) epoch
    resumed = run_cli(["train", "--config", str(_train_cfg(interrupted, synthpose_small, 2)), "--policy",
                       "fixed:standard-pose", "--resume", "--no-register", "--json"])
    assert resumed["epoch"] == 2 and resumed["step"] == 4
    straight = run_cli(["train", "--config", str(_train_cfg(tmp_path / "straight", synthpose_small, 2)), "--policy",
                        "fixed:standard-pose", "--no-register", "--json"])
    a = load_checkpoint(resumed["checkpoint"])["model"]
    b = load_checkpoint(straight["checkpoint"])["model"]
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6, msg=key)


def test_train_without_resume_refuses_to_overwrite_a_run(synthpose_small, tmp_path, capsys):
    from da2_platform.cli.main import main

    workdir = tmp_path / "w"
    (workdir / "ray_results" / "train-resume").mkdir(parents=True)
    rc = main(["train", "--config", str(_train_cfg(workdir, synthpose_small, 1)), "--no-register"])
    assert rc == 2
    assert "already exists" in capsys.readouterr().err


def test_predict_writes_results_that_evaluate_scores(synthpose_small, tmp_path, run_cli):
    cfg = small_config(tmp_path, synthpose_small)
    ds = TopDownDataset(synthpose_small.train_annotations, synthpose_small.train_images, input_size=INPUT)
    checkpoint = Fit(cfg, build_model(cfg), ds, None, torch.device("cpu")).save(tmp_path / "ck.pt")
    out = tmp_path / "pred" / "results.json"
    summary = run_cli(["predict", "--checkpoint", str(checkpoint), "--annotations", str(synthpose_small.val_annotations),
                       "--images", str(synthpose_small.val_images), "--out", str(out), "--decoder", "standard",
                       "--json"])
    results = json.loads(out.read_text())
    assert summary["predictions"] == len(results) > 0
    assert all(len(r["keypoints"]) == 51 and 0.0 <= r["score"] <= 1.0 for r in results)
    metrics = run_cli(["evaluate", "--annotations", str(synthpose_small.val_annotations), "--predictions", str(out),
                       "--rescore", "bbox_keypoint", "--json"])
    assert 0.0 <= metrics["AP"] <= 1.0 and set(metrics) >= {"AP", "AP50", "AP75", "APm", "APl", "AR"}


def test_init_weights_starts_every_training_from_a_trained_p2net(tmp_path):
    """model.init_weights: a bare state dict or a checkpoint; anything else is an error naming the file."""
    from da2_platform.config import ExperimentConfig
    from da2_platform.errors import TrainingError
    from da2_platform.training.loop import build_model

    trained = build_model(ExperimentConfig.model_validate({"seed": 1}))
    torch.save(trained.state_dict(), tmp_path / "p2net.pt")
    cfg = ExperimentConfig.model_validate({"seed": 7, "model": {"init_weights": str(tmp_path / "p2net.pt")}})
    started = build_model(cfg)
    for key, value in trained.state_dict().items():
        assert torch.equal(started.state_dict()[key], value), key

    other = ExperimentConfig.model_validate({"model": {"init_weights": str(tmp_path / "p2net.pt"),
                                                       "refine_channels": 8}})
    with pytest.raises(TrainingError, match="p2net.pt does not fit"):
        build_model(other)
    (tmp_path / "junk.pt").write_bytes(b"not torch")
    bad = ExperimentConfig.model_validate({"model": {"init_weights": str(tmp_path / "junk.pt")}})
    with pytest.raises(TrainingError, match="junk.pt: not a loadable"):
        build_model(bad)
    with pytest.raises(TrainingError, match="missing.pt not found"):
        build_model(ExperimentConfig.model_validate({"model": {"init_weights": str(tmp_path / "missing.pt")}}))


# -- one loop for production, children and final trainings ------------------------------------------------------

def _child_settings(synth, child_steps: int | None, evals: int = 1) -> dict:
    return {"train_annotations": str(synth.train_annotations), "train_images": str(synth.train_images),
            "eval_annotations": str(synth.val_annotations), "eval_images": str(synth.val_images),
            "child_steps": child_steps, "evals": evals}


def _seen_images(fit) -> list[torch.Tensor]:
    """The images the network trains on, after whichever augmentation path ran."""
    seen: list[torch.Tensor] = []
    fit.model.register_forward_pre_hook(lambda module, args: seen.append(args[0].detach().clone())
                                        if module.training else None)
    return seen




def _brighter():
    from search_spaces.policy import OpSetting, Policy

    return Policy.uniform([[OpSetting("Brightness", 1.0, 1.0)]], name="brighter")


@pytest.mark.parametrize("augment_on", ["device", "loader"])
@pytest.mark.parametrize("kind", ["child", "final"])
def test_children_and_final_trainings_augment_under_both_settings(synthpose_small, tmp_path, augment_on, kind):
    """A policy that changes pixels gives other training batches than fixed:none, wherever the policy runs."""
    from da2_platform.search.children import child_fit, run_child
    from search_spaces.fixed import fixed_policy

    cfg = small_config(tmp_path, synthpose_small, augment_on=augment_on, epochs=1, max_steps_per_epoch=1,
                       flip_test=False)
    settings = _child_settings(synthpose_small, child_steps=1 if kind == "child" else None)
    batches, reports = {}, []
    for name, policy in (("none", fixed_policy("none")), ("brighter", _brighter())):
        fit = child_fit(cfg, settings, policy, torch.device("cpu"))
        seen = _seen_images(fit)
        run_child(fit, settings, lambda metrics, blob: reports.append(metrics))
        batches[name] = seen
    assert len(batches["none"]) == len(batches["brighter"]) == 1  # one training step each
    assert [r["complete"] for r in reports] == [True, True]
    none, brighter = batches["none"][0], batches["brighter"][0]
    assert none.shape == brighter.shape
    assert (brighter - none).abs().mean() > 0.02, "the policy did not reach the training batch"


def test_child_step_and_production_step_reach_identical_weights(synthpose_small, tmp_path):
    """With the policy fixed, a search child and `da2 train`'s loop take the same steps to the same weights."""
    from da2_platform.search.children import child_fit, run_child
    from search_spaces.fixed import fixed_policy

    cfg = small_config(tmp_path, synthpose_small, epochs=1, max_steps_per_epoch=2)
    policy = fixed_policy("standard-pose")
    child = child_fit(cfg, _child_settings(synthpose_small, child_steps=2), policy, torch.device("cpu"))
    run_child(child, _child_settings(synthpose_small, child_steps=2), lambda metrics, blob: None)

    ds = TopDownDataset(synthpose_small.train_annotations, synthpose_small.train_images, input_size=INPUT)
    production = Fit(cfg, build_model(cfg, ds.num_joints), ds, policy, torch.device("cpu"))
    production.run()
    assert child.state.step == production.state.step == 2
    a, b = child.model.state_dict(), production.model.state_dict()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_da2_w_step_and_a_child_step_reach_identical_weights(synthpose_small, tmp_path):
    """DA2's w step is the shared training step: on one augmented batch (a fixed draw of DA2's policy) from one
    initialisation, `ScoreStep.w_step` and a child's `TrainingStep` leave identical weights and optimiser state
    (the child and production steps are shown identical above)."""
    from da2_platform.search.da2 import da2_method_config, make_da2_step, with_targets
    from da2_platform.search.relaxed_policy import RelaxedPolicy, op_slots

    cfg = da2_method_config(small_config(tmp_path, synthpose_small, epochs=1), "da2:score")  # ScoreStep
    ds = TopDownDataset(synthpose_small.train_annotations, synthpose_small.train_images, input_size=INPUT)
    batch = with_targets(first_batch(synthpose_small), cfg, torch.device("cpu"))
    policy = RelaxedPolicy(op_slots(4, 2, 0), ds.flip_pairs)
    g = torch.Generator().manual_seed(0)
    noise = policy.sample_noise(8, g)
    aug = policy.apply_choices(batch, policy.sample_choices(noise, 0.5), noise)

    models = []
    for use_da2 in (True, False):
        torch.manual_seed(0)
        model = build_model(cfg, ds.num_joints)
        w_opt = make_optimizer(model, cfg.train)
        if use_da2:
            step = make_da2_step(cfg, model, policy, w_opt, torch.optim.SGD(policy.parameters(), 0),
                                 torch.device("cpu"), flip_pairs=ds.flip_pairs)
            for _ in range(2):
                step.w_step(aug)
        else:
            step = TrainingStep(model, P2NetLoss(ohkm_topk=cfg.model.ohkm_topk), w_opt, cfg.train, INPUT,
                                torch.device("cpu"))
            for _ in range(2):
                step(aug)
        models.append((model.state_dict(), w_opt.state_dict()["state"]))
    (a, a_opt), (b, b_opt) = models
    assert not torch.equal(aug.images, batch.images)  # the draw changed pixels
    for key in a:
        assert torch.equal(a[key], b[key]), key
    for key in a_opt:
        assert torch.equal(a_opt[key]["exp_avg"], b_opt[key]["exp_avg"]), key


def test_fit_resumed_mid_epoch_matches_uninterrupted(synthpose_small, tmp_path):
    """PBT restores children between reports, mid-epoch: the checkpoint carries the position in the epoch."""
    from search_spaces.fixed import fixed_policy

    cfg = small_config(tmp_path, synthpose_small, epochs=2, max_steps_per_epoch=2, lr_milestones=[1])
    ds = TopDownDataset(synthpose_small.train_annotations, synthpose_small.train_images, input_size=INPUT)
    policy = fixed_policy("standard-pose")
    straight = Fit(cfg, build_model(cfg), ds, policy, torch.device("cpu"))
    straight.run()
    per_epoch = straight.steps_per_epoch()
    assert per_epoch == 2 and straight.state.step == 4

    first = Fit(cfg, build_model(cfg), ds, policy, torch.device("cpu"))
    first.run(max_steps=per_epoch + 1)  # stops one step into the second epoch
    path = first.save(tmp_path / "mid.pt")
    payload = load_checkpoint(path)
    assert payload["kind"] == "p2net-training" and payload["version"] == 2
    assert payload["state"]["epoch"] == 1 and payload["state"]["epoch_steps"] == 1
    resumed = Fit(cfg, build_model(cfg.model_copy(update={"seed": cfg.seed + 1})), ds, policy, torch.device("cpu"))
    resumed.load(path)
    resumed.run()
    assert resumed.state.step == straight.state.step and resumed.state.epoch == 2
    assert [h["steps"] for h in resumed.state.history] == [per_epoch, per_epoch]
    for key, value in straight.model.state_dict().items():
        torch.testing.assert_close(resumed.model.state_dict()[key], value, rtol=0, atol=1e-6, msg=key)


def test_checkpoint_kind_and_version_are_checked(tmp_path):
    torch.save({"kind": "something-else", "version": 2, "model": {}}, tmp_path / "other.pt")
    with pytest.raises(TrainingError, match="field 'kind' is 'something-else'"):
        load_checkpoint(tmp_path / "other.pt")
    torch.save({"kind": "p2net-training", "version": 99, "model": {}}, tmp_path / "future.pt")
    with pytest.raises(TrainingError, match="field 'version' is 99"):
        load_checkpoint(tmp_path / "future.pt")
    torch.save({"format": 1, "model": {}, "state": {"epoch": 1}}, tmp_path / "v1.pt")
    assert load_checkpoint(tmp_path / "v1.pt")["version"] == 1  # files written before 'kind' still load


def test_default_schedule_drops_the_lr_for_the_last_epoch_and_a_resume_follows_its_own_config():
    from da2_platform.config import TrainConfig
    from da2_platform.training.step import follow_schedule, lr_milestones, make_scheduler

    assert lr_milestones(TrainConfig(epochs=5)) == [4] and lr_milestones(TrainConfig(epochs=1)) == []
    assert lr_milestones(TrainConfig(epochs=5, lr_milestones=[])) == []
    weight = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.Adam([weight], lr=1e-3)
    one_epoch = TrainConfig(epochs=1, lr=1e-3)
    scheduler = make_scheduler(optimizer, one_epoch)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(1e-3)  # one epoch: no drop
    scheduler.step()  # the end of epoch 1
    follow_schedule(optimizer, scheduler, TrainConfig(epochs=2, lr=1e-3))  # resumed with 2 epochs
    assert optimizer.param_groups[0]["lr"] == pytest.approx(1e-4)  # epoch 2 is the last: lr / 10
