"""`da2`: the platform's one command line. Each command group lives in its own module."""

from __future__ import annotations

import contextlib
import sys

import typer

from da2_platform.cli import compare, data, demo, evaluate, model_info, plan, policy, promote, search, train

app = typer.Typer(
    name="da2",
    help="Search augmentation policies for top-down pose estimation (DA2, RL, Optuna) and train P2Net.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.add_typer(data.app, name="data")
app.add_typer(policy.app, name="policy")
app.command("evaluate")(evaluate.evaluate)
app.command("model-info")(model_info.model_info)
app.command("train")(train.train)
app.command("predict")(train.predict)
app.command("search")(search.search)
app.command("compare")(compare.compare)
app.command("plan")(plan.plan)
app.command("report")(compare.report)
app.command("promote")(promote.promote)
app.command("demo")(demo.demo)


def _known_errors() -> tuple[type[BaseException], ...]:
    """Our error classes; one whose module was never imported cannot have been raised, so it is not imported now
    (pose_models pulls in torch: seconds before an interrupted `data synth` could say so)."""
    from da2_platform.errors import Da2Error

    known: list[type[BaseException]] = [Da2Error]
    for module, name in (("search_spaces.policy", "PolicyError"), ("pose_models.weights", "BackboneWeightsError"),
                         ("rich.errors", "MarkupError")):
        if module in sys.modules:
            known.append(getattr(sys.modules[module], name))
    return tuple(known)


def main(argv: list[str] | None = None) -> int:
    """Run the CLI and return its exit code; our own errors print one clear line and exit 2, not a traceback."""
    from da2_platform.cli import output

    output.json_stream = sys.stdout
    args = sys.argv[1:] if argv is None else argv
    wants_help = not args or "--help" in args
    try:
        with contextlib.nullcontext() if wants_help else contextlib.redirect_stdout(sys.stderr):
            app(args=argv, prog_name="da2", standalone_mode=True)  # click handles usage errors (exit 2) itself
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except _known_errors() as e:
        print(f"error: {output.plain(e)}", file=sys.stderr)
        return 2
    except OSError as e:  # a path the OS refuses (a folder where a file goes, /proc, no permission, disk full)
        where = f"{e.filename}: " if e.filename else ""
        print(f"error: {output.plain(where)}{e.strerror or e}", file=sys.stderr)
        return 2
    finally:
        output.json_stream = None
    return 0


def entrypoint() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entrypoint()
