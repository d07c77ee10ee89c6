"""Batch sampling for the training loop: global batch plans cut into rank × accumulation shards.

A head plans each epoch as a list of *global* batches (dataset indices), a pure function of
(seed, epoch). The loop's DataLoader takes its batches from :class:`ShardedBatchSampler`, which
gives rank ``r`` the micro-batches ``a * world + r`` (``a`` = accumulation step) of every global
batch. One process with ``grad_accum = A`` and ``A`` processes each with its shard therefore see
exactly the same samples per optimizer step, and a resumed run can skip to any step.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np

Plan = list[list[int]]


def epoch_rng(seed: int, epoch: int) -> np.random.Generator:
    """The generator of one epoch's batch plan: a function of (seed, epoch) alone."""
    return np.random.default_rng([seed, epoch])


class ShardedBatchSampler:
    """This rank's micro-batches of each epoch's global batch plan (a DataLoader batch_sampler).

    ``plan(epoch)`` returns the global batches; ``split(batch, parts)`` cuts one into
    ``world * accum`` micro-batches. ``set_epoch(epoch, skip)`` chooses the epoch and how many
    global batches of it were already trained (mid-epoch resume).
    """

    def __init__(
        self,
        plan: Callable[[int], Plan],
        split: Callable[[list[int], int], Plan],
        steps_per_epoch: int,
        rank: int = 0,
        world_size: int = 1,
        accum: int = 1,
    ) -> None:
        self.plan, self.split = plan, split
        self.steps_per_epoch = steps_per_epoch
        self.rank, self.world_size, self.accum = rank, world_size, accum
        self.epoch, self.skip = 0, 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.epoch, self.skip = epoch, skip

    def __len__(self) -> int:
        return (self.steps_per_epoch - self.skip) * self.accum

    def __iter__(self) -> Iterator[list[int]]:
        batches = self.plan(self.epoch)
        if len(batches) != self.steps_per_epoch:
            raise ValueError(
                f"epoch {self.epoch} plans {len(batches)} batches, epoch 0 planned "
                f"{self.steps_per_epoch}: batch_plan must keep its length"
            )
        parts = self.world_size * self.accum
        for batch in batches[self.skip :]:
            shards = self.split(list(batch), parts)
            if len(shards) != parts or any(len(s) == 0 for s in shards):
                raise ValueError(
                    f"a global batch of {len(batch)} cannot be split into {parts} "
                    f"non-empty micro-batches"
                )
            for a in range(self.accum):
                yield shards[a * self.world_size + self.rank]
