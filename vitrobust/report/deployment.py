"""The report's Deployment section: a run and the files exported from it (`vitrobust export --format onnx`),
each measured on its own runtime: size, batch-1 latency, clean and black-box (Square) accuracy with 95%
intervals, and each file against the PyTorch model on the same images (paired: McNemar, Tango interval)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from vitrobust.evaluate import default_results_path
from vitrobust.models.runtime import card_path
from vitrobust.report.sections import Section, pct
from vitrobust.report.tables import Table
from vitrobust.results import read_per_image, read_results
from vitrobust.stats import paired_comparison

NUMBERS = (("clean", "top1", "clean top1 %"), ("square", "robust_top1", "Square robust top1 %"))


def _number(results: dict, entry: str, key: str) -> str:
    e = results.get(entry) or {}
    value, ci = e.get(key), (e.get("ci95") or {}).get(key)
    if value is None:
        return "-"
    return f"{pct(value)} [{pct(ci[0])}, {pct(ci[1])}]" if ci else pct(value)


def _flags(per_image: dict, entry: str, key: str) -> tuple[torch.Tensor, str] | None:
    return (per_image.get(entry) or {}).get(key)


def _versus(theirs: dict, mine: dict, entry: str, key: str) -> str:
    a, b = _flags(mine, entry, key), _flags(theirs, entry, key)
    if a is None or b is None or a[1] != b[1]:
        return "-"  # not measured on the same images
    c = paired_comparison(a[0], b[0])
    return f"{100 * c['difference']:+.2f} [{100 * c['ci95'][0]:+.2f}, {100 * c['ci95'][1]:+.2f}], p {c['p']:.2g}"


def deployment_section(run_dir: Path, files: list[Path]) -> Section | None:
    """Rows: the run (PyTorch) and each exported FILE.onnx with FILE.results.json beside it."""
    files = [f for f in files if f.is_file()]
    if not files:
        return None
    base_results, base_flags = read_results(run_dir / "results.json"), read_per_image(run_dir / "results.json")
    card = json.loads(card_path(files[0]).read_text())
    latency = card.get("equivalence", {}).get("latency_ms_batch1") or {}
    header = ["model", "runtime", "MB", "batch-1 ms", *(label for _, _, label in NUMBERS),
              *(f"{label.split()[0]} vs PyTorch (points [95% CI], p)" for _, _, label in NUMBERS)]
    weights = run_dir / "model.safetensors"
    rows = [[run_dir.name, "PyTorch eager", f"{weights.stat().st_size / 1e6:.2f}" if weights.is_file() else "-",
             str(latency.get("pytorch", "-")), *(_number(base_results, e, k) for e, k, _ in NUMBERS), "", ""]]
    for f in files:
        results_path = default_results_path(f)
        results, flags = read_results(results_path), read_per_image(results_path)
        precision = "int8" if f.name.endswith(".int8.onnx") else "fp32"
        rows.append([f.name, f"onnxruntime {precision}", f"{f.stat().st_size / 1e6:.2f}", str(latency.get(precision, "-")),
                     *(_number(results, e, k) for e, k, _ in NUMBERS),
                     *(_versus(base_flags, flags, e, k) for e, k, _ in NUMBERS)])
    queries = (base_results.get("square") or {}).get("queries")
    notes = [f"Each file is measured on onnxruntime itself, on the same images as the PyTorch model. Square is "
             f"black-box ({queries} queries), so it is an upper bound on robust accuracy; the PyTorch model's "
             f"AutoAttack is the tighter one. Latency: median of 30 batch-1 calls at export "
             f"({latency.get('threads', '?')} threads), a quick figure (benchmarks/bench_deploy.py measures it).",
             "vs PyTorch: the file's accuracy minus the PyTorch model's, with Tango's 95% interval and McNemar's "
             "p: an interval holding 0 says export or quantisation changed nothing measurable on these images.",
             "A higher Square number for an int8 file than for the PyTorch model is not robustness gained: quantised "
             "logits are flatter and coarser, which misleads the score-based search (gradient masking's black-box "
             "twin). Its robustness is bounded by the PyTorch model's white-box numbers."]
    return Section("deployment", "Deployment: the files that ship, measured on their runtime",
                   [Table(header, rows, text_columns=2)], notes=notes)


__all__ = ["deployment_section"]
