"""Batches on the device: shuffled, sharded across ranks, augmented; or in order for evaluation."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from vitrobust.config import AugmentConfig, ConfigError
from vitrobust.data.augment import BatchAugment, randaugment_transform
from vitrobust.data.base import ImageSet


@dataclass
class Batch:
    x: torch.Tensor  # float [0,1] NCHW on the device
    y: torch.Tensor  # hard labels (for mixed batches: the dominant label)
    index: torch.Tensor  # positions in the dataset
    target: torch.Tensor | None = None  # soft targets (mixup/cutmix), else None
    extras: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.y)


class _Samples(Dataset):
    """Per-sample access for splits that are not in memory, or when RandAugment is on."""

    def __init__(self, data: ImageSet, transform=None):
        self.data, self.transform = data, transform

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int):
        img = self.data.sample(i)
        return (self.transform(img) if self.transform else img), i


def resize(x: torch.Tensor, size: int) -> torch.Tensor:
    if x.shape[-1] == size and x.shape[-2] == size:
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False).clamp_(0, 1)


class BatchLoader:
    """Iterates index batches over an ImageSet.

    train=True: a global permutation per epoch (seeded by seed and epoch), full global batches only,
    each rank taking its contiguous share. train=False: dataset order, rank r taking every
    world-th batch; `index` lets callers put per-sample results back in order.
    """

    def __init__(
        self, data: ImageSet, batch_size: int, device: torch.device, *, train: bool, img_size: int | None = None,
        augment: AugmentConfig | None = None, seed: int = 0, rank: int = 0, world: int = 1, num_workers: int = 0,
    ):
        self.data, self.device, self.train = data, device, train
        self.size = img_size or data.img_size
        self.seed, self.rank, self.world = seed, rank, world
        self.epoch, self.skip = 0, 0
        if train and batch_size % world:
            raise ConfigError(f"data.batch_size={batch_size} must be divisible by the number of ranks ({world})")
        self.batch_size = batch_size
        aug = augment if train else None
        self.batch_augment = BatchAugment(aug, len(data), seed) if aug else None
        transform = None
        if aug is not None and aug.randaugment:
            transform = randaugment_transform(aug.randaugment, data.in_chans, data.img_size)
        self.samples = _Samples(data, transform) if (data.images is None or transform) else None
        self.num_workers = num_workers
        self.set_epoch(0)

    def set_epoch(self, epoch: int, skip_batches: int = 0) -> None:
        self.epoch, self.skip = epoch, skip_batches
        if self.batch_augment:
            self.batch_augment.set_epoch(epoch)

    def __len__(self) -> int:
        n = len(self.data)
        if self.train:
            return n // self.batch_size
        batches = -(-n // self.batch_size)
        return len(range(self.rank, batches, self.world))

    def _index_batches(self) -> list[torch.Tensor]:
        n = len(self.data)
        if self.train:
            gen = torch.Generator().manual_seed(self.seed * 7_919 + self.epoch)
            order = torch.randperm(n, generator=gen)
            share = self.batch_size // self.world
            out = []
            for b in range(self.skip, n // self.batch_size):
                start = b * self.batch_size + self.rank * share
                out.append(order[start : start + share])
            return out
        order = torch.arange(n)
        starts = range(self.rank * self.batch_size, n, self.world * self.batch_size)
        return [order[s : s + self.batch_size] for s in starts]

    def _raw(self):
        batches = self._index_batches()
        if self.samples is None:
            for idx in batches:
                yield self.data.images[idx], idx
            return
        loader = DataLoader(self.samples, batch_sampler=[b.tolist() for b in batches],
                            num_workers=self.num_workers, persistent_workers=False)
        yield from loader

    def __iter__(self):
        for imgs, idx in self._raw():
            x = imgs.to(self.device, non_blocking=True).float().div_(255)
            if self.batch_augment is not None:
                x = self.batch_augment(x, idx)
            x = resize(x, self.size)
            y = self.data.labels[idx].to(self.device, non_blocking=True)
            yield Batch(x=x, y=y, index=idx)
