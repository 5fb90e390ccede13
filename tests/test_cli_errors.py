"""Bad input a new user gives the CLI: each case ends in one `error:` line and exit 2 before any compute, with no
traceback and no file left behind (issue 14, items 6-12)."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
import yaml

from da2_platform.cli.main import main
from search_spaces.fixed import fixed_policy


def files_under(root: Path) -> set[Path]:
    return {p for p in root.rglob("*")} if root.exists() else set()


def fails_cleanly(args: list[str], capsys, expect: str, watch: Path) -> str:
    """Run the CLI; it must exit 2 with `error: ...expect...`, no traceback, and no new file under `watch`."""
    before = files_under(watch)
    rc = main(args)
    err = capsys.readouterr().err
    assert rc == 2, err[-3000:]
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.startswith("error: ")]
    assert len(lines) == 1 and expect in lines[0], err[-3000:]
    assert files_under(watch) == before
    return lines[0]


def write_config(tmp_path: Path, **sections) -> Path:
    workdir = tmp_path / "w"
    workdir.mkdir(exist_ok=True)
    cfg = {"name": "bad", "workdir": str(workdir), "data": {"synth_train": 8, "synth_val": 4}}
    for key, value in sections.items():
        cfg[key] = value
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


# 6: more GPUs per trial than the cluster has
def test_gpus_beyond_the_cluster_fail_before_any_trial(tmp_path, capsys, ray_session):
    cfg = write_config(tmp_path, search={"gpus_per_trial": 1})
    fails_cleanly(["search", "--method", "fixed:none", "--config", str(cfg)], capsys,
                  "search.gpus_per_trial: a trial asks for 1 GPU(s) but the Ray cluster has 0", tmp_path)


# 7: a bogus model preset fails before Ray or data start
def test_bogus_model_preset_fails_before_ray_and_data(tmp_path, capsys):
    cfg = write_config(tmp_path, model={"preset": "bogus"})
    fails_cleanly(["search", "--method", "fixed:none", "--config", str(cfg)], capsys,
                  "model.preset: unknown preset 'bogus'", tmp_path)
    assert not (tmp_path / "w" / "data").exists()


# 8: rich markup and terminal escapes in names
def test_markup_and_escapes_in_names_are_printed_as_text(tmp_path, capsys):
    policy = fixed_policy("none").to_dict()
    policy["name"] = "[/bold]\x1b[31mred\x1b]0;title\x07"
    (tmp_path / "[").mkdir()
    path = tmp_path / "[/x]policy.json"  # a folder "[" and a file "x]policy.json": the path reads [/x]
    path.write_text(json.dumps(policy))
    assert main(["policy", "show", str(path)]) == 0
    err = capsys.readouterr().err
    assert "Traceback" not in err and "MarkupError" not in err
    assert "\x1b" not in err and "\x07" not in err


def test_markup_in_a_config_name_gives_a_plain_error(tmp_path, capsys):
    cfg = write_config(tmp_path)
    data = yaml.safe_load(cfg.read_text())
    data["name"] = "[/x]\x1b[2J"
    cfg.write_text(yaml.safe_dump(data))
    line = fails_cleanly(["search", "--method", "fixed:none", "--config", str(cfg), "--resume"], capsys,
                         "name: '[/x]\\x1b[2J' holds a path separator", tmp_path)  # a name is a path (issue 28)
    assert "[/x]" in line and "\x1b" not in line


# 9: paths the OS refuses
@pytest.mark.parametrize("where", ["folder", "proc"])
def test_predict_out_into_a_folder_or_proc(tmp_path, capsys, where):
    out = tmp_path if where == "folder" else Path("/proc/da2-results.json")
    fails_cleanly(["predict", "--checkpoint", str(tmp_path / "model.pt"), "--annotations", str(tmp_path / "a.json"),
                   "--images", str(tmp_path), "--out", str(out)], capsys,
                  "is a folder" if where == "folder" else "not a place for output files", tmp_path)


def test_workdir_that_is_a_file(tmp_path, capsys):
    cfg = write_config(tmp_path)
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    fails_cleanly(["search", "--method", "fixed:none", "--config", str(cfg), "--workdir", str(blocker)], capsys,
                  "is a file, not a folder", tmp_path)


def test_data_synth_out_a_file(tmp_path, capsys):
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    fails_cleanly(["data", "synth", "--out", str(blocker), "--train", "1", "--val", "1"], capsys,
                  str(blocker), tmp_path)


def test_predict_batch_size_zero(tmp_path, capsys):
    fails_cleanly(["predict", "--checkpoint", str(tmp_path / "m.pt"), "--annotations", str(tmp_path / "a.json"),
                   "--images", str(tmp_path), "--out", str(tmp_path / "r.json"), "--batch-size", "0"], capsys,
                  "--batch-size: expected a whole number from 1 to 512; got 0", tmp_path)


# 10: bounded input sizes
def test_predict_input_size_is_bounded(tmp_path, capsys):
    fails_cleanly(["predict", "--checkpoint", str(tmp_path / "m.pt"), "--annotations", str(tmp_path / "a.json"),
                   "--images", str(tmp_path), "--out", str(tmp_path / "r.json"), "--input-size", "4096x4096"],
                  capsys, "--input-size: 4096x4096 is larger than 1024 pixels a side", tmp_path)


# 11: promote --min-ap nan
def test_promote_min_ap_nan(tmp_path, capsys):
    fails_cleanly(["promote", "1", "--workdir", str(tmp_path), "--gate", "search-val-ap", "--min-ap", "nan"], capsys,
                  "--min-ap: expected an AP between 0 and 1, got nan", tmp_path)


# 12: the smaller ones
def test_atomic_writes_respect_the_umask(tmp_path):
    from da2_platform.files import write_text_atomic

    old = os.umask(0o022)
    try:
        assert stat.S_IMODE(write_text_atomic(tmp_path / "a.txt", "x").stat().st_mode) == 0o644
        os.umask(0o077)
        assert stat.S_IMODE(write_text_atomic(tmp_path / "b.txt", "x").stat().st_mode) == 0o600
    finally:
        os.umask(old)


def test_read_only_command_leaves_no_empty_mlflow_db(tmp_path, capsys):
    fails_cleanly(["promote", "1", "--workdir", str(tmp_path)], capsys, "no MLflow store at sqlite:///", tmp_path)
    assert not (tmp_path / "mlflow").exists()


def test_odd_skeleton_and_deep_json_in_the_coco_loader(tmp_path, capsys):
    from da2_platform.data.coco import load_coco_keypoints
    from da2_platform.errors import DataError

    coco = {"images": [{"id": 1, "file_name": "a.jpg", "width": 10, "height": 10}], "annotations": [],
            "categories": [{"id": 1, "name": "person", "keypoints": ["a", "b"], "skeleton": "zz"}]}
    odd = tmp_path / "odd.json"
    odd.write_text(json.dumps(coco))
    with pytest.raises(DataError, match="skeleton: expected a list"):
        load_coco_keypoints(odd)
    coco["categories"][0]["skeleton"] = [[1, 9]]
    odd.write_text(json.dumps(coco))
    with pytest.raises(DataError, match=r"skeleton\[0\]: expected a pair of joint numbers from 1 to 2"):
        load_coco_keypoints(odd)
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    fails_cleanly(["data", "inspect", "--annotations", str(deep), "--images", str(tmp_path)], capsys,
                  "nested too deeply", tmp_path)


@pytest.mark.parametrize(("args", "expect"), [
    (["--tracking-uri", "bogus"], "tracking URI 'bogus'"),
    (["--tracking-uri", "ftp://host/x"], "tracking URI 'ftp://host/x'"),
    (["--alias", "bad alias!"], "--alias: 'bad alias!' is not a valid alias"),
    (["--alias", "latest"], "--alias: 'latest' is not a valid alias"),
])
def test_invalid_tracking_uri_or_alias(tmp_path, capsys, args, expect):
    fails_cleanly(["promote", "1", "--workdir", str(tmp_path), *args], capsys, expect, tmp_path)


def test_resume_and_fresh_together_are_refused(tmp_path, capsys):
    cfg = write_config(tmp_path)
    fails_cleanly(["search", "--method", "fixed:none", "--config", str(cfg), "--resume", "--fresh"], capsys,
                  "--resume and --fresh contradict each other", tmp_path)


def test_one_pass_is_refused_for_a_method_that_trains_no_network(tmp_path, capsys):
    cfg = write_config(tmp_path)
    fails_cleanly(["search", "--method", "rl", "--one-pass", "--config", str(cfg)], capsys,
                  "--one-pass: only DA2 trains its network while it searches; --method is rl", tmp_path)


def test_a_new_search_refuses_an_existing_folder(tmp_path, capsys):
    cfg = write_config(tmp_path)
    old = tmp_path / "w" / "ray_results" / "bad-fixed-none"
    old.mkdir(parents=True)
    (old / "tuner.pkl").write_bytes(b"earlier search")
    fails_cleanly(["search", "--method", "fixed:none", "--config", str(cfg)], capsys,
                  "holds an earlier fixed:none search of 'bad'; continue it with --resume", tmp_path)
    assert (old / "tuner.pkl").read_bytes() == b"earlier search"


def test_resume_refuses_a_folder_others_can_write_and_never_unpickles_it(tmp_path, capsys):
    import pickle

    cfg = write_config(tmp_path)
    folder = tmp_path / "w" / "ray_results" / "bad-fixed-none"
    folder.mkdir(parents=True)
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (Path.write_text, (marker, "ran"))

    (folder / "tuner.pkl").write_bytes(pickle.dumps(Payload()))
    folder.chmod(0o777)
    fails_cleanly(["search", "--method", "fixed:none", "--config", str(cfg), "--resume"], capsys,
                  "is writable by others (mode 777)", tmp_path)
    folder.chmod(0o755)
    if os.getuid() == 0:  # root can hand the file to another group and user
        (folder / "tuner.pkl").chmod(0o664)
        os.chown(folder / "tuner.pkl", 0, 65534)  # a shared group (a user's own group would be fine)
        fails_cleanly(["search", "--method", "fixed:none", "--config", str(cfg), "--resume"], capsys,
                      "tuner.pkl: is writable by its group", tmp_path)
        (folder / "tuner.pkl").chmod(0o644)
        os.chown(folder / "tuner.pkl", 65534, 65534)
        fails_cleanly(["search", "--method", "fixed:none", "--config", str(cfg), "--resume"], capsys,
                      "belongs to user id 65534", tmp_path)
    assert not marker.exists()


# issue 15, item 4: a repeated result moves `candidate` back to its version
def test_registering_a_known_result_again_moves_candidate_to_it(tmp_path):
    from mlflow import MlflowClient

    from da2_platform.config import load_config
    from da2_platform.registry import register_policy
    from da2_platform.tracking import resolve_tracking_uri, setup_tracking

    cfg = load_config(None, {"workdir": str(tmp_path), "name": "alias"})
    experiment_id = setup_tracking(cfg)
    uri = resolve_tracking_uri(cfg)
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    run_id = client.create_run(experiment_id).info.run_id
    none, standard = fixed_policy("none"), fixed_policy("standard-pose")
    assert register_policy(cfg, none, "fixed:none", run_id, 0.1, 0.01) == "1"
    assert register_policy(cfg, standard, "fixed:standard-pose", run_id, 0.2, 0.01) == "2"
    assert register_policy(cfg, none, "fixed:none", run_id, 0.1, 0.01) == "1"  # the same result again
    assert str(client.get_model_version_by_alias("pose-aug-policy", "candidate").version) == "1"
    assert len(client.search_model_versions("name='pose-aug-policy'")) == 2


def test_data_inspect_check_images_catches_an_unreadable_image(tmp_path, capsys, synthpose_small):
    import shutil

    images = tmp_path / "images"
    shutil.copytree(synthpose_small.val_images, images)
    victim = min(images.iterdir())
    victim.write_bytes(b"not an image")
    fails_cleanly(["data", "inspect", "--annotations", str(synthpose_small.val_annotations), "--images",
                   str(images), "--check-images"], capsys, f"{victim} (not a readable image)", tmp_path)
