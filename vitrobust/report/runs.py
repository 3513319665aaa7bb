"""The runs a report compares, read from their results files (and training logs) only.

A run is named by a run directory or by a results JSON file (`vitrobust evaluate --out FILE`);
its figures are the ones the benchmarks listed, under `figures/` beside that results file.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from vitrobust.errors import InputError
from vitrobust.results import mark_prefix_samples, read_metrics, read_per_image, read_results
from vitrobust.shift_sets import LABELS

SHIFTS = LABELS  # distribution-shift benchmarks in report order, with their display names


def number(value) -> float | None:
    """A finite int/float from a results file, else None (missing, NaN written as a string, bools)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return value


@dataclass
class Run:
    name: str
    results_path: Path
    results: dict
    metrics: list[dict] = field(default_factory=list)
    _per_image: dict | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        mark_prefix_samples(self.results)  # old entries: measured on the first n images (Leaderboard.notes)

    @functools.cached_property
    def config(self) -> dict:
        """The run's config.yaml beside its results as a dict ({} for a results file without one)."""
        try:
            cfg = yaml.safe_load((self.results_path.parent / "config.yaml").read_text())
        except (OSError, yaml.YAMLError):
            return {}
        return cfg if isinstance(cfg, dict) else {}

    @property
    def figures_dir(self) -> Path:
        return self.results_path.parent / "figures"

    @property
    def meta(self) -> dict:
        meta = self.results.get("meta")
        return meta if isinstance(meta, dict) else {}

    @property
    def train_seconds(self) -> float | None:
        total = sum(number(r.get("seconds")) or 0.0 for r in self.metrics if r.get("kind") == "epoch")
        return total or None

    def entry(self, name: str) -> dict | None:
        value = self.results.get(name)
        return value if isinstance(value, dict) else None

    def key_of(self, entry: dict | None) -> str | None:
        """The results.json key (a benchmark, or a key under `variants`) that holds this very entry."""
        for key, value in self.results.items():
            if value is entry:
                return key
        variants = self.results.get("variants")
        return next((k for k, v in variants.items() if v is entry), None) if isinstance(variants, dict) else None

    def per_image(self, entry: dict | None, path: str):
        """(values, images digest) saved beside results.json for `path` of the entry, or None."""
        if self._per_image is None:
            self._per_image = read_per_image(self.results_path)
        key = self.key_of(entry)
        return None if key is None else self._per_image.get(key, {}).get(path)

    def shifts(self, parts: bool = False) -> dict[str, tuple[str, dict]]:
        """{key: (label, entry)} of every shift result with a top1, in SHIFTS order.

        A shift is a top-level entry named in SHIFTS or one nested under a `shift`/`shifts` entry.
        Sub-results (SI-Score's factors, as sub-entries or under `factors`) are keyed `si_score/rotation`;
        they are listed with `parts`, or in place of a headline top1 the entry lacks.
        """
        found: dict[str, dict] = {}
        for container in (self.results, self.entry("shift") or {}, self.entry("shifts") or {}):
            for name in SHIFTS:
                if isinstance(container.get(name), dict):
                    found.setdefault(name, container[name])
        out = {}
        for name, entry in found.items():
            headline = number(entry.get("top1")) is not None
            if headline:
                out[name] = (SHIFTS[name], entry)
            if headline and not parts:
                continue
            subs = entry.get("factors") if isinstance(entry.get("factors"), dict) else entry
            for part, sub in subs.items():
                if isinstance(sub, dict) and number(sub.get("top1")) is not None:
                    out[f"{name}/{part}"] = (f"{SHIFTS[name]} {part}", sub)
        return out


def shift_labels(runs: Iterable[Run], parts: bool = False) -> dict[str, str]:
    """{key: label} of the shift results any run holds, in SHIFTS order (sub-entries by first sight)."""
    found = {k: label for run in runs for k, (label, _) in run.shifts(parts).items()}
    order = list(SHIFTS)
    return dict(sorted(found.items(), key=lambda item: order.index(item[0].split("/")[0])))


def _results_path(path: Path) -> Path:
    if path.is_file():
        return path
    if not path.exists():
        raise InputError(f"{path} does not exist: give a run directory (or a results .json file) "
                         "that `vitrobust evaluate` wrote")
    if not (path / "results.json").is_file():
        raise InputError(f"{path} has no results.json: run `vitrobust evaluate {path}` first")
    return path / "results.json"


def _unique_names(paths: list[Path]) -> list[str]:
    """The folder name of each run, lengthened with parent folders where two runs share it."""
    parts = [p.resolve().parts for p in paths]
    depth = [1] * len(paths)
    while True:
        names = ["/".join(p[-d:]) for p, d in zip(parts, depth)]
        clashes = {n for n in names if names.count(n) > 1}
        if not clashes or all(d >= len(p) for p, d in zip(parts, depth)):
            return names
        depth = [d + 1 if n in clashes else d for n, d in zip(names, depth)]


def load_runs(paths: Iterable[str | Path]) -> list[Run]:
    """Read every run's results (a clear InputError for a missing or malformed file), in input order."""
    paths = [Path(p) for p in paths]
    if not paths:
        raise InputError("no runs given: name at least one run directory or results .json file")
    files = [_results_path(p) for p in paths]
    # a results file is named for its folder, unless it has a name of its own (`--out baseline.json`)
    labels = [f.parent if f.name == "results.json" else f.with_suffix("") for f in files]
    runs = []
    for name, file in zip(_unique_names(labels), files):
        results = read_results(file)
        if not isinstance(results, dict):
            raise InputError(f"{file} holds a JSON {type(results).__name__}, not an object of benchmark "
                             "entries: give the results.json that `vitrobust evaluate` wrote")
        runs.append(Run(name, file, results, read_metrics(file.parent)))
    return runs


def as_runs(runs: Iterable[str | Path | Run]) -> list[Run]:
    runs = list(runs)
    return runs if runs and all(isinstance(r, Run) for r in runs) else load_runs(runs)


__all__ = ["SHIFTS", "Run", "as_runs", "load_runs", "number", "shift_labels"]
