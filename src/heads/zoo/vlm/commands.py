"""The head's own verbs: ``heads chat vlm RUN ...`` and ``heads export vlm RUN OUT``.

Typer-style functions, mounted by the CLI as ``heads VERB vlm`` (see ``register_command``);
they parse options, call :mod:`.runtime` and :mod:`.generation`, and print.
"""

from __future__ import annotations

from pathlib import Path

import typer

from ...errors import ConfigError
from ...registry import register_command


@register_command("chat", "vlm")
def chat(
    run: Path = typer.Argument(
        ..., help="A vlm run directory, or a directory `heads export` wrote."
    ),
    prompt: str = typer.Argument(..., help="The question; <image> marks where an image goes."),
    image: list[Path] = typer.Option(
        None, "--image", "-i", help="An image file (repeat for several, in <image> order)."
    ),
    temperature: float = typer.Option(0.65, help="Sampling temperature; 0 = greedy."),
    top_p: float = typer.Option(0.85, help="Nucleus sampling: keep the top-p probability mass."),
    max_new_tokens: int = typer.Option(512, help="Stop after this many generated tokens."),
    seed: int = typer.Option(None, help="Seed the sampler (repeatable answers)."),
    weights: str = typer.Option("auto", help="A run's weights: auto, best or last."),
    vision_weights: str = typer.Option(
        "auto", help="The vision teacher's weights for new images (auto: as recorded)."
    ),
    device: str = typer.Option("auto", help="auto, cpu, cuda or cuda:N."),
) -> None:
    """Answer a question about images with a trained VLM, streaming the answer.

    Each image goes through the same featstore teacher that made the training patches: read
    from the run's entry when it holds that file, computed otherwise. Without <image> tags in
    the prompt, one per image is put before the text."""
    import torch

    from .generation import generate
    from .runtime import ImageEncoder, load_vlm

    if temperature < 0 or not 0 < top_p <= 1 or max_new_tokens < 1:
        raise ConfigError("--temperature >= 0, 0 < --top-p <= 1 and --max-new-tokens >= 1.")
    loaded = load_vlm(run, weights, device)
    images = list(image or [])
    tag = loaded.encoder.image_tag
    if tag not in prompt:
        prompt = "".join(f"{tag}\n" for _ in images) + prompt
    if prompt.count(tag) != len(images):
        raise ConfigError(
            f"the prompt has {prompt.count(tag)} {tag} tags but {len(images)} --image files."
        )
    encode = ImageEncoder(loaded, vision_weights)
    patches = []
    for path in images:
        tokens, how = encode(path)
        typer.echo(f"[{path}: patch tokens {how}]", err=True)
        patches.append(tokens)
    if seed is not None:
        torch.manual_seed(seed)
    enc = loaded.encoder.prompt([prompt])
    generate(
        loaded.model,
        loaded.encoder,
        [enc],
        torch.stack(patches) if patches else None,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_p=top_p,
        write=lambda text: typer.echo(text, nl=False) if text else None,
    )
    typer.echo()


@register_command("export", "vlm")
def export(
    run: Path = typer.Argument(..., help="A vlm run directory."),
    out: Path = typer.Argument(..., help="A new directory for the transformers-format model."),
    weights: str = typer.Option("auto", help="auto (best if kept, else last), best or last."),
    dtype: str = typer.Option("float32", help="float32, bfloat16 or float16."),
) -> None:
    """Save a trained VLM in transformers' format (save_pretrained): LLM + projector with
    minimind-v's tensor names, the tokenizer, and a config naming the vision teacher."""
    from .runtime import export as export_vlm
    from .runtime import load_run

    path = export_vlm(load_run(run, weights, "cpu"), out, dtype)
    typer.echo(f"exported {run} to {path}")
