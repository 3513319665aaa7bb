"""`vitrobust sweep GRID.yaml`: train and evaluate a grid of configs, then compare them in one report.

A grid file names a base config, overrides shared by every run, and one or more grids: each
grid is a mapping `key: [values]` whose cartesian product gives runs; the runs of all grids are
pooled (a run two grids share is trained once). Runs can also be listed one by one under `runs`.

    name: light_recipe_ablation
    config: recipes/xcit_s12_imagenet_at
    set: [train.epochs=10]
    suite: clean,autoattack
    seeds: [0, 1, 2]          # optional: every run once per seed (directories `<name>,seed=S`)
    grids:
      - {augment.mixup: [0.0, 0.8], augment.cutmix: [0.0, 1.0]}
      - {objective.warmup_epochs: [0, 5, 10, 20]}

Every run is resumable (a finished run is skipped; a killed one continues from its checkpoint),
and each can be launched with torchrun (`launcher: torchrun`, `nproc_per_node: N`). Runs repeated over
`seeds` are reported as groups: mean, sample std and the per-seed values (report/seeds.py).
"""

from __future__ import annotations

import itertools
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationError

from vitrobust.checkpoint import atomic_write_text
from vitrobust.config import load_config
from vitrobust.errors import ConfigError, UserError
from vitrobust.evaluate import evaluate_path
from vitrobust.evaluate.core import is_evaluated
from vitrobust.figures.cost import robustness_vs_cost
from vitrobust.report import build_report
from vitrobust.report.runs import Run, load_runs, number
from vitrobust.report.seeds import mean_std, seed_groups
from vitrobust.train import train


class SweepSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = "sweep"
    config: str = Field(description="base config: a shipped name or a path (relative to the grid file)")
    set: list[str] = Field(default_factory=list, description="overrides applied to every run")
    grids: list[dict[str, list[Any]]] = Field(default_factory=list, description="cartesian grids, pooled")
    runs: list[dict[str, Any]] = Field(default_factory=list, description="explicit runs: {key: value, ...}")
    suite: str = "clean"
    seeds: list[StrictInt] = Field(default_factory=list, description="repeat every run once per seed")
    launcher: Literal["none", "torchrun"] = "none"
    nproc_per_node: int = Field(1, ge=1)


def _format(value: Any) -> str:
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


def run_name(overrides: dict[str, Any]) -> str:
    """A readable, file-safe directory name: the last part of each key and its value."""
    if not overrides:
        return "base"
    parts = [f"{key.rsplit('.', 1)[-1]}={_format(value)}" for key, value in overrides.items()]
    return re.sub(r"[^A-Za-z0-9_.=+-]+", "_", ",".join(parts))[:120]


def expand(spec: SweepSpec) -> list[dict[str, Any]]:
    """The distinct override sets of the sweep, in grid order."""
    combos: list[dict[str, Any]] = []
    for grid in spec.grids:
        for key, values in grid.items():
            if not isinstance(values, list) or not values:
                raise ConfigError(f"grid key {key!r}: give a non-empty list of values, got {values!r}")
        keys = list(grid)
        combos += [dict(zip(keys, values)) for values in itertools.product(*(grid[k] for k in keys))]
    combos += [dict(run) for run in spec.runs]
    unique: list[dict[str, Any]] = []
    for combo in combos or [{}]:
        if combo not in unique:
            unique.append(combo)
    return unique


def load_sweep(path: str | Path) -> tuple[SweepSpec, Path]:
    path = Path(path)
    if not path.is_file():
        shipped = Path(__file__).parent / "configs" / "sweeps" / f"{path.name.removesuffix('.yaml')}.yaml"
        if not shipped.is_file():
            raise ConfigError(f"sweep grid {str(path)!r} not found: give a YAML path or a shipped grid "
                              f"({', '.join(p.stem for p in shipped.parent.glob('*.yaml'))})")
        path = shipped
    try:
        raw = yaml.safe_load(path.read_text()) or {}
        spec = SweepSpec.model_validate(raw)
    except yaml.YAMLError as err:
        raise ConfigError(f"{path} is not valid YAML: {err}") from None
    except ValidationError as err:
        first = err.errors()[0]
        raise ConfigError(f"{path}: {'.'.join(map(str, first['loc']))}: {first['msg']} "
                          f"(valid keys: {', '.join(SweepSpec.model_fields)})") from None
    local = path.parent / spec.config  # a config beside the grid file, else a shipped name (plan validates it)
    return spec, next((c for c in (local, local.with_suffix(".yaml")) if c.is_file()), Path(spec.config))


def _check_seeds(spec: SweepSpec, extra: list[str]) -> None:
    dup = sorted({s for s in spec.seeds if spec.seeds.count(s) > 1})
    if dup:
        raise ConfigError(f"seeds: {dup} listed more than once; give distinct seeds")
    fixed = [o for o in [*spec.set, *extra] if o.split("=", 1)[0].strip() == "seed"]
    fixed += [f"{k}={v}" for c in expand(spec) for k, v in c.items() if k == "seed"]
    if spec.seeds and fixed:
        raise ConfigError(f"seeds: {spec.seeds} and {fixed[0]} both set the seed: keep one of them")


def plan(spec: SweepSpec, base: Path, out: Path, extra: list[str] | None = None) -> list[tuple[Path, list[str]]]:
    """(run dir, overrides) per run; every config is validated before anything trains.

    `extra` overrides (the command line's --set) apply to every run, after the grid file's.
    A run's `name` key, if given, names its directory; otherwise the overrides do. With `seeds`,
    each run is planned once per seed: override `seed=S`, directory `<name>,seed=S`.
    """
    extra = list(extra or [])
    _check_seeds(spec, extra)
    out, runs, seen = Path(out), [], {}
    for combo in expand(spec):
        combo = dict(combo)
        name = str(combo.pop("name", "")) or run_name(combo)
        overrides = [*spec.set, *(f"{k}={_format(v)}" for k, v in combo.items()), *extra]
        for seed in spec.seeds or [None]:
            run, run_overrides = (name, overrides) if seed is None else (f"{name},seed={seed}",
                                                                           [*overrides, f"seed={seed}"])
            try:
                cfg = load_config(base, run_overrides)
            except ConfigError as err:
                raise ConfigError(f"sweep run {run!r}: {err}") from None
            key = json.dumps(cfg.model_dump(mode="json", exclude={"name"}), sort_keys=True)
            if key in seen:  # the same configuration reached from two grids is trained once
                print(f"   {run}: same configuration as {seen[key]}, not repeated", flush=True)
                continue
            seen[key] = run
            runs.append((out / run, [*run_overrides, f"name={run}"]))
    return runs


def run_seed(overrides: list[str]) -> int | None:
    """The seed a planned run got from the seeds axis (its `seed=S` override; `_check_seeds` makes sure no
    other override sets one), None without it."""
    return next((int(o.split("=", 1)[1]) for o in reversed(overrides) if o.startswith("seed=")), None)


def _summary(run_dir: Path, overrides: list[str]) -> dict:
    """A run in sweep.json: its group is the name without the seed part (the name itself without seeds)."""
    seed = run_seed(overrides)
    group = run_dir.name if seed is None else run_dir.name.removesuffix(f",seed={seed}")
    return {"name": run_dir.name, "group": group, "seed": seed, "overrides": overrides}


def _torchrun(args: list[str], nproc: int) -> None:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "vitrobust", *args]
    print("   $ " + " ".join(cmd), flush=True)
    code = subprocess.run(cmd).returncode
    if code != 0:
        raise UserError(f"torchrun exited with {code} (its output is above): {' '.join(cmd)}; "
                        f"fix the cause and run the sweep again: finished runs are kept, this one resumes")


def _set_args(overrides: list[str]) -> list[str]:
    return [arg for item in overrides for arg in ("--set", item)]


def _robust(run: Run) -> float | None:
    return (run.entry("autoattack") or run.entry("pgd") or {}).get("robust_top1")


def _point(name: str, runs: list[Run]) -> dict:
    """Mean params, FLOPs, clean and robust top-1 over runs (with clean_std/robust_std for a seed group)."""
    point: dict = {"name": name}
    for key, get in (("params", lambda r: r.meta.get("params")), ("flops", lambda r: r.meta.get("flops")),
                     ("clean", lambda r: (r.entry("clean") or {}).get("top1")), ("robust", _robust)):
        point[key], std = mean_std([v for r in runs if (v := number(get(r))) is not None])
        if len(runs) > 1 and key in ("clean", "robust"):
            point[f"{key}_std"] = std
    return point


def cost_points(run_dirs: list[Path]) -> list[dict]:
    """Per run, or per group of runs repeated over seeds: name, params, flops, clean and robust top-1
    (AutoAttack if present, else PGD); a group gives means and clean_std/robust_std."""
    runs = load_runs(run_dirs)
    groups = seed_groups(runs)
    group_of = {id(r): g for g, members in groups.items() for r in members}
    points, done = [], set()
    for run in runs:
        group = group_of.get(id(run))
        if group is None:
            points.append(_point(run.name, [run]))
        elif group not in done:
            done.add(group)
            points.append(_point(group, groups[group]))
    return points


def sweep(grid: str | Path, out: str | Path | None = None, overrides: list[str] | None = None,
          progress: bool = True, dry_run: bool = False) -> Path:
    spec, base = load_sweep(grid)
    out = Path(out or Path("runs") / spec.name)
    runs = plan(spec, base, out, overrides)
    axis = f" ({len(runs) // len(spec.seeds)} configs x {len(spec.seeds)} seeds)" if spec.seeds else ""
    print(f"sweep {spec.name}: {len(runs)} runs{axis} of {base} -> {out}", flush=True)
    if dry_run:
        for run_dir, run_overrides in runs:
            print(f"  {run_dir.name}: {' '.join(run_overrides)}")
        return out
    for i, (run_dir, overrides) in enumerate(runs, 1):
        print(f"== [{i}/{len(runs)}] {run_dir.name}", flush=True)
        if spec.launcher == "torchrun":
            _torchrun(["train", str(base), "--out", str(run_dir), "--resume", "--no-progress",
                       *_set_args(overrides)], spec.nproc_per_node)
            if not is_evaluated(run_dir, spec.suite):
                _torchrun(["evaluate", str(run_dir), "--suite", spec.suite], spec.nproc_per_node)
            continue
        train(load_config(base, overrides), run_dir, resume=True, progress=progress)
        if not is_evaluated(run_dir, spec.suite):
            evaluate_path(run_dir, spec.suite, progress=lambda line: print(f"   {line}", flush=True))

    dirs = [run_dir for run_dir, _ in runs]
    extra = [robustness_vs_cost(cost_points(dirs), out / "figures" / "robustness_vs_cost.png")]
    report = build_report(dirs, out / "report.html", title=f"vitrobust sweep: {spec.name}",
                          extra_figures=[("Accuracy vs parameters and FLOPs", p) for p in extra if p])
    summary = {"name": spec.name, "config": str(base), "suite": spec.suite, "seeds": spec.seeds,
               "runs": [_summary(d, o) for d, o in runs]}
    atomic_write_text(out / "sweep.json", json.dumps(summary, indent=2))
    print(f"report: {report}", flush=True)
    return report
