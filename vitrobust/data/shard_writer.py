"""`vitrobust data shard`: any registered dataset or image folder written as WebDataset tar shards plus
the index.json that data/shards.py reads; see docs/architecture.md, "Sharded data".

- Sources: an image folder (root/train/<class>/..., root/val or test/<class>/..., or a bare class-folder
  tree, which becomes the train split) keeps every file's original bytes, so a shard decodes to exactly
  the folder's pixels; a registered dataset (fashion_mnist, cifar10, ...) is written as lossless PNG.
- Order: the training split is written in a seeded random order (a shard is then a random sample of
  the split, which a shuffle buffer of a few shards needs); the test split keeps the dataset's order.
- Members: `<key>.<image suffix>` and `<key>.cls` (the label); keys are the sample's position, 9 digits.
- Restartable: each shard is written to a temporary file and renamed, then index.json is updated
  (atomically). A re-run checks that the folder holds shards of the same source and settings and
  skips every shard the index lists whose file has the recorded size.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from webdataset import TarWriter

from vitrobust.checkpoint import atomic_write_text
from vitrobust.data.folders import list_image_folder, readable
from vitrobust.data.shards import INDEX, INDEX_FORMAT
from vitrobust.errors import DatasetError

Progress = Callable[[Iterable, int, str, int], Iterable]  # (items, total, description, already done) -> items


@dataclass
class SplitSource:
    """One split of the source: n samples, `sample(i)` -> (image bytes, suffix), or None for an unreadable
    image that is to be skipped, and the labels."""

    n: int
    sample: Callable[[int], tuple[bytes, str] | None]
    labels: list[int]


def _folder_split(files: list[Path], labels: list[int], skip_bad: bool) -> SplitSource:
    """Files as they are. With skip_bad every image is decoded once and the unreadable ones left out;
    without, only their headers are checked (a file that is no image stops the writer, naming it)."""

    def sample(i: int) -> tuple[bytes, str] | None:
        if skip_bad and not readable(files[i]):
            return None
        data = files[i].read_bytes()
        if not skip_bad:
            try:
                Image.open(io.BytesIO(data)).close()
            except (OSError, ValueError, SyntaxError) as err:
                raise DatasetError(f"cannot read image {files[i]}: {err}; delete or replace it, or pass --skip-bad to "
                                   f"leave unreadable images out") from None
        return data, files[i].suffix.lower().lstrip(".")

    return SplitSource(len(files), sample, labels)


def folder_source(root: Path, skip_bad: bool) -> tuple[dict[str, SplitSource], dict]:
    splits = {}
    if (root / "train").is_dir():
        files, labels, classes = list_image_folder(root / "train")
        splits["train"] = _folder_split(files, labels, skip_bad)
        test = next((root / name for name in ("val", "test") if (root / name).is_dir()), None)
        if test is not None:
            files, labels, _ = list_image_folder(test, classes)
            splits["test"] = _folder_split(files, labels, skip_bad)
    else:  # a bare class-folder tree
        files, labels, classes = list_image_folder(root)
        splits["train"] = _folder_split(files, labels, skip_bad)
    return splits, {"classes": classes}


def png(image: torch.Tensor) -> bytes:
    arr = image.permute(1, 2, 0).numpy().astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr[:, :, 0] if arr.shape[2] == 1 else arr).save(buf, format="PNG")
    return buf.getvalue()


def dataset_source(name: str, root: str | None, download: bool, skip_bad: bool,
                   ) -> tuple[dict[str, SplitSource], dict]:
    """The dataset's splits as PNGs, and its classes, mean and std (the index keeps them for models)."""
    from vitrobust.config import DataConfig
    from vitrobust.data import DATASETS, load_split

    DATASETS.get(name, key="dataset")
    splits, meta = {}, {}
    for split in ("train", "test"):
        data = load_split(DataConfig(name=name, root=root, download=download), split)
        meta = {"classes": data.classes, "mean": list(data.mean), "std": list(data.std)}

        def sample(i: int, data=data) -> tuple[bytes, str] | None:
            try:
                return png(data.sample(i)), "png"
            except DatasetError:
                if skip_bad:
                    return None
                raise

        splits[split] = SplitSource(len(data), sample, data.labels.tolist())
    return splits, meta


def _check_same(index: dict, settings: dict, out: Path) -> None:
    differ = [k for k, v in settings.items() if index.get(k) != v]
    if differ:
        was = ", ".join(f"{k}={index.get(k)!r}" for k in differ)
        raise DatasetError(f"{out} holds shards written with {was}, not {', '.join(f'{k}={settings[k]!r}' for k in differ)}: "
                           f"write to an empty folder, or delete {out / INDEX} and its shards")


def _write_tar(path: Path, samples: list[tuple[int, bytes, str, int]]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as fh:
        with TarWriter(fh, encoder=False, mtime=0) as tar:
            for position, data, suffix, label in samples:
                tar.write({"__key__": f"{position:09d}", suffix: data, "cls": str(label).encode()})
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def write_shards(source: str, out_dir: str | Path, *, shard_size: int = 1000, root: str | None = None,
                 download: bool = False, skip_bad: bool = False, seed: int = 0,
                 progress: Progress | None = None) -> tuple[dict, dict[str, int]]:
    """Write the shards of every split of `source` (a folder, or a registered dataset's name) into out_dir.
    Returns the index and the number of shards written per split (finished shards of an earlier run are
    kept and not counted)."""
    if shard_size < 1:
        raise DatasetError(f"--shard-size must be >= 1, got {shard_size}")
    out = Path(out_dir).expanduser()
    folder = Path(source).expanduser()
    if folder.is_dir():
        splits, meta = folder_source(folder, skip_bad)
        described = f"folder {folder.resolve()}"
    else:
        splits, meta = dataset_source(source, root, download, skip_bad)
        described = f"dataset {source}" + (f" ({root})" if root else "")
    settings = {"format": INDEX_FORMAT, "source": described, "shard_size": shard_size, "seed": seed,
                "skip_bad": skip_bad, **meta}
    out.mkdir(parents=True, exist_ok=True)
    index_path = out / INDEX
    index = json.loads(index_path.read_text()) if index_path.is_file() else {**settings, "splits": {}}
    _check_same(index, settings, out)
    written: dict[str, int] = {}
    for split, src in splits.items():
        if split == "train":
            order = torch.randperm(src.n, generator=torch.Generator().manual_seed(seed)).tolist()
        else:
            order = list(range(src.n))
        n_shards = -(-src.n // shard_size)
        width = max(6, len(str(n_shards - 1)))
        names = [f"{split}-{k:0{width}d}.tar" for k in range(n_shards)]
        entry = index["splits"].setdefault(split, {})
        entry.update(pattern=f"{split}-{{{0:0{width}d}..{n_shards - 1:0{width}d}}}.tar", n_shards=n_shards,
                     total_files=src.n)
        done = {s["name"]: s for s in entry.get("shards", []) if (out / s["name"]).is_file()
                and (out / s["name"]).stat().st_size == s["bytes"]}
        todo = [k for k in range(n_shards) if names[k] not in done]
        finished = sum(min(shard_size, src.n - k * shard_size) for k in range(n_shards) if names[k] in done)
        positions = [p for k in todo for p in range(k * shard_size, min((k + 1) * shard_size, src.n))]
        items = progress(positions, src.n, f"shard {split}", finished) if progress else positions
        pending: list[tuple[int, bytes, str, int]] = []
        for position in items:
            read = src.sample(order[position])
            if read is not None:
                pending.append((position, read[0], read[1], src.labels[order[position]]))
            k = position // shard_size
            if position < min((k + 1) * shard_size, src.n) - 1:
                continue  # the shard is not complete yet
            _write_tar(out / names[k], pending)
            done[names[k]] = {"name": names[k], "count": len(pending), "bytes": (out / names[k]).stat().st_size,
                              "labels": [p[3] for p in pending],
                              "skipped_bad": min(shard_size, src.n - k * shard_size) - len(pending)}
            _update(entry, [done[name] for name in names if name in done], index_path, index)
            pending = []
        _update(entry, [done[name] for name in names if name in done], index_path, index)
        written[split] = len(todo)
    return index, written


def _update(entry: dict, shards: list[dict], path: Path, index: dict) -> None:
    entry.update(shards=shards, total=sum(s["count"] for s in shards),
                 skipped_bad=sum(s["skipped_bad"] for s in shards))
    atomic_write_text(path, json.dumps(index))
