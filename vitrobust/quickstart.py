"""`vitrobust quickstart`: train, evaluate and report the quickstart models on Fashion-MNIST.

Every method is compared with its matched control: standard fine-tuning from the same start for the
same steps on the same data order (config.control_config), evaluated on the same images.
Every stage is resumable: a finished stage is skipped, a killed one continues from its checkpoint.
The whole list shares one time budget: 15 minutes on a 2-core CPU.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from vitrobust.config import Config, control_config, load_config
from vitrobust.evaluate import evaluate_path
from vitrobust.evaluate.core import missing_benchmarks
from vitrobust.report import build_report, summary_rows, text_table
from vitrobust.report.controls import comparisons as control_comparisons
from vitrobust.report.controls import controls_table
from vitrobust.report.runs import load_runs
from vitrobust.tokenizer import train_tokenizer
from vitrobust.train import train

# The quick suite without the backgrounds benchmark, whose BG-gap is 0 by construction on black backgrounds;
# the eps sweep only where its curve says something (the standard models collapse at the first eps).
PLAIN = "clean,autoattack,corruptions,relevance"
SWEPT = f"{PLAIN},eps_sweep"


@dataclass(frozen=True)
class Stage:
    name: str  # run directory under the quickstart folder
    config: str  # shipped config
    suite: str = PLAIN
    init: str | None = None  # fine-tune from this earlier stage's weights
    tokenizer_key: str | None = None  # config key that gets the quickstart's tokenizer run
    kind: str = "model"  # or "tokenizer" (trained by `vitrobust tokenizer train`, not evaluated)
    eval_set: tuple[str, ...] | None = None  # evaluation settings instead of the plain-data ones
    control: str | None = None  # the stage this method is compared with (trained before it)
    control_model: str | None = None  # a control stage: the model it trains in place of the method's
    is_control: bool = False  # built by config.control_config from `config` (the method's own config)
    overrides: tuple[str, ...] = ()  # the stage's own settings over its config


TEXTURED = dict(suite="clean,background,relevance", eval_set=("data.options.test_correlation=1.0",))
STAGES = [
    Stage("baseline", "quickstart/baseline", suite=SWEPT),
    Stage("tokenizer", "quickstart/tokenizer", kind="tokenizer"),
    # adversarial and drvit fine-tune the same steps with the same schedule: one control serves both
    Stage("control", "quickstart/adversarial", init="baseline", is_control=True, suite=SWEPT),
    Stage("adversarial", "quickstart/adversarial", init="baseline", control="control", suite=SWEPT),
    Stage("drvit", "quickstart/drvit", init="baseline", tokenizer_key="model.kwargs.tokenizer", control="control"),
    Stage("control_dat", "quickstart/dat", init="baseline", is_control=True),
    Stage("dat", "quickstart/dat", init="baseline", tokenizer_key="objective.tokenizer", control="control_dat"),
    Stage("control_relevance", "quickstart/relevance", init="baseline", is_control=True),
    Stage("relevance", "quickstart/relevance", init="baseline", control="control_relevance"),
    # background reliance, measurable: textures that give the class away in training, independent at test
    Stage("textured", "quickstart/textured", init="baseline", **TEXTURED),
    Stage("control_textured_relevance", "quickstart/textured_relevance", init="textured", is_control=True, **TEXTURED),
    Stage("textured_relevance", "quickstart/textured_relevance", init="textured", control="control_textured_relevance",
          **TEXTURED),
]


Where = Callable[[str], Path]  # a stage name -> its run directory


def eval_overrides(where: Where, stage: Stage) -> list[str]:
    """Settings every quickstart model is evaluated with, so their numbers compare: relevance on the
    same 500 images; on plain Fashion-MNIST, mCE relative to the baseline on the same corrupted images
    (generated once, then read from the cache; the report also gives each method's mCE relative to its
    control from the same per-image results) and threshold foreground masks; the textured stages keep
    their dataset's own masks and test on class-correlated backgrounds (`eval_set`)."""
    common = ["evaluate.relevance.subset=500"]
    if stage.eval_set is not None:
        return [*common, *stage.eval_set]
    return [*common, f"evaluate.corruptions.reference={where('baseline')}",
            f"evaluate.corruptions.cache={where('corruptions')}", "evaluate.corruptions.subset=200",
            "data.masks.source=threshold"]


def stage_config(where: Where, stage: Stage, overrides: list[str]) -> Config:
    """A stage's config: its shipped config with the paths of the stages it builds on (start, tokenizer,
    control), the stage's own settings, then the user's overrides; a control stage is the matched control
    of that config."""
    extra = [f"model.init={where(stage.init)}"] if stage.init else []
    extra += [f"{stage.tokenizer_key}={where('tokenizer')}"] if stage.tokenizer_key else []
    extra += [f"compare.control={where(stage.control)}"] if stage.control else []
    cfg = load_config(stage.config, [*extra, *stage.overrides, *overrides])
    if not stage.is_control:
        return cfg
    control = control_config(cfg, stage.control_model)
    control.name = stage.name
    return control


def run_stage(stage: Stage, where: Where, overrides: list[str], eval_extra: list[str], progress: bool = True) -> Path:
    """Train (or resume) one stage and run the benchmarks of its suite that its results lack."""
    run_dir = where(stage.name)
    cfg = stage_config(where, stage, overrides)
    desc = f"{cfg.model.name}, objective {cfg.objective['name']}" if stage.kind == "model" else "VQ tokenizer"
    print(f"== {run_dir}: {stage.config}{' (control)' if stage.is_control else ''} ({desc}, "
          f"{cfg.train.epochs} epochs, seed {cfg.seed})", flush=True)
    if stage.kind == "tokenizer":
        return train_tokenizer(cfg, run_dir, resume=True, progress=progress)
    train(cfg, run_dir, resume=True, progress=progress)
    missing = missing_benchmarks(run_dir, stage.suite)  # a resumed run redoes only these
    if missing:
        evaluate_path(run_dir, ",".join(missing), [*eval_overrides(where, stage), *eval_extra, *overrides],
                      progress=lambda line: print(f"   {line}", flush=True))
    return run_dir


def quickstart(out: str | Path = "runs/quickstart", overrides: list[str] | None = None, progress: bool = True) -> Path:
    out = Path(out)
    t_start = time.perf_counter()
    runs = [run_stage(stage, lambda name: out / name, overrides or [], [], progress) for stage in STAGES]
    found = control_comparisons(load_runs(runs))  # once: for the report and the console
    report = build_report(runs, out / "report.html", title="vitrobust quickstart", controls=found)
    header, rows = summary_rows(runs)
    print("\n" + text_table(header, rows))
    if found:
        table = controls_table(found)
        print("\nEach method against its matched control (same images; difference [95% CI], p, min. detectable):")
        print(text_table(table.header, table.rows))
    print(f"\nreport: {report}\nwall time: {time.perf_counter() - t_start:.0f} s")
    return report
