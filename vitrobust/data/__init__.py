"""Datasets by name. Each loader returns an ImageSet of uint8 images; loaders yield [0,1] floats."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from vitrobust.config import DataConfig, suggest
from vitrobust.data.base import DatasetError, ImageSet
from vitrobust.data.fashion_mnist import load_fashion_mnist
from vitrobust.data.folders import load_cifar, load_image_folder
from vitrobust.data.loader import Batch, BatchLoader

DATASETS: dict[str, Callable[..., ImageSet]] = {
    "fashion_mnist": load_fashion_mnist,
    "cifar10": partial(load_cifar, "cifar10"),
    "cifar100": partial(load_cifar, "cifar100"),
    "imagefolder": load_image_folder,
}

_CACHE: dict[tuple, ImageSet] = {}


def register_dataset(name: str, loader: Callable[..., ImageSet]) -> None:
    """Add a dataset: `loader(split, root=..., download=..., img_size=..., in_memory=...) -> ImageSet`."""
    DATASETS[name] = loader


def load_split(cfg: DataConfig, split: str) -> ImageSet:
    """The split ('train' or 'test'), cached per process; subsets are the first n samples."""
    if cfg.name not in DATASETS:
        raise DatasetError(f"unknown dataset {cfg.name!r}; {suggest(cfg.name, list(DATASETS))}known: {', '.join(DATASETS)}")
    key = (cfg.name, split, cfg.root, cfg.img_size, cfg.in_memory)
    if key not in _CACHE:
        _CACHE[key] = DATASETS[cfg.name](
            split, root=cfg.root, download=cfg.download, img_size=cfg.img_size, in_memory=cfg.in_memory
        )
    data = _CACHE[key]
    return data.subset(cfg.train_subset if split == "train" else cfg.test_subset)


__all__ = ["DATASETS", "Batch", "BatchLoader", "DatasetError", "ImageSet", "load_split", "register_dataset"]
