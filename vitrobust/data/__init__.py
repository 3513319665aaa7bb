"""Datasets by name. Each loader returns an ImageSet of uint8 images; loaders yield [0,1] floats."""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable
from dataclasses import replace
from functools import partial

from vitrobust.config import DataConfig
from vitrobust.data.base import ImageSet
from vitrobust.data.fashion_mnist import load_fashion_mnist
from vitrobust.data.folders import load_cifar, load_image_folder
from vitrobust.data.imagenet import load_imagenet
from vitrobust.data.loader import Batch, BatchLoader
from vitrobust.data.masks import attach_masks
from vitrobust.data.shards import load_webdataset
from vitrobust.data.splits import apply_split
from vitrobust.data.textured import load_fashion_mnist_textured
from vitrobust.errors import ConfigError, DatasetError
from vitrobust.registry import Registry

# name -> loader(split, root=..., download=..., img_size=..., in_memory=...) -> ImageSet; a loader also
# gets `options=` (data.options) when the config sets any.
DATASETS: Registry[Callable[..., ImageSet]] = Registry("dataset", error=DatasetError)
DATASETS.add("fashion_mnist", load_fashion_mnist)
DATASETS.add("fashion_mnist_textured", load_fashion_mnist_textured)  # garments on class-correlated textures
DATASETS.add("cifar10", partial(load_cifar, "cifar10"))
DATASETS.add("cifar100", partial(load_cifar, "cifar100"))
DATASETS.add("imagefolder", load_image_folder)
DATASETS.add("imagenet", load_imagenet)  # wnid class folders, canonical labels; test split = val
DATASETS.add("webdataset", load_webdataset)  # tar shards (data/shards.py); training streams them when not in memory
DATASETS.add("imagenet_5k", partial(load_imagenet, robustbench_5k=True))  # test = RobustBench's 5,000 val images

_CACHE: dict[tuple, ImageSet] = {}


def register_dataset(name: str, loader: Callable[..., ImageSet]) -> None:
    """Add a dataset: `loader(split, root=..., download=..., img_size=..., in_memory=...) -> ImageSet`;
    it also gets `options=` (data.options) when the config sets any."""
    DATASETS.add(name, loader)


SHARED = ("root", "img_size", "in_memory", "memory_budget_gb")  # given to a loader that takes them
WHEN_SET = {  # given only when set; a loader that does not take one it is given is a ConfigError
    "download": lambda cfg: cfg.download,
    "crop_pct": lambda cfg: cfg.crop_pct is not None,
    "interpolation": lambda cfg: cfg.interpolation is not None,
    "in_chans": lambda cfg: cfg.in_chans is not None,
    "skip_bad": lambda cfg: cfg.skip_bad,
    "options": lambda cfg: bool(cfg.options),
}


def _parameters(loader: Callable) -> tuple[set[str], bool]:
    """Keyword names a loader takes, and whether it takes any (a **kwargs catch-all)."""
    params = inspect.signature(loader).parameters.values()
    return {p.name for p in params}, any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params)


def loader_kwargs(cfg: DataConfig, loader: Callable) -> dict:
    """The data.* settings a dataset's loader gets. A setting the loader does not take is a ConfigError
    naming it and what the dataset takes: no setting is silently ignored."""
    names, anything = _parameters(loader)
    kwargs = {k: getattr(cfg, k) for k in SHARED if anything or k in names}
    for key, is_set in WHEN_SET.items():
        if not is_set(cfg):
            continue
        if not anything and key not in names:
            takes = sorted(n for n in names if n in SHARED or n in WHEN_SET)
            raise ConfigError(f"data.{key} does not apply to the dataset {cfg.name!r}; it takes: "
                              f"{', '.join(f'data.{n}' for n in takes)}")
        kwargs[key] = getattr(cfg, key)
    return kwargs


def load_split(cfg: DataConfig, split: str) -> ImageSet:
    """The split ('train' or 'test'), cached per process; a subset is a balanced sample (ImageSet.subset).

    With data.masks.source set the split carries those masks; with data.masks.split=reference both
    'train' and 'test' are parts of the masked training split (splits.py).
    """
    load = DATASETS.get(cfg.name, key="data.name")
    masks = cfg.masks
    source = "train" if masks.split != "none" else split
    key = (cfg.name, source, cfg.root, cfg.img_size, cfg.in_memory, cfg.crop_pct, cfg.interpolation, cfg.in_chans,
           cfg.skip_bad, cfg.memory_budget_gb, json.dumps(cfg.options, sort_keys=True, default=str))
    if key not in _CACHE:
        _CACHE[key] = load(source, **loader_kwargs(cfg, load))
    data = _CACHE[key]
    if masks.source != "none":
        how = masks.model_dump(include={"source", "root", "threshold", "callable", "resize", "missing"})
        masked_key = (*key, json.dumps(how, sort_keys=True))
        if masked_key not in _CACHE:
            _CACHE[masked_key] = attach_masks(data, masks, source)
        data = _CACHE[masked_key]
    data = apply_split(data, masks, split)
    if data.has_masks and data.mask_resize != masks.resize:
        data = replace(data, mask_resize=masks.resize)
    return data.subset(cfg.train_subset if split == "train" else cfg.test_subset, cfg.subset_seed)


__all__ = ["DATASETS", "Batch", "BatchLoader", "DatasetError", "ImageSet", "load_split", "register_dataset"]
