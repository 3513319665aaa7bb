"""RobustViT's data split for relevance fine-tuning, made deterministic.

The reference (hila-chefer/RobustViT, segmentation_dataset.py) takes the first `train_classes`
ImageNet-S classes in os.listdir order (optionally shuffled by a seed) and the first images of each
in listdir order: the split depends on the file system. Here classes are the SORTED names of the
classes that have images, shuffled by a seeded generator, and the images of a class are its first
ones in dataset order (sorted file names for image folders). Both parts come from the same source
split (the masked training images); labels keep their dataset ids, so the classifier is unchanged.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from vitrobust.config import MaskConfig
from vitrobust.data.base import ImageSet
from vitrobust.errors import ConfigError


def split_classes(names: list[str], train_classes: int, seed: int) -> tuple[list[str], list[str]]:
    """(train class names, held-out class names): sorted names in a seeded random order."""
    ordered = sorted(names)
    if train_classes >= len(ordered):
        raise ConfigError(f"data.masks.train_classes={train_classes} leaves no class for validation: the data has "
                          f"{len(ordered)} classes with images; choose at most {len(ordered) - 1}")
    perm = torch.randperm(len(ordered), generator=torch.Generator().manual_seed(seed)).tolist()
    shuffled = [ordered[i] for i in perm]
    return shuffled[:train_classes], shuffled[train_classes:]


def reference_split(data: ImageSet, part: str, images_per_class: int = 3, train_classes: int = 500,
                    val_images_per_class: int = 1, seed: int = 0) -> ImageSet:
    """`part` 'train': images_per_class images of each of train_classes classes; anything else: the
    validation part, val_images_per_class images of each remaining class. Samples stay in dataset order;
    a class with fewer images contributes all it has."""
    labels = data.labels.tolist()
    present = sorted(set(labels))
    train, held_out = split_classes([data.classes[k] for k in present], train_classes, seed)
    chosen = {data.classes.index(name) for name in (train if part == "train" else held_out)}
    per_class = images_per_class if part == "train" else val_images_per_class
    taken: dict[int, int] = {}
    keep = []
    for i, label in enumerate(labels):
        if label in chosen and taken.get(label, 0) < per_class:
            taken[label] = taken.get(label, 0) + 1
            keep.append(i)
    info = {**data.info, "split": "reference", "split_part": part, "split_classes": len(chosen)}
    return replace(data.select(keep), info=info)


def apply_split(data: ImageSet, cfg: MaskConfig, part: str) -> ImageSet:
    if cfg.split == "none":
        return data
    return reference_split(data, part, cfg.images_per_class, cfg.train_classes, cfg.val_images_per_class,
                           cfg.split_seed)


__all__ = ["apply_split", "reference_split", "split_classes"]
