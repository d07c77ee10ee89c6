"""`heads`: train small heads against cached teacher outputs (stage two)."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from ._common import handle_errors as _handle_errors

TRAIN_INTERRUPTED = (
    "interrupted; the last checkpoint is kept: continue with `heads train HEAD --resume RUN_DIR`."
)


def handle_errors(fn):
    return _handle_errors(fn, interrupted=TRAIN_INTERRUPTED)


app = typer.Typer(
    help="Stage two: train small heads against memory-mapped featstore entries.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


@app.command("list")
@handle_errors
def list_command() -> None:
    """List the registered heads and their recipes."""
    from heads import list_heads
    from heads.registry import recipe_names

    for head in list_heads():
        typer.echo(f"{head.name:<12} {head.description}")
        typer.echo(f"{'':<12} recipes: {', '.join(recipe_names(head))}")


@app.command()
@handle_errors
def train(
    head: str = typer.Argument(..., help="Head name (see `heads list`)."),
    recipe: str = typer.Option(
        "default", "--recipe", "-r", help="The head's recipe to start from."
    ),
    config: list[Path] = typer.Option(None, "--config", "-c", help="TOML file(s) over the recipe."),
    overrides: list[str] = typer.Option(None, "--set", "-s", help="section.key=value, repeatable."),
    run_dir: Path = typer.Option(None, help="Run directory [default: runs/HEAD-TIMESTAMP]."),
    resume: Path = typer.Option(None, help="Continue this run from its last checkpoint."),
    init_from: str = typer.Option(None, help="Start from this run's (or .safetensors) weights."),
    init_skip: list[str] = typer.Option(
        None,
        help="With --init-from: leave out tensors matching this glob (repeatable), e.g. 'ridge.*'.",
    ),
    stop_after_epoch: int = typer.Option(None, help="Stop cleanly after this epoch."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress display."),
) -> None:
    """Train a head; writes config, metrics, checkpoints, weights and plots to the run dir.

    Under `torchrun --nproc-per-node N -m heads train ...` it trains with DDP."""
    from heads import runs
    from heads.errors import ConfigError

    if resume is not None:
        if run_dir or init_from or init_skip or recipe != "default":
            raise ConfigError(
                "--resume continues a run as it was: leave out --run-dir, "
                "--recipe, --init-from and --init-skip."
            )
        plan = runs.plan_resume(head, resume, config or [], overrides or [])
    else:
        plan = runs.plan_training(
            head, recipe, config or [], overrides or [], run_dir, init_from, init_skip or []
        )
    summary = runs.run_training(
        plan, stop_after_epoch=stop_after_epoch, progress=not quiet, log=_main_echo
    )
    _main_echo(f"run: {plan.run_dir}")
    _main_echo(json.dumps(summary))


@app.command("eval")
@handle_errors
def evaluate(
    head: str = typer.Argument(..., help="Head name."),
    run: Path = typer.Argument(..., help="Run directory of a trained head."),
    overrides: list[str] = typer.Option(
        None, "--set", "-s", help="eval.key=value, e.g. eval.way=100 (repeatable)."
    ),
    weights: str = typer.Option(
        "auto", help="auto (best if kept, else last), best, last or epoch-N (keep_epoch_weights)."
    ),
    split: str = typer.Option(
        None, help="The split to evaluate (same as --set eval.split=SPLIT; brain2text, viecap)."
    ),
) -> None:
    """Evaluate a trained run; prints the head's report and the files it wrote."""
    from heads import runs

    report, path = runs.evaluate_run(head, run, overrides or [], weights, split=split)
    typer.echo(f"weights: {path}")
    for line in report.format():
        typer.echo(line)


@app.command()
@handle_errors
def demo(
    head: str = typer.Argument("mindeye", help="Head to demonstrate (see `heads list`)."),
    workdir: Path = typer.Option(Path("heads-demo"), help="Where data, store and run go."),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
) -> None:
    """Both stages end to end on labelled-synthetic data in the head's original file layouts
    (default: MindEye2 on a small NSD-like dataset)."""
    from heads import get_head

    get_head(head).demo(workdir, progress=not quiet, log=typer.echo)


def _main_echo(message: str) -> None:
    from heads.distributed import current

    if current().is_main:
        typer.echo(message)


def mount_head_commands() -> None:
    """Add the commands heads register for themselves as ``heads VERB HEAD ...``: one group per
    verb (``caption``, ``chat``, ...), one command per head in it."""
    from heads.registry import head_commands

    groups = {g.name: g.typer_instance for g in app.registered_groups}
    for (verb, head), fn in sorted(head_commands().items()):
        if verb not in groups:
            groups[verb] = typer.Typer(
                help=f"Head commands: `heads {verb} HEAD ...` (see `heads {verb} --help`).",
                no_args_is_help=True,
                add_completion=False,
                pretty_exceptions_enable=False,
                rich_markup_mode=None,
            )
            app.add_typer(groups[verb], name=verb)
        if head not in {c.name for c in groups[verb].registered_commands}:
            groups[verb].command(head)(handle_errors(fn))


def main() -> None:
    from heads.distributed import teardown

    mount_head_commands()
    try:
        app()
    finally:
        teardown()


if __name__ == "__main__":
    main()
