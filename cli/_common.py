"""Shared CLI plumbing: one place that turns library errors into a message and exit code 1."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from typing import Any

import typer


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def fail(message: str) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=1)


INTERRUPTED = "interrupted; committed chunks are kept, run the same command to resume."


def handle_errors(fn: Callable[..., Any], interrupted: str = INTERRUPTED) -> Callable[..., Any]:
    """Print errors the user can fix as one line (set FEATSTORE_DEBUG=1 for the traceback);
    anything else is a bug and keeps its traceback. Under torchrun only rank 0 prints."""
    from featstore.errors import FeatstoreError

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except FeatstoreError as e:
            if os.environ.get("FEATSTORE_DEBUG"):
                raise
            if os.environ.get("RANK", "0") != "0":
                raise typer.Exit(code=1) from None
            message = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
            fail(str(message))
        except KeyboardInterrupt:
            typer.echo(interrupted, err=True)
            sys.exit(130)

    return wrapper
