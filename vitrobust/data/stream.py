"""Training batches streamed from tar shards, split by rank and by worker, resumable mid-epoch.
See docs/architecture.md, "Sharded data".

- Assignment (fixed for the whole run): the shards are dealt to the ranks, then each rank's shards to
  its max(1, data.num_workers) workers, each time the largest shard first to the group holding the
  fewest samples. Every rank runs the same number of steps per epoch: the smallest over the ranks of
  the sum over its workers of floor(samples / per-rank batch); the rest of an epoch is left out.
- Order (new every epoch): a worker reads its shards in an order drawn from (seed, epoch, rank, worker)
  through the `webdataset` pipeline (tar members grouped into samples, then a shuffle buffer seeded the
  same way) and decodes only what it yields, as full per-rank batches.
- DataLoader workers are read round robin, skipping a worker that has run dry; the epoch's batch
  sequence is therefore a fixed function of the counts. Resuming at batch k: each worker skips (without
  decoding) the batches it gave among the first k, and the worker ids are rotated so the round robin
  starts at the worker that gives batch k: the resumed epoch yields exactly the batches not yet seen,
  in the same order.
"""

from __future__ import annotations

import functools
import itertools
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from webdataset.filters import shuffle
from webdataset.tariterators import tarfile_samples

from vitrobust.errors import ConfigError, DatasetError


@dataclass(frozen=True)
class Shard:
    path: str
    start: int  # index of its first sample in the split
    count: int  # samples read from it (its first `count` in member order, or its picks)
    picks: tuple[tuple[int, int], ...] | None = None  # a subset's (member offset, index yielded), by offset


def balance(shards: list[Shard], groups: int) -> list[list[Shard]]:
    """Shards dealt to `groups` groups, largest first to the group with the fewest samples; each group in
    split order."""
    out: list[list[Shard]] = [[] for _ in range(groups)]
    totals = [0] * groups
    for shard in sorted(shards, key=lambda s: (-s.count, s.start)):
        g = min(range(groups), key=lambda k: (totals[k], k))
        out[g].append(shard)
        totals[g] += shard.count
    return [sorted(group, key=lambda s: s.start) for group in out]


@functools.lru_cache(maxsize=8)
def _assign(shards: tuple[Shard, ...], world: int, workers: int) -> list[list[list[Shard]]]:
    """The run's fixed assignment, computed once (steps, resume points and every epoch read it)."""
    return [balance(ranked, workers) for ranked in balance(list(shards), world)]


def resume_point(batches: list[int], k: int) -> tuple[list[int], int]:
    """Round robin over workers with `batches[w]` batches each, skipping dry ones: how many batches each
    worker gave among the first k, and the worker that gives batch k."""
    done, w = [0] * len(batches), 0
    for _ in range(k):
        while done[w] >= batches[w]:
            w = (w + 1) % len(batches)
        done[w] += 1
        w = (w + 1) % len(batches)
    for _ in range(len(batches)):  # the next worker that still has batches
        if done[w] < batches[w]:
            break
        w = (w + 1) % len(batches)
    return done, w


@dataclass(frozen=True)
class ShardStream:
    shards: tuple[Shard, ...]
    read: Callable  # a ShardReader (data/shards.py): its decode_sample decodes a streamed sample
    buffer: int  # samples in the shuffle buffer

    def select(self, positions: list[int]) -> ShardStream:
        """The stream of the split's samples at `positions` (a balanced data.train_subset), yielding index i for
        positions[i]: each shard is still read in member order, the samples left out skipped undecoded, so the
        batches are a function of the picks and resuming stays exact."""
        wanted = {p: i for i, p in enumerate(positions)}
        kept = []
        for shard in self.shards:
            offsets = range(shard.count) if shard.picks is None else [o for o, _ in shard.picks]
            picks = tuple((o, wanted.pop(shard.start + o)) for o in offsets if shard.start + o in wanted)
            if picks:
                kept.append(replace(shard, count=len(picks), picks=picks))
        if wanted:
            raise DatasetError(f"webdataset: {len(wanted)} selected samples are in no shard of the stream "
                               f"(e.g. split index {next(iter(wanted))})")
        return replace(self, shards=tuple(kept))

    def groups(self, world: int, workers: int) -> list[list[list[Shard]]]:
        """[rank][worker] -> shards."""
        if len(self.shards) < world:
            raise ConfigError(f"webdataset: {len(self.shards)} shard(s) for {world} ranks; every rank needs at least "
                              f"one: write more, smaller shards (vitrobust data shard --shard-size)")
        return _assign(self.shards, world, workers)

    def worker_batches(self, world: int, workers: int, share: int) -> list[list[int]]:
        return [[sum(s.count for s in g) // share for g in rank] for rank in self.groups(world, workers)]

    def steps(self, world: int, workers: int, share: int) -> int:
        """Batches per epoch, the same on every rank."""
        steps = min(sum(rank) for rank in self.worker_batches(world, workers, share))
        if steps == 0:
            raise ConfigError(f"webdataset: a rank's shards hold fewer than data.batch_size / ranks = {share} samples "
                              f"per worker: lower data.batch_size or data.num_workers")
        return steps

    def batches(self, *, epoch: int, skip: int, seed: int, rank: int, world: int, num_workers: int, share: int,
                transform: Callable | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(uint8 images, split indices) of this rank's batches of `epoch`, from batch `skip` on."""
        workers = max(1, num_workers)
        steps = self.steps(world, workers, share)
        done, first = resume_point(self.worker_batches(world, workers, share)[rank], skip)
        source = _Workers(self, self.groups(world, workers)[rank], done, first, share,
                          (seed, epoch, rank), transform)
        items = iter(source) if num_workers == 0 else iter(DataLoader(source, batch_size=None, num_workers=num_workers))
        yield from itertools.islice(items, max(0, steps - skip))

    def samples(self, shards: list[Shard]) -> Iterator[dict]:
        """The samples of `shards` in that order, each with its index in the split (or subset) as `__index__`."""
        for shard in shards:
            picks = None if shard.picks is None else dict(shard.picks)  # member offset -> index yielded
            n = 0
            for offset, sample in enumerate(tarfile_samples([{"url": shard.path}])):
                if n == shard.count:
                    break
                if picks is not None and offset not in picks:
                    continue  # not in the subset: skipped undecoded
                sample["__index__"] = shard.start + offset if picks is None else picks[offset]
                n += 1
                yield sample
            if n < shard.count:
                raise DatasetError(f"shard {shard.path} holds {n} samples, the index says {shard.count}: rewrite the "
                                   f"shards or delete the stale index.json")

class _Workers(IterableDataset):
    """One rank's logical workers; DataLoader worker i plays logical worker (first + i) % W."""

    def __init__(self, stream: ShardStream, groups: list[list[Shard]], done: list[int], first: int, share: int,
                 key: tuple[int, int, int], transform: Callable | None):
        self.stream, self.groups, self.done, self.first, self.share = stream, groups, done, first, share
        self.key, self.transform = key, transform

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        info = get_worker_info()
        if info is not None and info.num_workers != len(self.groups):
            raise RuntimeError(f"{info.num_workers} DataLoader workers for {len(self.groups)} shard groups")
        w = (self.first + (info.id if info is not None else 0)) % len(self.groups)
        rng = random.Random("-".join(map(str, (*self.key, w))))
        order = list(self.groups[w])
        rng.shuffle(order)
        samples = shuffle(self.stream.buffer, initial=self.stream.buffer, rng=rng)(self.stream.samples(order))
        samples = itertools.islice(samples, self.done[w] * self.share, None)  # resumed: not decoded
        images, index = [], []
        for sample in samples:
            img = self.stream.read.decode_sample(sample)
            images.append(self.transform(img) if self.transform else img)
            index.append(sample["__index__"])
            if len(images) == self.share:
                yield torch.stack(images), torch.tensor(index)
                images, index = [], []
