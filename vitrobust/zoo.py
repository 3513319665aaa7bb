"""The zoo: released robust models with their published numbers (vitrobust/resources/zoo.json).

An entry says how to import its file (format, timm arch, preprocessing, dataset, threat model) and, for
each published number, which results.json entry and field it compares with. `compare` puts a measured
entry beside the published number: the difference and, for accuracies measured on n images, whether
the published number lies inside the measured 95% interval (stats: Wilson, or the entry's bootstrap).
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass, field
from importlib import resources

from vitrobust.errors import InputError
from vitrobust.registry import Registry
from vitrobust.stats import wilson


@dataclass(frozen=True)
class Published:
    benchmark: str | None  # the results.json entry it compares with (None: recorded, not compared)
    field: str  # the entry's field: top1, robust_top1, mce
    value: float  # as published: accuracies in percent, mCE x100
    label: str
    higher_is_better: bool = True


@dataclass(frozen=True)
class ZooEntry:
    name: str
    paper: str
    format: str  # a CHECKPOINT_FORMATS name
    arch: str  # timm model name
    dataset: str  # data.name it is evaluated on
    img_size: int
    mean: list[float] | str | None  # a list, "file" (read from the checkpoint), "arch" (timm's), None ([0,1] input)
    std: list[float] | str | None
    crop_pct: float | None
    interpolation: str | None
    threat: dict | None  # {"norm": ..., "eps": ...}
    suite: str  # the benchmarks that give its published numbers
    published: tuple[Published, ...]
    source: str
    notes: str = ""
    kwargs: dict = field(default_factory=dict)  # extra timm arguments
    adapt_patch_size: int | None = None  # built at 224 px, stem adapted to this patch size (CIFAR XCiTs)


@functools.cache
def _load() -> tuple[str, tuple[ZooEntry, ...]]:
    doc = json.loads(resources.files("vitrobust").joinpath("resources", "zoo.json").read_text())
    entries = tuple(ZooEntry(**{**e, "published": tuple(Published(**p) for p in e["published"])}) for e in doc["entries"])
    return doc["about"], entries


ZOO: Registry[ZooEntry] = Registry("zoo entry", error=InputError)
for _entry in _load()[1]:
    ZOO.register(_entry)


def compare(entry: ZooEntry, benchmark: str, result: dict) -> dict | None:
    """The published number of `benchmark` beside the measured one in `result` (a results.json entry),
    or None when the entry publishes none for it or the result lacks the field."""
    for pub in entry.published:
        if pub.benchmark != benchmark or not isinstance(result.get(pub.field), (int, float)):
            continue
        measured = float(result[pub.field])
        out = {"zoo": entry.name, "label": pub.label, "published": pub.value, "source": entry.source}
        if pub.field == "mce":  # stored x100 already; its interval is a bootstrap over images
            ci = (result.get("ci95") or {}).get("mce")
            inside = None if not ci or any(math.isnan(v) for v in ci) else ci[0] <= pub.value <= ci[1]
            out.update(measured=measured, difference=measured - pub.value, ci95=ci if inside is not None else None,
                       inside_ci95=inside)
            return out
        n = result.get("n")
        measured_pct = 100 * measured
        out.update(measured=measured_pct, difference=measured_pct - pub.value, n=n)
        stored = (result.get("ci95") or {}).get(pub.field)  # the entry's own interval (stats.interval)
        if stored:
            lo, hi = stored
            out.update(ci95=[100 * lo, 100 * hi], inside_ci95=100 * lo <= pub.value <= 100 * hi)
        elif isinstance(n, int) and n > 0:
            lo, hi = wilson(measured * n, n)
            out.update(ci95=[100 * lo, 100 * hi], inside_ci95=100 * lo <= pub.value <= 100 * hi)
        else:
            out.update(ci95=None, inside_ci95=None)
        return out
    return None


def describe() -> str:
    """What the zoo is (the data file's own description)."""
    return _load()[0]


__all__ = ["ZOO", "Published", "ZooEntry", "compare", "describe"]
