"""`vitrobust study claims`: does each method's headline claim hold at the quickstart's scale?

Each method and its matched control are trained with N seeds (paired: the same seed gives both the same
data order and random draws) from one shared start, and evaluated on the same images. Per claim: the
paired effect of every seed with its interval over images, the mean effect over seeds with a Student-t
95% interval, and a verdict: holds (the interval lies on the claimed side of 0), opposite (on the other
side) or not distinguishable. Stages and their settings are the quickstart's (quickstart.Stage).
"""

from __future__ import annotations

import json
import math
import statistics
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from vitrobust.checkpoint import atomic_write_text
from vitrobust.quickstart import STAGES, Stage, run_stage
from vitrobust.report import build_report
from vitrobust.report.controls import Comparison, compare_with_control
from vitrobust.report.runs import load_runs
from vitrobust.report.sections import Section
from vitrobust.report.tables import Table, leaderboard_columns, markdown_table
from vitrobust.stats import percentile_interval, t_interval


@dataclass(frozen=True)
class Claim:
    key: str
    text: str  # the claim in one sentence
    method: str  # stage names
    control: str
    number: str  # leaderboard column key of the effect (mce: the method's mCE with the control as 100)
    better: int  # the claimed direction: +1 the number rises, -1 it falls
    scale: str  # what this study can and cannot say about the claim

    @property
    def unit(self) -> str:
        return "mCE points (control = 100)" if self.number == "mce" else "points (%)"


SMALL_TOKENIZER = ("the papers' claim is on ImageNet-C with an ImageNet VQGAN; here a 256-code tokenizer trained "
                   "for one pass on 12k Fashion-MNIST images and a short fine-tune: a null result says little "
                   "about ImageNet, an effect says the mechanism works on small data")
CLAIMS = (
    Claim("at_autoattack", "Adversarial training (PGD-AT, the light recipe) raises AutoAttack accuracy over standard "
          "fine-tuning for the same steps", "adversarial", "control", "autoattack", +1,
          "testable here: the effect is large and AutoAttack (Linf 0.1) is the papers' own attack"),
    Claim("drvit_mce", "Dr.ViT's discrete tokens lower mCE against the same ViT fine-tuned for the same steps",
          "drvit", "control", "mce", -1, SMALL_TOKENIZER),
    Claim("dat_mce", "DAT lowers mCE against standard fine-tuning for the same steps", "dat", "control_dat", "mce", -1,
          SMALL_TOKENIZER),
    Claim("dat_mce_ablation", "DAT lowers mCE against its eps=0 ablation (training on tokenizer reconstructions "
          "without the adversarial step)", "dat", "dat_eps0", "mce", -1, SMALL_TOKENIZER),
    Claim("robustvit_foreground", "RobustViT's relevance fine-tuning raises the share of relevance on the "
          "foreground on the textured set", "textured_relevance", "control_textured_relevance", "foreground_share", +1,
          "testable here in kind: masks are exact and the backgrounds carry the class in training; the paper "
          "measures it on ImageNet-S masks"),
    Claim("robustvit_bg_gap", "RobustViT's relevance fine-tuning lowers the BG-gap (reliance on the background) "
          "on the textured set", "textured_relevance", "control_textured_relevance", "bg_gap", -1,
          "testable here in kind (ImageNet-9's protocol on textured Fashion-MNIST); the paper reports "
          "ImageNet shifts instead"),
)

SHARED = ("baseline", "tokenizer", "textured", "corruptions")  # trained once, the start every seed fine-tunes
ADVERSARIAL_SUITE = "clean,autoattack"
CORRUPTION_SUITE = "clean,corruptions"


def _stages() -> dict[str, Stage]:
    """The quickstart's stages the claims need, with the suites their claims read, and DAT's ablation."""
    by_name = {s.name: s for s in STAGES}
    suites = {"control": "clean,autoattack,corruptions", "adversarial": ADVERSARIAL_SUITE, "drvit": CORRUPTION_SUITE,
              "control_dat": CORRUPTION_SUITE, "dat": CORRUPTION_SUITE}
    suites.update(baseline=CORRUPTION_SUITE, textured="clean")  # the baseline: mCE's reference
    out = {name: replace(by_name[name], suite=suites.get(name, by_name[name].suite))
           for name in ("baseline", "tokenizer", "textured", "control", "adversarial", "drvit", "control_dat", "dat",
                        "control_textured_relevance", "textured_relevance")}
    out["dat_eps0"] = Stage("dat_eps0", "quickstart/dat", init="baseline", tokenizer_key="objective.tokenizer",
                            suite=CORRUPTION_SUITE, overrides=("objective.eps=0",))
    return out


@dataclass(frozen=True)
class Plan:
    """How much the study spends: seeds, and the settings over the quickstart's."""

    seeds: int
    train: tuple[str, ...] = ()  # every stage (shorter training for --quick)
    evaluate: tuple[str, ...] = ()  # every evaluation (how many images)
    stage_train: dict[str, tuple[str, ...]] = field(default_factory=dict)


DEFAULT = Plan(seeds=3, evaluate=("evaluate.attack.subset=200", "evaluate.corruptions.subset=500"))
QUICK = Plan(seeds=2, train=("train.epochs=1",),
             evaluate=("evaluate.attack.subset=100", "evaluate.corruptions.subset=100"),
             stage_train={"baseline": ("train.epochs=2",), "control": ("data.train_subset=15000",),
                          "adversarial": ("data.train_subset=15000",), "drvit": ("data.train_subset=15000",)})


def claims_study(out: str | Path = "runs/claims", seeds: int | None = None, quick: bool = False,
                 overrides: list[str] | None = None, progress: bool = True) -> Path:
    """Train and evaluate every claim's method and control for each seed, then write claims.json,
    claims.md and report.html (every run's leaderboard with the claims section first)."""
    out, plan = Path(out), QUICK if quick else DEFAULT
    seeds = plan.seeds if seeds is None else seeds
    stages, t_start = _stages(), time.perf_counter()
    runs: dict[int, dict[str, Path]] = {}
    for seed in range(seeds):
        def where(name: str, seed: int = seed) -> Path:
            return out / name if name in SHARED else out / f"seed_{seed}" / name

        runs[seed] = {}
        for name, stage in stages.items():
            if name in SHARED and seed > 0:
                runs[seed][name] = where(name)
                continue
            settings = [*plan.train, *plan.stage_train.get(name, ()), *([f"seed={seed}"] if name not in SHARED else []),
                        *(overrides or [])]
            runs[seed][name] = run_stage(stage, where, settings, list(plan.evaluate), progress)
    found = claim_results(runs)
    found["seconds_this_call"] = round(time.perf_counter() - t_start)  # a resumed study counts what it did
    found["plan"] = {"seeds": seeds, "quick": quick, "train": list(plan.train), "evaluate": list(plan.evaluate),
                     "stage_train": {k: list(v) for k, v in plan.stage_train.items()}, "overrides": overrides or []}
    atomic_write_text(out / "claims.json", json.dumps(found, indent=2))
    table = claims_table(found)
    atomic_write_text(out / "claims.md", "# Claims study\n\n" + markdown_table(table.header, table.rows) + "\n\n"
                      + "\n".join(f"- {line}" for line in claims_notes(found)) + "\n")
    every = [p for seed in runs.values() for name, p in seed.items() if name != "tokenizer"]
    report = build_report(list(dict.fromkeys(every)), out / "report.html", title="vitrobust claims study",
                          extra_sections=[Section("claims", "Claims", [table], notes=claims_notes(found))])
    print(f"\n{table.caption}\n" + "\n".join(f"{row[0]}: {row[-2]} ({row[3]})" for row in table.rows))
    print(f"\nclaims: {out / 'claims.md'}\nreport: {report}\nwall time: {found['seconds_this_call']} s")
    return report


def _comparison(claim: Claim, method: Path | None, control: Path | None) -> Comparison | None:
    """One seed's paired comparison of the claim's number (None when a run or its per-image results are
    missing)."""
    if method is None or control is None or not all((p / "results.json").is_file() for p in (method, control)):
        return None
    run, ctl = load_runs([method, control])
    found = compare_with_control(run, ctl, leaderboard_columns([run, ctl]))
    return next((c for c in found if c.column.key == claim.number), None)


def _summary(c: Comparison) -> dict:
    """One seed's effect in the claim's unit: the difference, its interval over images, p, MDE, n."""
    s, scale = c.stats, c.scale
    return {"method": c.method_value, "control": c.control_value, "difference": scale * s["difference"],
            "ci95": [scale * v for v in s["ci95"]], "p": s["p"], "mde": scale * s["mde"], "n": s["n"],
            "test": s["test"]}


def images_interval(found: list[Comparison], resamples: int = 1000, seed: int = 0) -> list[float]:
    """95% bootstrap interval over images of the mean effect over seeds: the seeds were evaluated on the
    same images, so one resample of the images is applied to every seed ([nan, nan] if the seeds saw
    other images, or the effect is undefined in some resample)."""
    n = found[0].stats["n"]
    if any(c.stats["n"] != n or len(c.data) not in (2, 3) for c in found):
        return [math.nan, math.nan]
    gen = torch.Generator().manual_seed(seed)
    draws: list[float] = []
    for start in range(0, resamples, 100):
        idx = torch.randint(0, n, (min(100, resamples - start), n), generator=gen)
        draws += torch.stack([c.resampled(idx) * c.scale for c in found]).mean(0).tolist()
    return percentile_interval(draws)


def verdict(interval: list[float], better: int) -> str:
    lo, hi = (better * v for v in interval)
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return "not distinguishable"
    if min(lo, hi) > 0:
        return "holds"
    if max(lo, hi) < 0:
        return "opposite"
    return "not distinguishable"


def claim_results(runs: dict[int, dict[str, Path]]) -> dict:
    """Per claim: each seed's paired effect, the mean over seeds with two 95% intervals (Student t over
    the seeds: training randomness; a bootstrap over the images all seeds share: which images were drawn)
    and the verdict from the span of both (with one seed, the images' interval alone)."""
    claims = []
    for claim in CLAIMS:
        compared = {seed: _comparison(claim, paths.get(claim.method), paths.get(claim.control))
                    for seed, paths in runs.items()}
        found = [c for c in compared.values() if c is not None]
        entry = {"key": claim.key, "claim": claim.text, "method": claim.method, "control": claim.control,
                 "number": claim.number, "unit": claim.unit, "claimed_direction": claim.better, "scale": claim.scale,
                 "per_seed": {str(k): None if c is None else _summary(c) for k, c in compared.items()},
                 "seeds": len(found)}
        if found:
            effects = [c.stats["difference"] * c.scale for c in found]
            entry["mean"] = statistics.fmean(effects)
            entry["std"] = statistics.stdev(effects) if len(effects) > 1 else None
            entry["ci95_seeds"] = t_interval(effects)
            entry["ci95_images"] = images_interval(found)
            spans = [ci for ci in (entry["ci95_seeds"], entry["ci95_images"]) if all(map(math.isfinite, ci))]
            entry["ci95"] = [min(ci[0] for ci in spans), max(ci[1] for ci in spans)] if spans else [math.nan] * 2
            mdes = [c.stats["mde"] * c.scale for c in found]
            entry["mde_per_seed"] = statistics.fmean(mdes) if all(map(math.isfinite, mdes)) else None
            entry["verdict"] = verdict(entry["ci95"], claim.better)
        else:
            entry["verdict"] = "not measured"
        claims.append(entry)
    return {"claims": claims}


def _num(value, digits: int = 2, sign: bool = True) -> str:
    if value is None or not math.isfinite(value):
        return "-"
    return f"{value:+.{digits}f}" if sign else f"{value:.{digits}f}"


def claims_table(found: dict) -> Table:
    rows = []
    for c in found["claims"]:
        seeds = "; ".join(f"{_num(e['difference'])} [{_num(e['ci95'][0])}, {_num(e['ci95'][1])}]"
                          for e in c["per_seed"].values() if e is not None) or "-"
        nan = [math.nan, math.nan]
        ci, by_seeds, by_images = (c.get(k) or nan for k in ("ci95", "ci95_seeds", "ci95_images"))
        parts = f"seeds (t) [{_num(by_seeds[0])}, {_num(by_seeds[1])}]; images [{_num(by_images[0])}, {_num(by_images[1])}]"
        rows.append([c["claim"], f"{c['method']} vs {c['control']}", c["unit"],
                     f"{_num(c.get('mean'))} [{_num(ci[0])}, {_num(ci[1])}]", parts, seeds,
                     _num(c.get("mde_per_seed"), sign=False), c["verdict"], c["scale"]])
    header = ["claim", "runs", "effect in", "mean effect [95% CI]", "the interval's parts",
              "each seed [95% CI over images]", "min. detectable per seed", "verdict", "what this scale can test"]
    n = max((c["seeds"] for c in found["claims"]), default=0)
    return Table(header, rows, f"Each claim: method minus matched control, paired by seed ({n} seeds) and by image",
                 text_columns=3)


def claims_notes(found: dict) -> list[str]:
    return ["mean effect: over seeds; its 95% interval spans two: Student t over the seeds (training randomness) "
            "and a bootstrap over the images every seed was evaluated on (which images were drawn); seeds that "
            "agree by chance do not make it narrower than the images allow",
            "verdict: holds when that interval lies on the claimed side of 0, opposite when it lies on the other "
            "side, else not distinguishable: with few seeds the t interval is wide (t = 12.7 for 2 seeds, 4.3 for "
            "3), so 'not distinguishable' often means 'too few seeds or images', not 'no effect'",
            "each seed: the paired difference on the same images (Tango's interval for accuracies, a bootstrap "
            "over images for mCE and mean scores); min. detectable: the smallest per-seed difference these images "
            "detect with 80% power at the 0.05 level (for mCE from the bootstrap's spread)",
            "mCE effects: the method's mCE with its control as the reference (control = 100), minus 100",
            "seeds vary the fine-tuning (data order, random starts, new layers); the start (baseline, tokenizer, "
            "textured model) is shared"]


__all__ = ["CLAIMS", "Claim", "claim_results", "claims_study", "claims_table", "verdict"]
