"""The results files: results.json (one entry per benchmark, plus `meta`) and metrics.jsonl (one
JSON object per line, written during training), and TensorBoard where it is installed.

Beside results.json, per_image.safetensors keeps each entry's per-image results (which images a model
got right), so two runs evaluated on the same images can be compared image by image.

Evaluation and training write these files; reports, sweeps and the quickstart read them. This
module is a leaf: it imports only the atomic writer below it, so every room can use it.

Several processes may write one file at once (evaluations of one run, a sweep's workers): every
read-merge-write of results.json and every append to metrics.jsonl holds an inter-process file lock,
`<file>.lock` beside the file (`locked`). The lock is reentrant within a thread, so code that holds
`locked(path)` around its own read-modify-write may call `write_results` inside.
"""

from __future__ import annotations

import json
import math
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from filelock import FileLock, Timeout
from safetensors import safe_open
from safetensors.torch import save

from vitrobust.checkpoint import atomic_write_bytes, atomic_write_text
from vitrobust.errors import InputError

RESULTS_FILE = "results.json"
METRICS_FILE = "metrics.jsonl"
PER_IMAGE_FILE = "per_image.safetensors"  # beside results.json: per-image results, for paired comparisons
LOCK_SUFFIX = ".lock"
LOCK_TIMEOUT_S = 120.0  # how long a writer waits for another process's lock before giving up

_LOCKS: dict[tuple[int, str], FileLock] = {}  # one FileLock per (process, lock file): reentrant in a thread
_LOCKS_GUARD = threading.Lock()


def lock_path(path: str | Path) -> Path:
    """The lock file of a results or metrics file: `<name>.lock` beside it."""
    path = Path(path)
    return path.with_name(path.name + LOCK_SUFFIX)


def _file_lock(lock_file: Path) -> FileLock:
    # Keyed by pid too: a FileLock must not be used in a forked child.
    key = (os.getpid(), os.path.abspath(lock_file))
    with _LOCKS_GUARD:
        lock = _LOCKS.get(key)
        if lock is None:
            lock = _LOCKS[key] = FileLock(key[1])
        return lock


@contextmanager
def locked(path: str | Path) -> Iterator[FileLock]:
    """Hold the inter-process lock of a results/metrics file (`<name>.lock`) for a read-modify-write.

    Waits up to LOCK_TIMEOUT_S for another process, then raises an InputError. Reentrant within a thread:
    `write_results` and `MetricsLog.log` inside the block take the same lock again without waiting."""
    lock_file = lock_path(path)
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    lock = _file_lock(lock_file)
    try:
        lock.acquire(timeout=LOCK_TIMEOUT_S)
    except Timeout:
        raise InputError(
            f"{lock_file} is held by another vitrobust process (waited {LOCK_TIMEOUT_S:g} s); let it finish, "
            f"or delete the lock file if no other vitrobust process runs"
        ) from None
    try:
        yield lock
    finally:
        lock.release()


def read_results(path: str | Path) -> dict:
    """The results file's content ({} when it does not exist); a damaged file is an InputError."""
    path = Path(path)
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise InputError(f"{path} is not valid JSON ({err}); delete it and evaluate again") from None


def measured_by_prefix(entry: object) -> bool:
    """An entry measured on the first n images of its set: the rule before subsets were balanced samples
    (docs/architecture.md, "Subsets are balanced"); mark_prefix_samples names the entries of old files so."""
    sample = entry.get("sample") if isinstance(entry, dict) else None
    return isinstance(sample, dict) and sample.get("rule") == "prefix"


def mark_prefix_samples(results: dict) -> dict:
    """Mark (in place) each measured entry, top-level or under `variants`, written before entries recorded
    their `sample`: {"rule": "prefix", "n": n}. Such an entry was measured on the first n images; a file
    does not say whether n was the whole set, so every one is marked (a re-measurement costs less than
    comparing different images)."""
    if not isinstance(results, dict):
        return results
    variants = results.get("variants")
    entries = [*results.items(), *(variants.items() if isinstance(variants, dict) else ())]
    for name, entry in entries:
        if name in ("meta", "variants") or not isinstance(entry, dict) or "sample" in entry:
            continue
        n = entry.get("n")
        if isinstance(n, int) and not isinstance(n, bool) and n > 0:
            entry["sample"] = {"rule": "prefix", "n": n}
    return results


def write_results(path: str | Path, results: dict, meta: dict | None = None) -> dict:
    """Merge benchmark entries into results.json (atomically, under `locked(path)`); other benchmarks'
    entries are kept, and `meta` is merged into the stored meta."""
    with locked(path):
        merged = read_results(path)
        merged.update(results)
        if meta:
            merged["meta"] = {**merged.get("meta", {}), **meta}
        atomic_write_text(Path(path), json.dumps(merged, indent=2, sort_keys=False))
    return merged


def update_results(path: str | Path, change, meta: dict | None = None) -> dict:
    """Read results.json, merge in `change(current)` (top-level keys) and `meta`, write it back; the lock
    is held throughout, so no other process writes between the read and the write."""
    with locked(path):
        return write_results(path, change(read_results(path)), meta)


def per_image_path(results_path: str | Path) -> Path:
    """The per-image file of a results file: per_image.safetensors beside results.json, `<stem>.per_image.
    safetensors` beside another results JSON."""
    path = Path(results_path)
    return path.with_name(PER_IMAGE_FILE if path.name == RESULTS_FILE else f"{path.stem}.{PER_IMAGE_FILE}")


def read_per_image(results_path: str | Path) -> dict[str, dict[str, tuple[torch.Tensor, str]]]:
    """{entry: {path: (values, images digest)}} saved beside a results file ({} without one). Values are
    bool (correct) or float (a score) per image, in dataset order; equal digests mean the same images."""
    path = per_image_path(results_path)
    if not path.is_file():
        return {}
    try:
        with safe_open(str(path), "pt") as fh:
            digests = json.loads((fh.metadata() or {}).get("images", "{}"))
            out: dict[str, dict[str, tuple[torch.Tensor, str]]] = {}
            for key in fh.keys():
                entry, field = key.split("/", 1)
                values = fh.get_tensor(key)
                out.setdefault(entry, {})[field] = (values.bool() if values.dtype == torch.uint8 else values,
                                                    digests.get(key, ""))
            return out
    except (OSError, ValueError, json.JSONDecodeError) as err:
        raise InputError(f"{path} is unreadable ({err}); delete it (only paired comparisons need it)") from None


def write_per_image(results_path: str | Path, entry: str, values: dict[str, tuple[torch.Tensor, str]]) -> Path:
    """Store one entry's per-image results (replacing that entry's previous ones) under the results file's
    lock; bool vectors are stored as uint8, scores as float32."""
    path = per_image_path(results_path)
    with locked(results_path):
        stored = {e: f for e, f in read_per_image(results_path).items() if e != entry}
        stored[entry] = values
        tensors, digests = {}, {}
        for name, fields in stored.items():
            for field, (tensor, digest) in fields.items():
                key = f"{name}/{field}"
                tensors[key] = (tensor.to(torch.uint8) if tensor.dtype == torch.bool else tensor.float()).contiguous()
                digests[key] = digest
        atomic_write_bytes(path, save(tensors, metadata={"images": json.dumps(digests)}))
    return path


def _plain(value):
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


class MetricsLog:
    """Appends rows {"kind": ..., "time": ..., **values} to RUN/metrics.jsonl (and TensorBoard scalars)."""

    def __init__(self, run_dir: str | Path, enabled: bool = True):
        self.path = Path(run_dir) / METRICS_FILE
        self.enabled = enabled
        self.tb = None
        if enabled:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(Path(run_dir) / "tensorboard"))
            except ImportError:  # tensorboard is optional
                self.tb = None

    def log(self, kind: str, **values) -> None:
        if not self.enabled:
            return
        row = {"kind": kind, "time": round(time.time(), 3), **{k: _plain(v) for k, v in values.items()}}
        line = json.dumps(row) + "\n"
        with locked(self.path):  # creates the run dir; lines of concurrent processes never interleave
            with self.path.open("a") as fh:
                fh.write(line)
        if self.tb is not None and "step" in row:
            for key, value in row.items():
                if isinstance(value, (int, float)) and key not in ("step", "time", "epoch"):
                    self.tb.add_scalar(f"{kind}/{key}", value, row["step"])
            self.tb.flush()


def read_metrics(run_dir: str | Path) -> list[dict]:
    """The rows of RUN/metrics.jsonl ([] without one); a line cut by a killed run is skipped."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


__all__ = ["LOCK_TIMEOUT_S", "METRICS_FILE", "PER_IMAGE_FILE", "RESULTS_FILE", "MetricsLog", "lock_path", "locked",
           "mark_prefix_samples", "measured_by_prefix", "per_image_path", "read_metrics", "read_per_image",
           "read_results", "update_results", "write_per_image", "write_results"]
