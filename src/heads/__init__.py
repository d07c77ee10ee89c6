"""heads: stage two — small trainable heads trained against featstore entries.

>>> import heads
>>> plan = heads.runs.plan_training("mindeye", config_files=["subj01.toml"])
>>> heads.runs.run_training(plan)

A head is one package (``heads/zoo/<name>/``): a :class:`Head` subclass registered with
:func:`register_head`, its recipes and its demo. See docs/architecture.md.
"""

from . import runs
from .config import TrainConfig
from .errors import ConfigError, DataError, HeadsError, RunDirError
from .head import Head, Progress
from .registry import get_head, list_heads, recipe, register_command, register_head
from .report import Report
from .train import train

__all__ = [
    "ConfigError",
    "DataError",
    "Head",
    "HeadsError",
    "Progress",
    "Report",
    "RunDirError",
    "TrainConfig",
    "get_head",
    "list_heads",
    "recipe",
    "register_command",
    "register_head",
    "runs",
    "train",
]
