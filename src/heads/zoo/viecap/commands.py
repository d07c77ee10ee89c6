"""``heads caption viecap RUN --images DIR | --entry KEY``: caption images with a trained run."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from ...registry import register_command


@register_command("caption", "viecap")
def caption(
    run: Path = typer.Argument(..., help="Run directory of a trained captioner."),
    images: Path = typer.Option(None, help="A folder of images (features computed and cached)."),
    entry: str = typer.Option(None, help="A vitb32-image `embeds` entry key instead."),
    greedy: bool = typer.Option(False, "--greedy", help="Greedy decoding instead of beam search."),
    threshold: float = typer.Option(None, help="Entity threshold (0.4 in-domain, 0.2 cross)."),
    no_entities: bool = typer.Option(False, "--no-entities", help="Soft prompt only, no entities."),
    image_weights: str = typer.Option(
        None,
        help="Image tower weights for --images: pretrained, random or a checkpoint "
        "[default: as the run's text features].",
    ),
    out: Path = typer.Option(
        None,
        help="Captions JSON [default: RUN/captions/NAME.json]; a grid of the first "
        "eval.grid_images captions goes beside it as NAME.png.",
    ),
    weights: str = typer.Option("auto", help="auto (best if kept, else last), best or last."),
) -> None:
    """Caption images with a trained run: detected entities, then beam search (or greedy).
    Writes the captions as JSON and a PNG grid beside it (the images when their folder is known,
    else the captions and entities alone)."""
    from heads import runs
    from heads.errors import ConfigError

    from .evaluation import caption_grid, caption_source

    if (images is None) == (entry is None):
        raise ConfigError("give exactly one of --images DIR or --entry KEY.")
    overrides = ["eval.beam_width=1"] if greedy else []
    if threshold is not None:
        overrides.append(f"eval.threshold={threshold}")
    if no_entities:
        overrides.append("eval.use_entities=false")
    head_obj, model, _ = runs.load_trained("viecap", run, overrides, weights)
    results, name, folder = caption_source(
        head_obj, model, images, entry, image_weights, log=typer.echo
    )
    path = out or Path(run) / "captions" / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=1) + "\n")
    for r in results:
        ents = ", ".join(r["entities"]) or "-"
        typer.echo(f"{r['id']}: {r['caption']}  [{ents}]")
    shown = [{"file": str(r["id"]), **r} for r in results[: head_obj.cfg["eval"]["grid_images"]]]
    grid = caption_grid(shown, folder, path.parent, path.with_suffix(".png").name)
    typer.echo(f"wrote {path}" + (f" and {grid.name}" if grid is not None else ""))
