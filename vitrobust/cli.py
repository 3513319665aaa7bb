"""The `vitrobust` command line. Sub-commands and flags follow DESIGN.md's contract."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from vitrobust.config import CONFIG_DIR, load_config
from vitrobust.distributed import current
from vitrobust.errors import UserError

USER_ERRORS = (UserError, FileExistsError, FileNotFoundError)


def _add_set(p: argparse.ArgumentParser) -> None:
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set optim.lr=1e-3 (repeatable)")


def cmd_train(args) -> int:
    from vitrobust.train import train

    cfg = load_config(args.config, args.overrides)
    run_dir = Path(args.out or Path("runs") / cfg.name)
    train(cfg, run_dir, resume=args.resume, progress=not args.no_progress)
    if current().main:
        print(f"run directory: {run_dir}")
    return 0


def cmd_evaluate(args) -> int:
    from vitrobust.evaluate import evaluate_path

    results, path = evaluate_path(args.path, args.suite, args.overrides, args.out, progress=print)
    if current().main:
        print(f"results: {path}")
    return 0


def cmd_report(args) -> int:
    from vitrobust.report import build_report

    out = build_report(args.runs, args.out)
    print(f"report: {out}")
    return 0


def cmd_quickstart(args) -> int:
    from vitrobust.quickstart import quickstart

    quickstart(args.out, args.overrides, progress=not args.no_progress)
    return 0


def cmd_configs(args) -> int:
    for path in sorted(CONFIG_DIR.rglob("*.yaml")):
        print(path.relative_to(CONFIG_DIR).with_suffix(""))
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vitrobust", description="Train, attack, evaluate and explain robust ViTs.")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a model from a config (any objective)")
    t.add_argument("config", help="YAML path or shipped config name (see `vitrobust configs`)")
    _add_set(t)
    t.add_argument("--out", help="run directory (default runs/<name>)")
    t.add_argument("--resume", action="store_true", help="continue from the run directory's last checkpoint")
    t.add_argument("--no-progress", action="store_true", help="no progress bars")
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("evaluate", help="run benchmarks on a run directory or weights file")
    e.add_argument("path", help="run directory or .safetensors file")
    e.add_argument("--suite", default="clean", help="suite or comma-separated benchmarks (default: clean)")
    _add_set(e)
    e.add_argument("--out", help="results file (default: results.json beside the weights)")
    e.set_defaults(func=cmd_evaluate)

    r = sub.add_parser("report", help="HTML/Markdown report from results.json files")
    r.add_argument("runs", nargs="+", help="run directories")
    r.add_argument("--out", help="report file (default: RUN/report.html for one run, else report.html)")
    r.set_defaults(func=cmd_report)

    q = sub.add_parser("quickstart", help="train and evaluate the quickstart models on Fashion-MNIST")
    q.add_argument("--out", default="runs/quickstart", help="output folder (default runs/quickstart)")
    _add_set(q)
    q.add_argument("--no-progress", action="store_true")
    q.set_defaults(func=cmd_quickstart)

    c = sub.add_parser("configs", help="list the shipped configs")
    c.set_defaults(func=cmd_configs)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.func(args)
    except USER_ERRORS as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


def run() -> None:
    sys.exit(main())
