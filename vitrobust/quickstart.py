"""`vitrobust quickstart`: train, evaluate and report the quickstart models on Fashion-MNIST.

Every stage is resumable: a finished stage is skipped, a killed one continues from its checkpoint.
The stages share one time budget (15 minutes on a 2-core CPU for the whole list).
"""

from __future__ import annotations

import time
from pathlib import Path

from vitrobust.config import load_config
from vitrobust.evaluate import evaluate_path
from vitrobust.report import build_report, summary_rows, text_table
from vitrobust.train import train

# (run name, shipped config, evaluation suite)
STAGES = [
    ("baseline", "quickstart/baseline", "quick"),
]


def quickstart(out: str | Path = "runs/quickstart", overrides: list[str] | None = None, progress: bool = True) -> Path:
    out = Path(out)
    t_start = time.perf_counter()
    runs = []
    for name, config, suite in STAGES:
        run_dir = out / name
        cfg = load_config(config, overrides)
        print(f"== {name}: {config} ({cfg.model.name}, objective {cfg.objective['name']}, {cfg.train.epochs} epochs)")
        train(cfg, run_dir, resume=True, progress=progress)
        evaluate_path(run_dir, suite, progress=lambda line: print(f"   {line}"))
        runs.append(run_dir)
    report = build_report(runs, out / "report.html", title="vitrobust quickstart")
    header, rows = summary_rows(runs)
    print("\n" + text_table(header, rows))
    print(f"\nreport: {report}\nwall time: {time.perf_counter() - t_start:.0f} s")
    return report
