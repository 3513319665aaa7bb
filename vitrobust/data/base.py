"""What every dataset yields: uint8 images (decoded once) plus labels and metadata."""

from __future__ import annotations

import hashlib
import os
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from vitrobust.errors import DatasetError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_MEMORY_BUDGET_GB = 4.0  # data.memory_budget_gb


def keep_in_memory(setting: bool | str, n: int, chans: int, size: int, budget_gb: float = DEFAULT_MEMORY_BUDGET_GB,
                   what: str = "dataset") -> bool:
    """data.in_memory resolved for a split of n decoded uint8 chans x size x size images: "auto" keeps it
    in memory when it fits the budget; True beyond the budget is an error (it would exhaust memory)."""
    need = n * chans * size * size
    budget = budget_gb * 2**30
    if setting == "auto":
        return need <= budget
    if setting and need > budget:
        raise DatasetError(
            f"{what}: {n:,} images take {need / 2**30:.1f} GiB decoded, more than data.memory_budget_gb="
            f"{budget_gb:g}; set data.in_memory=auto (decoded lazily in data.num_workers worker processes) "
            f"or raise data.memory_budget_gb"
        )
    return bool(setting)


def decode_all(read: Callable[[int], torch.Tensor], n: int) -> torch.Tensor:
    """Every sample decoded, by a pool of threads (PIL decodes and resizes without holding the GIL)."""
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        return torch.stack(list(pool.map(read, range(n))))


def _rank(seed: int, key: str) -> int:
    """A seeded pseudo-random rank by blake2b: the same on every machine and version (unlike torch or random)."""
    return int.from_bytes(hashlib.blake2b(f"{seed}:{key}".encode(), digest_size=8).digest(), "big")


def balanced_order(labels: torch.Tensor, positions: torch.Tensor, seed: int) -> torch.Tensor:
    """Every index of a set in balanced order: each class's samples ranked by the hash of their position, then
    round r takes the r-th of every class that has one, the classes in a seeded order per round. Its first n
    is the balanced sample of n (the round taken in part decides which classes get one more)."""
    by_class: dict[int, list[tuple[int, int, int]]] = {}
    for i, (y, p) in enumerate(zip(labels.tolist(), positions.tolist())):
        by_class.setdefault(y, []).append((_rank(seed, str(p)), p, i))
    queues = {y: [i for _, _, i in sorted(members)] for y, members in by_class.items()}
    order: list[int] = []
    for r in range(max(map(len, queues.values()), default=0)):
        ranked = sorted((_rank(seed, f"round{r}:class{y}"), y) for y, q in queues.items() if r < len(q))
        order += [queues[y][r] for _, y in ranked]
    return torch.tensor(order, dtype=torch.long)


@dataclass(frozen=True)
class Reindexed:
    """`read(i)` of a selection: reads position i of the selection from the parent's reader (picklable
    when the parent's reader is, so DataLoader workers can receive it)."""

    read: Callable[[int], torch.Tensor]
    positions: tuple[int, ...]

    def __call__(self, i: int) -> torch.Tensor:
        return self.read(self.positions[i])


@dataclass
class ImageSet:
    """A split of a dataset.

    `images` is a uint8 NCHW tensor when the split is held in memory; otherwise `read(i)` decodes
    sample i to a uint8 CHW tensor. Images become float [0,1] only in the loader.

    Foreground masks (optional) follow the same pattern: `masks` is a uint8 N x 1 x H x W tensor at the
    images' size, or `read_mask(i)` gives one 1 x H x W mask. 255 = foreground, 0 = background;
    values in between appear only when masks were resized bilinearly (data.masks.resize=bilinear).
    `mask_resize` is how the loader resizes and warps them ("nearest" or "bilinear").
    """

    labels: torch.Tensor
    classes: list[str]
    img_size: int
    in_chans: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    images: torch.Tensor | None = None
    read: Callable[[int], torch.Tensor] | None = None
    name: str = ""
    info: dict = field(default_factory=dict)
    masks: torch.Tensor | None = None
    read_mask: Callable[[int], torch.Tensor] | None = None
    mask_resize: str = "nearest"
    stream: Any = None  # a ShardStream (data/stream.py) when training reads the split shard by shard
    positions: torch.Tensor | None = None  # each sample's position in the loaded split (None: 0..n-1)
    balanced_seed: int | None = None  # the seed of the balanced order the samples are in (subset), else None

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def source_positions(self) -> torch.Tensor:
        """Each sample's position in the split as its loader gave it (what names an image)."""
        return torch.arange(len(self)) if self.positions is None else self.positions

    def subset(self, n: int | None, seed: int = 0) -> ImageSet:
        """A balanced sample of n (docs/architecture.md, "Subsets are balanced"): n / classes of each class as
        far as they go, drawn with `seed` (data.subset_seed) by hashes, so the same images on any machine;
        classes interleaved, so a prefix of a sample is the smaller sample and a sample of a sample (same
        seed) is its prefix. n >= len: the set itself, in its order."""
        if n is None or n >= len(self):
            return self
        prefix = self.balanced_seed == seed
        idx = torch.arange(n) if prefix else balanced_order(self.labels, self.source_positions, seed)[:n]
        out = replace(self.select(idx), balanced_seed=seed)
        if self.stream is not None:  # the training stream reads the sample's members only
            out = replace(out, stream=self.stream.select(out.source_positions.tolist()))
        return out

    def select(self, indices: Sequence[int] | torch.Tensor) -> ImageSet:
        """The samples at `indices`, in that order (lazy readers are re-indexed, masks and positions kept)."""
        idx = torch.as_tensor(indices, dtype=torch.long).reshape(-1)
        positions = tuple(idx.tolist())
        return replace(
            self, labels=self.labels[idx], images=None if self.images is None else self.images[idx],
            read=None if self.read is None else Reindexed(self.read, positions),
            masks=None if self.masks is None else self.masks[idx],
            read_mask=None if self.read_mask is None else Reindexed(self.read_mask, positions), stream=None,
            positions=self.source_positions[idx], balanced_seed=None,
        )

    def digest(self, n: int | None = None) -> str:
        """Names the first n images (default: all): equal digests, the same images in the same order. The first
        n of the loaded split keep the digest they had when subsets were prefixes (they are the same images);
        any other selection also hashes its positions, so an old prefix digest never names a balanced sample."""
        n = len(self) if n is None else n
        h = hashlib.sha256(f"{self.name}|{n}|".encode())
        h.update(self.labels[:n].to(torch.int64).numpy().tobytes())
        positions = self.source_positions[:n].to(torch.int64)
        if not torch.equal(positions, torch.arange(len(positions))):
            h.update(b"|positions|" + positions.numpy().tobytes())
        return h.hexdigest()[:16]

    def sample_info(self, n: int | None = None) -> dict:
        """How the first n images (default: all) were drawn, as results entries record it: the rule (balanced,
        with its seed; all: the whole set given; prefix: its first n), n, and the images of each class."""
        n = len(self) if n is None else n
        if self.balanced_seed is not None:
            rule = {"rule": "balanced", "seed": self.balanced_seed}
        else:
            rule = {"rule": "all" if n >= len(self) else "prefix"}
        counts: dict[str, int] = {}
        for label, k in sorted(Counter(self.labels[:n].tolist()).items()):
            name = self.classes[label] if 0 <= label < len(self.classes) else str(label)
            counts[name] = counts.get(name, 0) + k
        return {**rule, "n": n, "class_counts": counts}

    @property
    def has_masks(self) -> bool:
        return self.masks is not None or self.read_mask is not None

    def sample(self, index: int) -> torch.Tensor:
        return self.images[index] if self.images is not None else self.read(index)

    def mask(self, index: int) -> torch.Tensor:
        """The uint8 1 x H x W foreground mask of sample `index` (255 = foreground)."""
        return self.masks[index] if self.masks is not None else self.read_mask(index)
