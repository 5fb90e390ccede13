"""`da2 data synth` (write SynthPose) and `da2 data inspect` (counts and codec round-trip AP of a COCO set)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from da2_platform.cli.options import INPUT_SIZE_HELP, Shift, parse_hw, parse_input_size
from da2_platform.cli.output import console, emit_json, print_table, safe

app = typer.Typer(help="SynthPose, and checks of any COCO person-keypoints data set.", no_args_is_help=True)


@app.command("synth")
def synth(
    out: Annotated[Path, typer.Option("--out", help="Folder to write into (images/ and annotations/).")],
    train: Annotated[int, typer.Option("--train", min=0, help="Training images.")] = 400,
    val: Annotated[int, typer.Option("--val", min=0, help="Validation images.")] = 100,
    seed: Annotated[int, typer.Option("--seed", help="The same seed writes the same bytes.")] = 0,
    shift: Annotated[Shift, typer.Option("--shift", help="Style of val and target against train: none (the same "
                                                       "distribution) or wide (rotation, scale, occlusion, "
                                                       "blur, lighting).")] = "wide",
    target: Annotated[int, typer.Option("--target", min=0, help="Target-domain images (val style, own seeds): "
                                                               "a search-val set for data.search_val: target.")] = 0,
    image_size: Annotated[str, typer.Option("--image-size", help="Image HEIGHTxWIDTH.")] = "256x256",
    json_out: Annotated[bool, typer.Option("--json", help="Print the written paths as JSON on stdout.")] = False,
) -> None:
    """Write SynthPose, a COCO person-keypoints set of rendered figures (train, val and an optional target split).

    17 COCO joints with visibility flags, boxes and areas, 1-3 persons per image, textured backgrounds; with
    --shift wide, val and target add rotation, scale, occlusion, blur and lighting changes. The same seed writes
    the same bytes."""
    from rich.progress import Progress

    from da2_platform.data.synthpose import write_synthpose
    from da2_platform.errors import DataError
    from da2_platform.limits import MAX_SYNTH_SIDE

    size = parse_hw(image_size, "--image-size", maximum=MAX_SYNTH_SIDE,
                    why="rendering takes about 40 bytes a pixel")
    with Progress(console=console, transient=True, disable=not console.is_terminal) as progress:
        tasks: dict[str, int] = {}

        def on_progress(split: str, done: int, total: int) -> None:
            if split not in tasks:
                tasks[split] = progress.add_task(f"SynthPose {split}", total=total)
            progress.update(tasks[split], completed=done)

        try:
            paths = write_synthpose(out, train=train, val=val, seed=seed, image_size=size,
                                    on_progress=on_progress, shift=shift, target=target)
        except KeyboardInterrupt:  # write_synthpose has removed what it wrote: say so in one line
            raise DataError(f"--out {out}: interrupted; the partial set was removed ({out} holds what it held "
                            "before); run the command again to write it") from None
    summary = {"root": str(paths.root), "train_annotations": str(paths.train_annotations),
               "train_images": str(paths.train_images), "val_annotations": str(paths.val_annotations),
               "val_images": str(paths.val_images), "train": train, "val": val, "seed": seed,
               "image_size": list(size), "shift": shift}
    if target:
        summary.update(target_annotations=str(paths.target_annotations), target_images=str(paths.target_images),
                       target=target)
    if json_out:
        emit_json(summary)
    else:
        print_table("SynthPose", ["item", "value"], [[k, v] for k, v in summary.items()])


@app.command("inspect")
def inspect(
    annotations: Annotated[Path, typer.Option("--annotations", help="COCO person-keypoints JSON.")],
    images: Annotated[Path, typer.Option("--images", help="Folder holding the images the JSON names.")],
    input_size: Annotated[str, typer.Option("--input-size", help=INPUT_SIZE_HELP)] = "256x192",
    json_out: Annotated[bool, typer.Option("--json", help="Print counts and round-trip AP as JSON.")] = False,
    check_images: Annotated[bool, typer.Option("--check-images", help="Also decode every image the file names "
                                                                      "(fails on a missing or unreadable one, or "
                                                                      "one whose size is not the file's).")]
    = False,
    strict: Annotated[bool, typer.Option("--strict", help="Refuse an annotation whose num_keypoints disagrees "
                                                          "with its labelled joints (else a warning).")] = False,
) -> None:
    """Counts of a COCO keypoints set and its codec round-trip AP (paper decoder and DARK).

    Counts: images, persons, persons with keypoints, skipped persons and why. Round trip: every person goes
    box -> crop -> heatmaps -> decode -> image px and is scored with pycocotools against the same file."""
    from rich.progress import Progress

    from da2_platform.data.roundtrip import codec_roundtrip

    size = parse_input_size(input_size)
    if check_images:
        from da2_platform.data.coco import check_images as decode_all

        decode_all(annotations, images, strict=strict)
    elif strict:
        from da2_platform.data.coco import load_coco_keypoints

        load_coco_keypoints(annotations, strict=True)
    with Progress(console=console, transient=True, disable=not console.is_terminal) as progress:
        task = progress.add_task("codec round trip", total=None)

        def on_progress(done: int, total: int) -> None:
            progress.update(task, completed=done, total=total)

        report = codec_roundtrip(annotations, images, input_size=size, on_progress=on_progress)
    if report.num_keypoints_mismatch:
        console.print(f"[yellow]warning[/] {safe(annotations)}: {len(report.num_keypoints_mismatch)} annotation(s) "
                      "give a num_keypoints that differs from their labelled joints (first: id "
                      f"{report.num_keypoints_mismatch[0]}); COCOeval ignores a person whose num_keypoints is 0. "
                      "--strict makes this an error", highlight=False, soft_wrap=True)
    if json_out:
        emit_json(report.to_json())
        return
    rows = [["images", report.images], ["persons", report.persons],
            ["persons with keypoints", report.persons_with_keypoints]]
    rows += [[f"skipped: {reason}", count] for reason, count in report.skipped.items()]
    rows += [[f"round-trip AP ({method})", ap] for method, ap in report.roundtrip_ap.items()]
    rows += [[f"mean joint error px ({method})", err] for method, err in report.mean_error_px.items()]
    print_table(f"{annotations.name} at {size[0]}x{size[1]}", ["item", "value"], rows)
