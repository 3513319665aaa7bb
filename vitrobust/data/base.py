"""What every dataset yields: uint8 images (decoded once) plus labels and metadata."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from vitrobust.errors import UserError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class DatasetError(UserError, FileNotFoundError):
    """A dataset that cannot be found or read, with a message that says how to fix it."""


@dataclass
class ImageSet:
    """A split of a dataset.

    `images` is a uint8 NCHW tensor when the split is held in memory; otherwise `read(i)` decodes
    sample i to a uint8 CHW tensor. Images become float [0,1] only in the loader.
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

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def subset(self, n: int | None) -> ImageSet:
        """The first n samples in dataset order (the deterministic evaluation subset)."""
        if n is None or n >= len(self):
            return self
        images = self.images[:n] if self.images is not None else None
        return ImageSet(
            labels=self.labels[:n], classes=self.classes, img_size=self.img_size, in_chans=self.in_chans,
            mean=self.mean, std=self.std, images=images, read=self.read, name=self.name, info=self.info,
        )

    def sample(self, index: int) -> torch.Tensor:
        return self.images[index] if self.images is not None else self.read(index)
