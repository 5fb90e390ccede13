"""The trained P2Net is an MLflow-native model: `mlflow.pytorch.load_model` gives back the checkpoint's network."""

from __future__ import annotations

import mlflow
import pytest
import torch

from da2_platform.config import load_config
from da2_platform.data.topdown import TopDownDataset
from da2_platform.registry import register_trained_model
from da2_platform.training.loop import Fit, build_model, model_from_checkpoint


@pytest.mark.slow
def test_registered_p2net_loads_with_mlflow_and_predicts_the_checkpoints_heatmaps(synthpose_small, tmp_path):
    cfg = load_config(None, {"workdir": str(tmp_path), "data.root": str(synthpose_small.root), "data.synth_seed": 0, "data.synth_shift": "none",
        "data.search_val": "from_train",
                             "data.synth_train": 24, "data.synth_val": 8, "train.batch_size": 8,
                             "train.epochs": 1, "train.max_steps_per_epoch": 2})
    dataset = TopDownDataset(synthpose_small.train_annotations, synthpose_small.train_images,
                             input_size=cfg.data.input_size)
    fit = Fit(cfg, build_model(cfg, dataset.num_joints), dataset, None, torch.device("cpu"))
    fit.run()
    checkpoint = fit.save(tmp_path / "checkpoint.pt")

    run_id, version = register_trained_model(cfg, checkpoint, {"val_AP": 0.25}, policy_ref="fixed:none",
                                             policy_version="3", policy_name="pose-aug-policy")

    loaded = mlflow.pytorch.load_model(f"models:/{cfg.tracking.registered_model}/{version}")
    reference = model_from_checkpoint(checkpoint).eval()
    images = torch.stack([dataset[i]["image"] for i in range(5)])  # a batch size the export never saw
    with torch.no_grad():
        expected = reference(images).heatmaps
        got = loaded(images)
    assert got.shape == expected.shape == (5, dataset.num_joints, 16, 12)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)

    client = mlflow.MlflowClient()
    mv = client.get_model_version(cfg.tracking.registered_model, version)
    assert mv.run_id == run_id
    assert mv.tags["da2.policy_version"] == "3" and mv.tags["da2.policy_ref"] == "fixed:none"
    info = mlflow.models.get_model_info(f"models:/{cfg.tracking.registered_model}/{version}")
    assert info.signature is not None and tuple(info.signature.inputs.inputs[0].shape) == (-1, 3, 64, 48)


def test_experiments_open_as_model_training_in_the_mlflow_ui(tmp_path):
    """MLflow 3.17's UI shows an untagged experiment as a GenAI app (traces); da2's open on runs and charts."""
    from mlflow import MlflowClient

    from da2_platform.config import load_config
    from da2_platform.tracking import resolve_tracking_uri, setup_tracking

    cfg = load_config(None, {"workdir": str(tmp_path), "name": "ui-kind"})
    experiment_id = setup_tracking(cfg)
    tags = MlflowClient(tracking_uri=resolve_tracking_uri(cfg)).get_experiment(experiment_id).tags
    assert tags["mlflow.experimentKind"] == "custom_model_development"
