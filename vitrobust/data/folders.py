"""CIFAR-10/100 (torchvision's on-disk format) and class-folder trees (ImageFolder, e.g. ImageNet)."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import IO

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
from vitrobust.errors import DatasetError

CIFAR = {
    "cifar10": ("cifar-10-batches-py", (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ("cifar-100-python", (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}
IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp", ".gif"}


def load_cifar(name: str, split: str, root: str | None = None, download: bool = False) -> ImageSet:
    from torchvision.datasets import CIFAR10, CIFAR100

    folder, mean, std = CIFAR[name]
    if root is None:
        raise DatasetError(f"{name}: set data.root to the folder that holds {folder}/ (torchvision's layout)")
    cls = CIFAR10 if name == "cifar10" else CIFAR100
    try:
        ds = cls(root, train=split == "train", download=download)
    except RuntimeError as err:
        raise DatasetError(
            f"{name} not found under {root} ({err}). Put torchvision's {folder}/ folder there, "
            f"or allow a download with --set data.download=true"
        ) from None
    images = torch.from_numpy(np.ascontiguousarray(ds.data.transpose(0, 3, 1, 2)))
    return ImageSet(
        labels=torch.tensor(ds.targets, dtype=torch.int64), classes=list(ds.classes), img_size=32, in_chans=3,
        mean=mean, std=std, images=images, name=name, info={"root": str(root)},
    )


def list_image_folder(root: Path, classes: list[str] | None = None) -> tuple[list[Path], list[int], list[str]]:
    """(files, labels, class names) of a class-folder tree; images may sit in nested sub-folders.

    With `classes` (the training split's), labels follow that list: a test folder may lack classes but
    holds none the training folder lacks. A class folder without images is an error naming it."""
    if not root.is_dir():
        raise DatasetError(f"image folder {root} does not exist: set data.root to a folder with one sub-folder per class")
    here = sorted(p.name for p in root.iterdir() if p.is_dir())
    if classes is None:
        classes = here
    unknown = [name for name in here if name not in classes]
    if unknown:
        raise DatasetError(f"{root} holds class folders the training folder lacks ({', '.join(unknown[:5])}"
                           f"{' ...' if len(unknown) > 5 else ''}): the model has no output for them; remove them "
                           f"or add them to the training folder")
    index = {name: i for i, name in enumerate(classes)}
    files, labels = [], []
    for name in here:
        found = sorted(p for p in (root / name).rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
        if not found:
            raise DatasetError(f"class folder {root / name} holds no images ({', '.join(sorted(IMAGE_EXTENSIONS))}): "
                               f"add images or remove the folder")
        files += found
        labels += [index[name]] * len(found)
    if not files:
        raise DatasetError(f"no images found under {root}: expected {root}/<class>/<image>.jpg")
    return files, labels, classes


FILTERS = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC}
SKIP_BAD_HINT = "delete or replace it, or set data.skip_bad=true to skip unreadable images"
HIGH_DEPTH = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")  # more than 8 bits per pixel


def to_mode(img: Image.Image, channels: int) -> Image.Image:
    """Any PIL image as 8-bit grayscale (channels 1) or RGB: 16-bit and float images are scaled (not
    clipped) to 8 bits, palette images go through RGBA, CMYK and alpha are converted by PIL."""
    if img.mode in HIGH_DEPTH:
        arr = np.asarray(img, dtype=np.float64)
        top = 1.0 if img.mode == "F" and arr.max(initial=0) <= 1 else (255.0 if arr.max(initial=0) <= 255 else 65535.0)
        img = Image.fromarray(np.clip(np.rint(arr * 255.0 / top), 0, 255).astype(np.uint8), "L")
    elif img.mode in ("P", "PA"):
        img = img.convert("RGBA")
    return img.convert("L" if channels == 1 else "RGB")


def decode(source: Path | IO[bytes], size: int, crop_pct: float, channels: int, interpolation: str = "bicubic",
           name: str | None = None, fix: str = SKIP_BAD_HINT) -> torch.Tensor:
    """Decode an image file (a path, or an open binary file such as a tar member), resize the shorter
    side to size/crop_pct, centre-crop size x size; uint8 CHW. `name` names the image in errors, `fix`
    says what to do about an unreadable one."""
    try:
        with Image.open(source) as img:
            img = to_mode(img, channels)
            short = round(size / crop_pct)
            w, h = img.size
            scale = short / min(w, h)
            img = img.resize((max(size, round(w * scale)), max(size, round(h * scale))), FILTERS[interpolation])
            w, h = img.size
            left, top = (w - size) // 2, (h - size) // 2
            img = img.crop((left, top, left + size, top + size))
            arr = np.asarray(img, dtype=np.uint8)
    except (OSError, ValueError, SyntaxError) as err:
        raise DatasetError(f"cannot decode image {name or source}: {err}; {fix}") from None
    arr = arr[:, :, None] if arr.ndim == 2 else arr
    return torch.from_numpy(arr.copy()).permute(2, 0, 1)


@dataclass(frozen=True)
class FolderReader:
    """Picklable `read(i)` for DataLoader workers."""

    files: tuple[Path, ...]
    size: int
    crop_pct: float
    channels: int
    interpolation: str

    def __call__(self, i: int) -> torch.Tensor:
        return decode(self.files[i], self.size, self.crop_pct, self.channels, self.interpolation)


def readable(path: Path) -> bool:
    try:
        with Image.open(path) as img:
            img.load()
        return True
    except (OSError, ValueError, SyntaxError):
        return False


def load_image_folder(
    split: str, root: str | None = None, img_size: int | None = None, in_memory: bool | str = "auto",
    in_chans: int | None = None, crop_pct: float | None = None, interpolation: str | None = None,
    skip_bad: bool = False, memory_budget_gb: float = DEFAULT_MEMORY_BUDGET_GB,
) -> ImageSet:
    """root/train/<class>/... and root/val/ (or test/)/<class>/...; labels follow the training split's
    sorted class names. Training images: shorter side to img_size, centre square (random crops come
    from the augmentation); test images: shorter side to img_size / crop_pct, centre crop (crop_pct is
    resolved from the training crop by the config: 1 = the same plain resize as training)."""
    if root is None:
        raise DatasetError("imagefolder: set data.root to a folder holding train/ and val/ (or test/) class folders")
    base = Path(root).expanduser()
    split_dir = base / split
    if split != "train" and not split_dir.is_dir():
        split_dir = next((base / name for name in ("val", "test") if (base / name).is_dir()), split_dir)
    train_dir = base / "train"
    classes = list_image_folder(train_dir)[2] if split != "train" and train_dir.is_dir() else None
    files, labels, classes = list_image_folder(split_dir, classes)
    skipped = []
    if skip_bad:
        keep = [readable(f) for f in files]
        skipped = [str(f) for f, ok in zip(files, keep) if not ok]
        files, labels = [f for f, ok in zip(files, keep) if ok], [y for y, ok in zip(labels, keep) if ok]
        if skipped:
            warnings.warn(f"imagefolder: skipped {len(skipped)} unreadable image(s) in {split_dir} "
                          f"(data.skip_bad), e.g. {skipped[0]}", stacklevel=2)
        if not files:
            raise DatasetError(f"no readable images under {split_dir} ({len(skipped)} skipped)")
    size, chans = img_size or 224, in_chans or 3
    pct = 1.0 if split == "train" else (crop_pct or 0.875)
    interp = interpolation or "bicubic"
    read = FolderReader(tuple(files), size, pct, chans, interp)
    in_memory = keep_in_memory(in_memory, len(files), chans, size, memory_budget_gb, f"imagefolder {split_dir}")
    images = decode_all(read, len(files)) if in_memory else None
    resize = {"size": size, "crop_pct": pct, "interpolation": interp, "in_chans": chans}
    return ImageSet(
        labels=torch.tensor(labels, dtype=torch.int64), classes=classes, img_size=size, in_chans=chans,
        mean=IMAGENET_MEAN if chans == 3 else (0.5,) * chans, std=IMAGENET_STD if chans == 3 else (0.5,) * chans,
        images=images, read=read, name="imagefolder",
        info={"root": str(split_dir), "crop_pct": pct, "resize": resize, "skipped_bad": len(skipped)},
    )
