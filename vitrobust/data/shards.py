"""WebDataset tar shards as a dataset (`data.name: webdataset`); see docs/architecture.md, "Sharded data".

A shard is an uncompressed tar in the WebDataset layout: the members of one sample share a key
(`000123.jpg`, `000123.cls`). Labels come from the `.cls` member (an integer), or, with
`data.options.class_map`, from the class name that begins the key (`n01440764/000123.jpg`). The shard
folder's `index.json` (written by `vitrobust data shard`) lists the shards of each split with their
sample counts and labels; shards without one are scanned once (tar headers and `.cls` members).

The split is an ImageSet like any other: held in memory when it fits data.memory_budget_gb (data.in_memory:
auto), else read per sample by seeking to its member (evaluation) and, for training, streamed shard by
shard through the `webdataset` pipeline (ShardStream, data/stream.py).
"""

from __future__ import annotations

import glob
import io
import json
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from webdataset.shardlists import expand_urls
from webdataset.tariterators import base_plus_ext

from vitrobust.data.base import (
    DEFAULT_MEMORY_BUDGET_GB,
    IMAGENET_MEAN,
    IMAGENET_STD,
    ImageSet,
    decode_all,
    keep_in_memory,
)
from vitrobust.data.folders import IMAGE_EXTENSIONS, decode
from vitrobust.data.stream import Shard, ShardStream
from vitrobust.errors import ConfigError, DatasetError

INDEX = "index.json"
INDEX_FORMAT = "vitrobust-shards-v1"
IMAGE_SUFFIXES = tuple(sorted(ext[1:] for ext in IMAGE_EXTENSIONS))
DEFAULT_PATTERNS = {"train": ("train-*.tar",), "test": ("test-*.tar", "val-*.tar", "validation-*.tar")}
SHUFFLE_BUFFER = 1000
OPTIONS = {
    "train": "shards of the training split: a brace or glob pattern, relative to data.root "
             "(e.g. train-{0000..0127}.tar; default: index.json's, else train-*.tar)",
    "test": "shards of the test split (default: index.json's, else test-*.tar, val-*.tar)",
    "class_map": "JSON file: a list of class names or {name: index}; labels of samples without a .cls member "
                 "come from the class name that begins their key (<class>/<name>)",
    "shuffle_buffer": f"samples in the training stream's shuffle buffer (default {SHUFFLE_BUFFER})",
}
REWRITE_HINT = "rewrite the shard (vitrobust data shard --skip-bad skips unreadable images)"


def check_options(options: dict | None) -> dict:
    """data.options of the webdataset dataset; an option it does not know is a ConfigError."""
    options = dict(options or {})
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        known = "; ".join(f"{k}: {v}" for k, v in OPTIONS.items())
        raise ConfigError(f"data.options.{unknown[0]} is not an option of the webdataset dataset; it knows: {known}")
    buffer = options.get("shuffle_buffer", SHUFFLE_BUFFER)
    if not isinstance(buffer, int) or isinstance(buffer, bool) or buffer < 1:
        raise ConfigError(f"data.options.shuffle_buffer must be a positive integer, got {buffer!r}")
    return options


# --- what the shards hold -------------------------------------------------------------------


@dataclass(frozen=True)
class Member:
    """One sample of a shard: its key, where its image bytes lie in the tar, and its label."""

    key: str
    suffix: str
    offset: int
    size: int
    label: int | None
    class_name: str | None


def scan_shard(path: Path) -> list[Member]:
    """The samples of one uncompressed tar, in member order (headers only, plus the small .cls members)."""
    samples: dict[str, dict] = {}
    try:
        with tarfile.open(path, "r:") as tar:
            for info in tar:
                if not info.isreg():
                    continue
                key, suffix = base_plus_ext(info.name)
                if key is None or key.startswith("__"):
                    continue
                entry = samples.setdefault(key, {})
                suffix = suffix.lower()
                if suffix == "cls":
                    text = tar.extractfile(info).read().decode().strip()
                    try:
                        entry["label"] = int(text)
                    except ValueError:
                        raise DatasetError(f"{path}: {info.name} holds {text[:20]!r}, not an integer class index") from None
                elif suffix in IMAGE_SUFFIXES and "offset" not in entry:
                    entry.update(suffix=suffix, offset=info.offset_data, size=info.size)
    except tarfile.ReadError as err:
        raise DatasetError(f"cannot read shard {path}: {err}; shards must be uncompressed tar files (images inside are "
                           f"already compressed); write them with vitrobust data shard") from None
    members = []
    for key, entry in samples.items():
        if "offset" not in entry:
            raise DatasetError(f"sample {key!r} in shard {path} has no image member (.{', .'.join(IMAGE_SUFFIXES)})")
        members.append(Member(key, entry["suffix"], entry["offset"], entry["size"], entry.get("label"),
                              key.split("/")[0] if "/" in key else None))
    return members


def read_index(root: Path | None) -> dict | None:
    path = root / INDEX if root is not None else None
    if path is None or not path.is_file():
        return None
    try:
        index = json.loads(path.read_text())
    except ValueError as err:
        raise DatasetError(f"{path} is not valid JSON ({err}): delete it (the shards are scanned instead) or "
                           f"rewrite the shards with vitrobust data shard") from None
    if index.get("format") != INDEX_FORMAT:
        raise DatasetError(f"{path} is not a vitrobust shard index (format {index.get('format')!r}, expected "
                           f"{INDEX_FORMAT!r}): delete or rename it so the shards are scanned")
    return index


def expand_pattern(pattern: str, root: Path | None) -> list[Path]:
    """Shard paths of a brace pattern (train-{0000..0127}.tar) or glob, relative to root; every one must exist."""
    paths: list[Path] = []
    for name in expand_urls(pattern):
        path = Path(name).expanduser()
        path = path if path.is_absolute() or root is None else root / path
        if any(c in name for c in "*?["):
            found = sorted(Path(p) for p in glob.glob(str(path)))
            if not found:
                raise DatasetError(f"no shard matches {path}: set data.root to the shard folder, or "
                                   f"data.options.train / .test to the shards' pattern")
            paths += found
        elif not path.is_file():
            raise DatasetError(f"shard {path} (from the pattern {pattern!r}) does not exist")
        else:
            paths.append(path)
    return paths


def split_paths(split: str, root: Path | None, options: dict, index: dict | None) -> list[Path]:
    if split in options:
        return expand_pattern(str(options[split]), root)
    listed = (index or {}).get("splits", {}).get(split)
    if listed is not None:
        if len(listed.get("shards", [])) != listed.get("n_shards"):
            raise DatasetError(f"{root / INDEX} lists {len(listed.get('shards', []))} of the {listed.get('n_shards')} "
                               f"{split} shards: their writing was interrupted; run the same vitrobust data shard "
                               f"command again to finish them")
        return [root / s["name"] for s in listed["shards"]]
    for pattern in DEFAULT_PATTERNS[split]:
        if root is not None and sorted(root.glob(pattern)):
            return sorted(root.glob(pattern))
    raise DatasetError(f"webdataset: no {split} shards under {root} ({', '.join(DEFAULT_PATTERNS[split])}): set "
                       f"data.root to the shard folder, or data.options.{split} to the shards' pattern")


def class_map(options: dict) -> list[str] | None:
    if "class_map" not in options:
        return None
    path = Path(str(options["class_map"])).expanduser()
    try:
        mapping = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise DatasetError(f"data.options.class_map: cannot read {path} ({err})") from None
    if isinstance(mapping, dict):
        names = sorted(mapping, key=mapping.get)
        if sorted(mapping.values()) != list(range(len(mapping))):
            raise DatasetError(f"data.options.class_map {path}: the indices must be 0..{len(mapping) - 1}, each once")
        return names
    if isinstance(mapping, list) and all(isinstance(n, str) for n in mapping):
        return mapping
    raise DatasetError(f"data.options.class_map {path} must hold a list of class names or {{name: index}}")


def labels_of(members: list[Member], path: Path, classes: list[str] | None) -> list[int]:
    index = {name: i for i, name in enumerate(classes or [])}
    labels = []
    for m in members:
        if m.label is not None:
            labels.append(m.label)
        elif classes is not None and m.class_name in index:
            labels.append(index[m.class_name])
        else:
            why = (f"its class {m.class_name!r} is not in data.options.class_map" if classes is not None else
                   "give data.options.class_map (a JSON list of class names) for keys of the form <class>/<name>")
            raise DatasetError(f"sample {m.key!r} in shard {path} has no .cls member: {why}")
    return labels


def shard_table(paths: list[Path], root: Path | None, index: dict | None, split: str, classes: list[str] | None,
                ) -> tuple[list[int], list[int]]:
    """(sample count per shard, labels of every sample in order), from index.json (in root) where it
    lists a shard, else from a scan."""
    listed = {s["name"]: s for s in (index or {}).get("splits", {}).get(split, {}).get("shards", [])}
    counts, labels = [], []
    for path in paths:
        entry = listed.get(path.name)
        if entry is not None and path.parent.resolve() == root.resolve():
            shard_labels = entry["labels"]
        else:
            shard_labels = labels_of(scan_shard(path), path, classes)
        counts.append(len(shard_labels))
        labels += shard_labels
    return counts, labels


# --- reading samples ------------------------------------------------------------------------


@dataclass
class ShardReader:
    """Picklable `read(i)`: seeks to sample i's image member in its shard and decodes it like a file
    of an image folder (data/folders.py decode). Each process scans a shard's headers once."""

    shards: tuple[Shard, ...]
    size: int
    crop_pct: float
    channels: int
    interpolation: str
    _members: dict = field(default_factory=dict, repr=False, compare=False)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_members": {}}

    def locate(self, i: int) -> tuple[Shard, int]:
        lo, hi = 0, len(self.shards) - 1
        while lo < hi:  # the last shard that starts at or before i
            mid = (lo + hi + 1) // 2
            lo, hi = (mid, hi) if self.shards[mid].start <= i else (lo, mid - 1)
        return self.shards[lo], i - self.shards[lo].start

    def __call__(self, i: int) -> torch.Tensor:
        shard, pos = self.locate(i)
        if shard.path not in self._members:
            self._members[shard.path] = scan_shard(Path(shard.path))
        members = self._members[shard.path]
        if pos >= len(members):
            raise DatasetError(f"shard {shard.path} holds {len(members)} samples, the index says {shard.count}: "
                               f"rewrite the shards or delete the stale {INDEX}")
        m = members[pos]
        with open(shard.path, "rb") as f:
            f.seek(m.offset)
            data = f.read(m.size)
        return self.decode_bytes(data, f"{shard.path}:{m.key}.{m.suffix}")

    def decode_bytes(self, data: bytes, name: str) -> torch.Tensor:
        return decode(io.BytesIO(data), self.size, self.crop_pct, self.channels, self.interpolation, name=name,
                      fix=REWRITE_HINT)

    def decode_sample(self, sample: dict) -> torch.Tensor:
        """The image of a sample from the webdataset pipeline (a dict of member suffix -> bytes)."""
        name = f"{sample.get('__url__')}:{sample.get('__key__')}"
        suffix = next((k for k in sample if k in IMAGE_SUFFIXES), None)
        if suffix is None:
            raise DatasetError(f"sample {name} has no image member (.{', .'.join(IMAGE_SUFFIXES)})")
        return self.decode_bytes(sample[suffix], f"{name}.{suffix}")


def load_webdataset(
    split: str, root: str | None = None, img_size: int | None = None, in_memory: bool | str = "auto",
    in_chans: int | None = None, crop_pct: float | None = None, interpolation: str | None = None,
    memory_budget_gb: float = DEFAULT_MEMORY_BUDGET_GB, options: dict | None = None,
) -> ImageSet:
    """A split of tar shards. Images are decoded like an image folder's (the training split: shorter
    side to img_size, centre square; the test split: shorter side to img_size / crop_pct, centre crop)."""
    options = check_options(options)
    base = Path(root).expanduser() if root is not None else None
    if base is not None and not base.is_dir():
        raise DatasetError(f"webdataset: data.root={root} is not a folder: set it to the folder that holds the shards")
    index = read_index(base)
    paths = split_paths(split, base, options, index)
    classes = class_map(options) or (index or {}).get("classes")
    counts, labels = shard_table(paths, base, index, split, classes)
    if not labels:
        raise DatasetError(f"webdataset: the {split} shards ({paths[0]} ...) hold no samples")
    if classes is None:
        classes = [str(c) for c in range(max(labels) + 1)]
    bad = sorted({y for y in labels if not 0 <= y < len(classes)})
    if bad:
        raise DatasetError(f"webdataset {split} shards hold labels {bad[:5]} outside 0..{len(classes) - 1} (the classes)")
    starts = [sum(counts[:k]) for k in range(len(counts))]
    shards = tuple(Shard(str(p), s, c) for p, s, c in zip(paths, starts, counts))
    size, chans, interp = img_size or 224, in_chans or 3, interpolation or "bicubic"
    pct = 1.0 if split == "train" else (crop_pct or 0.875)
    read = ShardReader(shards, size, pct, chans, interp)
    n = len(labels)
    what = f"webdataset {split} ({len(shards)} shards)"
    images = decode_all(read, n) if keep_in_memory(in_memory, n, chans, size, memory_budget_gb, what) else None
    stream = None
    if images is None:
        stream = ShardStream(shards, read, options.get("shuffle_buffer", SHUFFLE_BUFFER))
    resize = {"size": size, "crop_pct": pct, "interpolation": interp, "in_chans": chans}
    mean, std = (IMAGENET_MEAN, IMAGENET_STD) if chans == 3 else ((0.5,) * chans, (0.5,) * chans)
    if index is not None and len(index.get("mean", ())) == chans:  # the statistics of the dataset it came from
        mean, std = tuple(index["mean"]), tuple(index["std"])
    return ImageSet(
        labels=torch.tensor(labels, dtype=torch.int64), classes=list(classes), img_size=size, in_chans=chans,
        mean=mean, std=std,
        images=images, read=read, name="webdataset", stream=stream,
        info={"root": str(base or paths[0].parent), "shards": len(shards), "crop_pct": pct, "resize": resize},
    )
