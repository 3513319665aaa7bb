"""The results files: results.json (one entry per benchmark, plus `meta`) and metrics.jsonl (one
JSON object per line, written during training), and TensorBoard where it is installed.

Evaluation and training write these files; reports, sweeps and the quickstart read them. This
module is a leaf: it imports only the atomic writer below it, so every room can use it.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

from vitrobust.checkpoint import atomic_write_text
from vitrobust.errors import InputError

RESULTS_FILE = "results.json"
METRICS_FILE = "metrics.jsonl"


def read_results(path: str | Path) -> dict:
    """The results file's content ({} when it does not exist); a damaged file is an InputError."""
    path = Path(path)
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise InputError(f"{path} is not valid JSON ({err}); delete it and evaluate again") from None


def write_results(path: str | Path, results: dict, meta: dict | None = None) -> dict:
    """Merge benchmark entries into results.json (atomically); other benchmarks' entries are kept."""
    merged = read_results(path)
    merged.update(results)
    if meta:
        merged["meta"] = {**merged.get("meta", {}), **meta}
    atomic_write_text(Path(path), json.dumps(merged, indent=2, sort_keys=False))
    return merged


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
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as fh:
            fh.write(json.dumps(row) + "\n")
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


__all__ = ["METRICS_FILE", "RESULTS_FILE", "MetricsLog", "read_metrics", "read_results", "write_results"]
