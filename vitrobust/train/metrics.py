"""Averages of the objective's per-step logs over a logging window (the rows metrics.jsonl gets)."""

from __future__ import annotations

import time

import torch
import torch.distributed as dist


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
