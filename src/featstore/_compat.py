"""Environment fix-ups that must run before open_clip or transformers import torchvision.

A CPU-only torch next to a CUDA torchvision wheel (the only torchvision on some package mirrors,
including this project's CI) cannot load torchvision's compiled ops, and torchvision 0.2x then
fails at import on two unguarded ``register_fake`` calls. featstore needs only torchvision's
pure-Python image transforms, so when (and only when) the compiled ops cannot load we declare
those two op schemas so the import succeeds. Detection only, no behaviour change otherwise.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.util
import logging
import os

_LIB = None  # keeps the schema library alive for the life of the process


def ensure_torchvision_importable() -> None:
    global _LIB
    spec = importlib.util.find_spec("torchvision")
    if spec is None or spec.submodule_search_locations is None or _LIB is not None:
        return
    import torch

    (pkg_dir,) = list(spec.submodule_search_locations)[:1]
    ext = [f for f in os.listdir(pkg_dir) if f.startswith("_C") and f.endswith((".so", ".pyd"))]
    if not ext:
        return
    try:
        ctypes.CDLL(os.path.join(pkg_dir, ext[0]))
        return  # compiled ops load: nothing to fix
    except OSError as e:
        reason = str(e)
    lib = torch.library.Library("torchvision", "FRAGMENT")
    for name in ("nms", "qnms"):
        with contextlib.suppress(RuntimeError):  # already declared
            lib.define(f"{name}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _LIB = lib
    logging.getLogger("featstore").debug(
        "torchvision's compiled ops cannot load (%s); declared nms/qnms schemas so its "
        "pure-Python transforms import. Install a torchvision build matching torch to avoid this.",
        reason,
    )
