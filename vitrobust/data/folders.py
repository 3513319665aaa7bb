"""CIFAR-10/100 (torchvision's on-disk format) and class-folder trees (ImageFolder, e.g. ImageNet)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from vitrobust.data.base import IMAGENET_MEAN, IMAGENET_STD, ImageSet
from vitrobust.errors import DatasetError

CIFAR = {
    "cifar10": ("cifar-10-batches-py", (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ("cifar-100-python", (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}
IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp", ".gif"}


def load_cifar(name: str, split: str, root: str | None = None, download: bool = False, **_) -> ImageSet:
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


def list_image_folder(root: Path) -> tuple[list[Path], list[int], list[str]]:
    """Sorted class folders -> (files, labels, class names)."""
    if not root.is_dir():
        raise DatasetError(f"image folder {root} does not exist: set data.root to a folder with one sub-folder per class")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    files, labels = [], []
    for label, name in enumerate(classes):
        for path in sorted((root / name).rglob("*")):
            if path.suffix.lower() in IMAGE_EXTENSIONS:
                files.append(path)
                labels.append(label)
    if not files:
        raise DatasetError(f"no images found under {root}: expected {root}/<class>/<image>.jpg")
    return files, labels, classes


FILTERS = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC}


def decode(path: Path, size: int, crop_pct: float, channels: int, interpolation: str = "bicubic") -> torch.Tensor:
    """Decode, resize the shorter side to size/crop_pct, centre-crop size x size; uint8 CHW."""
    try:
        with Image.open(path) as img:
            img = img.convert("L" if channels == 1 else "RGB")
            short = round(size / crop_pct)
            w, h = img.size
            scale = short / min(w, h)
            img = img.resize((max(size, round(w * scale)), max(size, round(h * scale))), FILTERS[interpolation])
            w, h = img.size
            left, top = (w - size) // 2, (h - size) // 2
            img = img.crop((left, top, left + size, top + size))
            arr = np.asarray(img, dtype=np.uint8)
    except OSError as err:
        raise DatasetError(f"cannot decode image {path}: {err}") from None
    arr = arr[:, :, None] if arr.ndim == 2 else arr
    return torch.from_numpy(arr.copy()).permute(2, 0, 1)


def load_image_folder(
    split: str, root: str | None = None, img_size: int | None = None, in_memory: bool = True,
    in_chans: int = 3, crop_pct: float | None = None, interpolation: str | None = None, **_,
) -> ImageSet:
    if root is None:
        raise DatasetError("imagefolder: set data.root to a folder holding train/ and val/ (or test/) class folders")
    base = Path(root).expanduser()
    split_dir = base / split
    if split != "train" and not split_dir.is_dir() and (base / "val").is_dir():
        split_dir = base / "val"
    files, labels, classes = list_image_folder(split_dir)
    size = img_size or 224
    pct = 1.0 if split == "train" else (crop_pct or 0.875)  # training crops come from the augmentation
    interp = interpolation or "bicubic"

    def read(i: int) -> torch.Tensor:
        return decode(files[i], size, pct, in_chans, interp)

    images = torch.stack([read(i) for i in range(len(files))]) if in_memory else None
    return ImageSet(
        labels=torch.tensor(labels, dtype=torch.int64), classes=classes, img_size=size, in_chans=in_chans,
        mean=IMAGENET_MEAN if in_chans == 3 else (0.5,), std=IMAGENET_STD if in_chans == 3 else (0.5,),
        images=images, read=read, name="imagefolder", info={"root": str(split_dir), "crop_pct": pct},
    )
