"""The smaller refusals of issue 28: bidi controls stripped from terminal output, no advice to disable weights_only,
the same work-dir error for train and compare as for search, a resume hint with the command's own flags, and an
interrupted `data synth` (a real SIGINT) that leaves nothing behind."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from cli_helpers import refused, snapshot

from da2_platform.cli.main import main
from search_spaces.fixed import fixed_policy

REPO = Path(__file__).resolve().parents[1]
BIDI = "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200e\u200f\u061c"


def test_bidi_controls_are_stripped_from_terminal_output(tmp_path, capsys):
    policy = fixed_policy("standard-pose").to_dict()
    policy["name"] = "safe\u202egnp.exe" + BIDI
    path = tmp_path / "policy.json"
    path.write_text(json.dumps(policy))
    assert main(["policy", "show", str(path)]) == 0
    err = capsys.readouterr().err
    assert "safegnp.exe" in err and not any(ch in err for ch in BIDI)
    assert main(["policy", "show", str(tmp_path / "x\u202e.json")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "x.json" in err and not any(ch in err for ch in BIDI)


class RunsCode:
    """Unpickling this writes a marker: what a checkpoint from a stranger could do if it were unpickled."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "ran"))


def unsafe_checkpoint(tmp_path: Path) -> tuple[Path, Path]:
    marker = tmp_path / "pwned"
    buffer = io.BytesIO()
    torch.save({"kind": "p2net-training", "version": 2, "model": RunsCode(marker)}, buffer)
    path = tmp_path / "model.pt"
    path.write_bytes(buffer.getvalue())
    return path, marker


def test_an_unsafe_checkpoint_is_refused_without_advice_to_disable_weights_only(tmp_path, capsys):
    from baselines.rl_autoaugment.searcher import RLAutoAugmentSearcher
    from pose_models.weights import BackboneWeightsError, read_state_dict

    checkpoint, marker = unsafe_checkpoint(tmp_path)
    line = refused(["predict", "--checkpoint", str(checkpoint), "--annotations", str(tmp_path / "a.json"),
                    "--images", str(tmp_path), "--out", str(tmp_path / "r.json")], capsys,
                   f"{checkpoint}: not a loadable checkpoint (UnpicklingError: Weights only load failed.", tmp_path)
    with pytest.raises(BackboneWeightsError) as caught:
        read_state_dict(checkpoint)
    backbone = str(caught.value)
    with pytest.raises(ValueError) as caught:
        RLAutoAugmentSearcher.restore(object.__new__(RLAutoAugmentSearcher), str(checkpoint))
    for message in (line, backbone, str(caught.value)):
        assert "GLOBAL" in message  # what the file asked for
        assert "False" not in message and "safe_globals" not in message and "trust" not in message  # no advice
    assert not marker.exists()


@pytest.mark.parametrize("command", ["train", "compare", "search"])
def test_train_and_compare_name_a_bad_workdir_as_search_does(tmp_path, capsys, command):
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    args = {"train": ["train", "--policy", "fixed:none"], "compare": ["compare", "--methods", "fixed:none"],
            "search": ["search", "--method", "fixed:none"]}[command]
    refused([*args, "--workdir", str(blocker)], capsys, f"workdir {blocker}: is a file, not a folder", tmp_path)
    refused([*args, "--workdir", str(blocker / "below")], capsys, f"{blocker} is a file, not a folder", tmp_path)


def test_the_resume_hint_repeats_the_commands_own_flags():
    from da2_platform.cli.options import resume_hint
    from da2_platform.search.driver import SearchInterrupted

    error = SearchInterrupted("da2 search 'demo' was interrupted with 1 unfinished trial(s); nothing was registered. "
                              "Continue it with: da2 search --method da2 --resume")
    hint = resume_hint(error, "search", [("--method", "da2"), ("--config", Path("my configs/c.yaml")),
                                         ("--workdir", None), ("--tracking-uri", "http://127.0.0.1:5000"),
                                         ("--one-pass", True), ("--no-register", False)])
    assert hint == ("da2 search 'demo' was interrupted with 1 unfinished trial(s); nothing was registered. Continue "
                    "it with: da2 search --method da2 --config 'my configs/c.yaml' --tracking-uri "
                    "http://127.0.0.1:5000 --one-pass --resume")
    plain = resume_hint(SearchInterrupted("stopped before it finished"), "compare",
                        [("--config", "c.yaml"), ("--seeds", "0,1")])
    assert plain.endswith("stopped before it finished. Continue it with: da2 compare --config c.yaml --seeds 0,1 "
                          "--resume")


def interrupt_synth(out: Path, images_before_signal: int = 20) -> tuple[int, str]:
    """Run `da2 data synth` in a child process, send it a real SIGINT once it has written some images, and return
    its exit code and stderr."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    # a shell starts a background job with SIGINT ignored, and a child inherits that; Ctrl+C's handler is put back
    # first, so the test does not depend on how pytest was started
    start = ("import runpy, signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
             "runpy.run_module('da2_platform', run_name='__main__', alter_sys=True)")
    proc = subprocess.Popen([sys.executable, "-c", start, "data", "synth", "--out", str(out), "--train",
                             "5000", "--val", "2", "--image-size", "64x64"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and len(list(out.rglob("*.png"))) < images_before_signal:
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    return proc.returncode, err


def assert_one_error_line(rc: int, err: str, expect: str) -> None:
    assert rc == 2, err[-3000:]
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and expect in lines[0], err[-3000:]


def test_an_interrupted_synth_leaves_nothing(tmp_path):
    out = tmp_path / "new" / "synth"
    rc, err = interrupt_synth(out)
    assert_one_error_line(rc, err, f"--out {out}: interrupted; the partial set was removed")
    assert not (tmp_path / "new").exists()  # the folders it created went with the partial set


def test_an_interrupted_rebuild_keeps_the_set_that_was_there(tmp_path):
    from da2_platform.data.synthpose import write_synthpose

    out = tmp_path / "synth"
    write_synthpose(out, train=4, val=2, image_size=(64, 64))
    before = files_in(tmp_path)
    rc, err = interrupt_synth(out)
    assert_one_error_line(rc, err, "interrupted")
    assert files_in(tmp_path) == before  # the old manifest, JSON and images, byte for byte, and nothing else
    assert write_synthpose(out, train=4, val=2, image_size=(64, 64)).train_annotations.is_file()
    assert files_in(tmp_path) == before  # and it is still the complete set it was: nothing was rewritten


def files_in(root: Path) -> dict:
    """The snapshot without the folders' own mtimes (a staging folder came and went inside)."""
    return {path: entry[:2] + entry[3:] if entry[3] is None else entry for path, entry in snapshot(root).items()}
