"""P2Net: every backbone/size through the same checks (shapes, backward), complexity, weights loading, CLI."""

from __future__ import annotations

import json

import pytest
import timm
import torch

from pose_models import PRESETS, BackboneWeightsError, P2Net, P2NetLoss, build_p2net, model_complexity
from pose_models.complexity import count_parameters

TINY = {k: v for k, v in PRESETS["cpu-tiny"].items() if k != "backbone"}

# resnets give C2..C5 at feature indices 1..4; efficientnet has a stride-2 feature first; convnext starts at 4
CASES = [
    ("resnet18", (64, 48)),
    ("resnet18", (128, 96)),
    ("resnet50", (64, 48)),
    ("efficientnet_b0", (64, 64)),
    ("convnext_atto", (96, 64)),
]


@pytest.fixture(autouse=True)
def _few_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # other engineers share the 2 cores
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("backbone,size", CASES, ids=[f"{b}-{h}x{w}" for b, (h, w) in CASES])
def test_output_shapes(backbone: str, size: tuple[int, int]) -> None:
    torch.manual_seed(0)
    model = build_p2net(backbone=backbone, num_joints=17, **TINY).eval()
    h, w = size
    with torch.no_grad():
        out = model(torch.rand(2, 3, h, w))
    assert out.heatmaps.shape == (2, 17, h // 4, w // 4)
    assert len(out.stage_heatmaps) == 4
    for stage in out.stage_heatmaps:
        assert stage.shape == (2, 17, h // 4, w // 4)
        assert torch.isfinite(stage).all()
    assert torch.isfinite(out.heatmaps).all()


@pytest.mark.parametrize("backbone", ["resnet18", "efficientnet_b0", "convnext_atto"])
def test_backward_reaches_every_parameter(backbone: str) -> None:
    torch.manual_seed(0)
    model = build_p2net(backbone=backbone, num_joints=5, **TINY).train()
    out = model(torch.rand(2, 3, 64, 48))
    targets = torch.rand(2, 5, 16, 12)
    loss = P2NetLoss(ohkm_topk=3)(out, targets, torch.ones(2, 5)).total
    loss.backward()
    for name, param in model.named_parameters():
        assert param.requires_grad
        assert param.grad is not None, f"{name} got no gradient"
        assert torch.isfinite(param.grad).all(), f"{name} has a non-finite gradient"
        # timm zero-initialises each residual block's last BN scale, so only the head must see non-zero grads
        if not name.startswith("backbone."):
            assert param.grad.abs().sum() > 0, f"{name} has an all-zero gradient"


def test_parallel_fusion_reads_every_level() -> None:
    """The C2 output of parallel fusion must change when only C5 changes (C5 is resampled into it)."""
    torch.manual_seed(0)
    model = build_p2net(backbone="resnet18", **TINY).eval()
    pyramid = [torch.rand(1, c, 16 // 2**i, 12 // 2**i) for i, c in enumerate(model.backbone.channels)]
    changed = [f.clone() for f in pyramid]
    changed[3] = changed[3] + 1.0
    with torch.no_grad():
        before, after = model.parallel_fusion(pyramid), model.parallel_fusion(changed)
    assert not torch.allclose(before[0], after[0])
    assert torch.equal(before[3], pyramid[3])  # C5 passes through parallel fusion unchanged


@pytest.mark.parametrize("size", [(60, 48), (64, 40), (33, 32)])
def test_input_size_not_multiple_of_16_is_refused(size: tuple[int, int]) -> None:
    model = build_p2net("cpu-tiny")
    with pytest.raises(ValueError, match="multiples of 16"):
        model(torch.rand(1, 3, *size))


def test_bad_inputs_and_names_are_refused() -> None:
    model = build_p2net("cpu-tiny")
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        model(torch.rand(1, 1, 64, 48))
    with pytest.raises(ValueError, match="no_such_net"):
        build_p2net(backbone="no_such_net")
    with pytest.raises(ValueError, match="unknown, choose one of"):
        build_p2net("paper-r9000")
    with pytest.raises(ValueError, match="refine_blocks"):
        build_p2net("cpu-tiny", refine_blocks=[1, 1])
    with pytest.raises(ValueError, match="fusion_channels"):
        build_p2net("cpu-tiny", fusion_channels=0)


def test_config_rebuilds_the_same_architecture() -> None:
    model = build_p2net("cpu-tiny", num_joints=14)
    config = json.loads(json.dumps(model.config))
    rebuilt = build_p2net(**config)
    assert {k: v.shape for k, v in model.state_dict().items()} == {
        k: v.shape for k, v in rebuilt.state_dict().items()
    }
    assert config["num_joints"] == 14 and config["backbone"] == "resnet10t"
    assert "pixel_mean" not in model.state_dict()  # normalisation is code, not checkpoint state
    assert torch.allclose(model.pixel_mean.flatten(), torch.tensor([0.485, 0.456, 0.406]))


def test_paper_r101_matches_paper_complexity_within_10_percent() -> None:
    with torch.device("meta"):  # counting needs shapes only
        model = build_p2net("paper-r101")
    info = model_complexity(model, (384, 288))
    assert abs(info["params"] / 42.5e6 - 1) < 0.10, info["params"]
    assert abs(info["gmacs"] / 26.3 - 1) < 0.10, info["gmacs"]
    assert [s["stage"] for s in info["stages"]] == [
        "backbone",
        "parallel_fusion",
        "progressive_fusion",
        "refinement",
    ]
    assert sum(s["params"] for s in info["stages"]) == info["params"]
    assert sum(s["gmacs"] for s in info["stages"]) == pytest.approx(info["gmacs"], rel=1e-6)


def test_gmacs_are_half_of_flop_counter_flops() -> None:
    conv = torch.nn.Conv2d(3, 8, 3, padding=1, bias=False)
    info = model_complexity(conv, (32, 32))
    assert info["gmacs"] == pytest.approx(3 * 8 * 9 * 32 * 32 / 1e9)
    assert info["params"] == count_parameters(conv) == 3 * 8 * 9
    assert conv.training  # counting restores the mode it found


# --- local backbone weights -------------------------------------------------------------------------------


def _timm_state_dict(name: str) -> dict[str, torch.Tensor]:
    torch.manual_seed(1)
    return timm.create_model(name, pretrained=False).state_dict()


@pytest.mark.parametrize("wrap", ["bare", "state_dict", "model+module"])
def test_backbone_weights_load_from_a_local_file(tmp_path, wrap: str) -> None:
    weights = _timm_state_dict("resnet10t")  # includes the classifier "fc", which the pyramid drops
    payload = {
        "bare": weights,
        "state_dict": {"state_dict": weights, "epoch": torch.tensor(90)},
        "model+module": {"model": {f"module.{k}": v for k, v in weights.items()}},
    }[wrap]
    path = tmp_path / "resnet10t_imagenet.pth"
    torch.save(payload, path)
    model = build_p2net("cpu-tiny", pretrained_path=str(path))
    loaded = model.backbone.body.state_dict()
    assert len(loaded) > 0
    for key, tensor in loaded.items():
        assert torch.equal(tensor, weights[key]), key
    assert "pretrained_path" not in model.config


def test_weights_of_another_architecture_are_refused_naming_the_file(tmp_path) -> None:
    path = tmp_path / "resnet34.pth"
    torch.save(_timm_state_dict("resnet34"), path)
    with pytest.raises(BackboneWeightsError, match="resnet34.pth.*does not fit backbone 'resnet10t'"):
        build_p2net("cpu-tiny", pretrained_path=str(path))
    other = tmp_path / "effnet.pth"
    torch.save(_timm_state_dict("efficientnet_b0"), other)
    with pytest.raises(BackboneWeightsError, match="effnet.pth.*missing"):
        build_p2net("cpu-tiny", pretrained_path=str(other))


def test_unreadable_weights_files_are_refused_naming_the_file(tmp_path) -> None:
    with pytest.raises(BackboneWeightsError, match="absent.pth: backbone weights file not found"):
        build_p2net("cpu-tiny", pretrained_path=str(tmp_path / "absent.pth"))
    not_tensors = tmp_path / "list.pth"
    torch.save([1, 2, 3], not_tensors)
    with pytest.raises(BackboneWeightsError, match="list.pth: expected a state dict"):
        build_p2net("cpu-tiny", pretrained_path=str(not_tensors))
    arbitrary_pickle = tmp_path / "code.pth"
    torch.save({"state_dict": _Unsafe()}, arbitrary_pickle)
    with pytest.raises(BackboneWeightsError, match="code.pth: not a readable weights file"):
        build_p2net("cpu-tiny", pretrained_path=str(arbitrary_pickle))
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a torch file")
    with pytest.raises(BackboneWeightsError, match="garbage.pth"):
        build_p2net("cpu-tiny", pretrained_path=str(garbage))


class _Unsafe:
    """A pickled object torch.load(weights_only=True) must refuse to build."""


# --- da2 model-info -----------------------------------------------------------------------------------------


def _model_info_app():
    import typer

    from da2_platform.cli import model_info

    app = typer.Typer()
    app.command("model-info")(model_info.model_info)
    app.command("unused")(lambda: None)  # two commands keep typer from collapsing the app into one command
    return app


def test_model_info_json_reports_stages() -> None:
    from typer.testing import CliRunner

    result = CliRunner().invoke(
        _model_info_app(), ["model-info", "--backbone", "resnet18", "--input-size", "64x48", "--json"]
    )
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    assert info["input_size"] == [64, 48] and info["config"]["backbone"] == "resnet18"
    assert info["params"] == sum(s["params"] for s in info["stages"]) > 11_000_000
    assert 0 < info["gmacs"] < 1
    assert info["stages"][0]["stage"] == "backbone"


def test_model_info_table_and_errors() -> None:
    from typer.testing import CliRunner

    from da2_platform.errors import ConfigError

    runner = CliRunner()
    result = runner.invoke(
        _model_info_app(), ["model-info", "--preset", "cpu-tiny", "--input-size", "128x96"]
    )
    assert result.exit_code == 0
    assert "total" in result.stderr and "progressive_fusion" in result.stderr and result.stdout == ""
    for args, message in [
        (["--input-size", "384by288"], "--input-size: expected HEIGHTxWIDTH"),
        (["--input-size", "100x72"], "the height must be a multiple of 32 and the width of 16"),
        (["--backbone", "no_such_net"], "no_such_net"),
        (["--preset", "nope"], "--preset: unknown preset"),
    ]:
        failed = runner.invoke(_model_info_app(), ["model-info", *args])
        assert isinstance(failed.exception, ConfigError) and message in str(failed.exception)


def test_model_info_through_da2_main(capsys) -> None:
    try:
        from da2_platform.cli.main import main
    except ImportError as e:  # main.py wires every command module; some are still being written
        pytest.skip(f"da2 CLI not importable yet: {e}")
    assert main(["model-info", "--preset", "cpu-tiny", "--input-size", "64x48", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["config"]["backbone"] == "resnet10t"
    assert main(["model-info", "--input-size", "65x48"]) == 2
    assert "error: --input-size" in capsys.readouterr().err


def test_p2net_is_a_module_with_the_contract_attributes() -> None:
    model = build_p2net("cpu-tiny")
    assert isinstance(model, P2Net)
    assert set(PRESETS) >= {"paper-r50", "paper-r101", "paper-r152", "cpu-tiny"}
    assert [PRESETS[p]["backbone"] for p in ("paper-r50", "paper-r101", "paper-r152")] == [
        "resnet50",
        "resnet101",
        "resnet152",
    ]
