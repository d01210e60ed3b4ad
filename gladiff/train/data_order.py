"""The order in which training examples are visited, as a resumable position.

Epoch ``e`` visits the dataset in the permutation drawn from ``seed + e``; the global stream is those
permutations end to end. Step ``s`` takes the next ``global_batch_size`` indices of the stream and
rank ``r`` of ``W`` takes the ``r``-th contiguous slice of them, so the examples of one global batch
are the same whatever the number of processes. The position ``(epoch, index)`` is all a checkpoint
needs to continue the exact order.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader, Dataset, Sampler


@dataclass
class DataPosition:
    """Where the stream stands: ``index`` examples of ``epoch`` are already used."""

    epoch: int = 0
    index: int = 0

    def state_dict(self) -> dict:
        return {"epoch": int(self.epoch), "index": int(self.index)}

    @classmethod
    def from_state(cls, state: dict) -> "DataPosition":
        return cls(epoch=int(state["epoch"]), index=int(state["index"]))


def epoch_permutation(num_examples: int, seed: int, epoch: int) -> torch.Tensor:
    """The visiting order of epoch ``epoch``: ``int64 [num_examples]``, a function of (seed, epoch)."""
    g = torch.Generator().manual_seed(int(seed) * 1_000_003 + int(epoch))
    return torch.randperm(num_examples, generator=g)


class BatchStream(Sampler):
    """Infinite per-rank batches of dataset indices, starting at ``position``.

    Iterating yields ``list[int]`` of ``global_batch_size // world_size`` indices per step. The
    stream is a pure function of ``(num_examples, seed, position)``; ``advance(position, steps)``
    says where it stands after ``steps`` global batches without iterating.
    """

    def __init__(self, num_examples: int, global_batch_size: int, seed: int = 0, rank: int = 0,
                 world_size: int = 1, position: DataPosition | None = None):
        if num_examples <= 0:
            raise ValueError("the dataset is empty: nothing to train on")
        if global_batch_size % world_size:
            raise ValueError(f"global_batch_size {global_batch_size} is not divisible by the "
                             f"{world_size} processes")
        self.num_examples = num_examples
        self.global_batch_size = global_batch_size
        self.local_batch_size = global_batch_size // world_size
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.position = position or DataPosition()

    def advance(self, position: DataPosition, steps: int = 1) -> DataPosition:
        """The position ``steps`` global batches after ``position``."""
        flat = position.epoch * self.num_examples + position.index + steps * self.global_batch_size
        return DataPosition(*divmod(flat, self.num_examples))

    def __iter__(self):
        epoch, index = self.position.epoch, self.position.index
        perm = epoch_permutation(self.num_examples, self.seed, epoch)
        lo = self.rank * self.local_batch_size
        while True:
            batch = []
            while len(batch) < self.global_batch_size:
                if index == self.num_examples:
                    epoch, index = epoch + 1, 0
                    perm = epoch_permutation(self.num_examples, self.seed, epoch)
                take = min(self.global_batch_size - len(batch), self.num_examples - index)
                batch.extend(perm[index:index + take].tolist())
                index += take
            yield batch[lo:lo + self.local_batch_size]

    def __len__(self):  # DataLoader asks; the stream is endless
        return 2**62


MAX_AUTO_WORKERS = 4  # enough to keep a GPU step fed from latents or JPEGs; more only cost memory


def resolve_num_workers(num_workers: int | str, dataset: Dataset, device_type: str,
                        local_processes: int = 1, cpu_count: int | None = None) -> int:
    """``num_workers`` as a number. ``"auto"``: 0 (load in the training process) on a CPU, where the
    cores are the trainer's, and for data held in memory (the digits); else, for data read from
    disk or rendered on access on a GPU (``dataset.reads_from_disk``: image folders, latents, the
    glyphs), workers so that the GPU does not wait for it: ``min(MAX_AUTO_WORKERS, cores per
    process - 1)``, at least 1."""
    if num_workers != "auto":
        return int(num_workers)
    if device_type != "cuda" or not getattr(dataset, "reads_from_disk", False):
        return 0
    cores = (cpu_count or os.cpu_count() or 1) // max(1, local_processes)
    return max(1, min(MAX_AUTO_WORKERS, cores - 1))


def batch_loader(dataset: Dataset, stream: BatchStream, num_workers: int = 0,
                 pin_memory: bool = False, generator: torch.Generator | None = None) -> DataLoader:
    """A DataLoader yielding collated ``(x, y)`` batches in ``stream``'s order.

    Workers may prefetch ahead; the training loop tracks the position by steps consumed
    (``stream.advance``), never by what the loader has read. ``generator`` seeds the workers; pass
    one, or the loader draws that seed from torch's global RNG when iteration starts, which would
    shift the training noise stream of a resumed run against an uninterrupted one.
    """
    return DataLoader(dataset, batch_sampler=stream, num_workers=num_workers,
                      pin_memory=pin_memory, persistent_workers=num_workers > 0,
                      generator=generator)
