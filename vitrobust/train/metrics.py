"""metrics.jsonl (one JSON object per line) and TensorBoard where it is installed."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path


def _plain(value):
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


class MetricsLog:
    def __init__(self, run_dir: Path, enabled: bool = True):
        self.path = Path(run_dir) / "metrics.jsonl"
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
        with self.path.open("a") as fh:
            fh.write(json.dumps(row) + "\n")
        if self.tb is not None and "step" in row:
            for key, value in row.items():
                if isinstance(value, (int, float)) and key not in ("step", "time", "epoch"):
                    self.tb.add_scalar(f"{kind}/{key}", value, row["step"])
            self.tb.flush()


def read_metrics(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:  # a line cut by a killed run
            continue
    return rows
