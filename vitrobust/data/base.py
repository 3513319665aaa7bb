"""What every dataset yields: uint8 images (decoded once) plus labels and metadata."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from vitrobust.errors import DatasetError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_MEMORY_BUDGET_GB = 4.0  # data.memory_budget_gb


def keep_in_memory(setting: bool | str, n: int, chans: int, size: int, budget_gb: float = DEFAULT_MEMORY_BUDGET_GB,
                   what: str = "dataset") -> bool:
    """data.in_memory resolved for a split of n decoded uint8 chans x size x size images: "auto" keeps it
    in memory when it fits the budget; True beyond the budget is an error (it would exhaust memory)."""
    need = n * chans * size * size
    budget = budget_gb * 2**30
    if setting == "auto":
        return need <= budget
    if setting and need > budget:
        raise DatasetError(
            f"{what}: {n:,} images take {need / 2**30:.1f} GiB decoded, more than data.memory_budget_gb="
            f"{budget_gb:g}; set data.in_memory=auto (decoded lazily in data.num_workers worker processes) "
            f"or raise data.memory_budget_gb"
        )
    return bool(setting)


def decode_all(read: Callable[[int], torch.Tensor], n: int) -> torch.Tensor:
    """Every sample decoded, by a pool of threads (PIL decodes and resizes without holding the GIL)."""
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        return torch.stack(list(pool.map(read, range(n))))


@dataclass(frozen=True)
class Reindexed:
    """`read(i)` of a selection: reads position i of the selection from the parent's reader (picklable
    when the parent's reader is, so DataLoader workers can receive it)."""

    read: Callable[[int], torch.Tensor]
    positions: tuple[int, ...]

    def __call__(self, i: int) -> torch.Tensor:
        return self.read(self.positions[i])


@dataclass
class ImageSet:
    """A split of a dataset.

    `images` is a uint8 NCHW tensor when the split is held in memory; otherwise `read(i)` decodes
    sample i to a uint8 CHW tensor. Images become float [0,1] only in the loader.

    Foreground masks (optional) follow the same pattern: `masks` is a uint8 N x 1 x H x W tensor at the
    images' size, or `read_mask(i)` gives one 1 x H x W mask. 255 = foreground, 0 = background;
    values in between appear only when masks were resized bilinearly (data.masks.resize=bilinear).
    `mask_resize` is how the loader resizes and warps them ("nearest" or "bilinear").
    """

    labels: torch.Tensor
    classes: list[str]
    img_size: int
    in_chans: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    images: torch.Tensor | None = None
    read: Callable[[int], torch.Tensor] | None = None
    name: str = ""
    info: dict = field(default_factory=dict)
    masks: torch.Tensor | None = None
    read_mask: Callable[[int], torch.Tensor] | None = None
    mask_resize: str = "nearest"
    stream: Any = None  # a ShardStream (data/stream.py) when training reads the split shard by shard

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def subset(self, n: int | None) -> ImageSet:
        """The first n samples in dataset order (the deterministic evaluation subset)."""
        if n is None or n >= len(self):
            return self
        return replace(self, labels=self.labels[:n], images=None if self.images is None else self.images[:n],
                       masks=None if self.masks is None else self.masks[:n],
                       stream=None if self.stream is None else self.stream.first(n))

    def select(self, indices: Sequence[int] | torch.Tensor) -> ImageSet:
        """The samples at `indices`, in that order (lazy readers are re-indexed, masks kept)."""
        idx = torch.as_tensor(indices, dtype=torch.long).reshape(-1)
        positions = tuple(idx.tolist())
        return replace(
            self, labels=self.labels[idx], images=None if self.images is None else self.images[idx],
            read=None if self.read is None else Reindexed(self.read, positions),
            masks=None if self.masks is None else self.masks[idx],
            read_mask=None if self.read_mask is None else Reindexed(self.read_mask, positions), stream=None,
        )

    @property
    def has_masks(self) -> bool:
        return self.masks is not None or self.read_mask is not None

    def sample(self, index: int) -> torch.Tensor:
        return self.images[index] if self.images is not None else self.read(index)

    def mask(self, index: int) -> torch.Tensor:
        """The uint8 1 x H x W foreground mask of sample `index` (255 = foreground)."""
        return self.masks[index] if self.masks is not None else self.read_mask(index)
