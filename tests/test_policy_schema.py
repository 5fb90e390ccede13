"""The Policy format as a pydantic schema: its JSON Schema, and its errors as `error: FILE: FIELD: REASON`."""

from __future__ import annotations

import json

import pytest
from cli_helpers import run_json

from da2_platform.cli.main import main
from search_spaces import OP_NAMES, SEARCH_SPACE_NAME, OpSetting, Policy, PolicyError, SubPolicy, fixed_policy


def test_json_schema_lists_the_ops_and_ranges():
    schema = Policy.json_schema()
    op = schema["$defs"]["OpSettingSchema"]
    assert op["properties"]["name"]["enum"] == list(OP_NAMES)
    assert op["properties"]["p"]["minimum"] == 0 and op["properties"]["p"]["maximum"] == 1
    assert op["additionalProperties"] is False and op["required"] == ["name", "p", "m"]
    assert schema["properties"]["search_space"]["const"] == SEARCH_SPACE_NAME
    assert schema["properties"]["schema_version"]["const"] == 1
    assert set(schema["required"]) == {"schema_version", "search_space", "sub_policies"}


def test_policy_schema_command_prints_the_schema(capsys):
    assert run_json(["policy", "schema"], capsys) == Policy.json_schema()


def test_a_bad_policy_file_gives_one_exact_error_line(tmp_path, capsys):
    document = json.loads(fixed_policy("standard-pose").to_json())
    document["sub_policies"][2]["ops"][0]["p"] = -0.25
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(document))
    assert main(["policy", "validate", str(bad)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.strip() == f"error: {bad}: sub_policies[2].ops[0].p: -0.25 is outside [0, 1]"

    document["sub_policies"][2]["ops"][0] = {"name": "Rotate", "p": 0.5, "m": 0.5, "angle": 3}
    bad.write_text(json.dumps(document))
    assert main(["policy", "validate", str(bad)]) == 2
    assert capsys.readouterr().err.strip() == (
        f"error: {bad}: sub_policies[2].ops[0]: unknown key 'angle'; allowed keys: name, p, m"
    )


def test_direct_construction_goes_through_the_same_schema():
    with pytest.raises(PolicyError, match=r"^sub_policies\[0\]: expected SubPolicy, got tuple$"):
        Policy(((1.0, ()),))
    with pytest.raises(PolicyError, match=r'^sub_policies\[0\]\.ops\[0\]\.name: unknown op "Spin"; valid ops: '):
        Policy((SubPolicy(1.0, (OpSetting("Spin", 0.5, 0.5),)),))
    with pytest.raises(PolicyError, match=r"^schema_version: expected an integer, got a boolean$"):
        Policy((SubPolicy(1.0, (OpSetting("Rotate", 0.5, 0.5),)),), schema_version=True)
