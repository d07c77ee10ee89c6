"""NeuroBridge's own CLI verbs: ``heads ablate neurobridge`` (the region ablation) and
``heads condition neurobridge`` (SD-1.5 conditioning tensors for the test images)."""

from __future__ import annotations

import time
from pathlib import Path

import typer

from ...registry import register_command


@register_command("ablate", "neurobridge")
def ablate(
    regions: list[str] = typer.Option(
        None,
        "--region",
        help="A region to train (repeatable; 'V4,IT' is one run on both). "
        "Default: all, IT, V4, V1.",
    ),
    recipe: str = typer.Option("default", "--recipe", "-r", help="The recipe of every run."),
    config: list[Path] = typer.Option(None, "--config", "-c", help="TOML file(s) over the recipe."),
    overrides: list[str] = typer.Option(None, "--set", "-s", help="section.key=value, repeatable."),
    out_dir: Path = typer.Option(
        None, help="Folder of the runs [default: runs/neurobridge-ablation-TIME]."
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress display."),
) -> None:
    """Train and evaluate one alignment run per region; print the seed's region table."""
    from .ablation import format_table, run_ablation

    out = out_dir or Path("runs") / f"neurobridge-ablation-{time.strftime('%Y%m%d-%H%M%S')}"
    names = list(regions or ["all", "IT", "V4", "V1"])
    rows = run_ablation(
        names, out, recipe, config or [], overrides or [], progress=not quiet, log=typer.echo
    )
    typer.echo("")
    for line in format_table(rows):
        typer.echo(line)
    typer.echo(f"wrote {out / 'ablation.json'}, {out / 'ablation.md'}, {out / 'ablation.png'}")


@register_command("condition", "neurobridge")
def condition(
    align_run: Path = typer.Argument(..., help="A trained alignment run."),
    adapter_run: Path = typer.Argument(..., help="A trained adapter run (-r adapter)."),
    out: Path = typer.Option(Path("conditioning.safetensors"), help="Output file."),
) -> None:
    """Export SD-1.5 prompt conditioning [test images, 77, 768] for the test MUA."""
    from .ablation import export_conditioning

    result = export_conditioning(align_run, adapter_run, out)
    typer.echo(f"conditioning {result['conditioning']}")
    typer.echo("wrote " + ", ".join(str(f) for f in result["files"]))
