"""Codec round-trip AP (no model: box -> crop -> heatmaps -> decode -> image px -> COCOeval) at 256x192 and
384x288, on the shared COCO val2017 slice (when present) and on a SynthPose val split.

Writes benchmarks/results/roundtrip_ap.json. Run: PYTHONPATH=. .venv/bin/python benchmarks/roundtrip_ap.py
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import torch
from harness import write_result

from da2_platform.data.roundtrip import codec_roundtrip
from da2_platform.data.synthpose import write_synthpose

REPO_ROOT = Path(__file__).resolve().parents[1]
COCO_SAMPLE = REPO_ROOT.parent / "shared" / "fixtures" / "coco_sample"
INPUT_SIZES = [(256, 192), (384, 288)]


def measure(name: str, annotations: Path, images: Path) -> list[dict]:
    rows = []
    for size in INPUT_SIZES:
        start = time.perf_counter()
        report = codec_roundtrip(annotations, images, input_size=size)
        seconds = time.perf_counter() - start
        rows.append({"dataset": name, "input_size": f"{size[0]}x{size[1]}", "persons": report.persons,
                     "persons_with_keypoints": report.persons_with_keypoints, "skipped": report.skipped,
                     "roundtrip_ap": report.roundtrip_ap, "mean_oks": report.mean_oks,
                     "mean_error_px": report.mean_error_px, "seconds": round(seconds, 3)})
        print(f"{name:>18} {size[0]}x{size[1]}: AP standard {report.roundtrip_ap['standard']:.4f}, "
              f"dark {report.roundtrip_ap['dark']:.4f}; mean error px standard "
              f"{report.mean_error_px['standard']:.3f}, dark {report.mean_error_px['dark']:.4f} ({seconds:.2f} s)")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--synth-val", type=int, default=100, help="SynthPose val images to round-trip")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "benchmarks" / "results" / "roundtrip_ap.json")
    args = parser.parse_args()
    torch.set_num_threads(1)  # the machine is shared; this is light work

    rows: list[dict] = []
    notes = []
    if (COCO_SAMPLE / "test_coco.json").is_file():
        rows += measure("coco_sample", COCO_SAMPLE / "test_coco.json", COCO_SAMPLE)
    else:
        notes.append(f"coco_sample absent at {COCO_SAMPLE}: not measured")
    with tempfile.TemporaryDirectory() as tmp:
        synth = write_synthpose(tmp, train=0, val=args.synth_val, seed=args.seed)
        rows += measure(f"synthpose_val{args.synth_val}_seed{args.seed}", synth.val_annotations, synth.val_images)
    write_result(args.out, {"benchmark": "codec round-trip AP", "python": platform.python_version(),
                                 "torch": torch.__version__, "results": rows, "notes": notes})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
