"""metrics.jsonl (one JSON object per line) and TensorBoard where it is installed."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import torch
import torch.distributed as dist


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


class Window:
    """Sums of the objective's per-step logs over a logging window; means averaged over ranks."""

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self.sums: dict[str, float] = {}
        self.n, self.images, self.t0 = 0, 0, time.perf_counter()

    def add(self, logs: dict[str, float], images: int) -> None:
        for key, value in logs.items():
            self.sums[key] = self.sums.get(key, 0.0) + value
        self.n += 1
        self.images += images

    def seconds(self) -> float:
        return max(time.perf_counter() - self.t0, 1e-9)

    def means(self, device) -> dict[str, float]:
        keys = sorted(self.sums)
        values = [self.sums[k] / max(self.n, 1) for k in keys]
        if dist.is_available() and dist.is_initialized():  # every rank logs at the same steps
            t = torch.tensor(values, dtype=torch.float64, device=device)
            dist.all_reduce(t)
            values = (t / dist.get_world_size()).tolist()
        return dict(zip(keys, values))


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
