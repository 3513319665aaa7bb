"""Benchmark records and their registry, suites, the evaluation context and sharded prediction."""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch

from vitrobust.config import Config
from vitrobust.data import BatchLoader, ImageSet
from vitrobust.distributed import Dist, all_gather_objects, current
from vitrobust.errors import InputError, suggest
from vitrobust.evaluate.progress import PredictionStore, progress_dir
from vitrobust.evaluate.progress import clear as clear_progress
from vitrobust.registry import Registry
from vitrobust.results import mark_prefix_samples, measured_by_prefix, read_results
from vitrobust.stats import bootstrap, interval

COST_SECONDS, COST_MINUTES, COST_HOURS = 0, 1, 2  # Benchmark.cost: what one run takes on a large set
PER_IMAGE = "per_image"  # entry key a benchmark fills with per_image(); run_suite turns it into intervals


def images_digest(data: ImageSet, n: int | None = None) -> str:
    """Names the first n images of a set by their positions in the split (ImageSet.digest): two results with
    the same digest were measured on the same images, so they can be compared image by image."""
    return data.digest(n)


class PerImage(tuple):
    """(values, images digest) of one per-image result, with `sample`: how those images were drawn
    (ImageSet.sample_info), which run_suite records in the entry."""

    def __new__(cls, values: torch.Tensor, digest: str, sample: dict | None = None):
        out = super().__new__(cls, (values, digest))
        out.sample = sample
        return out

    def __reduce__(self):
        return PerImage, (self[0], self[1], self.sample)


def per_image(data: ImageSet, values: torch.Tensor, part: str | None = None) -> PerImage:
    """One per-image result (bool: correct; float: a score) over the first len(values) images of `data`;
    with `part`, over the images of `data` that `part` names (e.g. those with a non-empty mask)."""
    values = values.detach().cpu().flatten()
    if part is not None:
        return PerImage(values, f"{data.digest()}-{part}", data.sample_info())
    return PerImage(values, data.digest(len(values)), data.sample_info(len(values)))


def record_sample(entry: dict) -> dict:
    """entry["sample"]: the images its per-image results were measured on. Parts measured on different sets
    (SI-Score's factors) each record theirs where the entry holds the part, the entry their pooled counts."""
    found = {path: v.sample for path, v in (entry.get(PER_IMAGE) or {}).items() if getattr(v, "sample", None)}
    distinct = list({json.dumps(s, sort_keys=True): s for s in found.values()}.values())
    if not distinct or "sample" in entry:
        return entry
    if len(distinct) == 1:
        entry["sample"] = distinct[0]
        return entry
    for path, sample in found.items():
        part = entry
        for key in path.split(".")[:-1]:
            part = part.get(key) if isinstance(part, dict) else None
        if isinstance(part, dict) and part is not entry:
            part.setdefault("sample", sample)
    rules, seeds = {s["rule"] for s in distinct}, {s.get("seed") for s in distinct}
    counts: Counter = Counter()
    for s in distinct:
        counts.update(s["class_counts"])
    entry["sample"] = {"rule": rules.pop() if len(rules) == 1 else "mixed",
                       **({"seed": seeds.pop()} if len(seeds) == 1 and None not in seeds else {}),
                       "n": sum(s["n"] for s in distinct), "class_counts": dict(counts)}
    return entry


def annotate(entry: dict, resamples: int, seed: int) -> dict:
    """`ci95` for every per-image result of the entry: Wilson for correctness, a seeded bootstrap of the
    mean for scores; keyed by the result's path in the entry ('top1', 'per_corruption.fog.3', ...)."""
    found = entry.get(PER_IMAGE) or {}
    if not found:
        return entry
    ci95, boot = dict(entry.get("ci95") or {}), False
    for path, (values, _) in found.items():
        if not len(values):
            continue
        if values.dtype == torch.bool:
            ci95[path] = interval(values)
        else:
            boot = True
            ci95[path] = bootstrap(lambda idx, v=values.double(): float(v[idx].mean()), len(values), resamples, seed)
    entry["ci95"] = ci95
    if boot:
        entry["bootstrap"] = {"resamples": resamples, "seed": seed}
    return entry


@dataclass
class EvalContext:
    """What a benchmark gets besides the model."""

    cfg: Config
    data: ImageSet  # the evaluation split, already cut to the subset
    device: torch.device
    dist: Dist = field(default_factory=current)
    out_dir: Path | None = None  # where figures go
    batch_size: int = 500

    def loader(self, data: ImageSet | None = None, img_size: int | None = None) -> BatchLoader:
        """This rank's share of `data` (default: the split) in batches, resized to `img_size` (default
        data.img_size of the config)."""
        return BatchLoader(data or self.data, self.batch_size, self.device, train=False,
                           img_size=img_size or self.cfg.data.img_size, rank=self.dist.rank, world=self.dist.world,
                           num_workers=self.cfg.data.num_workers)


@dataclass(frozen=True)
class Benchmark:
    """A registered benchmark: `run(model, ctx) -> results.json entry`, the suites that hold it, an optional
    `check(ctx)` that a suite runs before any benchmark starts (a missing dataset folder fails in seconds,
    not hours into the suite), and its cost class: suites run cheaper benchmarks first."""

    name: str
    run: Callable[[torch.nn.Module, EvalContext], dict]
    suites: tuple[str, ...] = ()
    check: Callable[[EvalContext], object] | None = None
    cost: int = COST_SECONDS
    gradients: bool = False  # needs input gradients: refused for a forward-only model (an exported file)

    def __call__(self, model: torch.nn.Module, ctx: EvalContext) -> dict:
        return self.run(model, ctx)


BENCHMARKS: Registry[Benchmark] = Registry("benchmark", fill="vitrobust.evaluate")


def register_benchmark(name: str, suites: tuple[str, ...] = (), check: Callable[[EvalContext], object] | None = None,
                       cost: int = COST_SECONDS, gradients: bool = False):
    """Decorator: register `fn(model, ctx) -> dict` as the benchmark `name` (see Benchmark); returns fn."""
    def wrap(fn: Callable[[torch.nn.Module, EvalContext], dict]):
        BENCHMARKS.register(Benchmark(name, fn, tuple(suites), check, cost, gradients))
        return fn

    return wrap


class Suites(Mapping):
    """suite name -> its benchmarks, read off the registered records: by cost class, then registration order."""

    def _table(self) -> dict[str, list[str]]:
        table: dict[str, list[Benchmark]] = {}
        for _, bench in BENCHMARKS.items():
            for suite in bench.suites:
                table.setdefault(suite, []).append(bench)
        return {suite: [b.name for b in sorted(members, key=lambda b: b.cost)] for suite, members in table.items()}

    def __getitem__(self, suite: str) -> list[str]:
        return self._table()[suite]

    def __iter__(self):
        return iter(self._table())

    def __len__(self) -> int:
        return len(self._table())


SUITES = Suites()


def expand_suite(suite: str) -> list[str]:
    """Benchmark names of a suite, a benchmark, or a comma-separated mix of both (each once, in order)."""
    names: list[str] = []
    suites = dict(SUITES)
    for part in (p.strip() for p in suite.split(",") if p.strip()):
        if part in suites:
            names += [n for n in suites[part] if n not in names]
        elif part in BENCHMARKS:
            names += [part] if part not in names else []
        else:
            known = sorted(set(suites) | set(BENCHMARKS.names()))
            raise InputError(f"unknown suite or benchmark {part!r}; {suggest(part, known)}known: {', '.join(known)}")
    return names


@torch.no_grad()
def predict(model: torch.nn.Module, ctx: EvalContext, data: ImageSet | None = None,
            transform: Callable[[torch.Tensor], torch.Tensor] | None = None, *, key: dict | None = None,
            decide: Callable[[torch.Tensor], torch.Tensor] | None = None,
            img_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Predictions and labels for every sample in dataset order, sharded over ranks.

    `decide(logits)` turns logits into predictions (default: argmax). With a `key` (what identifies the
    pass besides the model and labels) the predictions are saved as they come (evaluate/progress.py)
    and a pass interrupted before resumes with the samples it had not reached.
    """
    data = data or ctx.data
    store = None if key is None else PredictionStore(progress_dir(ctx.out_dir), key, model, data.labels,
                                                     ctx.cfg.evaluate.checkpoint_seconds, ctx.dist.rank)
    positions = store.remaining(len(data)) if store is not None and store.preds else None
    todo = data if positions is None else data.select(positions)
    idx_parts, pred_parts = [], []
    for batch in ctx.loader(todo, img_size) if len(todo) else ():
        x = transform(batch.x) if transform else batch.x
        logits = model(x)
        pred = (decide(logits) if decide else logits.argmax(-1)).cpu()
        index = batch.index.cpu() if positions is None else positions[batch.index.cpu()]
        pred_parts.append(pred)
        idx_parts.append(index)
        if store is not None:
            store.add(index, pred)
    if store is not None:
        store.save()
    local = (torch.cat(idx_parts) if idx_parts else torch.empty(0, dtype=torch.long),
             torch.cat(pred_parts) if pred_parts else torch.empty(0, dtype=torch.long))
    gathered = all_gather_objects(local)
    saved = store.preds if store is not None else {}
    index = torch.cat([torch.tensor(list(saved), dtype=torch.long), *(g[0] for g in gathered)])
    preds = torch.cat([torch.tensor(list(saved.values()), dtype=torch.long), *(g[1] for g in gathered)])
    order = torch.argsort(index)
    return preds[order], data.labels[index[order]]


@register_benchmark("clean", suites=("clean", "quick"))
def clean(model: torch.nn.Module, ctx: EvalContext) -> dict:
    preds, labels = predict(model, ctx)
    return {"top1": (preds == labels).float().mean().item(), "n": len(labels),
            PER_IMAGE: {"top1": per_image(ctx.data, preds == labels)}}


def model_input_shape(model: torch.nn.Module) -> tuple[int, int | None, int | None] | None:
    """(channels, height, width) a model takes: its `input_shape` (vitrobust models), else read off a timm
    model: channels of the first convolution (the patch embedding), size from a fixed-size patch
    embedding (None where any size works, e.g. convnets or dynamic_img_size); None when unknown."""
    shape = getattr(model, "input_shape", None)
    if shape is not None:
        return tuple(shape)
    embed = getattr(model, "patch_embed", None)
    conv = getattr(embed, "proj", None)
    if not isinstance(conv, torch.nn.Conv2d):
        conv = next((m for m in model.modules() if isinstance(m, torch.nn.Conv2d)), None)
    if conv is None:
        return None
    size = getattr(embed, "img_size", None)
    fixed = size is not None and getattr(embed, "strict_img_size", True) and not getattr(embed, "dynamic_img_size", False)
    h, w = (size if isinstance(size, (tuple, list)) else (size, size)) if fixed else (None, None)
    return conv.in_channels, h, w


def check_model_input(model: torch.nn.Module, ctx: EvalContext) -> None:
    """A model built outside vitrobust (a timm model handed to `evaluate`) fits the data's images
    (channels, and the size where it has a fixed one), or a clear InputError before any benchmark starts
    instead of the model's own assertion. vitrobust models check every input themselves (ViTClassifier)
    and may take shift sets decoded at their own size, so they are not checked here."""
    shape = None if hasattr(model, "input_shape") else model_input_shape(model)
    if shape is None:
        return
    c, h, w = shape
    size = ctx.cfg.data.img_size or ctx.data.img_size
    if c == ctx.data.in_chans and (h is None or (h, w) == (size, size)):
        return
    model_text = f"{c} x {h} x {w}" if h is not None else f"{c}-channel"
    fixes = []
    if h is not None and (h, w) != (size, size):
        fixes.append(f"resize the data to the model's size (data.img_size={h}, or evaluate(..., cfg=...) with it)")
    if c != ctx.data.in_chans:
        fixes.append(f"use {c}-channel data")
    fixes.append(f"or build the model for this data (timm.create_model(..., img_size={size}, "
                 f"in_chans={ctx.data.in_chans}))")
    raise InputError(f"the model takes {model_text} images but the evaluation data ({ctx.data.name}) gives "
                     f"{ctx.data.in_chans} x {size} x {size}; {', '.join(fixes)}")


def check_forward_only(model: torch.nn.Module, names: list[str]) -> None:
    """A model without gradients (an exported file on its runtime) runs the forward-only benchmarks only."""
    needs = [n for n in names if BENCHMARKS.get(n).gradients]
    if getattr(model, "forward_only", False) and needs:
        can = [n for n, b in BENCHMARKS.items() if not b.gradients]
        raise InputError(f"{getattr(model, 'runtime', {}).get('file', 'this model')} runs forward only, but "
                         f"{', '.join(needs)} {'needs' if len(needs) == 1 else 'need'} input gradients: evaluate the run's PyTorch model for them, and "
                         f"the exported file with forward-only benchmarks ({', '.join(can)})")


def run_suite(model: torch.nn.Module, suite: str, ctx: EvalContext, progress: Callable[[str], None] | None = None,
              on_result: Callable[[str, dict], None] | None = None) -> dict:
    """Run each benchmark of the suite; `on_result(name, entry)` after each (results.json is written
    as the suite goes, so a long suite that fails late keeps what it finished). Entries carry `ci95`
    (annotate) and their per-image results under PER_IMAGE (tensors: stripped before JSON). A benchmark's saved
    predictions (evaluate/progress.py) are deleted once `on_result` has stored its entry."""
    if model.training:
        raise InputError("evaluate a model in eval mode (model.eval()): train mode changes dropout and norm statistics")
    names = expand_suite(suite)
    check_model_input(model, ctx)
    check_forward_only(model, names)
    for name in names:  # fail in seconds on a missing dataset folder, not hours into the suite
        if BENCHMARKS.get(name).check is not None:
            BENCHMARKS.get(name).check(ctx)
    results = {}
    for name in names:
        t0 = time.perf_counter()
        results[name] = BENCHMARKS.get(name).run(model, ctx)
        results[name]["seconds"] = round(time.perf_counter() - t0, 2)
        record_sample(results[name])
        annotate(results[name], ctx.cfg.evaluate.bootstrap_resamples, ctx.cfg.evaluate.bootstrap_seed)
        done = time.time()
        if on_result:
            on_result(name, results[name])
        if ctx.dist.main:
            clear_progress(ctx.out_dir, before=done)
        if progress:
            progress(f"{name}: {summarize(name, results[name])}")
    return results


def summarize(name: str, result: dict) -> str:
    if all(isinstance(result.get(k), (int, float)) for k in ("robust_top1", "clean_top1")):  # not a sweep's lists
        return (f"robust top1 {100 * result['robust_top1']:.2f}% (clean {100 * result['clean_top1']:.2f}%, "
                f"n={result.get('n')})")
    if "top1" in result:
        return f"top1 {100 * result['top1']:.2f}% (n={result.get('n')})"
    return json.dumps({k: v for k, v in result.items() if isinstance(v, (int, float, str))})[:120]


def missing_benchmarks(run_dir: Path, suite: str) -> list[str]:
    """The suite's benchmarks that results.json lacks (or holds as measured on the first n images, the old
    subset rule: not comparable with balanced samples), or all of them if the weights are newer."""
    results, weights = Path(run_dir) / "results.json", Path(run_dir) / "model.safetensors"
    names = expand_suite(suite)
    if not results.is_file() or not weights.is_file() or results.stat().st_mtime < weights.stat().st_mtime:
        return names
    have = mark_prefix_samples(read_results(results))
    return [name for name in names if name not in have or measured_by_prefix(have[name])]


def is_evaluated(run_dir: Path, suite: str) -> bool:
    return not missing_benchmarks(run_dir, suite)
