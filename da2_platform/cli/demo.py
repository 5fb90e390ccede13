"""`da2 demo`: the whole story on embedded defaults (local Ray, SQLite MLflow, SynthPose).

synthesise -> check the codec -> pretrain the shared warm start once (cached in the work dir) -> compare DA2, RL,
Optuna, PBA, no augmentation and standard-pose -> register every search's policy -> promote the best by final AP when it
beats no augmentation by more than the noise -> train P2Net with models:/...@production -> print the final table
and the command that opens the MLflow UI. Ray's and MLflow's own output goes to <workdir>/logs/, named at start.
"""

from __future__ import annotations

from pathlib import Path

import typer

PRETRAIN_STEPS = 600  # da2_platform.warmstart.PretrainSettings().steps (imported lazily: keep `da2 --help` fast)
NOISE_AP = 0.02  # final-AP differences below this are noise at the demo's size (60 val images, one seed)


def demo(
    workdir: Path = typer.Option(Path("work/demo"), "--workdir", help="Where data, runs and reports go."),
    config: Path | None = typer.Option(None, "--config", "-c", help="Experiment YAML (default: embedded demo)."),
    methods: str = typer.Option("da2,rl,optuna,pba,fixed:none,fixed:standard-pose", "--methods",
                                help="Methods to compare (`fixed` = every fixed policy of the config)."),
    pretrain_steps: int = typer.Option(PRETRAIN_STEPS, "--pretrain-steps", min=1,
                                       help="Steps of the warm start (skipped when the config sets "
                                            "model.init_weights)."),
) -> None:
    """Run the whole platform end to end on this machine (about 14 minutes on 2 CPU cores)."""
    import time
    from datetime import UTC, datetime

    from da2_platform.console import libraries_to_log
    from da2_platform.search.progress import progress_to

    start = time.perf_counter()
    workdir = workdir.expanduser().resolve()
    log_path = workdir / "logs" / f"demo-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}.log"
    with libraries_to_log(log_path) as terminal, progress_to(terminal):
        terminal.print(f"Ray, Tune and MLflow output goes to {log_path}", soft_wrap=True)
        _run(terminal, workdir, config, methods, pretrain_steps)
        import ray

        ray.shutdown()  # inside: its shutdown lines go to the log too
        terminal.print(f"demo finished in {time.perf_counter() - start:.0f} s")


def _run(terminal, workdir: Path, config: Path | None, methods: str, pretrain_steps: int) -> None:
    import shutil
    import time

    import ray
    from rich.table import Table

    from da2_platform.compare import run_compare
    from da2_platform.config import load_config
    from da2_platform.data.roundtrip import codec_roundtrip
    from da2_platform.data.splits import prepare_data
    from da2_platform.policies import resolve_policy
    from da2_platform.registry import promote, register_trained_model
    from da2_platform.report import Report, write_report
    from da2_platform.tracking import resolve_tracking_uri, setup_tracking
    from da2_platform.training.ray_train import run_training
    from da2_platform.warmstart import PretrainSettings, warm_start

    def table(title: str, columns: list[str], rows: list[list]) -> None:
        out = Table(title=title)
        for col in columns:
            out.add_column(col)
        for row in rows:
            out.add_row(*[f"{v:.4f}" if isinstance(v, float) else "" if v is None else str(v) for v in row])
        terminal.print(out)

    cfg = load_config(config, {"workdir": str(workdir)})
    # each demo tells one story: earlier runs' ledger rows and reports go (MLflow keeps their history)
    for folder in ("ledger", "reports"):
        shutil.rmtree(cfg.workdir / folder, ignore_errors=True)
    step = _stepper(terminal)
    step("tracking", f"MLflow store {resolve_tracking_uri(cfg)}")
    setup_tracking(cfg)
    d = cfg.data
    step("data", f"SynthPose seed {cfg.data_seed}, shift {d.synth_shift}: {d.synth_train} train / {d.synth_val} val"
                 + (f" / {d.synth_search_val} target (search-val)" if d.search_val == "target" else
                    f" images, search-val = {d.search_val_fraction:.0%} of train")
                 + f" under {cfg.workdir}")
    data = prepare_data(cfg)
    codec = codec_roundtrip(data.val_annotations, data.val_images, cfg.data.input_size)
    terminal.print(f"  codec round-trip on val at {cfg.data.input_size}: AP standard "
                   f"{codec.roundtrip_ap['standard']:.3f}, DARK {codec.roundtrip_ap['dark']:.3f}; mean joint error "
                   f"standard {codec.mean_error_px['standard']:.2f} px, DARK {codec.mean_error_px['dark']:.2f} px")

    if cfg.model.init_weights is None:
        settings = PretrainSettings(steps=pretrain_steps)
        step("warm start", f"P2Net ({cfg.model.backbone or cfg.model.preset}) pretrained with standard-pose on a "
                           f"separate SynthPose set (seed {settings.seed}, {settings.images} images, "
                           f"{settings.steps} steps): every training below starts from it, as from ImageNet weights")
        began = time.perf_counter()

        def pretrain_progress(done: int, _model) -> None:
            if done % 100 == 0 or done == settings.steps:
                spent = time.perf_counter() - began
                terminal.print(f"  warm start: step {done}/{settings.steps}, {spent:.0f} s, "
                               f"ETA {spent / done * (settings.steps - done):.0f} s")

        ws = warm_start(cfg, settings, threads=2, on_step=pretrain_progress)
        terminal.print(f"  {'cached: ' if ws.cached else ''}{ws.path}"
                       + ("" if ws.cached else f" ({ws.seconds:.0f} s, counted in no search's cost)"))
        cfg = load_config(config, {"workdir": str(workdir), "model.init_weights": str(ws.path)})

    chosen = [m.strip() for m in methods.split(",") if m.strip()]
    step("compare", ", ".join(chosen))
    _, finals = run_compare(cfg, chosen, progress=lambda msg: terminal.print(f"  {msg}"))
    rep, json_path, png_path = write_report(cfg.workdir, cfg.name)
    table("search cost and AP per method", Report.TABLE_COLUMNS, rep.table_rows())

    registered = sorted((f for f in finals if f.registered_version), key=lambda f: -f.val_ap)
    best = registered[0]
    baseline = next((f for f in finals if f.method == "fixed:none"), None)
    # a real difference: the promoted policy must beat training without augmentation by more than the noise
    min_ap = None if baseline is None or best is baseline else baseline.val_ap + NOISE_AP
    runner_up = f"; next {registered[1].method} {registered[1].val_ap:.4f}" if len(registered) > 1 else ""
    step("promote", f"version {best.registered_version} ({best.method}, final AP {best.val_ap:.4f}{runner_up}) "
                    "-> @production" + ("" if min_ap is None else f", if it beats fixed:none "
                                        f"({baseline.val_ap:.4f}) by more than {NOISE_AP}"))
    decision = promote(cfg.tracking.registered_policy, best.registered_version, "production", gate="final-ap",
                       min_ap=min_ap, note="da2 demo: best final AP of the comparison")
    terminal.print(f"  {'promoted' if decision.allowed else 'refused'}: {decision.reason}")

    ref = f"models:/{cfg.tracking.registered_policy}@production"
    rows = [[f.method, f.registered_version, f.val_ap, f.device_seconds / 3600] for f in finals]
    if decision.allowed or decision.previous:
        step("train", f"P2Net with {ref} on Ray Train")
        resolved = resolve_policy(ref, cfg)
        # the searches are over: the production training may hold every CPU of the local cluster
        cpus = int(ray.cluster_resources().get("CPU", 1))
        production_cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"cpus_per_worker": cpus})})
        trained = run_training(production_cfg, resolved.policy.to_json(), fresh=True,
                               run_name=f"production-{cfg.name}")
        _, model_version = register_trained_model(cfg, trained.checkpoint, trained.metrics, ref,
                                                  resolved.registry_version, resolved.registry_name)
        rows.append([f"production ({ref} = v{resolved.registry_version})", model_version,
                     float(trained.metrics.get("val_AP", 0.0)), trained.device_seconds / 3600])
    else:
        terminal.print("  nothing holds @production: no production training")
    table("final AP on the val split (fresh training with each best policy, from the warm start)",
          ["policy", "version", "val AP", "device-h"], rows)
    terminal.print(f"report: {json_path}\nplot:   {png_path}")
    store = resolve_tracking_uri(cfg)
    terminal.print(f"MLflow UI: .venv/bin/mlflow ui --backend-store-uri {store} --host 127.0.0.1 --port 5000")


def _stepper(terminal):
    count = {"n": 0}

    def step(name: str, detail: str) -> None:
        count["n"] += 1
        terminal.rule(f"[bold]{count['n']}. {name}[/]")
        terminal.print(f"  {detail}")
    return step
