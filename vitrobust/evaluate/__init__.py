"""Evaluation: `evaluate(model, suite)` returns the dict that results.json holds."""

from __future__ import annotations

import datetime
from pathlib import Path

import torch

from vitrobust.config import Config, config_for_run
from vitrobust.data import ImageSet, load_split
from vitrobust.distributed import setup_distributed
from vitrobust.evaluate import adversarial, background, corruptions, relevance, shifts  # noqa: F401  (register their benchmarks)
from vitrobust.evaluate.core import (
    BENCHMARKS,
    PER_IMAGE,
    SUITES,
    Benchmark,
    EvalContext,
    expand_suite,
    predict,
    register_benchmark,
    run_suite,
)
from vitrobust.evaluate.merge import is_skip, merge_overrides, place
from vitrobust.models import count_flops, count_params, load_model, weights_file
from vitrobust.results import locked, read_results, update_results, write_per_image, write_results
from vitrobust.zoo import ZOO, compare


def evaluate(model: torch.nn.Module, suite: str = "clean", *, cfg: Config | None = None, data: ImageSet | None = None,
             subset: int | None = None, device: str | torch.device | None = None, batch_size: int | None = None,
             out_dir: str | Path | None = None, progress=None, on_result=None, keep_per_image: bool = False) -> dict:
    """Run a suite (or comma-separated benchmarks) on a [0,1]-input model in eval mode: the entries
    results.json holds; with `keep_per_image` each also keeps its per-image tensors under "per_image"
    ({path: (values, images digest)}, the data of paired comparisons)."""
    if cfg is None:
        cfg = run_config(model) if getattr(model, "run_config", "") else Config()
    device = torch.device(device) if device is not None else next(model.parameters()).device
    if data is None:
        data = load_split(cfg.data, "test")
    data = data.subset(subset if subset is not None else cfg.evaluate.subset, cfg.data.subset_seed)
    ctx = EvalContext(cfg=cfg, data=data, device=device, out_dir=Path(out_dir) if out_dir else None,
                      batch_size=batch_size or cfg.data.eval_batch_size)
    results = run_suite(model, suite, ctx, progress, on_result)
    if not keep_per_image:
        for entry in results.values():
            entry.pop(PER_IMAGE, None)
    return results


def run_config(model: torch.nn.Module, overrides: list[str] | None = None, suite: str | None = None) -> Config:
    """The config a loaded model was trained with (from its checkpoint metadata), then the shipped
    evaluation preset of the suite if there is one, then the overrides (vitrobust.config.config_for_run)."""
    return config_for_run(getattr(model, "run_config", "") or "", overrides, suite)


def default_results_path(path: Path) -> Path:
    """RUN/results.json for a run or its weights file; FILE.results.json for an exported FILE.onnx (what ships
    is measured apart from the PyTorch model, and the two are compared like two runs)."""
    if path.suffix == ".onnx":
        return path.with_name(path.name.removesuffix(".onnx") + ".results.json")
    return (path if path.is_dir() else path.parent) / "results.json"


def evaluate_path(path: str | Path, suite: str, overrides: list[str] | None = None, out: str | Path | None = None,
                  progress=None, overwrite: bool = False) -> tuple[dict, Path]:
    """What `vitrobust evaluate` does: load, run the suite, merge into results.json (rank 0 writes).

    The overrides each result was measured with are stored with it (`overrides`) and repeated when its
    benchmark runs again, with the new ones on top, so a plain re-run measures what the first run
    measured. A stored result is kept when the new one is a skip or was measured with other settings
    (evaluate/merge.py) unless `overwrite`; each such decision is reported through `progress`.
    """
    path = Path(path)
    say = progress or (lambda line: None)
    results_path = Path(out) if out else default_results_path(path)
    stored = read_results(results_path)
    recorded = merge_overrides(*(stored[name].get("overrides") or [] for name in expand_suite(suite)
                                 if isinstance(stored.get(name), dict)))
    used = merge_overrides(recorded, overrides or [])
    model = load_model(path)
    cfg = run_config(model, used, suite)
    if cfg.evaluate.use_ema:
        model = load_model(path, ema=True)
    dist = setup_distributed(cfg.device)
    if not dist.main:
        say = lambda line: None  # noqa: E731
    if recorded:
        say(f"repeating the settings the stored results were measured with: {' '.join(recorded)}")
    model.to(dist.device)
    meta = {"model": model.spec["name"], "params": count_params(model), "flops": count_flops(model),
            "dataset": cfg.data.name, "weights": str(weights_file(path, cfg.evaluate.use_ema)), "run": cfg.name}
    meta.update({k: model.spec[k] for k in ("zoo", "imported", "preprocess") if model.spec.get(k)})
    if getattr(model, "runtime", None):  # an exported file measured on its runtime
        meta["runtime"] = model.runtime
    zoo = ZOO.get(model.spec["zoo"]) if model.spec.get("zoo") in ZOO else None
    read_with = {k: getattr(cfg.data, k) for k in ("img_size", "crop_pct", "interpolation", "in_chans")
                 if getattr(cfg.data, k) is not None}  # how image files were read (data.* resize rule)
    data = {"name": cfg.data.name, **({"options": cfg.data.options} if cfg.data.options else {}),
            **({"masks": cfg.data.masks.source} if cfg.data.masks.source != "none" else {}), **read_with}

    def save(name: str, entry: dict) -> None:  # each benchmark's entry as soon as it is done
        values = entry.pop(PER_IMAGE, None)
        entry.update(data=data, overrides=used)
        if zoo is not None and (published := compare(zoo, name, entry)) is not None:
            entry["published"] = published  # the paper's number beside ours (a zoo model)
        if not dist.main:
            return
        placed = []

        def change(stored: dict) -> dict:
            placed.append(place(stored, name, entry, overwrite))
            return placed[0].updates

        stamp = {"evaluated_at": datetime.datetime.now().isoformat(timespec="seconds")}
        with locked(results_path):  # the entry and its per-image results land together
            update_results(results_path, change, {**meta, **stamp})
            if values and placed[0].key is not None:
                write_per_image(results_path, placed[0].key, values)
        if placed[0].note:
            say(placed[0].note)

    results = evaluate(model, suite, cfg=cfg, device=dist.device, out_dir=results_path.parent / "figures",
                       progress=say, on_result=save)
    return results, results_path


__all__ = ["BENCHMARKS", "SUITES", "Benchmark", "EvalContext", "default_results_path", "evaluate", "evaluate_path",
           "expand_suite", "is_skip",
           "predict", "read_results", "register_benchmark", "run_config", "write_results"]
