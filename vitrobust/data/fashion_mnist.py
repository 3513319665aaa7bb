"""Fashion-MNIST from its IDX files, padded to 32x32 (imagecorruptions needs >= 32 px)."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from vitrobust.data.base import ImageSet
from vitrobust.errors import DatasetError

SYSTEM_ROOT = Path("/usr/share/datasets/fashion-mnist")
CLASSES = ["t-shirt/top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle boot"]
FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
# Statistics of the padded 32x32 training images.
MEAN, STD = (0.2190,), (0.3318,)


def cache_root() -> Path:
    base = os.environ.get("VITROBUST_CACHE") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "vitrobust")
    return Path(base).expanduser() / "fashion-mnist"


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (optionally gzipped): magic 0x0000 08 ndim, big-endian dims, uint8 data."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as fh:
            data = fh.read()
    except (OSError, EOFError) as err:
        raise DatasetError(f"cannot read {path}: {err}; the file is corrupt, delete it and install it again") from None
    if len(data) < 4 or data[0:2] != b"\x00\x00" or data[2] != 0x08:
        raise DatasetError(f"{path} is not a uint8 IDX file (bad magic number {data[:4].hex()})")
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    offset = 4 + 4 * ndim
    expected = int(np.prod(dims))
    if len(data) - offset != expected:
        raise DatasetError(f"{path} is truncated: header says {dims} ({expected} bytes), file holds {len(data) - offset}")
    return np.frombuffer(data, dtype=np.uint8, offset=offset).reshape(dims)


def _find(root: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem):
        if (root / name).is_file():
            return root / name
    return None


def find_root(root: str | None, download: bool) -> Path:
    candidates = [Path(root).expanduser()] if root else [SYSTEM_ROOT, cache_root()]
    for cand in candidates:
        if all(_find(cand, s) for pair in FILES.values() for s in pair):
            return cand
    if download:
        from torchvision.datasets import FashionMNIST

        target = candidates[-1]
        target.mkdir(parents=True, exist_ok=True)
        FashionMNIST(str(target), download=True)  # writes target/FashionMNIST/raw/*.gz
        raw = target / "FashionMNIST" / "raw"
        for pair in FILES.values():
            for stem in pair:
                (raw / (stem + ".gz")).replace(target / (stem + ".gz"))
        return target
    where = " or ".join(str(c) for c in candidates)
    raise DatasetError(
        f"Fashion-MNIST IDX files not found in {where}. Install them with "
        f"`apt-get install dataset-fashion-mnist` (Debian), put the four *-ubyte.gz files in "
        f"{cache_root()}, point data.root at them, or allow a download with --set data.download=true"
    )


def load_fashion_mnist(split: str, root: str | None = None, download: bool = False) -> ImageSet:
    base = find_root(root, download)
    img_stem, lbl_stem = FILES[split]
    images = read_idx(_find(base, img_stem))
    labels = read_idx(_find(base, lbl_stem))
    if images.ndim != 3 or len(images) != len(labels):
        raise DatasetError(f"{base}: {img_stem} holds {images.shape}, {lbl_stem} holds {labels.shape} labels")
    x = torch.from_numpy(images.copy()).unsqueeze(1)
    x = F.pad(x, (2, 2, 2, 2))  # 28 -> 32 px with black borders, as the background
    return ImageSet(
        labels=torch.from_numpy(labels.astype(np.int64)), classes=list(CLASSES), img_size=32, in_chans=1,
        mean=MEAN, std=STD, images=x, name="fashion_mnist", info={"root": str(base)},
    )
