"""ImageNet class folders: val, RobustBench's 5,000-image subset, and what every ImageNet-label set shares.

The sets are lazy (an ImageSet with `read`; in_memory only where asked for): images are decoded with
PIL in the loader's worker processes, not held in memory. The preprocessing follows torchvision's `Resize(short) + CenterCrop(size)`
exactly (the pipeline RobustBench and RobustViT evaluate with), so numbers are comparable with theirs.

Sample order: the classes are interleaved (the first image of every class, then the second, ...), the
order evaluation subsets were prefixes of; it stays so that positions (which name the images in results)
keep their meaning. Subsets are balanced samples now (ImageSet.subset), whatever the order.
"""

from __future__ import annotations

import functools
import itertools
import json
import math
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from vitrobust.data.base import (
    DEFAULT_MEMORY_BUDGET_GB,
    IMAGENET_MEAN,
    IMAGENET_STD,
    ImageSet,
    decode_all,
    keep_in_memory,
)
from vitrobust.data.folders import IMAGE_EXTENSIONS
from vitrobust.errors import DatasetError

IMAGENET_CLASSES = 1000
DEFAULT_CROP_PCT, DEFAULT_INTERPOLATION = 0.875, "bilinear"  # torchvision's Resize(256) + CenterCrop(224)
_FILTERS = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC}


@functools.cache
def resource(name: str) -> dict:
    """A JSON table shipped in vitrobust/resources/ (label lists of the benchmarks)."""
    return json.loads(resources.files("vitrobust").joinpath("resources", name).read_text())


def imagenet_wnids() -> list[str]:
    return resource("imagenet_benchmarks.json")["imagenet_wnids"]


@dataclass(frozen=True)
class Preprocess:
    """File -> uint8 CHW: crop `border` px off each side, resize the shorter side to floor(size / crop_pct),
    centre-crop size x size. crop_pct=1 on an image already size x size leaves it untouched (PIL skips
    a resize to the same size), which is the protocol for ImageNet-C and Stylized-ImageNet."""

    size: int
    crop_pct: float = DEFAULT_CROP_PCT
    interpolation: str = DEFAULT_INTERPOLATION
    border: int = 0

    def __call__(self, path: str | Path) -> torch.Tensor:
        try:
            with Image.open(path) as img:
                img = img.convert("RGB")
                if self.border:
                    w, h = img.size
                    img = img.crop((self.border, self.border, w - self.border, h - self.border))
                img = self.resize_crop(img)
                arr = np.asarray(img, dtype=np.uint8)
        except OSError as err:
            raise DatasetError(f"cannot decode image {path}: {err}") from None
        return torch.from_numpy(arr.copy()).permute(2, 0, 1)

    def resize_crop(self, img: Image.Image) -> Image.Image:
        short = math.floor(self.size / self.crop_pct)
        w, h = img.size
        # torchvision's rounding: the long side is truncated, the crop offset rounded half to even
        new_w, new_h = (short, int(short * h / w)) if w <= h else (int(short * w / h), short)
        img = img.resize((new_w, new_h), _FILTERS[self.interpolation])
        top, left = int(round((new_h - self.size) / 2.0)), int(round((new_w - self.size) / 2.0))
        return img.crop((left, top, left + self.size, top + self.size))


@dataclass(frozen=True)
class FileReader:
    """`read(i)` of a lazy ImageSet; a plain picklable object, so DataLoader workers can receive it."""

    files: tuple[str, ...]
    preprocess: Preprocess

    def __call__(self, i: int) -> torch.Tensor:
        return self.preprocess(self.files[i])


def class_folders(root: Path, what: str) -> dict[str, list[str]]:
    """{class folder name: sorted image paths} of the class folders directly under root."""
    if not root.is_dir():
        raise DatasetError(f"{what}: {root} is not a folder")
    out = {}
    with os.scandir(root) as entries:
        folders = sorted(e.name for e in entries if e.is_dir() and not e.name.startswith("."))
    for name in folders:
        with os.scandir(root / name) as entries:
            out[name] = sorted(
                e.path
                for e in entries
                if e.is_file() and os.path.splitext(e.name)[1].lower() in IMAGE_EXTENSIONS
            )
    if not out:
        raise DatasetError(f"{what}: no class folders under {root}")
    if not any(out.values()):
        raise DatasetError(
            f"{what}: the class folders under {root} hold no images ({', '.join(sorted(IMAGE_EXTENSIONS))})"
        )
    return out


def check_names(found: list[str], known, what: str, root: Path, expected: str) -> None:
    unknown = sorted(set(found) - set(known))
    if unknown:
        shown = ", ".join(unknown[:8]) + (f" and {len(unknown) - 8} more" if len(unknown) > 8 else "")
        raise DatasetError(f"{what}: {len(unknown)} class folder(s) under {root} are not {expected}: {shown}")


def interleave(groups: list[list[tuple[str, int]]]) -> list[tuple[str, int]]:
    return [item for row in itertools.zip_longest(*groups) for item in row if item is not None]


def image_set(
    samples: list[tuple[str, int]],
    classes: list[str],
    preprocess: Preprocess,
    name: str,
    info: dict,
    in_memory: bool | str = False,
    memory_budget_gb: float = DEFAULT_MEMORY_BUDGET_GB,
) -> ImageSet:
    files = tuple(path for path, _ in samples)
    read = FileReader(files, preprocess)
    in_memory = keep_in_memory(in_memory, len(files), 3, preprocess.size, memory_budget_gb, name)
    images = decode_all(read, len(files)) if in_memory else None
    return ImageSet(
        labels=torch.tensor([label for _, label in samples], dtype=torch.int64),
        classes=classes,
        img_size=preprocess.size,
        in_chans=3,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        images=images,
        read=read,
        name=name,
        info={**info, "resize": {"size": preprocess.size, "crop_pct": preprocess.crop_pct,
                                 "interpolation": preprocess.interpolation}},
    )


def labelled_folders(root: Path, classes: list[str], what: str, expected: str) -> list[tuple[str, int]]:
    """Samples of a tree whose folders are named like `classes` (label = position); any subset of them."""
    folders = class_folders(root, what)
    check_names(list(folders), classes, what, root, expected)
    index = {name: i for i, name in enumerate(classes)}
    return interleave([[(path, index[name]) for path in files] for name, files in folders.items()])


def split_folder(root: Path, split: str) -> Path:
    """root/<split> when it exists (root may be the ImageNet folder or the split folder itself)."""
    return root / split if (root / split).is_dir() else root


def load_imagenet_val(
    root: str | Path, preprocess: Preprocess, what: str = "imagenet", in_memory: bool | str = False,
    memory_budget_gb: float = DEFAULT_MEMORY_BUDGET_GB,
) -> ImageSet:
    """ImageNet val in class folders (wnids, as the usual valprep script leaves it); any subset of classes."""
    folder = split_folder(Path(root).expanduser(), "val")
    samples = labelled_folders(folder, imagenet_wnids(), what, "ImageNet wnids (n01440764, ...)")
    return image_set(samples, imagenet_wnids(), preprocess, "imagenet_val", {"root": str(folder)}, in_memory,
                     memory_budget_gb)


def load_imagenet_5k(
    root: str | Path, preprocess: Preprocess, what: str = "imagenet", in_memory: bool | str = False,
    memory_budget_gb: float = DEFAULT_MEMORY_BUDGET_GB,
) -> ImageSet:
    """RobustBench's 5,000 val images, in RobustBench's order; all must be present."""
    folder = split_folder(Path(root).expanduser(), "val")
    listed = resource("imagenet_benchmarks.json")["robustbench_imagenet_val_5000"]
    missing = [rel for rel in listed if not (folder / rel).is_file()]
    if missing:
        raise DatasetError(
            f"{what}: {len(missing)} of RobustBench's 5,000 val images are missing under {folder} "
            f"(e.g. {missing[0]}); expected ImageNet val in wnid class folders"
        )
    index = {wnid: i for i, wnid in enumerate(imagenet_wnids())}
    samples = [(str(folder / rel), index[rel.split("/")[0]]) for rel in listed]
    return image_set(samples, imagenet_wnids(), preprocess, "imagenet_5k", {"root": str(folder)}, in_memory,
                     memory_budget_gb)


def load_imagenet(
    split: str,
    root: str | None = None,
    img_size: int | None = None,
    in_memory: bool | str = False,
    robustbench_5k: bool = False,
    crop_pct: float | None = None,
    interpolation: str | None = None,
    memory_budget_gb: float = DEFAULT_MEMORY_BUDGET_GB,
) -> ImageSet:
    """The `imagenet` dataset (and `imagenet_5k`: its test split is RobustBench's 5,000 images).

    Labels are the canonical class indices (sorted wnids) even when only some classes are present. The
    test split is resized by `crop_pct` and `interpolation` (default: 256 -> 224 bilinear).
    """
    if root is None:
        raise DatasetError(
            "imagenet: set data.root to the ImageNet folder holding train/ and val/ "
            "(class folders named by wnid, n01440764 ...)"
        )
    size = img_size or 224
    base = Path(root).expanduser()
    if split == "train":
        # as imagefolder does: shorter side to img_size, centre square; random crops come from the augmentation
        folder = split_folder(base, "train")
        samples = labelled_folders(
            folder, imagenet_wnids(), "imagenet train", "ImageNet wnids (n01440764, ...)"
        )
        return image_set(samples, imagenet_wnids(), Preprocess(size, 1.0), "imagenet", {"root": str(folder)},
                         in_memory, memory_budget_gb)
    load = load_imagenet_5k if robustbench_5k else load_imagenet_val
    preprocess = Preprocess(size, crop_pct or DEFAULT_CROP_PCT, interpolation or DEFAULT_INTERPOLATION)
    return load(base, preprocess, in_memory=in_memory, memory_budget_gb=memory_budget_gb)
