"""The `corruptions` benchmark: top-1 per corruption and severity, mCE and relative mCE.

Reads `cfg.evaluate.corruptions` (CorruptionConfig). The corrupted images are a balanced sample of
`subset` test samples, generated with imagecorruptions (source=generate; seeded, optionally cached and made in
worker processes) or read from the published ImageNet-C / CIFAR-C files. Each (corruption,
severity) set is corrupted once and predicted in batches, sharded over ranks.

mCE (Hendrycks & Dietterich 2019), with err = 1 - top1 and s over the evaluated severities:
    CE_c = sum_s err(c,s) / sum_s err_ref(c,s)                     mCE = 100 * mean_c CE_c
    relative CE_c = sum_s (err(c,s) - err_clean) / sum_s (err_ref(c,s) - err_ref_clean)
The reference is AlexNet's published errors on ImageNet-C (source imagenet-c), or any run evaluated
with the same corruption settings (`reference`: a run dir or results.json). Without one, mce is null
and `notes` says why.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

from vitrobust.config import CorruptionConfig
from vitrobust.data import ImageSet
from vitrobust.data.corruption_files import load_cifar_c, load_imagenet_c
from vitrobust.data.corruptions import (
    MIN_SIZE,
    SEVERITIES,
    CorruptionCache,
    CorruptionPool,
    cache_key,
    check_image_size,
    check_severities,
    corruption_names,
)
from vitrobust.data.loader import resize
from vitrobust.distributed import all_gather_objects
from vitrobust.errors import InputError
from vitrobust.evaluate.core import (
    COST_MINUTES,
    PER_IMAGE,
    EvalContext,
    images_digest,
    per_image,
    predict,
    register_benchmark,
)
from vitrobust.results import read_per_image, read_results
from vitrobust.stats import bootstrap

# AlexNet's top-1 error on ImageNet-C per corruption, averaged over severities 1-5 (Hendrycks &
# Dietterich 2019), the same table as e.g. mmcls' ImageNet-C metric.
ALEXNET_ERRORS = {
    "gaussian_noise": 0.886428,
    "shot_noise": 0.894468,
    "impulse_noise": 0.922640,
    "defocus_blur": 0.819880,
    "glass_blur": 0.826268,
    "motion_blur": 0.785948,
    "zoom_blur": 0.798360,
    "snow": 0.866816,
    "frost": 0.826572,
    "fog": 0.819324,
    "brightness": 0.564592,
    "contrast": 0.853204,
    "elastic_transform": 0.646056,
    "pixelate": 0.717840,
    "jpeg_compression": 0.606500,
}
# AlexNet's clean ImageNet validation error, for relative mCE. hendrycks/robustness ImageNet-C/test.py
# evaluates torchvision's AlexNet weights (alexnet-owt-4df8aa71.pth, Resize 256 + CenterCrop 224);
# torchvision documents acc@1 56.522 for those weights (AlexNet_Weights.IMAGENET1K_V1), so the clean
# error is 1 - 0.56522 = 0.43478 (the paper's tables round it to 43.5%).
ALEXNET_CLEAN_ERROR = 0.43478
ALEXNET = "AlexNet (Hendrycks & Dietterich 2019, ImageNet-C)"
FIGURE = "accuracy_vs_severity.png"


# --- mCE -------------------------------------------------------------------------------------

# Errors are fractions of images, read from float32 means: a sum of them that should be 0 may come out as
# +-1e-7. The smallest true non-zero sum is 1/n (2e-5 for ImageNet-C's 50,000 images), so below this a
# denominator counts as 0 (the ratio is undefined) rather than making a CE of a million.
ZERO_ERROR = 1e-6


def corruption_errors(
    errors: dict[str, list[float]], ref_errors: dict[str, list[float]]
) -> dict[str, float | None]:
    """CE_c = sum_s err / sum_s err_ref for every corruption the reference has (None: reference sum is 0,
    up to ZERO_ERROR)."""
    out = {}
    for name, errs in errors.items():
        if name in ref_errors:
            denom = sum(ref_errors[name])
            out[name] = sum(errs) / denom if denom > ZERO_ERROR else None
    return out


def relative_corruption_errors(
    errors: dict[str, list[float]],
    clean_error: float,
    ref_errors: dict[str, list[float]],
    ref_clean_error: float,
) -> dict[str, float | None]:
    """sum_s (err - err_clean) / sum_s (err_ref - err_ref_clean); None where the reference lost nothing
    to the corruption (denominator <= ZERO_ERROR: the ratio has no meaning there)."""
    out = {}
    for name, errs in errors.items():
        if name in ref_errors:
            denom = sum(e - ref_clean_error for e in ref_errors[name])
            out[name] = sum(e - clean_error for e in errs) / denom if denom > ZERO_ERROR else None
    return out


def mean_ce(ce: dict[str, float | None]) -> float | None:
    """100 x the mean CE; None if there is none or any is undefined."""
    values = list(ce.values())
    if not values or any(v is None for v in values):
        return None
    return 100.0 * sum(values) / len(values)


@dataclasses.dataclass
class Reference:
    name: str | None
    path: str | None = None
    errors: dict[str, list[float]] | None = None  # per corruption, one error per evaluated severity
    clean_error: float | None = None
    is_self: bool = False
    note: str | None = None
    flags: dict[str, torch.Tensor] | None = None  # a run's per-image correctness, by per-image path (flag_path)


def alexnet_reference(names: list[str], severities: list[int]) -> Reference:
    if severities != list(SEVERITIES):
        return Reference(
            ALEXNET,
            note="AlexNet's published ImageNet-C errors are means over severities 1-5: "
            "evaluate all five severities for mCE",
        )
    # only sums over the five severities enter CE, so the mean stands for each severity
    errors = {name: [ALEXNET_ERRORS[name]] * 5 for name in names if name in ALEXNET_ERRORS}
    note = None
    if set(names) - set(ALEXNET_ERRORS):
        missing = ", ".join(n for n in names if n not in ALEXNET_ERRORS)
        note = f"{missing}: no published AlexNet error, left out of mCE"
    return Reference(ALEXNET, errors=errors, clean_error=ALEXNET_CLEAN_ERROR, note=note)


def _results_file(path: Path) -> Path:
    return path / "results.json" if path.is_dir() or not path.suffix else path


def run_reference(
    ref: str, ctx: EvalContext, names: list[str], severities: list[int], n: int, source: str
) -> Reference:
    """The `corruptions` entry of another run's results.json, which must use the same settings."""
    given = Path(ref).expanduser()
    ref_dir = given if given.is_dir() or not given.suffix else given.parent
    if ctx.out_dir is not None and ref_dir.resolve() == Path(ctx.out_dir).parent.resolve():
        return Reference(ctx.cfg.name, path=ref, is_self=True)  # the run being evaluated: mCE is 100
    path = _results_file(given)
    how = (
        f"evaluate it first (vitrobust evaluate {ref_dir} --suite corruptions) with the same "
        f"evaluate.corruptions settings"
    )
    if not path.is_file():
        raise InputError(f"evaluate.corruptions.reference {ref}: {path} does not exist; {how}")
    results = read_results(path)
    entry = results.get("corruptions")
    if not isinstance(entry, dict) or "per_corruption" not in entry:
        raise InputError(f"evaluate.corruptions.reference {ref}: {path} has no corruptions results; {how}")
    theirs = {
        "corruptions": sorted(entry["per_corruption"]),
        "severities": entry.get("severities"),
        "n": entry.get("n"),
        "source": entry.get("source"),
    }
    ours = {"corruptions": sorted(names), "severities": severities, "n": n, "source": source}
    differ = [k for k in ours if theirs[k] != ours[k]]
    dataset = results.get("meta", {}).get("dataset")
    if dataset and dataset != ctx.cfg.data.name:
        differ.append("dataset")
        theirs["dataset"], ours["dataset"] = dataset, ctx.cfg.data.name
    if differ:
        detail = "; ".join(f"{k}: {theirs[k]} there, {ours[k]} here" for k in differ)
        raise InputError(
            f"evaluate.corruptions.reference {ref} was evaluated with other settings ({detail}); "
            f"evaluate the reference with the same settings"
        )
    errors = {name: [1.0 - entry["per_corruption"][name][str(s)] for s in severities] for name in names}
    clean = entry.get("clean_top1")
    name = results.get("meta", {}).get("run") or ref_dir.name
    ours = images_digest(ctx.data.subset(n, ctx.cfg.data.subset_seed))  # the images this run corrupts
    flags = {key: values for key, (values, digest) in read_per_image(path).get("corruptions", {}).items()
             if digest == ours}
    return Reference(name, path=ref, errors=errors, clean_error=None if clean is None else 1.0 - clean,
                     flags=flags or None)


def resolve_reference(
    ctx: EvalContext, c: CorruptionConfig, names: list[str], severities: list[int], n: int
) -> Reference:
    if c.reference:
        return run_reference(c.reference, ctx, names, severities, n, c.source)
    if c.source == "imagenet-c":
        return alexnet_reference(names, severities)
    return Reference(
        None,
        note="no reference model: mCE needs evaluate.corruptions.reference, a run dir evaluated "
        "with the same corruption settings (AlexNet is the reference only on ImageNet-C)",
    )


def score(per_corruption: dict[str, dict[str, float]], clean_top1: float, ref: Reference) -> dict:
    """ce, relative_ce, mce, relative_mce and notes against the reference."""
    notes = [ref.note] if ref.note else []
    if ref.is_self:
        ones = {name: 1.0 for name in per_corruption}
        return {
            "mce": 100.0,
            "relative_mce": 100.0,
            "ce": ones,
            "relative_ce": dict(ones),
            "notes": notes + ["the reference is this run: every CE is 1 and mCE 100 by definition"],
        }
    if ref.errors is None:
        return {"mce": None, "relative_mce": None, "ce": {}, "relative_ce": {}, "notes": notes}
    errors = {name: [1.0 - v for v in accs.values()] for name, accs in per_corruption.items()}
    ce = corruption_errors(errors, ref.errors)
    undefined = [name for name, v in ce.items() if v is None]
    if undefined:
        notes.append(
            f"CE undefined for {', '.join(undefined)}: the reference made no error there, so mce is null"
        )
    relative: dict[str, float | None] = {}
    if ref.clean_error is None:
        notes.append("the reference has no clean_top1: relative mCE is null")
    else:
        relative = relative_corruption_errors(errors, 1.0 - clean_top1, ref.errors, ref.clean_error)
        flat = [name for name, v in relative.items() if v is None]
        if flat:
            notes.append(
                f"relative CE undefined for {', '.join(flat)}: the reference's error did not rise above its "
                f"clean error there, so relative_mce is null"
            )
    return {
        "mce": mean_ce(ce),
        "relative_mce": mean_ce(relative) if relative else None,
        "ce": ce,
        "relative_ce": relative,
        "notes": notes,
    }


# --- corrupted sets --------------------------------------------------------------------------


def _shard(ctx: EvalContext, data: ImageSet) -> list[int]:
    """The samples this rank predicts (BatchLoader's evaluation order), the only ones it must corrupt."""
    return [int(i) for batch in ctx.loader(data).index_batches() for i in batch]


def _clean_images(ctx: EvalContext, data: ImageSet, indices: list[int]) -> tuple[torch.Tensor, int]:
    """uint8 NCHW clean images of `indices` at the size they are corrupted at, and that size: the
    stored size, or cfg.data.img_size when the stored images are smaller than imagecorruptions allows."""
    size, target = data.img_size, ctx.cfg.data.img_size
    if size < MIN_SIZE and target and target >= MIN_SIZE:
        size = target
    check_image_size(size, size)
    if not indices:  # a rank with no samples (more ranks than batches)
        return torch.zeros(0, data.in_chans, size, size, dtype=torch.uint8), size
    images = (
        data.images[indices] if data.images is not None else torch.stack([data.sample(i) for i in indices])
    )
    if images.shape[-1] != size or images.shape[-2] != size:
        images = resize(images.float().div(255), size).mul(255).round().to(torch.uint8)
    return images, size


def _generated(
    ctx: EvalContext, c: CorruptionConfig, data: ImageSet, names: list[str], severities: list[int], timer
):
    """Yields (name, severity, corrupted ImageSet). Rows of other ranks' samples stay zero (never read)."""
    indices = _shard(ctx, data)
    images, size = _clean_images(ctx, data, indices)
    cache = CorruptionCache(c.cache) if c.cache else None
    shape = (len(data), data.in_chans, size, size)
    with CorruptionPool(images, indices, c.workers) as pool:
        for name in names:
            for severity in severities:
                key = cache_key(data, len(data), name, severity, c.seed, (size, size))
                full = cache.load(key) if cache else None
                if cache and ctx.dist.world > 1 and not all(all_gather_objects(full is not None)):
                    full = None  # every rank must take the same path: the gather below is collective
                if full is None:
                    t0 = time.perf_counter()
                    mine = pool.corrupt(name, severity, c.seed)
                    timer["seconds"] += time.perf_counter() - t0
                    timer["images"] += len(mine)
                    full = torch.zeros(shape, dtype=torch.uint8)
                    parts = all_gather_objects((indices, mine)) if cache else [(indices, mine)]
                    for idx, rows in parts:
                        if idx:
                            full[torch.tensor(idx)] = rows
                    if cache and ctx.dist.main:
                        cache.save(key, full)
                yield (
                    name,
                    severity,
                    dataclasses.replace(
                        data, images=full, read=None, img_size=size, name=f"{data.name}/{name}/{severity}"
                    ),
                )


def _published(c: CorruptionConfig, data: ImageSet, names: list[str], severities: list[int]):
    if data.in_chans != 3:
        raise InputError(
            f"{c.source} images are RGB but the evaluation dataset ({data.name}) has {data.in_chans} "
            f"channel(s): evaluate an RGB model on the matching clean dataset"
        )
    load = load_imagenet_c if c.source == "imagenet-c" else load_cifar_c
    for name in names:
        for severity in severities:
            yield name, severity, load(c.root, name, severity, len(data), data)


# --- the benchmark ---------------------------------------------------------------------------


def _correct(model: torch.nn.Module, ctx: EvalContext, data: ImageSet, **key) -> torch.Tensor:
    """Per-image correctness on one (corrupted) set; predictions are saved as they come under `key`
    (core.predict)."""
    preds, labels = predict(model, ctx, data, key={"benchmark": "corruptions", **key})
    return preds == labels


def _top1(correct: torch.Tensor) -> float:
    return correct.float().mean().item() if len(correct) else math.nan


def flag_path(name: str, severity: int | str) -> str:
    """Where one corrupted set's per-image correctness sits in the entry (and in per_image.safetensors)."""
    return f"per_corruption.{name}.{severity}"


def mce_intervals(flags: dict[str, torch.Tensor], clean: torch.Tensor, ref: Reference, resamples: int,
                  seed: int) -> tuple[dict, list[str]]:
    """Bootstrap 95% intervals of mce and relative_mce over the images (seeded), both from the same
    resamples; `flags` maps flag_path -> per-image correctness. The reference's errors are resampled with
    the same images when its per-image results cover them (a paired bootstrap), and held fixed otherwise
    (AlexNet's published errors). A number undefined in some resample (the resampled reference lost
    nothing to a corruption) gets no interval (stats.percentile_interval), with a note."""
    if ref.is_self or ref.errors is None:
        return {}, []
    paired = ref.flags is not None and all(k in ref.flags for k in [*flags, "clean_top1"])
    sets = [(path, *path.split(".")[1:]) for path in flags]  # (path, name, severity)
    undefined = {"mce": 0, "relative_mce": 0}  # resamples where each number has no value: for the notes

    def scores(idx: torch.Tensor) -> dict[str, float]:
        per: dict[str, dict[str, float]] = {}
        for path, name, severity in sets:
            per.setdefault(name, {})[severity] = _top1(flags[path][idx])
        reference = ref
        if paired:
            errors: dict[str, list[float]] = {}
            for path, name, _ in sets:
                errors.setdefault(name, []).append(1 - _top1(ref.flags[path][idx]))
            reference = Reference(ref.name, errors=errors, clean_error=1 - _top1(ref.flags["clean_top1"][idx]))
        out = score(per, _top1(clean[idx]), reference)
        for key in undefined:
            undefined[key] += out[key] is None
        return {key: math.nan if out[key] is None else float(out[key]) for key in undefined}

    ci95 = bootstrap(scores, len(clean), resamples, seed)
    how = "paired: the reference resampled with the same images" if paired else "the reference's errors held fixed"
    notes = [f"mCE intervals: bootstrap over images ({resamples} resamples, seed {seed}; {how})"]
    ci95 = {key: ci for key, ci in ci95.items() if all(math.isfinite(v) for v in ci)}
    for key, count in undefined.items():
        if 0 < count < resamples:  # undefined everywhere: so is the number itself, and score() says why
            notes.append(f"no {key} interval: undefined in {count} of {resamples} resamples (the resampled "
                         f"reference lost nothing to some corruption there); evaluate more images for one")
    return ci95, notes


@register_benchmark("corruptions", suites=("corruptions", "quick", "imagenet"), cost=COST_MINUTES)
def corruptions(model: torch.nn.Module, ctx: EvalContext) -> dict:
    c = ctx.cfg.evaluate.corruptions
    names, severities = corruption_names(c.names), check_severities(c.severities)
    data = ctx.data.subset(c.subset, ctx.cfg.data.subset_seed)
    if not len(data):
        raise InputError("the evaluation split is empty: nothing to corrupt")
    ref = resolve_reference(ctx, c, names, severities, len(data))  # fail before hours of work
    clean = _correct(model, ctx, data, corruption="none")
    clean_top1, flags = _top1(clean), {}
    timer = {"seconds": 0.0, "images": 0}
    sets = (
        _generated(ctx, c, data, names, severities, timer)
        if c.source == "generate"
        else _published(c, data, names, severities)
    )
    per_corruption: dict[str, dict[str, float]] = {name: {} for name in names}
    with tqdm(
        total=len(names) * len(severities), desc="corruptions", leave=False,
        disable=not ctx.dist.main or not sys.stderr.isatty(),  # a bar in a terminal, no bar lines in logs
    ) as bar:
        for name, severity, corrupted in sets:
            bar.set_postfix_str(f"{name} {severity}")
            path = flag_path(name, severity)
            flags[path] = _correct(model, ctx, corrupted, corruption=name, severity=severity, source=c.source,
                                   seed=c.seed, root=c.root)
            per_corruption[name][str(severity)] = _top1(flags[path])
            bar.update()
    accs = [v for accs in per_corruption.values() for v in accs.values()]
    out = {"mean_top1": sum(accs) / len(accs), "clean_top1": clean_top1}
    scores = score(per_corruption, clean_top1, ref)
    out.update(
        mce=scores["mce"],
        relative_mce=scores["relative_mce"],
        reference=ref.name,
        reference_path=ref.path,
        n=len(data),
        severities=severities,
        source=c.source,
    )
    if c.source == "generate":
        out.update(
            seed=c.seed, generated_img_per_s=timer["images"] / timer["seconds"] if timer["seconds"] else None
        )
    else:
        out["root"] = c.root
    e = ctx.cfg.evaluate
    ci95, notes = mce_intervals(flags, clean, ref, e.bootstrap_resamples, e.bootstrap_seed)
    out.update(
        per_corruption=per_corruption,
        ce=scores["ce"],
        relative_ce=scores["relative_ce"],
        notes=scores["notes"] + notes,
        ci95=ci95,
    )
    out[PER_IMAGE] = {"clean_top1": per_image(data, clean),
                      "mean_top1": per_image(data, torch.stack(list(flags.values())).float().mean(0)),
                      **{path: per_image(data, v) for path, v in flags.items()}}
    figures = []
    if ctx.out_dir is not None and ctx.dist.main:
        from vitrobust.figures.corruptions import accuracy_vs_severity

        figures.append(
            accuracy_vs_severity({ctx.cfg.name: out}, Path(ctx.out_dir) / FIGURE, per_corruption=True).name
        )
    out["figures"] = figures
    return out


__all__ = [
    "ALEXNET_CLEAN_ERROR",
    "ALEXNET_ERRORS",
    "Reference",
    "alexnet_reference",
    "corruption_errors",
    "corruptions",
    "flag_path",
    "mce_intervals",
    "mean_ce",
    "relative_corruption_errors",
    "resolve_reference",
    "run_reference",
    "score",
]
