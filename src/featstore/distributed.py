"""Ranks under torchrun: which share of the work is this process's, and the few collective
steps between ranks (rank 0's plan to everyone, barriers, records gathered to rank 0).

A plain process is a world of one whose collectives do nothing. Under torchrun (``WORLD_SIZE``
> 1) featstore joins the job's process group, creating a gloo group when none exists: the
collectives only move small Python objects, so gloo serves GPU and CPU jobs alike.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from .errors import FeatstoreError

TIMEOUT_ENV = "FEATSTORE_DIST_TIMEOUT"
# Ranks wait at barriers for the slowest rank and for rank 0's source hashing: hours, not the
# default 30 minutes.
DEFAULT_TIMEOUT_S = 24 * 3600


class RankFailedError(FeatstoreError):
    """Another rank (rank 0, while planning) failed; its message says why."""


@dataclass
class Ranks:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    local_world: int = 1
    owns_group: bool = False

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1

    def label(self) -> str:
        return f"rank {self.rank}/{self.world}" if self.distributed else ""

    @classmethod
    def from_env(cls) -> Ranks:
        """This process's place in a torchrun job (a world of one outside torchrun)."""
        try:
            world = int(os.environ.get("WORLD_SIZE", "1"))
        except ValueError:
            raise FeatstoreError("WORLD_SIZE must be an integer (set by torchrun).") from None
        if world <= 1:
            return cls()
        import torch.distributed as dist

        owns = False
        if not dist.is_initialized():
            timeout = timedelta(seconds=float(os.environ.get(TIMEOUT_ENV, DEFAULT_TIMEOUT_S)))
            try:
                dist.init_process_group("gloo", timeout=timeout)
            except (ValueError, RuntimeError) as e:
                raise FeatstoreError(
                    f"cannot join the torchrun process group ({e}). Start featstore with "
                    f"`torchrun --nproc-per-node N -m featstore extract ...`."
                ) from None
            owns = True
        return cls(
            rank=dist.get_rank(),
            world=dist.get_world_size(),
            local_rank=int(os.environ.get("LOCAL_RANK", "0")),
            local_world=int(os.environ.get("LOCAL_WORLD_SIZE", "1")),
            owns_group=owns,
        )

    # -- collectives (no-ops in a world of one) -------------------------------------------------
    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj``, on every rank."""
        if not self.distributed:
            return obj
        import torch.distributed as dist

        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order (on every rank)."""
        if not self.distributed:
            return [obj]
        import torch.distributed as dist

        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        if self.distributed:
            import torch.distributed as dist

            dist.barrier()

    def share(self, outcome: Any | BaseException) -> Any:
        """Rank 0's result or its error, on every rank: a failure while planning becomes one
        clear error on rank 0 and a ``RankFailedError`` elsewhere, never a hang."""
        failed = isinstance(outcome, BaseException)
        if not self.distributed:
            if failed:
                raise outcome
            return outcome
        shared = self.broadcast(("error", str(outcome)) if failed else ("ok", outcome))
        if self.main and failed:
            raise outcome
        if shared[0] == "error":
            raise RankFailedError(f"rank 0 failed: {shared[1]}")
        return shared[1]

    def close(self) -> None:
        if self.owns_group:
            import torch.distributed as dist

            dist.destroy_process_group()
            self.owns_group = False
