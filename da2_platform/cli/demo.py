"""`da2 demo`: the whole story on embedded defaults (local Ray, SQLite MLflow, SynthPose).

synthesise -> check the codec -> compare DA2, RL, Optuna, PBA and the fixed policies under one budget ->
register every search's policy -> promote the best by final AP -> train P2Net with models:/...@production ->
print the final table and the command that opens the MLflow UI.
"""

from __future__ import annotations

from pathlib import Path

import typer

from da2_platform.cli.output import console, print_table


def demo(
    workdir: Path = typer.Option(Path("work/demo"), "--workdir", help="Where data, runs and reports go."),
    config: Path | None = typer.Option(None, "--config", "-c", help="Experiment YAML (default: embedded demo)."),
    methods: str = typer.Option("da2,rl,optuna,pba,fixed", "--methods", help="Methods to compare."),
) -> None:
    """Run the whole platform end to end on this machine (about 10-15 minutes on 2 CPU cores)."""
    import shutil
    import time

    from da2_platform.compare import run_compare
    from da2_platform.config import load_config
    from da2_platform.data.roundtrip import codec_roundtrip
    from da2_platform.data.splits import prepare_data
    from da2_platform.policies import resolve_policy
    from da2_platform.registry import promote, register_trained_model
    from da2_platform.report import Report, write_report
    from da2_platform.tracking import resolve_tracking_uri, setup_tracking
    from da2_platform.training.ray_train import run_training

    start = time.perf_counter()
    cfg = load_config(config, {"workdir": str(workdir)})
    # each demo tells one story: earlier runs' ledger rows and reports go (MLflow keeps their history)
    for folder in ("ledger", "reports"):
        shutil.rmtree(cfg.workdir / folder, ignore_errors=True)
    step = _stepper()
    step("tracking", f"MLflow store {resolve_tracking_uri(cfg)}")
    setup_tracking(cfg)
    step("data", f"SynthPose {cfg.data.synth_train} train / {cfg.data.synth_val} val images under {cfg.workdir}")
    data = prepare_data(cfg)
    codec = codec_roundtrip(data.val_annotations, data.val_images, cfg.data.input_size)
    console.print(f"  codec round-trip on val at {cfg.data.input_size}: AP standard {codec.roundtrip_ap['standard']:.3f}"
                  f", DARK {codec.roundtrip_ap['dark']:.3f}; mean joint error standard "
                  f"{codec.mean_error_px['standard']:.2f} px, DARK {codec.mean_error_px['dark']:.2f} px")

    chosen = [m.strip() for m in methods.split(",") if m.strip()]
    step("compare", ", ".join(chosen))
    _, finals = run_compare(cfg, chosen, progress=lambda msg: console.print(f"  {msg}"))
    rep, json_path, png_path = write_report(cfg.workdir, cfg.name)
    print_table("search cost and AP per method", Report.TABLE_COLUMNS, rep.table_rows())

    best = max((f for f in finals if f.registered_version), key=lambda f: f.val_ap)
    step("promote", f"version {best.registered_version} ({best.method}, final AP {best.val_ap:.4f}) -> @production")
    decision = promote(cfg.tracking.registered_policy, best.registered_version, "production", gate="final-ap",
                       note="da2 demo: best final AP of the comparison")
    console.print(f"  {'promoted' if decision.allowed else 'refused'}: {decision.reason}")

    ref = f"models:/{cfg.tracking.registered_policy}@production"
    step("train", f"P2Net with {ref} on Ray Train")
    resolved = resolve_policy(ref)
    trained = run_training(cfg, resolved.policy.to_json(), fresh=True, run_name=f"production-{cfg.name}")
    _, model_version = register_trained_model(cfg, trained.checkpoint, trained.metrics, ref,
                                              resolved.registry_version, resolved.registry_name)
    rows = [[f.method, f.registered_version, f.val_ap, f.device_seconds / 3600] for f in finals]
    rows.append([f"production ({ref} = v{resolved.registry_version})", model_version,
                 float(trained.metrics.get("val_AP", 0.0)), trained.device_seconds / 3600])
    print_table("final AP on the val split (fresh training with each best policy)",
                ["policy", "version", "val AP", "device-h"], rows)
    console.print(f"report: {json_path}\nplot:   {png_path}")
    store = resolve_tracking_uri(cfg)
    console.print(f"MLflow UI: .venv/bin/mlflow ui --backend-store-uri {store} --host 127.0.0.1 --port 5000")
    console.print(f"demo finished in {time.perf_counter() - start:.0f} s")


def _stepper():
    count = {"n": 0}

    def step(name: str, detail: str) -> None:
        count["n"] += 1
        console.rule(f"[bold]{count['n']}. {name}[/]")
        console.print(f"  {detail}")
    return step
