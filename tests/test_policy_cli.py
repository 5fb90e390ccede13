"""`da2 policy validate | show | render` through the real CLI entry point."""

from __future__ import annotations

import json

import cv2
import pytest

from da2_platform.cli.main import main
from search_spaces import Policy, fixed_policy


@pytest.fixture()
def policy_file(tmp_path):
    from da2_platform.policies import save_policy

    return save_policy(fixed_policy("standard-pose"), tmp_path / "standard.json")


def test_validate_accepts_a_good_file(policy_file, capsys):
    assert main(["policy", "validate", str(policy_file), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["valid"] is True and report["num_sub_policies"] == 9
    assert report["ops_used"] == ["Rotate", "Scale"]  # the flip is the base augmentation's


def test_validate_names_file_and_field(tmp_path, capsys):
    document = json.loads(fixed_policy("standard-pose").to_json())
    document["sub_policies"][1]["ops"][0]["m"] = 1.3
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(document))
    assert main(["policy", "validate", str(bad)]) == 2
    assert capsys.readouterr().err.strip() == f"error: {bad}: sub_policies[1].ops[0].m: 1.3 is outside [0, 1]"


@pytest.mark.parametrize(
    "content, expected",
    [
        ('{"schema_version": 1', "malformed JSON at line 1"),
        (
            (
                '{"schema_version": 1, "search_space": "pose-v1", "sub_policies": [{"weight": 1, "ops": [{"name": "Spin", '
                '"p": 1, "m": 0}]}]}'
            ),
            'sub_policies[0].ops[0].name: unknown op "Spin"; valid ops: ShearX',
        ),
    ],
)
def test_validate_reports_bad_files(tmp_path, capsys, content, expected):
    bad = tmp_path / "bad.json"
    bad.write_text(content)
    assert main(["policy", "validate", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {bad}: ") and expected in err


def test_missing_file_and_unknown_registry_version_are_clear_errors(tmp_path, capsys):
    assert main(["policy", "show", str(tmp_path / "nope.json")]) == 2
    assert "nope.json: no such policy file" in capsys.readouterr().err
    db = tmp_path / "mlflow" / "mlflow.db"
    store = f"sqlite:///{db}"
    assert main(["policy", "show", "models:/da2-policy@production", "--tracking-uri", store]) == 2
    assert "no MLflow store at" in capsys.readouterr().err and not db.exists()  # a read creates no store
    import mlflow

    db.parent.mkdir(exist_ok=True)
    mlflow.MlflowClient(tracking_uri=store).search_experiments()  # an existing store without that model
    assert main(["policy", "show", "models:/da2-policy@production", "--tracking-uri", store]) == 2
    last_line = capsys.readouterr().err.strip().splitlines()[-1]  # MLflow logs its store creation before
    assert (
        last_line == "error: models:/da2-policy@production: Registered Model with name=da2-policy not found"
    )


def test_show_prints_a_table_and_json(policy_file, capsys):
    assert main(["policy", "show", str(policy_file)]) == 0
    captured = capsys.readouterr()
    table = captured.out + captured.err  # the table is for people: main may route it to stderr
    assert "standard-pose" in table and "Rotate p=0.60 m=0.33" in table and "Scale p=1.00" in table
    assert main(["policy", "show", str(policy_file), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert Policy.from_dict(report["policy_json"]) == fixed_policy("standard-pose")
    assert main(["policy", "show", "fixed:randaugment", "--top", "3", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["num_sub_policies"] == 196 and len(report["policy_json"]["sub_policies"]) == 3


def test_render_writes_a_grid(policy_file, synthpose_small, tmp_path, capsys):
    out = tmp_path / "grid.png"
    rc = main(
        [
            "policy",
            "render",
            str(policy_file),
            "--annotations",
            str(synthpose_small.train_annotations),
            "--images",
            str(synthpose_small.train_images),
            "--out",
            str(out),
            "--columns",
            "3",
            "--max-rows",
            "4",
            "--input-size",
            "96x64",
            "--json",
        ]
    )
    assert rc == 0
    report = json.loads(capsys.readouterr().out)
    assert report == {
        "out": str(out),
        "rows": 4,
        "columns": 3,
        "sub_policies_total": 9,
        "sub_policies_shown": 4,
    }
    grid = cv2.imread(str(out))
    assert grid is not None and grid.shape[0] > 4 * 96 and grid.shape[1] > 3 * 64
    assert not list(tmp_path.glob(".*.tmp"))


def test_render_rejects_bad_options(policy_file, synthpose_small, tmp_path, capsys):
    common = [
        "--annotations",
        str(synthpose_small.train_annotations),
        "--images",
        str(synthpose_small.train_images),
    ]
    assert main(["policy", "render", str(policy_file), *common, "--input-size", "big"]) == 2
    assert "--input-size 'big'" in capsys.readouterr().err
    assert main(["policy", "render", str(policy_file), *common, "--out", str(tmp_path / "grid.jpg")]) == 2
    assert "PNG" in capsys.readouterr().err


def test_help_texts():
    for args in (["policy", "--help"], ["policy", "render", "--help"], ["policy", "validate", "--help"]):
        assert main(args) == 0
