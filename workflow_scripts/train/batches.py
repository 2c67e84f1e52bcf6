"""Deterministic batch plans: which samples every process sees at every step, as a function of the step.

Sample positions run 0, 1, 2, ... over an endless sequence of seeded epoch permutations. Step s owns
positions [s*B, (s+1)*B); they are cut into micro-batches of size m; micro-batch c goes to process
c % world as its accumulation step c // world. The union over processes and accumulation steps is
the same global batch whatever the world size, and resuming at step s needs no loader state.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from workflow_scripts.seeding import derive_seed


@dataclass(frozen=True)
class Sample:
    position: int  # global position in the sample stream: the key of this sample's noise
    index: int  # row of the dataset


@dataclass(frozen=True)
class BatchPlan:
    num_samples: int
    batch_size: int
    micro_batch_size: int
    seed: int

    def __post_init__(self) -> None:
        if self.num_samples < 1:
            raise ValueError(
                "the training split is empty: check data.filters and data.splits in the manifest"
            )

    @lru_cache(maxsize=4)  # noqa: B019 - plans are few and long-lived
    def _epoch(self, epoch: int) -> np.ndarray:
        return np.random.default_rng(derive_seed(self.seed, "epoch", epoch)).permutation(self.num_samples)

    def index(self, position: int) -> int:
        epoch, offset = divmod(position, self.num_samples)
        return int(self._epoch(epoch)[offset])

    def micro_batches(self, step: int, rank: int, world: int) -> list[list[Sample]]:
        start = step * self.batch_size
        chunks = [
            [Sample(p, self.index(p)) for p in range(start + c, start + c + self.micro_batch_size)]
            for c in range(0, self.batch_size, self.micro_batch_size)
        ]
        mine = chunks[rank::world]
        if len(chunks) % world:
            raise ValueError(
                f"{len(chunks)} micro-batches per step cannot be split evenly over {world} processes"
            )
        return mine
