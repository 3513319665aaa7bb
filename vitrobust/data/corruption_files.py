"""The published corrupted sets, read as they are (no resize, no crop).

- ImageNet-C: ROOT/<corruption>/<severity 1..5>/<wnid>/*.JPEG, 224-px images made from the ImageNet
  validation set (resize 256, centre crop 224, then corrupted). Samples are taken in the order of
  vitrobust's image folders (sorted class folders, then sorted files), which is the clean
  validation folder's order, so corrupted image k is clean image k.
- CIFAR-10-C / CIFAR-100-C: ROOT/<corruption>.npy holding 5 x N images (N x 32 x 32 x 3 uint8 per
  severity, stacked in order 1..5) and ROOT/labels.npy (5 x N labels, or N).

Each loader returns one (corruption, severity) of the first n images of `like` (the clean evaluation set,
a sample of the clean split: the files' images at its positions) as an ImageSet whose class list, mean and
std are `like`'s; its labels must agree with `like`'s.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from vitrobust.data.base import ImageSet
from vitrobust.data.folders import list_image_folder
from vitrobust.errors import DatasetError


def _root(root: str | None, source: str) -> Path:
    if not root:
        raise DatasetError(
            f"evaluate.corruptions.source={source} needs evaluate.corruptions.root: the folder of the "
            f"published {'ImageNet-C tree' if source == 'imagenet-c' else 'CIFAR-C .npy files'}"
        )
    path = Path(root).expanduser()
    if not path.is_dir():
        raise DatasetError(f"evaluate.corruptions.root {path} is not a folder")
    return path


def _check_labels(labels: torch.Tensor, like: ImageSet, where: str) -> None:
    """The corrupted set is the clean set corrupted: its labels must be the clean sample's."""
    k = min(len(labels), len(like))
    bad = (labels[:k] != like.labels[:k]).nonzero()
    if len(bad):
        i = int(bad[0])
        raise DatasetError(
            f"{where}: sample {int(like.source_positions[i])} has label {int(labels[i])} but the clean test "
            f"split ({like.name}) says "
            f"{int(like.labels[i])}; the corrupted files must be made from data.name's test split "
            f"in the same order (e.g. CIFAR-10-C with data.name=cifar10, ImageNet-C with the "
            f"ImageNet validation folder)"
        )


def _positions(where: str, have: int, n: int, like: ImageSet) -> list[int]:
    """Positions in the clean split of the first n images of `like`; the files must hold every one."""
    if have < n:
        raise DatasetError(f"{where} holds {have} images, fewer than the {n} evaluated: lower "
                           f"evaluate.corruptions.subset to at most {have}")
    positions = like.source_positions[:n].tolist()
    if positions and max(positions) >= have:
        raise DatasetError(f"{where} holds {have} images, but the evaluated sample holds clean image "
                           f"{max(positions)}: subsets are balanced samples of the whole clean split, so the "
                           f"corrupted files must hold all of it, in its order")
    return positions


def _decode_as_is(path: Path) -> torch.Tensor:
    try:
        with Image.open(path) as img:
            arr = np.asarray(img.convert("RGB"), dtype=np.uint8)
    except OSError as err:
        raise DatasetError(f"cannot decode image {path}: {err}") from None
    return torch.from_numpy(arr.copy()).permute(2, 0, 1)


def _class_index(classes: list[str], like: ImageSet, where: Path) -> list[int]:
    """Folder name -> the clean set's class index (wnids), or sorted order for a complete tree."""
    known = {name: i for i, name in enumerate(like.classes)}
    if all(name in known for name in classes):
        return [known[name] for name in classes]
    if len(classes) == like.num_classes:
        return list(range(len(classes)))
    missing = next(name for name in classes if name not in known)
    raise DatasetError(
        f"{where}: class folder {missing!r} is not a class of the clean test split ({like.name}, "
        f"{like.num_classes} classes) and the tree does not hold all {like.num_classes} classes; "
        f"evaluate with the ImageNet validation folder (class folders named by wnid) as data.root"
    )


def load_imagenet_c(root: str | None, name: str, severity: int, n: int, like: ImageSet) -> ImageSet:
    folder = _root(root, "imagenet-c") / name / str(severity)
    if not folder.is_dir():
        raise DatasetError(
            f"ImageNet-C folder {folder} does not exist: expected ROOT/<corruption>/<severity>/<wnid>/"
            f"*.JPEG under evaluate.corruptions.root (is {name} severity {severity} extracted?)"
        )
    files, folder_labels, classes = list_image_folder(folder)
    positions = _positions(str(folder), len(files), n, like)
    mapping = _class_index(classes, like, folder)
    files = [files[p] for p in positions]
    labels = torch.tensor([mapping[folder_labels[p]] for p in positions], dtype=torch.int64)
    _check_labels(labels, like, str(folder))
    first = _decode_as_is(files[0])

    def read(i: int) -> torch.Tensor:
        image = _decode_as_is(files[i])
        if image.shape != first.shape:
            raise DatasetError(
                f"{files[i]} is {tuple(image.shape[1:])} px but {files[0]} is {tuple(first.shape[1:])}: "
                f"ImageNet-C images all have the same size (224 x 224)"
            )
        return image

    return ImageSet(
        labels=labels,
        classes=like.classes,
        img_size=int(first.shape[-1]),
        in_chans=3,
        mean=like.mean,
        std=like.std,
        read=read,
        name=f"imagenet-c/{name}/{severity}",
        info={"root": str(folder)},
    )


def _load_npy(path: Path) -> np.ndarray:
    if not path.is_file():
        raise DatasetError(
            f"CIFAR-C file {path} does not exist: expected ROOT/<corruption>.npy and ROOT/labels.npy "
            f"under evaluate.corruptions.root"
        )
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as err:
        raise DatasetError(f"cannot read {path} ({err}); the file is corrupt or not a .npy array") from None


def load_cifar_c(root: str | None, name: str, severity: int, n: int, like: ImageSet) -> ImageSet:
    base = _root(root, "cifar-c")
    images = _load_npy(base / f"{name}.npy")
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[3] != 3 or images.shape[0] % 5:
        raise DatasetError(
            f"{base / f'{name}.npy'} holds {images.dtype} {images.shape}; CIFAR-C files hold uint8 "
            f"(5 x N, 32, 32, 3): N images per severity, severities 1..5 stacked in order"
        )
    per = images.shape[0] // 5
    labels = _load_npy(base / "labels.npy")
    if labels.ndim != 1 or len(labels) not in (per, 5 * per):
        raise DatasetError(
            f"{base / 'labels.npy'} holds {labels.shape} labels; expected {5 * per} (or {per}) to match "
            f"{name}.npy"
        )
    rows = np.asarray(_positions(f"{base / f'{name}.npy'} (severity {severity})", per, n, like), dtype=np.int64)
    start = (severity - 1) * per
    label_rows = labels[start + rows] if len(labels) == 5 * per else labels[rows]
    y = torch.from_numpy(np.asarray(label_rows, dtype=np.int64))
    _check_labels(y, like, f"{base / 'labels.npy'} (severity {severity})")
    x = torch.from_numpy(np.ascontiguousarray(images[start + rows].transpose(0, 3, 1, 2)))
    return ImageSet(
        labels=y,
        classes=like.classes,
        img_size=int(x.shape[-1]),
        in_chans=3,
        mean=like.mean,
        std=like.std,
        images=x,
        name=f"cifar-c/{name}/{severity}",
        info={"root": str(base)},
    )


__all__ = ["load_cifar_c", "load_imagenet_c"]
