"""Shared helpers for the benchmark scripts: interleaved timing, JSON results, a text table."""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

RESULTS_DIR = Path(__file__).parent / "results"


def measure(cases: dict[str, Callable[[], object]], warmup: int = 2, repeats: int = 5) -> dict[str, dict]:
    """Seconds per call of each case: `warmup` untimed calls, then `repeats` timed ones.

    The cases run round-robin (one call of each per round), so background load falls on all of
    them alike and ratios between cases stay meaningful on a busy machine. Reports the median.
    """
    for _ in range(warmup):
        for fn in cases.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(repeats):
        for name, fn in cases.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {name: {"median_s": statistics.median(t), "min_s": min(t), "max_s": max(t), "repeats": len(t)}
            for name, t in times.items()}


def machine_info() -> dict:
    return {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "python": platform.python_version(), "platform": platform.platform(),
            "loadavg_1m": round(os.getloadavg()[0], 2)}


def write_result(name: str, payload: dict, out: str | Path | None = None) -> Path:
    """Write `payload` (plus machine info and a timestamp) to `out` or benchmarks/results/<name>.json."""
    path = Path(out) if out else RESULTS_DIR / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"benchmark": name, "time": time.strftime("%Y-%m-%dT%H:%M:%S"), "machine": machine_info()}
    path.write_text(json.dumps({**meta, **payload}, indent=2) + "\n")
    return path


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 10 else f"{value:,.0f}"
    return str(value)


def print_table(header: list[str], rows: list[list], title: str | None = None) -> None:
    cells = [header] + [[_cell(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in cells]
    if title:
        print(title)
    print("\n".join([lines[0], "-" * len(lines[0]), *lines[1:]]))
