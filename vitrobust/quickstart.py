"""`vitrobust quickstart`: train, evaluate and report the quickstart models on Fashion-MNIST.

Every stage is resumable: a finished stage is skipped, a killed one continues from its checkpoint.
The whole list shares one time budget: 15 minutes on a 2-core CPU (measured: 13.3-14 minutes).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from vitrobust.config import load_config
from vitrobust.evaluate import evaluate_path
from vitrobust.evaluate.core import missing_benchmarks
from vitrobust.report import build_report, summary_rows, text_table
from vitrobust.tokenizer import train_tokenizer
from vitrobust.train import train


@dataclass(frozen=True)
class Stage:
    name: str  # run directory under the quickstart folder
    config: str  # shipped config
    suite: str = "quick"
    init: str | None = None  # fine-tune from this earlier stage's weights
    tokenizer_key: str | None = None  # config key that gets the quickstart's tokenizer run
    kind: str = "model"  # or "tokenizer" (trained by `vitrobust tokenizer train`, not evaluated)
    eval_set: tuple[str, ...] | None = None  # evaluation settings instead of the plain-data ones


STAGES = [
    Stage("baseline", "quickstart/baseline"),
    Stage("adversarial", "quickstart/adversarial", init="baseline"),
    Stage("tokenizer", "quickstart/tokenizer", kind="tokenizer"),
    Stage("drvit", "quickstart/drvit", init="baseline", tokenizer_key="model.kwargs.tokenizer"),
    Stage("dat", "quickstart/dat", init="baseline", tokenizer_key="objective.tokenizer"),
    Stage("relevance", "quickstart/relevance", init="baseline"),
    # background reliance, measurable: textures that give the class away in training, independent at test
    Stage("textured", "quickstart/textured", init="baseline", suite="clean,background,relevance",
          eval_set=("data.options.test_correlation=1.0",)),
    Stage("textured_relevance", "quickstart/textured_relevance", init="textured", suite="clean,background,relevance",
          eval_set=("data.options.test_correlation=1.0",)),
]


def eval_overrides(out: Path, stage: Stage) -> list[str]:
    """Settings every quickstart model is evaluated with, so their numbers compare: relevance on the
    same 500 images; on plain Fashion-MNIST, mCE relative to the baseline on the same corrupted images
    (generated once, then read from the cache) and threshold foreground masks; the textured stages keep
    their dataset's own masks and test on class-correlated backgrounds (`eval_set`)."""
    common = ["evaluate.relevance.subset=500"]
    if stage.eval_set is not None:
        return [*common, *stage.eval_set]
    return [*common, f"evaluate.corruptions.reference={out / 'baseline'}", f"evaluate.corruptions.cache={out / 'corruptions'}",
            "evaluate.corruptions.subset=100", "data.masks.source=threshold"]


def quickstart(out: str | Path = "runs/quickstart", overrides: list[str] | None = None, progress: bool = True) -> Path:
    out = Path(out)
    t_start = time.perf_counter()
    runs = []
    for stage in STAGES:
        run_dir = out / stage.name
        extra = [f"model.init={out / stage.init}"] if stage.init else []
        extra += [f"{stage.tokenizer_key}={out / 'tokenizer'}"] if stage.tokenizer_key else []
        cfg = load_config(stage.config, [*extra, *(overrides or [])])
        desc = f"{cfg.model.name}, objective {cfg.objective['name']}" if stage.kind == "model" else "VQ tokenizer"
        print(f"== {stage.name}: {stage.config} ({desc}, {cfg.train.epochs} epochs)", flush=True)
        if stage.kind == "tokenizer":
            train_tokenizer(cfg, run_dir, resume=True, progress=progress)
            runs.append(run_dir)
            continue
        train(cfg, run_dir, resume=True, progress=progress)
        missing = missing_benchmarks(run_dir, stage.suite)  # a resumed quickstart redoes only these
        if missing:
            evaluate_path(run_dir, ",".join(missing), [*eval_overrides(out, stage), *(overrides or [])],
                          progress=lambda line: print(f"   {line}", flush=True))
        runs.append(run_dir)
    report = build_report(runs, out / "report.html", title="vitrobust quickstart")
    header, rows = summary_rows(runs)
    print("\n" + text_table(header, rows))
    print(f"\nreport: {report}\nwall time: {time.perf_counter() - t_start:.0f} s")
    return report
