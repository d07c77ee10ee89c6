"""`heads`: train small heads against cached teacher outputs (stage two)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import typer

from ._common import handle_errors as _handle_errors

TRAIN_INTERRUPTED = (
    "interrupted; the last epoch's checkpoint is kept: continue with "
    "`heads train HEAD --resume RUN_DIR`."
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
    """List the registered heads."""
    from heads import list_heads

    for spec in list_heads():
        typer.echo(f"{spec.name:<12} {spec.description}")


@app.command()
@handle_errors
def train(
    head: str = typer.Argument(..., help="Head name (see `heads list`)."),
    config: list[Path] = typer.Option(None, "--config", "-c", help="TOML file(s) over the recipe."),
    overrides: list[str] = typer.Option(None, "--set", "-s", help="section.key=value, repeatable."),
    run_dir: Path = typer.Option(None, help="Run directory [default: runs/HEAD-TIMESTAMP]."),
    resume: Path = typer.Option(None, help="Continue this run from its last checkpoint."),
    stop_after_epoch: int = typer.Option(None, help="Stop cleanly after this epoch."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
) -> None:
    """Train a head; writes config, metrics, checkpoints, weights and plots to the run dir."""
    from heads import build_head, get_head
    from heads import config as config_mod
    from heads.errors import HeadsError
    from heads.train import train as run_train

    spec = get_head(head)
    if resume is not None:
        saved_path = resume / "config.json"
        if not saved_path.exists():
            raise HeadsError(f"{resume} is not a run directory (no config.json).")
        saved = json.loads(saved_path.read_text())
        if config or overrides:
            wanted = config_mod.resolve(saved, config or [], overrides or [])
            changes = config_mod.diff(saved, wanted)
            if changes:
                raise HeadsError(f"--resume with a different config ({'; '.join(changes)}); "
                                 f"start a new run instead.")  # fmt: skip
        cfg, out = saved, resume
    else:
        cfg = config_mod.resolve(spec.defaults(), config or [], overrides or [])
        out = run_dir or Path("runs") / f"{head}-{time.strftime('%Y%m%d-%H%M%S')}"
        if (out / "config.json").exists():
            raise HeadsError(f"{out} already holds a run; use --resume {out} or another --run-dir.")
    model_head = build_head(spec, cfg)
    last = run_train(
        model_head,
        cfg,
        out,
        resume=resume is not None,
        stop_after_epoch=stop_after_epoch,
        progress=not quiet,
        log=typer.echo,
    )
    typer.echo(f"run: {out}")
    typer.echo(json.dumps(last))


@app.command("eval")
@handle_errors
def evaluate(
    head: str = typer.Argument(..., help="Head name."),
    run: Path = typer.Argument(..., help="Run directory of a trained head."),
    overrides: list[str] = typer.Option(
        None, "--set", "-s", help="eval.key=value, e.g. eval.way=100 (repeatable)."
    ),
) -> None:
    """Evaluate a trained run on its test set; writes eval.json and plots/eval.png."""
    from heads import build_head, get_head
    from heads.errors import HeadsError
    from heads.train import load_weights

    spec = get_head(head)
    if not (run / "config.json").exists():
        raise HeadsError(f"{run} is not a run directory (no config.json).")
    cfg = json.loads((run / "config.json").read_text())
    if overrides:
        from heads import config as config_mod

        if any(not o.startswith("eval.") for o in overrides):
            raise HeadsError("heads eval only takes eval.* overrides; the rest is the run's.")
        cfg = config_mod.resolve(cfg, [], overrides)
    model_head = build_head(spec, cfg)
    load_weights(model_head.model, run)
    report = spec.evaluate(model_head, run)
    from heads.report import format_report

    for line in format_report(report):
        typer.echo(line)
    typer.echo(f"wrote {run / 'eval.json'} and {run / 'plots' / 'eval.png'}")


@app.command()
@handle_errors
def demo(
    workdir: Path = typer.Option(Path("heads-demo"), help="Where data, store and run go."),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
) -> None:
    """Both stages end to end on a small synthetic NSD-like dataset: extract tiny bigG tokens
    and caption features, train MindEye, evaluate retrieval."""
    from heads.demo import run_demo

    run_demo(workdir, progress=not quiet, log=typer.echo)


if __name__ == "__main__":
    app()
