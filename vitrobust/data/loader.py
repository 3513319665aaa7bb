"""Batches on the device: shuffled, sharded across ranks, augmented; or in order for evaluation.

When the dataset has foreground masks, every batch carries `extras["mask"]`: a bool B x 1 x H x W
tensor on the device, warped by the same crop/flip as `x` and resized with nearest neighbour
(data.masks.resize=bilinear: warped and resized bilinearly, thresholded at 0.5, and the fractional
mask kept as float `extras["mask_soft"]`, as the RobustViT reference fed it). Mixup/cutmix (applied
by the trainer after the loader) and RandAugment (per-sample PIL ops) cannot carry a mask: with
requested masks (data.masks.source) they are a config error; a dataset's own masks are dropped.
Random erasing leaves the mask as it is (the erased patch keeps its foreground label).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from vitrobust.config import AugmentConfig
from vitrobust.data.augment import BatchAugment, randaugment_transform
from vitrobust.data.base import ImageSet
from vitrobust.errors import ConfigError


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

    def __init__(self, data: ImageSet, transform=None, masks: bool = False):
        self.data, self.transform, self.masks = data, transform, masks

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int):
        img = self.data.sample(i)
        img = self.transform(img) if self.transform else img
        return (img, self.data.mask(i), i) if self.masks else (img, i)


def resize(x: torch.Tensor, size: int) -> torch.Tensor:
    if x.shape[-1] == size and x.shape[-2] == size:
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False).clamp_(0, 1)


def resize_mask(mask: torch.Tensor, size: int, mode: str = "nearest") -> torch.Tensor:
    """Nearest keeps a 0/1 mask binary ("nearest-exact": pixel centres, like PIL's NEAREST)."""
    if mask.shape[-1] == size and mask.shape[-2] == size:
        return mask
    if mode == "nearest":
        return F.interpolate(mask, size=(size, size), mode="nearest-exact")
    return resize(mask, size)


def _mask_conflict(aug: AugmentConfig | None) -> str | None:
    if aug is None:
        return None
    mixing = [f"augment.{k}={getattr(aug, k)}" for k in ("mixup", "cutmix") if getattr(aug, k) > 0]
    if mixing:
        return f"{' and '.join(mixing)} blend two images, so no mask fits the result; set them to 0"
    if aug.randaugment:
        return (f"augment.randaugment={aug.randaugment!r} transforms each image with PIL ops the mask cannot "
                f"follow; set augment.randaugment=null (crop, flip and colour jitter do carry masks)")
    return None


class BatchLoader:
    """Iterates index batches over an ImageSet.

    train=True: a global permutation per epoch (seeded by seed and epoch), full global batches only,
    each rank taking its contiguous share; a split streamed from shards (data.stream) is read shard by
    shard instead (ShardStream: each rank and worker its own shards, a seeded shuffle buffer).
    train=False: dataset order, rank r taking every world-th batch; `index` lets callers put
    per-sample results back in order.
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
        self.masks = data.has_masks
        conflict = _mask_conflict(aug) if self.masks else None
        if conflict:
            source = data.info.get("mask_source", "dataset")
            if source != "dataset":
                raise ConfigError(f"data.masks.source={source}: {conflict}, or set data.masks.source=none")
            self.masks = False  # the dataset's own masks are not needed by a recipe that mixes images
        transform = None
        if aug is not None and aug.randaugment:
            transform = randaugment_transform(aug.randaugment, data.in_chans, data.img_size)
        lazy = data.images is None or (self.masks and data.masks is None)
        self.samples = _Samples(data, transform, self.masks) if (lazy or transform) else None
        self.num_workers, self.transform = num_workers, transform
        self.stream = data.stream if train and data.images is None else None
        if self.stream is not None:
            if self.masks:
                raise ConfigError("foreground masks cannot follow a training split streamed from shards (data.name="
                                  "webdataset): set data.in_memory=true, or data.masks.source=none")
            self.stream.steps(world, max(1, num_workers), batch_size // world)  # a ConfigError now if it cannot run
        self.set_epoch(0)

    def set_epoch(self, epoch: int, skip_batches: int = 0) -> None:
        self.epoch, self.skip = epoch, skip_batches
        if self.batch_augment:
            self.batch_augment.set_epoch(epoch)

    def __len__(self) -> int:
        n = len(self.data)
        if self.stream is not None:
            return self.stream.steps(self.world, max(1, self.num_workers), self.batch_size // self.world)
        if self.train:
            return n // self.batch_size
        batches = -(-n // self.batch_size)
        return len(range(self.rank, batches, self.world))

    def index_batches(self) -> list[torch.Tensor]:
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
        """(uint8 images, uint8 masks or None, index) per batch."""
        if self.stream is not None:
            for imgs, idx in self.stream.batches(epoch=self.epoch, skip=self.skip, seed=self.seed, rank=self.rank,
                                                 world=self.world, num_workers=self.num_workers,
                                                 share=self.batch_size // self.world, transform=self.transform):
                yield imgs, None, idx
            return
        batches = self.index_batches()
        if self.samples is None:
            for idx in batches:
                yield self.data.images[idx], (self.data.masks[idx] if self.masks else None), idx
            return
        loader = DataLoader(self.samples, batch_sampler=[b.tolist() for b in batches],
                            num_workers=self.num_workers, persistent_workers=False)
        for item in loader:
            yield (item[0], item[1], item[2]) if self.masks else (item[0], None, item[1])

    def __iter__(self):
        for imgs, masks, idx in self._raw():
            x = imgs.to(self.device, non_blocking=True).float().div_(255)
            if self.batch_augment is not None:
                x = self.batch_augment(x, idx)
            x = resize(x, self.size)
            y = self.data.labels[idx].to(self.device, non_blocking=True)
            batch = Batch(x=x, y=y, index=idx)
            if masks is not None:
                self._add_mask(batch, masks)
            yield batch

    def _add_mask(self, batch: Batch, masks: torch.Tensor) -> None:
        mode = self.data.mask_resize
        m = masks.to(self.device, non_blocking=True).float().div_(255)
        if self.batch_augment is not None:
            m = self.batch_augment.warp_mask(m, batch.index, mode)
        m = resize_mask(m, self.size, mode)
        batch.extras["mask"] = m >= 0.5
        if mode != "nearest":
            batch.extras["mask_soft"] = m
