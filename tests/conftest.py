"""Shared fixtures: tiny on-disk datasets and a tiny model spec, so most tests need no system data.

- `FASHION_MNIST`: where the real Fashion-MNIST lies for the tests that train on it (the one place
  that says so): Debian's package folder, else vitrobust's cache, as the loader looks for it.

- `tiny_idx_root`: a Fashion-MNIST-format folder (gzipped IDX, 64 train / 32 test 28x28 images)
  whose pixel values and labels are given by `idx_arrays(split)` (also the `tiny_idx_arrays` fixture).
- `image_folder`: a class-folder tree of 40x30 RGB PNGs (train/ and val/, 3 classes) with known labels.
- `write_idx`: writes any uint8 array as an IDX file (gzipped when the name ends in .gz).
- `tiny_spec`: the spec of a very small vit_pico_patch8_32 (1 block, width 32) for fast model tests.
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vitrobust.data import fashion_mnist
from vitrobust.errors import DatasetError


def _fashion_mnist_root() -> Path:
    try:
        return fashion_mnist.find_root(None, download=False)
    except DatasetError:  # not installed: the tests that need it fail with the loader's own message
        return fashion_mnist.SYSTEM_ROOT


FASHION_MNIST = _fashion_mnist_root()

IDX_SIZES = {"train": 64, "test": 32}
IDX_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
IDX_NUM_CLASSES = 10


def idx_arrays(split: str) -> tuple[np.ndarray, np.ndarray]:
    """The exact (images uint8 [N,28,28], labels uint8 [N]) that `tiny_idx_root` writes for a split.

    Pixel (i, r, c) = (i * 7 + r * 3 + c * 5 + offset) % 256 with no zero on the image border for most
    samples, so 28 -> 32 padding is visible; labels cycle through the 10 classes.
    """
    n = IDX_SIZES[split]
    offset = 1 if split == "train" else 101
    i, r, c = np.meshgrid(np.arange(n), np.arange(28), np.arange(28), indexing="ij")
    images = ((i * 7 + r * 3 + c * 5 + offset) % 256).astype(np.uint8)
    step = 1 if split == "train" else 3
    labels = ((np.arange(n) * step) % IDX_NUM_CLASSES).astype(np.uint8)
    return images, labels


def write_idx_file(path: Path, array: np.ndarray) -> Path:
    """Write a uint8 array in IDX format (magic 00 00 08 ndim, big-endian uint32 dims, data)."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    data = header + array.tobytes()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".gz":
        with gzip.open(path, "wb") as fh:
            fh.write(data)
    else:
        path.write_bytes(data)
    return path


@pytest.fixture
def write_idx():
    return write_idx_file


@pytest.fixture
def tiny_idx_arrays() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    return {split: idx_arrays(split) for split in IDX_SIZES}


@pytest.fixture
def tiny_idx_root(tmp_path) -> Path:
    """A folder with the four gzipped Fashion-MNIST IDX files (64 train / 32 test images)."""
    root = tmp_path / "fashion-mnist"
    for split, (img_name, lbl_name) in IDX_FILES.items():
        images, labels = idx_arrays(split)
        write_idx_file(root / img_name, images)
        write_idx_file(root / lbl_name, labels)
    return root


# --- image folders ---------------------------------------------------------------------------

# Created in this (unsorted) order on purpose: labels must follow the sorted class names.
FOLDER_CLASSES_CREATED = ("zebra", "apple", "mango")
FOLDER_SIZE = (40, 30)  # PIL (width, height)
FOLDER_COUNTS = {"train": 4, "val": 2}


@dataclass
class ImageFolderTree:
    """root/{train,val}/<class>/<k>.png; `files[split]` lists (path, label, HxWx3 uint8 array) in the
    order the loader must produce them (sorted class names, then sorted file names)."""

    root: Path
    classes: list[str]
    files: dict[str, list[tuple[Path, int, np.ndarray]]] = field(default_factory=dict)

    def __fspath__(self) -> str:
        return str(self.root)

    def labels(self, split: str) -> list[int]:
        return [label for _, label, _ in self.files[split]]


@pytest.fixture
def image_folder(tmp_path) -> ImageFolderTree:
    """3 classes x 4 train (and 2 val) 40x30 RGB PNGs of seeded random pixels, plus a stray text file."""
    rng = np.random.default_rng(1234)
    root = tmp_path / "imagefolder"
    classes = sorted(FOLDER_CLASSES_CREATED)
    tree = ImageFolderTree(root=root, classes=classes)
    arrays: dict[tuple[str, str, int], np.ndarray] = {}
    for split, count in FOLDER_COUNTS.items():
        for name in FOLDER_CLASSES_CREATED:
            folder = root / split / name
            folder.mkdir(parents=True)
            (folder / "README.txt").write_text("not an image")
            for k in range(count):
                arr = rng.integers(0, 256, size=(FOLDER_SIZE[1], FOLDER_SIZE[0], 3), dtype=np.uint8)
                Image.fromarray(arr, "RGB").save(folder / f"{k}.png")
                arrays[(split, name, k)] = arr
        tree.files[split] = [
            (root / split / name / f"{k}.png", label, arrays[(split, name, k)])
            for label, name in enumerate(classes)
            for k in range(count)
        ]
    return tree


# --- models ----------------------------------------------------------------------------------


@pytest.fixture
def tiny_spec() -> dict:
    """A 1-block, 32-wide vit_pico_patch8_32 on 1x32x32 images with 10 classes."""
    return {
        "name": "vit_pico_patch8_32", "num_classes": 10, "in_chans": 1, "img_size": 32, "patch_size": None,
        "mean": [0.25], "std": [0.5], "drop_rate": 0.0, "drop_path_rate": 0.0,
        "kwargs": {"embed_dim": 32, "depth": 1, "num_heads": 2},
    }


@pytest.fixture(scope="module")
def one_thread():
    """Many small tensor ops: one torch thread is several times faster than two on a busy 2-core CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
