"""Shared helpers for the benchmark scripts: the command line, interleaved timing, JSON results, a text
table, and the pieces several scripts build their cases from (quickstart trainers, batches, Fashion-MNIST)."""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import statistics
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import torch

from vitrobust.config import DataConfig, load_config
from vitrobust.data import ImageSet, load_split
from vitrobust.train import Trainer

RESULTS_DIR = Path(__file__).parent / "results"
CONFIG = "quickstart/baseline"  # the config every trainer-based benchmark starts from

# ---------------------------------------------------------------------------------------------- command line

# The flags several scripts share: keyword of `parser` -> argparse keywords (the default comes from the script).
SHARED_FLAGS: dict[str, dict] = {
    "steps": {"type": int, "help": "timed rounds (one call of every case per round)"},
    "repeats": {"type": int, "help": "timed rounds (each case once per round)"},
    "warmup": {"type": int, "help": "untimed rounds first"},
    "batch_size": {"type": int, "help": "batch size"},
    "model": {"help": "model name (default: the quickstart model)"},
    "threads": {"type": int, "help": "torch intra-op threads (default: torch's own)"},
    "device": {"help": "torch device"},
    "no_train": {"action": "store_true", "help": "skip the training step cases"},
}


class BenchParser(argparse.ArgumentParser):
    """An ArgumentParser whose `parse_args` also applies `--threads` (torch intra-op threads) when it is set."""

    def parse_args(self, args=None, namespace=None):  # type: ignore[override]
        ns = super().parse_args(args, namespace)
        if getattr(ns, "threads", None):
            torch.set_num_threads(ns.threads)
        return ns


def parser(description: str, name: str, *, helps: dict[str, str] | None = None, **defaults) -> BenchParser:
    """The command line of one benchmark: `--out` plus the shared flags it names, each with its default.

    `description`: the script's docstring (its first line becomes the description). `name`: the result's
    name, for `--out`'s help (benchmarks/results/<name>.json). Each keyword of `defaults` is a key of
    SHARED_FLAGS (`steps`, `repeats`, `warmup`, `batch_size`, `model`, `threads`, `device`, `no_train`) and
    declares that flag (`--batch-size` for `batch_size`) with the given default (False for the switch
    `no_train`); `helps` replaces the help text of some. The script adds its own flags to the result.
    """
    unknown = set(defaults) - set(SHARED_FLAGS) | set(helps or {}) - set(defaults)
    if unknown:
        raise TypeError(f"not a shared flag of this parser: {', '.join(sorted(unknown))}")
    p = BenchParser(description=description.strip().splitlines()[0])
    for dest, spec in SHARED_FLAGS.items():
        if dest in defaults:
            p.add_argument("--" + dest.replace("_", "-"), **{**spec, "default": defaults[dest],
                                                             "help": (helps or {}).get(dest, spec["help"])})
    p.add_argument("--out", default=None, help=f"JSON path (default: benchmarks/results/{name}.json)")
    return p


# ---------------------------------------------------------------------------------------------- timing


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


def img_per_s(timings: dict[str, dict], images: int | dict[str, int]) -> dict[str, float]:
    """Images per second of each case: its images per call (one number for all, or per case) over its median."""
    return {name: (images if isinstance(images, int) else images[name]) / t["median_s"] for name, t in timings.items()}


def ratios_to(timings: dict[str, dict], base: str) -> dict[str, float]:
    """Each case's median time over the median of case `base`."""
    return {name: t["median_s"] / timings[base]["median_s"] for name, t in timings.items()}


# ---------------------------------------------------------------------------------------------- results


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


def merge_entries(name: str, entries: list[dict], key: Callable[[dict], tuple], out: str | Path | None = None) -> Path:
    """`write_result` of {"entries": ...}: the file's earlier entries stay, except those with the key of a new one."""
    path = Path(out) if out else RESULTS_DIR / f"{name}.json"
    old = json.loads(path.read_text()).get("entries", []) if path.exists() else []
    new = {key(e) for e in entries}
    return write_result(name, {"entries": [e for e in old if key(e) not in new] + entries}, path)


def report(name: str, payload: dict, out: str | Path | None = None) -> Path:
    """`write_result`, then print where the JSON went."""
    path = write_result(name, payload, out)
    print(f"\nwrote {path}")
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


# ---------------------------------------------------------------------------------------------- cases


def make_trainer(run_dir: Path, precision: str = "fp32", batch_size: int = 128, model: str | None = None,
                 extra: list[str] | None = None) -> Trainer:
    """A real `Trainer` of the quickstart config on the CPU (`extra`: more `a.b=c` overrides)."""
    overrides = ["device=cpu", f"train.precision={precision}", f"data.batch_size={batch_size}", *(extra or [])]
    if model:
        overrides.append(f"model.name={model}")
    return Trainer(load_config(CONFIG, overrides), run_dir, progress=False)


def make_trainers(root: Path, extras: dict[str, list[str]], precision: str = "fp32", batch_size: int = 128,
                  model: str | None = None) -> dict[str, Trainer]:
    """One `make_trainer` per case name, with that case's extra overrides, each in its own run dir under `root`."""
    return {name: make_trainer(Path(root) / f"run{i}", precision, batch_size, model, extra)
            for i, (name, extra) in enumerate(extras.items())}


def take_batches(trainer: Trainer, n: int) -> list:
    """The first n batches of the trainer's own loader (epoch 0)."""
    trainer.loader.set_epoch(0)
    return list(itertools.islice(trainer.loader, n))


def cycle(items: Iterable) -> Callable[[], object]:
    """A function that returns the next item on each call, round and round."""
    it = itertools.cycle(items)
    return lambda: next(it)


def trainer_step(trainer: Trainer, batches: list) -> Callable[[], dict]:
    """One call = one `Trainer.step` on the next batch."""
    nxt = cycle(batches)
    return lambda: trainer.step(nxt())


def trainer_steps(trainers: dict[str, Trainer], batches: list) -> dict[str, Callable[[], dict]]:
    """`trainer_step` of each trainer, under the same name: the cases of a measure call."""
    return {name: trainer_step(trainer, batches) for name, trainer in trainers.items()}


def update(opt: torch.optim.Optimizer, loss: torch.Tensor) -> None:
    """The plain optimizer step of a raw training loop: zero the gradients, backward, step."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def no_grad(fn: Callable, *args) -> Callable[[], None]:
    """One call = `fn(*args)` under `torch.no_grad()`."""
    def run():
        with torch.no_grad():
            fn(*args)
    return run


def fashion_mnist(split: str, n: int | None = None, cfg: DataConfig | None = None) -> ImageSet:
    """A balanced sample of n images (default: all) of a Fashion-MNIST split, as `cfg` (default: the defaults)
    loads it."""
    cfg = cfg or DataConfig()
    return load_split(cfg, split).subset(n, cfg.subset_seed)


def model_spec(name: str, data: ImageSet, img_size: int = 32, **extra) -> dict:
    """A model spec for `build_model` that fits `data` (classes, channels, mean and std)."""
    return {"name": name, "num_classes": data.num_classes, "in_chans": data.in_chans, "img_size": img_size,
            "mean": list(data.mean), "std": list(data.std), **extra}
