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
from vitrobust.errors import CheckpointError
from vitrobust.evaluate import default_results_path, evaluate_path
from vitrobust.evaluate.core import missing_benchmarks
from vitrobust.export import export_onnx
from vitrobust.models.runtime import card_path
from vitrobust.report import build_report, summary_rows, text_table
from vitrobust.report.controls import comparisons as control_comparisons
from vitrobust.report.controls import controls_table
from vitrobust.report.deployment import deployment_section
from vitrobust.report.runs import load_runs
from vitrobust.results import read_results
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


# The robust model leaves PyTorch: ONNX fp32 and int8, each measured on onnxruntime beside the PyTorch model
# on the same images. Square with 500 queries (AutoAttack standard gives it 5000) keeps this within the budget.
SHIP = "adversarial"
SHIP_SUITE = "clean,square"
SHIP_SET = ("evaluate.attack.blackbox_queries=500",)


def ship(where: Where, overrides: list[str]) -> list[Path]:
    """Export the SHIP stage's model (fp32 and int8) into deploy/ and run SHIP_SUITE on the PyTorch model and
    on each file (only what its results lack: a resumed quickstart redoes nothing)."""
    run_dir, out = where(SHIP), where("deploy") / f"{SHIP}.onnx"
    files = [out, out.with_name(f"{SHIP}.int8.onnx")]
    print(f"== {out.parent}: {SHIP} as ONNX fp32 and int8, measured on onnxruntime", flush=True)
    stage = next(s for s in STAGES if s.name == SHIP)
    settings = [*eval_overrides(where, stage), *SHIP_SET, *overrides]
    if not out.is_file() or not card_path(out).is_file():
        try:
            card = export_onnx(run_dir, out, quantize="int8", overrides=overrides, overwrite=True)
        except CheckpointError as err:  # the int8 file failed its check: ship the fp32 file, say why
            print(f"   int8 not shipped: {err}", flush=True)
            card = export_onnx(run_dir, out, overrides=overrides, overwrite=True)
        eq = card["equivalence"]
        print(f"   fp32: max logit difference vs PyTorch {eq['fp32']['max_abs_logit_diff']:.1e} on "
              f"{eq['fp32']['images']} test images" + (f"; int8: top-1 agreement with fp32 "
              f"{100 * eq['int8']['top1_agreement_with_fp32']:.1f}%" if "int8" in eq else ""), flush=True)
    files = [f for f in files if f.is_file()]
    for path in (run_dir, *files):
        have = read_results(default_results_path(path))
        missing = [name for name in SHIP_SUITE.split(",") if name not in have]
        if missing:
            evaluate_path(path, ",".join(missing), settings, progress=lambda line: print(f"   {line}", flush=True))
    return files


def quickstart(out: str | Path = "runs/quickstart", overrides: list[str] | None = None, progress: bool = True) -> Path:
    out = Path(out)
    t_start = time.perf_counter()
    runs = [run_stage(stage, lambda name: out / name, overrides or [], [], progress) for stage in STAGES]
    shipped = ship(lambda name: out / name, overrides or [])
    found = control_comparisons(load_runs(runs))  # once: for the report and the console
    deployment = deployment_section(out / SHIP, shipped)
    report = build_report(runs, out / "report.html", title="vitrobust quickstart", controls=found,
                          extra_sections=[deployment] if deployment else [])
    header, rows = summary_rows(runs)
    print("\n" + text_table(header, rows))
    if deployment:
        print(f"\n{deployment.title}:")
        print(text_table(deployment.tables[0].header, deployment.tables[0].rows))
    if found:
        table = controls_table(found)
        print("\nEach method against its matched control (same images; difference [95% CI], p, min. detectable):")
        print(text_table(table.header, table.rows))
    print(f"\nreport: {report}\nwall time: {time.perf_counter() - t_start:.0f} s")
    return report
