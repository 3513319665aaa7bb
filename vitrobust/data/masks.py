"""Foreground masks: from mask image files (ImageNet-S encoding), a threshold on the image, or a user callable.

Masks are stored like images: uint8 N x 1 x H x W at the dataset's image size, 255 = foreground, 0 =
background (fractions only with data.masks.resize=bilinear). `attach_masks` returns the split with
`masks` (in-memory splits) or `read_mask` (lazy splits) set; the loader warps them with the image.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from vitrobust.config import MaskConfig
from vitrobust.data.base import ImageSet
from vitrobust.errors import ConfigError, DatasetError

IGNORE_ID = 1000  # ImageNet-S: "ignore" pixels (object boundaries, ambiguous regions) count as background
MASK_SUFFIX = ".png"
CHUNK = 1024  # images per call of a mask function: bounds the memory of float intermediates


def decode_imagenet_s(array: np.ndarray) -> np.ndarray:
    """bool H x W foreground of a mask image.

    RGB(A) images hold a class id per pixel as G * 256 + R (ImageNet-S); single-channel images hold
    the id itself (so plain 0/255 masks work too). 0 and 1000 (ignore) are background.
    """
    a = np.asarray(array)
    if a.ndim == 3 and a.shape[2] >= 3:
        ids = a[..., 1].astype(np.int64) * 256 + a[..., 0].astype(np.int64)
    elif a.ndim == 3:  # grey + alpha
        ids = a[..., 0].astype(np.int64)
    elif a.ndim == 2:
        ids = a.astype(np.int64)
    else:
        raise ValueError(f"a mask image must be H x W or H x W x C, got shape {a.shape}")
    return (ids != 0) & (ids != IGNORE_ID)


@dataclass(frozen=True)
class Geometry:
    """How a dataset's reader maps an image file to its size x size crop, so that a mask file gets the
    same pixels: shorter side to size / crop_pct, centre crop. `torchvision` picks the rounding of
    imagenet.Preprocess (floor, truncated long side, offsets rounded half to even, `border` px cut off
    first); otherwise that of folders.decode (round, round, offsets floored)."""

    size: int
    crop_pct: float
    border: int = 0
    torchvision: bool = False

    def resize_crop(self, img: Image.Image, resample: int) -> Image.Image:
        if self.border:
            w, h = img.size
            img = img.crop((self.border, self.border, w - self.border, h - self.border))
        w, h = img.size
        size = self.size
        if self.torchvision:
            short = math.floor(size / self.crop_pct)
            new_w, new_h = (short, int(short * h / w)) if w <= h else (int(short * w / h), short)
            img = img.resize((new_w, new_h), resample)
            top, left = int(round((new_h - size) / 2.0)), int(round((new_w - size) / 2.0))
        else:
            scale = round(size / self.crop_pct) / min(w, h)
            img = img.resize((max(size, round(w * scale)), max(size, round(h * scale))), resample)
            left, top = (img.size[0] - size) // 2, (img.size[1] - size) // 2
        return img.crop((left, top, left + size, top + size))


def read_mask_file(path: Path, image_size: tuple[int, int], geometry: Geometry, resize: str = "nearest") -> torch.Tensor:
    """uint8 1 x size x size mask of the image whose (width, height) is `image_size`. A mask smaller than
    its image (ImageNet-S shrinks very large images) is first scaled to the image's size."""
    try:
        with Image.open(path) as img:
            fg = decode_imagenet_s(np.asarray(img))
    except (OSError, ValueError) as err:
        raise DatasetError(f"cannot read mask {path}: {err}") from None
    mask = Image.fromarray(fg.astype(np.uint8) * 255)
    if mask.size != tuple(image_size):
        mask = mask.resize(tuple(image_size), Image.NEAREST)
    mask = geometry.resize_crop(mask, Image.NEAREST if resize == "nearest" else Image.BILINEAR)
    return torch.from_numpy(np.asarray(mask, dtype=np.uint8).copy()).unsqueeze(0)


@dataclass(frozen=True)
class MaskReader:
    """`read_mask(i)` of a folder-masked split (picklable, for DataLoader workers)."""

    files: tuple[str, ...]
    masks: tuple[str, ...]
    geometry: Geometry
    resize: str = "nearest"

    def __call__(self, i: int) -> torch.Tensor:
        try:
            with Image.open(self.files[i]) as img:
                image_size = img.size
        except OSError as err:
            raise DatasetError(f"cannot decode image {self.files[i]}: {err}") from None
        return read_mask_file(Path(self.masks[i]), image_size, self.geometry, self.resize)


def threshold_masks(images: torch.Tensor, threshold: float) -> torch.Tensor:
    """Foreground = pixels brighter than `threshold` (in [0,1], max over channels): objects on a plain
    dark background, such as Fashion-MNIST."""
    bright = images.amax(dim=1, keepdim=True).float() > threshold * 255
    return bright.to(torch.uint8) * 255


def load_callable(spec: str | None) -> Callable:
    """The function named by 'package.module:function' (data.masks.callable)."""
    if not spec:
        raise ConfigError("data.masks.source=callable: set data.masks.callable to 'package.module:function'")
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name.strip() or not attr.strip():
        raise ConfigError(f"data.masks.callable={spec!r} must look like 'package.module:function'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ConfigError(f"data.masks.callable={spec!r}: cannot import module {module_name!r} ({err}); "
                          f"install it or put its folder on PYTHONPATH") from None
    fn = module
    for part in attr.split("."):
        if not hasattr(fn, part):
            raise ConfigError(f"data.masks.callable={spec!r}: module {module_name!r} has no attribute {attr!r}")
        fn = getattr(fn, part)
    if not callable(fn):
        raise ConfigError(f"data.masks.callable={spec!r}: {attr!r} is a {type(fn).__name__}, not a function")
    return fn


def call_mask_function(fn: Callable, images: torch.Tensor, spec: str) -> torch.Tensor:
    """uint8 N x 1 x H x W masks from a user function of (uint8 NCHW) -> bool N x 1 x H x W (or N x H x W)."""
    out = fn(images)
    out = out if isinstance(out, torch.Tensor) else torch.as_tensor(np.asarray(out))
    n, _, h, w = images.shape
    if out.dim() == 3:
        out = out.unsqueeze(1)
    if tuple(out.shape) != (n, 1, h, w):
        raise DatasetError(f"data.masks.callable={spec!r} returned shape {tuple(out.shape)} for images of shape "
                           f"{tuple(images.shape)}: return a bool tensor of shape {(n, 1, h, w)}")
    if out.dtype != torch.bool:
        if not bool(((out == 0) | (out == 1)).all()):
            raise DatasetError(f"data.masks.callable={spec!r} returned {out.dtype} values other than 0 and 1: "
                               f"return a bool foreground mask")
        out = out != 0
    return out.cpu().to(torch.uint8) * 255


@dataclass(frozen=True)
class Threshold:
    threshold: float

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return threshold_masks(images, self.threshold)


@dataclass(frozen=True)
class UserMasks:
    spec: str

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return call_mask_function(load_callable(self.spec), images, self.spec)


@dataclass(frozen=True)
class MaskFromImage:
    """`read_mask(i)` of a lazy split whose masks are computed from its images."""

    read: Callable[[int], torch.Tensor]
    compute: Callable[[torch.Tensor], torch.Tensor]

    def __call__(self, i: int) -> torch.Tensor:
        return self.compute(self.read(i).unsqueeze(0))[0]


def computed_masks(data: ImageSet, compute: Callable[[torch.Tensor], torch.Tensor], source: str) -> ImageSet:
    """Masks computed from the images: all at once for in-memory splits, per sample for lazy ones."""
    info = {**data.info, "mask_source": source}
    if data.images is not None:
        masks = torch.cat([compute(data.images[i : i + CHUNK]) for i in range(0, len(data), CHUNK)])
        return replace(data, masks=masks, read_mask=None, info=info)
    return replace(data, masks=None, read_mask=MaskFromImage(data.read, compute), info=info)


def _image_source(data: ImageSet, split: str) -> tuple[list[Path], Path, Geometry]:
    """The image file of every sample (dataset order), the split folder, and the reader's geometry."""
    pre = getattr(data.read, "preprocess", None)
    if pre is not None and hasattr(data.read, "files"):  # imagenet.FileReader
        geometry = Geometry(pre.size, pre.crop_pct, pre.border, torchvision=True)
        return [Path(f) for f in data.read.files], Path(data.info["root"]), geometry
    if data.name != "imagefolder":
        raise ConfigError(f"data.masks.source=folder needs a dataset read from image files (imagefolder, imagenet); "
                          f"{data.name or 'this dataset'} has none: use data.masks.source=threshold or callable")
    from vitrobust.data.folders import list_image_folder

    root = Path(data.info["root"])
    files, labels, _ = list_image_folder(root)
    if labels != data.labels.tolist():
        raise DatasetError(f"{root} changed since it was loaded: load the dataset again")
    pct = data.info.get("crop_pct", 1.0 if split == "train" else 0.875)  # load_image_folder's crops
    return files, root, Geometry(data.img_size, pct)


def folder_masks(data: ImageSet, cfg: MaskConfig, split: str) -> ImageSet:
    """Masks from PNGs that mirror the image tree: image <split dir>/<class>/<name>.<ext> has its mask at
    <masks.root>/<split dir name>/<class>/<name>.png, or at <masks.root>/<class>/<name>.png when masks.root
    holds no folder named like the split dir. Images without a mask are dropped (masks.missing=drop)."""
    if not cfg.root:
        raise ConfigError("data.masks.source=folder: set data.masks.root to the folder of mask PNGs")
    root = Path(cfg.root).expanduser()
    if not root.is_dir():
        raise DatasetError(f"data.masks.root={cfg.root!r} is not a folder")
    files, split_dir, geometry = _image_source(data, split)
    base = root / split_dir.name if (root / split_dir.name).is_dir() else root
    paths = [base / f.relative_to(split_dir).with_suffix(MASK_SUFFIX) for f in files]
    have = [i for i, p in enumerate(paths) if p.is_file()]
    if not have:
        raise DatasetError(f"no mask found under {base} for any of the {len(files)} images of {split_dir} "
                           f"(expected e.g. {paths[0]}): check data.masks.root")
    missing = len(files) - len(have)
    if missing and cfg.missing == "error":
        first = next(p for p in paths if not p.is_file())
        raise DatasetError(f"{missing} of {len(files)} images of {split_dir} have no mask under {base} (e.g. {first}); "
                           f"set data.masks.missing=drop to keep only the images that have one")
    reader = MaskReader(tuple(map(str, files)), tuple(map(str, paths)), geometry, cfg.resize)
    info = {**data.info, "mask_source": "folder", "mask_root": str(base), "masks_missing": missing}
    masked = replace(data, read_mask=reader, masks=None, info=info).select(have)
    if masked.images is not None:
        masks = torch.stack([masked.read_mask(i) for i in range(len(masked))])
        masked = replace(masked, masks=masks, read_mask=None)
    return masked


def attach_masks(data: ImageSet, cfg: MaskConfig, split: str) -> ImageSet:
    """The split with the masks data.masks asks for (source none: the split as it is)."""
    if cfg.source == "none":
        return data
    if cfg.source == "folder":
        return folder_masks(data, cfg, split)
    if cfg.source == "threshold":
        return computed_masks(data, Threshold(cfg.threshold), "threshold")
    load_callable(cfg.callable)  # a bad name fails here, before any image is read
    return computed_masks(data, UserMasks(cfg.callable), "callable")


__all__ = ["Geometry", "MaskReader", "attach_masks", "call_mask_function", "computed_masks", "decode_imagenet_s",
           "folder_masks", "load_callable", "read_mask_file", "threshold_masks"]
