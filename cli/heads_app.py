"""`heads`: train small heads against cached teacher outputs (stage two)."""

from __future__ import annotations

import typer

app = typer.Typer(
    help="Stage two: train small heads against memory-mapped featstore entries.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.command()
def heads() -> None:
    """List the registered heads."""
    from heads import list_heads

    names = list_heads()
    typer.echo("\n".join(names) if names else "no heads registered yet")


if __name__ == "__main__":
    app()
