"""Registry-driven tests: every registered objective and benchmark runs on tiny data and keeps the
invariants every entry owes its callers, so a new objective or benchmark is tested by registering it.

- Objectives (`OBJECTIVES`): built from their shipped defaults plus tiny stand-ins for resources named
  by a Params field (`RESOURCES`: field name -> file), one loss step on a 1-block ViT: a finite
  scalar loss that reaches the parameters, finite logs with `acc` and `loss`, the model's training
  flags and the input left as they were, and a finite validation metric if the objective has one.
- Benchmarks (`BENCHMARKS`): the sets in the shift-set table (`vitrobust.shift_sets.BY_BENCHMARK`)
  run on tiny ImageNet-label trees with a model that reads the label from the colour (top-1 must be
  exactly 1); every other benchmark runs on a tiny Fashion-MNIST-format split with threshold masks.
  Either way the entry is JSON data with `seconds`, fractions in [0,1], `n` (or a `skipped` reason),
  robust <= clean, its figures on disk and well-formed self-checks; the model is left untouched.
- Suites, and the did-you-mean errors of the registries that look names up.
"""

from __future__ import annotations

import json
import math
from dataclasses import replace
from numbers import Real
from pathlib import Path

import pytest
import torch
from helpers_shifts import Oracle, context, shift_tree

from vitrobust.config import ConfigError, load_config, objective_params
from vitrobust.data import DATASETS, Batch, DatasetError, load_split
from vitrobust.errors import CheckpointError
from vitrobust.evaluate import BENCHMARKS, SUITES, EvalContext
from vitrobust.evaluate.core import PER_IMAGE, run_suite
from vitrobust.models import CHECKPOINT_FORMATS, build_model
from vitrobust.models.tokenizer_io import save_tokenizer
from vitrobust.models.vqgan import build_tokenizer
from vitrobust.objectives import ObjectiveContext, TrainState, ValidationMetric, build_objective
from vitrobust.registry import ATTACK_ENGINES, OBJECTIVES
from vitrobust.shift_sets import BY_BENCHMARK

pytestmark = pytest.mark.usefixtures("one_thread")

TINY_VIT = {
    "name": "vit_pico_patch8_32", "num_classes": 10, "in_chans": 1, "img_size": 32, "patch_size": None,
    "mean": [0.25], "std": [0.5], "drop_rate": 0.0, "drop_path_rate": 0.0,
    "kwargs": {"embed_dim": 32, "depth": 1, "num_heads": 2},
}
BATCH = 8

# the Fashion-MNIST-like data of every benchmark outside the shift-set table, and settings that keep it fast
FASHION = ["device=cpu", "data.name=fashion_mnist", "data.masks.source=threshold"]
FAST = [
    "evaluate.attack.subset=16", "evaluate.attack.version=custom", "evaluate.attack.attacks=[apgd-ce]",
    "evaluate.attack.check_n=8", "evaluate.attack.square_queries=20", "evaluate.attack.steps=2",
    "evaluate.attack.eps=0.03", "evaluate.attack.grid=2",
    "evaluate.corruptions.names=[gaussian_noise]", "evaluate.corruptions.severities=[1]",
    "evaluate.corruptions.subset=8",
    "evaluate.relevance.subset=8", "evaluate.relevance.grid=2",
    "evaluate.background.subset=16",
]


def tiny_vit() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(dict(TINY_VIT))


def fashion_config(root: Path, *overrides: str):
    return load_config(None, [*FASHION, f"data.root={root}", *overrides])


def model_state(model: torch.nn.Module) -> dict:
    """What a call must leave as it was: each module's training flag, each parameter's requires_grad."""
    return {"training": {name or "<root>": m.training for name, m in model.named_modules()},
            "requires_grad": {name: p.requires_grad for name, p in model.named_parameters()}}


# --- objectives --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def resources(tmp_path_factory) -> dict[str, str]:
    """Params field name -> a tiny stand-in for the file that field names. An objective gets the entries
    whose names are fields of its Params, so a new objective with such a field needs nothing new here."""
    folder = tmp_path_factory.mktemp("resources")
    torch.manual_seed(0)
    tokenizer = build_tokenizer("vq_f4_32px", ch=8, z_channels=4, embed_dim=4, n_embed=16)
    return {"tokenizer": str(save_tokenizer(tokenizer, folder / "tokenizer.safetensors"))}


def objective_section(name: str, resources: dict[str, str]) -> dict:
    """The config section of objective `name`: its shipped defaults plus the resources its Params name."""
    fields = OBJECTIVES.get(name).Params.model_fields
    return {"name": name, **{key: value for key, value in resources.items() if key in fields}}


def tiny_batch(n: int = BATCH) -> Batch:
    """n random [0,1] 1x32x32 images, labels over the 10 classes, and a foreground mask (a 16x16 square)."""
    g = torch.Generator().manual_seed(0)
    mask = torch.zeros(n, 1, 32, 32, dtype=torch.bool)
    mask[:, :, 8:24, 6:22] = True
    return Batch(x=torch.rand(n, 1, 32, 32, generator=g), y=torch.arange(n) % 10, index=torch.arange(n),
                 extras={"mask": mask})


def as_float(value) -> float:
    return float(value.detach()) if isinstance(value, torch.Tensor) else float(value)


@pytest.mark.parametrize("name", OBJECTIVES.names())
def test_objective_params_take_the_shipped_defaults(name, resources):
    cls = OBJECTIVES.get(name)
    assert cls.name == name
    assert isinstance(objective_params(objective_section(name, resources)), cls.Params)
    first = next(iter(cls.Params.model_fields), None)
    bad = f"{first}_typo" if first else "no_such_param"
    with pytest.raises(ConfigError, match=f"objective.{bad}: unknown key") as err:
        objective_params({**objective_section(name, resources), bad: 1})
    if first:
        assert f"did you mean '{first}'" in str(err.value)


@pytest.mark.parametrize("name", OBJECTIVES.names())
def test_objective_loss_on_a_tiny_vit(name, resources, tiny_idx_root):
    cfg = fashion_config(tiny_idx_root)
    ctx = ObjectiveContext(cfg=cfg, dataset=load_split(cfg.data, "train"), device=torch.device("cpu"))
    objective = build_objective(objective_section(name, resources), ctx)
    model = tiny_vit().train()
    batch = tiny_batch()
    x_before, before = batch.x.clone(), model_state(model)

    loss, logs = objective.loss(model, batch, TrainState(model=model))

    assert torch.equal(batch.x, x_before), "the objective changed the input batch in place"
    assert model_state(model) == before, "the objective left training flags or requires_grad changed"
    assert isinstance(loss, torch.Tensor) and loss.dim() == 0 and loss.requires_grad
    assert math.isfinite(float(loss.detach())), float(loss.detach())
    model.zero_grad(set_to_none=True)  # as the trainer does: only this loss's gradients count
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads, "backward reached no parameter"
    assert all(torch.isfinite(g).all() for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0, "all parameter gradients are zero"
    assert {"acc", "loss"} <= set(logs), sorted(logs)
    values = {key: as_float(value) for key, value in logs.items()}
    assert all(math.isfinite(v) for v in values.values()), values
    assert 0.0 <= values["acc"] <= 1.0, values["acc"]

    metric = objective.validation_metric(model.eval(), [batch])
    assert metric is None or isinstance(metric, ValidationMetric), metric
    if metric is not None:
        assert isinstance(metric.name, str) and metric.name and math.isfinite(metric.value), metric


# --- benchmarks --------------------------------------------------------------------------------


def top1_values(entry, key: str = "") -> list:
    """Every leaf under a key named `top1` or ending in `_top1`, at any depth (lists included); intervals
    (`ci95`) and published numbers are not accuracies of this run."""
    if isinstance(entry, dict):
        return [v for k, sub in entry.items() if k not in ("ci95", "published") for v in top1_values(sub, str(k))]
    if isinstance(entry, (list, tuple)):
        return [v for sub in entry for v in top1_values(sub, key)]
    return [entry] if key == "top1" or key.endswith("_top1") else []


def check_entry(entry, ctx: EvalContext) -> None:
    """What every results.json entry owes the reports that read it."""
    assert isinstance(entry, dict)
    per_image = entry.pop(PER_IMAGE, None)  # tensors: saved beside results.json, not in it
    json.dumps(entry, allow_nan=False)  # plain data, no NaN / inf
    if "skipped" not in entry:  # measured: per-image results, and an interval for each
        assert per_image, "a measured entry returns its per-image results (evaluate.core.per_image)"
        for path, (values, digest) in per_image.items():
            assert isinstance(values, torch.Tensor) and values.ndim == 1 and isinstance(digest, str) and digest
            lo, hi = entry["ci95"][path]
            mean = values.float().mean().item()
            assert lo - 1e-6 <= mean <= hi + 1e-6, (path, mean, lo, hi)
        sample = entry["sample"]  # which images it was measured on (evaluate.core.record_sample)
        assert sample["rule"] in ("balanced", "all") and sample["n"] == sum(sample["class_counts"].values()), sample
    assert isinstance(entry.get("seconds"), Real) and entry["seconds"] >= 0
    fractions = top1_values(entry)
    bad = [v for v in fractions if isinstance(v, bool) or not isinstance(v, Real) or not 0.0 <= v <= 1.0]
    assert not bad, f"top-1 values outside [0,1]: {bad}"
    if "skipped" in entry:
        assert isinstance(entry["skipped"], str) and entry["skipped"], entry["skipped"]
    else:
        assert isinstance(entry.get("n"), int) and entry["n"] > 0, entry.get("n")
    if "clean_top1" in entry and "robust_top1" in entry:
        robust = entry["robust_top1"] if isinstance(entry["robust_top1"], list) else [entry["robust_top1"]]
        assert all(r <= entry["clean_top1"] for r in robust), (robust, entry["clean_top1"])
    figures = entry.get("figures", [])
    assert isinstance(figures, list)
    for figure in figures:
        assert (ctx.out_dir / figure).is_file(), f"figure {figure} is listed but not in {ctx.out_dir}"
    for check_name, check in entry.get("checks", {}).items():
        assert isinstance(check, dict) and isinstance(check.get("ok"), bool), (check_name, check)
        assert isinstance(check.get("detail"), str) and check["detail"], (check_name, check)


def run_benchmark(model: torch.nn.Module, name: str, ctx: EvalContext) -> dict:
    """run_suite on one benchmark (its check included: a failing check fails the test), the model unchanged."""
    state = {k: v.clone() for k, v in model.state_dict().items()}
    before = model_state(model)
    entry = run_suite(model, name, ctx)[name]
    assert model_state(model) == before, f"{name} changed the model's training flags or requires_grad"
    after = model.state_dict()
    assert all(torch.equal(state[k], after[k]) for k in state), f"{name} changed the model's weights or buffers"
    check_entry(entry, ctx)
    return entry


@pytest.mark.parametrize("name", BENCHMARKS.names())
def test_benchmark_on_tiny_data(name, tmp_path, tiny_idx_root, monkeypatch):
    out_dir = tmp_path / "figures"
    shift = BY_BENCHMARK.get(name)
    if shift is not None:  # ImageNet-label folders: the model that reads labels from colours scores 100%
        root = shift_tree(shift.root, tmp_path / "shifts", monkeypatch)
        ctx = replace(context(**{shift.root: root}), out_dir=out_dir)
        entry = run_benchmark(Oracle().eval(), name, ctx)
        assert entry["top1"] == 1.0, entry
        assert all(v == 1.0 for v in top1_values(entry)), entry
    else:
        cfg = fashion_config(tiny_idx_root, *FAST)
        ctx = EvalContext(cfg=cfg, data=load_split(cfg.data, "test"), device=torch.device("cpu"), out_dir=out_dir,
                          batch_size=16)
        run_benchmark(tiny_vit().eval(), name, ctx)


def test_suites_hold_every_benchmark_cheapest_first():
    suites = dict(SUITES)
    assert suites
    in_a_suite = {name for names in suites.values() for name in names}
    assert set(BENCHMARKS.names()) <= in_a_suite, sorted(set(BENCHMARKS.names()) - in_a_suite)
    for suite, names in suites.items():
        assert names and len(names) == len(set(names)), (suite, names)
        assert all(name in BENCHMARKS for name in names), (suite, names)
        assert all(suite in BENCHMARKS.get(name).suites for name in names), (suite, names)
        costs = [BENCHMARKS.get(name).cost for name in names]
        assert costs == sorted(costs), (suite, list(zip(names, costs)))


# --- did-you-mean errors -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("registry", "error"),
    [(DATASETS, DatasetError), (CHECKPOINT_FORMATS, CheckpointError), (ATTACK_ENGINES, ConfigError),
     (OBJECTIVES, ConfigError), (BENCHMARKS, BENCHMARKS.error)],
    ids=["datasets", "checkpoint_formats", "attack_engines", "objectives", "benchmarks"],
)
def test_misspelt_names_get_a_did_you_mean(registry, error):
    tried = 0
    for name in registry.names():
        misspelt = name[:-2] + name[-1] if len(name) > 3 else name + "x"  # one letter dropped
        if misspelt in registry:  # cifar100 -> cifar10: another entry's name, not a misspelling
            continue
        with pytest.raises(error, match=f"did you mean '{name}'") as err:
            registry.get(misspelt)
        assert repr(misspelt) in str(err.value) and "known: " in str(err.value)
        tried += 1
    assert tried
    with pytest.raises(error, match=r"^some\.key: unknown"):
        registry.get("zzz", key="some.key")


def test_dataset_misspelling_names_fashion_mnist():
    with pytest.raises(DatasetError, match="did you mean 'fashion_mnist'"):
        DATASETS.get("fashion_mnst")
