"""ImageNet benchmarks: clean accuracy on val and RobustBench's 5,000 images, and distribution shifts.

Each benchmark is its own top-level results.json entry, `{top1, n, classes}` (si_score adds
`factors: {location|rotation|size: {top1, n, classes}}`), rather than one combined `shift` entry:
every other benchmark (clean, autoattack, corruptions) is an entry of its own; a single set can be
run or re-run alone (`--suite imagenet_a`) and `write_results` merges top-level keys, so re-running
one set neither drops nor recomputes the others; and each entry gets its own `seconds`. The sets, their
folders, labels and suites are the table in vitrobust/shift_sets.py; this module registers one
benchmark per row.

Datasets are folders named in `evaluate.shifts.roots` (ImageNet val may also come from data.root);
nothing is downloaded. The suites: `imagenet` (the RobustBench/RobustViT evaluation of an ImageNet
model, settings in configs/eval/imagenet.yaml) and `shifts` (every shift set, SI-Score included).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from vitrobust.data import ImageSet
from vitrobust.data.imagenet import (
    DEFAULT_CROP_PCT,
    DEFAULT_INTERPOLATION,
    IMAGENET_CLASSES,
    Preprocess,
    load_imagenet_5k,
    load_imagenet_val,
)
from vitrobust.data.shifts import (
    SI_SCORE_FACTORS,
    load_imagenet_a,
    load_imagenet_r,
    load_imagenet_sketch,
    load_imagenet_v2,
    load_objectnet,
    load_si_score,
    load_stylized_imagenet,
)
from vitrobust.errors import DatasetError, InputError
from vitrobust.evaluate.core import (
    PER_IMAGE,
    EvalContext,
    model_input_shape,
    per_image,
    predict,
    register_benchmark,
)
from vitrobust.shift_sets import BY_BENCHMARK, IMAGENET_DATA, LAYOUTS, SHIFT_BENCHMARKS, SHIFT_SETS

# the loader of each single-set benchmark (si_score, several sets, is registered below on its own)
LOADERS = {
    "imagenet_5k": load_imagenet_5k,
    "imagenet_val": load_imagenet_val,
    "imagenet_v2": load_imagenet_v2,
    "imagenet_a": load_imagenet_a,
    "imagenet_r": load_imagenet_r,
    "imagenet_sketch": load_imagenet_sketch,
    "stylized_imagenet": load_stylized_imagenet,
    "objectnet": load_objectnet,
}


def shift_root(ctx: EvalContext, key: str, benchmark: str) -> Path:
    """The folder of a dataset, or a DatasetError that says which key to set and what it must hold."""
    cfg = ctx.cfg
    value = cfg.evaluate.shifts.roots.get(key)
    source = f"evaluate.shifts.roots.{key}"
    if not value and key == "imagenet" and cfg.data.name in IMAGENET_DATA and cfg.data.root:
        value, source = cfg.data.root, "data.root"
    if not value:
        raise DatasetError(
            f"{benchmark}: no folder given; add --set evaluate.shifts.roots.{key}=/path "
            f"(expected: {LAYOUTS[key]})"
        )
    path = Path(value).expanduser()
    if not path.is_dir():
        raise DatasetError(f"{benchmark}: {source}={value} is not a folder (expected: {LAYOUTS[key]})")
    return path


def preprocess(ctx: EvalContext, model: torch.nn.Module) -> Preprocess:
    """Decode straight to the size the model takes, with the configured resize/crop."""
    shape = model_input_shape(model)
    size = shape[-1] if shape and shape[-1] else (ctx.cfg.data.img_size or 224)
    shifts, data = ctx.cfg.evaluate.shifts, ctx.cfg.data
    return Preprocess(size, shifts.crop_pct or data.crop_pct or DEFAULT_CROP_PCT,
                      shifts.interpolation or data.interpolation or DEFAULT_INTERPOLATION)


@torch.no_grad()
def predict_labels(model: torch.nn.Module, ctx: EvalContext, data: ImageSet,
                   key: dict | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Predictions in the set's label space (see vitrobust.data.shifts) and labels, in dataset order.

    Sharded over ranks like core.predict; images are decoded in data.num_workers worker processes.
    With a `key` the predictions are saved as they come and an interrupted pass resumes (core.predict).
    """
    columns = data.info.get("columns")
    columns = torch.tensor(columns, device=ctx.device) if columns is not None else None
    mapping = data.info.get("prediction_map")
    mapping = torch.tensor(mapping, device=ctx.device) if mapping is not None else None

    def decide(logits: torch.Tensor) -> torch.Tensor:
        if logits.shape[-1] != IMAGENET_CLASSES:
            raise InputError(
                f"{data.name} scores ImageNet predictions: the model must output {IMAGENET_CLASSES} "
                f"logits, it outputs {logits.shape[-1]}"
            )
        pred = (logits if columns is None else logits.index_select(1, columns)).argmax(-1)
        return pred if mapping is None else mapping[pred]

    return predict(model, ctx, data, decide=decide, img_size=data.img_size,
                   key=None if key is None else {**key, "set": data.name, "resize": data.info.get("resize")})


def top1(model: torch.nn.Module, ctx: EvalContext, data: ImageSet, key: dict | None = None) -> dict:
    preds, labels = predict_labels(model, ctx, data, key)
    correct = int((preds == labels).sum())
    return {"top1": correct / len(labels), "n": len(labels), "classes": len(labels.unique()),
            PER_IMAGE: {"top1": per_image(data, preds == labels)}}


def _register(name: str, key: str, loader, suites: tuple[str, ...]) -> None:
    def benchmark(model: torch.nn.Module, ctx: EvalContext) -> dict:
        data = loader(shift_root(ctx, key, name), preprocess(ctx, model), what=name)
        sample = data.subset(ctx.cfg.evaluate.shifts.subset, ctx.cfg.data.subset_seed)
        result = top1(model, ctx, sample, key={"benchmark": name})
        result["resize"] = data.info.get("resize")  # the rule the images were read with
        if "skipped_unmapped" in data.info:
            result["skipped_unmapped"] = data.info["skipped_unmapped"]
        return result

    benchmark.__name__ = benchmark.__qualname__ = name
    benchmark.__doc__ = f"top-1 on {name} ({LAYOUTS[key]})"
    register_benchmark(name, suites, check=lambda ctx: shift_root(ctx, key, name))(benchmark)


for _set in SHIFT_SETS:
    if _set.benchmark in LOADERS:
        _register(_set.benchmark, _set.root, LOADERS[_set.benchmark], _set.suites)


@register_benchmark("si_score", suites=BY_BENCHMARK["si_score"].suites, check=lambda ctx: shift_root(ctx, "si_score", "si_score"))
def si_score(model: torch.nn.Module, ctx: EvalContext) -> dict:
    """Top-1 per factor (object location, rotation, size) and pooled over the factors present."""
    sets = load_si_score(shift_root(ctx, "si_score", "si_score"), preprocess(ctx, model))
    factors = {
        factor: top1(model, ctx, data.subset(ctx.cfg.evaluate.shifts.subset, ctx.cfg.data.subset_seed),
                     key={"benchmark": "si_score", "factor": factor})
        for factor, data in sets.items()
    }
    n = sum(r["n"] for r in factors.values())
    correct = sum(round(r["top1"] * r["n"]) for r in factors.values())
    flags = {f"factors.{factor}.top1": r.pop(PER_IMAGE)["top1"] for factor, r in factors.items()}
    pooled = torch.cat([values for values, _ in flags.values()]) if flags else torch.zeros(0, dtype=torch.bool)
    pooled_digest = hashlib.sha256("|".join(d for _, d in flags.values()).encode()).hexdigest()[:16]
    return {
        PER_IMAGE: {"top1": (pooled, pooled_digest), **flags},
        "top1": correct / n,
        "n": n,
        "factors": factors,
        "missing_factors": [factor for factor in SI_SCORE_FACTORS if factor not in sets],
        "resize": next(iter(sets.values())).info.get("resize") if sets else None,
    }


__all__ = ["LOADERS", "SHIFT_BENCHMARKS", "predict_labels", "preprocess", "shift_root", "top1"]
