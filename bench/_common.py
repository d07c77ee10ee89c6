"""Helpers shared by the benchmark scripts (run as ``python bench/NAME.py``)."""

from __future__ import annotations

import json
import os
import platform
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np


def warm_page_cache(paths: list[Path]) -> tuple[int, float]:
    """Read every file under ``paths`` once so later reads hit the page cache."""
    t0 = time.perf_counter()
    buf = bytearray(16 << 20)
    total = 0
    for root in paths:
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        for path in files:
            with open(path, "rb", buffering=0) as fh:
                while k := fh.readinto(buf):
                    total += k
    return total, time.perf_counter() - t0


def env_info(**versions: str) -> dict[str, Any]:
    """The machine and library versions a result was measured with."""
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "numpy": np.__version__,
        **versions,
    }


def finish(result: dict[str, Any], workdir: Path, name: str, data_dir: Path, clean: bool) -> dict:
    """Write ``<workdir>/<name>.json``; with ``clean``, delete the generated data."""
    out = workdir / f"{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"results written to {out}")
    if clean:
        shutil.rmtree(data_dir, ignore_errors=True)
    return result
