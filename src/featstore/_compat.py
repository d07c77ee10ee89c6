"""Environment fix-up applied before featstore's teachers import open_clip or transformers.

A CPU-only torch next to a CUDA torchvision wheel (the only torchvision on some package mirrors,
including this project's CI) cannot load torchvision's compiled ops, and torchvision 0.2x then
fails at import on two unguarded ``register_fake`` calls. featstore needs only torchvision's
pure-Python image transforms, so when (and only when) the compiled ops cannot load, and
torchvision is not imported yet, we declare those two op schemas so the import succeeds.

Guarded so that it can never affect a working torchvision: nothing happens when the compiled
ops load or when torchvision was imported before featstore, and the declared ops raise a clear
error naming the cause if anyone calls them (instead of an obscure "no kernel" failure; the
``torchvision.ops`` wrappers already refuse with torchvision's own message). It runs at ``import
featstore`` because other code that imports featstore first (stage two's models through
transformers) relies on the import succeeding.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.util
import logging
import os
import sys

_LIB = None  # keeps the schema library alive for the life of the process
_REASON = ""


def applied() -> bool:
    """Whether the op schemas were declared in this process."""
    return _LIB is not None


def _unavailable(*args, **kwargs):
    raise RuntimeError(
        f"torchvision's compiled ops could not load ({_REASON}), so torchvision.ops.nms and "
        f"qnms are unavailable in this process; featstore only declared their schemas so that "
        f"torchvision's image transforms import. Install a torchvision build that matches "
        f"your torch to use them."
    )


def ensure_torchvision_importable() -> None:
    global _LIB, _REASON
    if _LIB is not None or "torchvision" in sys.modules:
        return  # done already, or torchvision imported (working or not) before featstore
    spec = importlib.util.find_spec("torchvision")
    if spec is None or spec.submodule_search_locations is None:
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
        _REASON = str(e)
    lib = torch.library.Library("torchvision", "FRAGMENT")
    for name in ("nms", "qnms"):
        with contextlib.suppress(RuntimeError):  # already declared
            lib.define(f"{name}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
            for key in ("CPU", "CUDA"):
                lib.impl(name, _unavailable, key)
    _LIB = lib
    logging.getLogger("featstore").debug(
        "torchvision's compiled ops cannot load (%s); declared nms/qnms schemas so its "
        "pure-Python transforms import. Install a torchvision build matching torch to avoid this.",
        _REASON,
    )
