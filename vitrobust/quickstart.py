"""`vitrobust quickstart`: train, evaluate and report the quickstart models on Fashion-MNIST.

Every stage is resumable: a finished stage is skipped, a killed one continues from its checkpoint.
The whole list shares one time budget: 15 minutes on a 2-core CPU.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from vitrobust.config import load_config
from vitrobust.evaluate import evaluate_path, expand_suite, read_results
from vitrobust.report import build_report, summary_rows, text_table
from vitrobust.train import train


@dataclass(frozen=True)
class Stage:
    name: str  # run directory under the quickstart folder
    config: str  # shipped config
    suite: str = "quick"
    init: str | None = None  # fine-tune from this earlier stage's weights


STAGES = [
    Stage("baseline", "quickstart/baseline"),
    Stage("adversarial", "quickstart/adversarial", init="baseline"),
]


def _evaluated(run_dir: Path, suite: str) -> bool:
    """results.json is newer than the weights and holds every benchmark of the suite."""
    results, weights = run_dir / "results.json", run_dir / "model.safetensors"
    if not results.is_file() or results.stat().st_mtime < weights.stat().st_mtime:
        return False
    return set(expand_suite(suite)) <= set(read_results(results))


def quickstart(out: str | Path = "runs/quickstart", overrides: list[str] | None = None, progress: bool = True) -> Path:
    out = Path(out)
    t_start = time.perf_counter()
    runs = []
    for stage in STAGES:
        run_dir = out / stage.name
        extra = [f"model.init={out / stage.init}"] if stage.init else []
        cfg = load_config(stage.config, [*extra, *(overrides or [])])
        print(f"== {stage.name}: {stage.config} ({cfg.model.name}, objective {cfg.objective['name']}, "
              f"{cfg.train.epochs} epochs)", flush=True)
        train(cfg, run_dir, resume=True, progress=progress)
        if not _evaluated(run_dir, stage.suite):
            evaluate_path(run_dir, stage.suite, progress=lambda line: print(f"   {line}", flush=True))
        runs.append(run_dir)
    report = build_report(runs, out / "report.html", title="vitrobust quickstart")
    header, rows = summary_rows(runs)
    print("\n" + text_table(header, rows))
    print(f"\nreport: {report}\nwall time: {time.perf_counter() - t_start:.0f} s")
    return report
