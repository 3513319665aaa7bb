"""Seeds in sweeps: planning runs per seed, grouping runs that differ only by seed, mean/std per column,
the report's Seeds section, seeds.json and the error-bar figures (hand-made run directories, no training)."""

from __future__ import annotations

import json
import math
import re
import statistics
from html.parser import HTMLParser

import pytest
import torch
import yaml
from helpers_train import TINY

from vitrobust.config import load_config
from vitrobust.errors import ConfigError
from vitrobust.figures.cost import robustness_vs_cost
from vitrobust.figures.seeds import seed_bars
from vitrobust.report import build_report, leaderboard
from vitrobust.report.runs import load_runs
from vitrobust.report.seeds import aggregate, seed_groups, seeds_table
from vitrobust.report.tables import leaderboard_columns
from vitrobust.results import write_per_image, write_results
from vitrobust.stats import wilson
from vitrobust.sweep import SweepSpec, cost_points, load_sweep, plan, run_seed, sweep

# (directory, seed, overrides, clean top1, AutoAttack robust top1); written out of seed order on purpose
RUNS = [
    ("lr=0.1,seed=2", 2, [], 0.74, 0.36),
    ("lr=0.1,seed=0", 0, [], 0.70, 0.30),
    ("lr=0.01,seed=0", 0, ["optim.lr=0.01"], 0.80, 0.40),
    ("lr=0.1,seed=1", 1, [], 0.72, 0.33),
    ("lr=0.01,seed=1", 1, ["optim.lr=0.01"], 0.80, 0.42),
    ("lr=0.01,seed=2", 2, ["optim.lr=0.01"], 0.83, 0.44),
    ("wd=0.1", 0, ["optim.weight_decay=0.1"], 0.60, 0.20),  # another config: stays alone
]


def make_run(root, name, seed, overrides, clean, robust, config=True):
    run = root / name
    run.mkdir(parents=True)
    if config:
        cfg = load_config("quickstart/baseline", [*overrides, f"seed={seed}", f"name={name}"])
        (run / "config.yaml").write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    entries = {"clean": {"top1": clean, "n": 100},
               "autoattack": {"clean_top1": clean, "robust_top1": robust, "n": 100, "norm": "Linf", "eps": 0.1}}
    write_results(run / "results.json", entries, {"model": "m", "params": 1e6, "flops": 2e8})
    return run


@pytest.fixture
def run_dirs(tmp_path):
    dirs = [make_run(tmp_path / "runs", *spec) for spec in RUNS]
    # the same numbers as a seed of lr=0.1, but no config.yaml: never grouped
    return [*dirs, make_run(tmp_path / "runs", "lr=0.1,seed=3", 3, [], 0.9, 0.5, config=False)]


def test_runs_that_differ_only_by_seed_are_grouped_in_seed_order(run_dirs):
    groups = seed_groups(load_runs(run_dirs))
    assert list(groups) == ["lr=0.1", "lr=0.01"]
    assert [r.name for r in groups["lr=0.1"]] == ["lr=0.1,seed=0", "lr=0.1,seed=1", "lr=0.1,seed=2"]
    assert [r.name for r in groups["lr=0.01"]] == ["lr=0.01,seed=0", "lr=0.01,seed=1", "lr=0.01,seed=2"]
    assert seed_groups(load_runs(run_dirs[-2:])) == {}  # one run per config: no group


def test_aggregate_gives_mean_sample_std_and_values_in_seed_order(run_dirs):
    runs = load_runs(run_dirs)
    agg = {g["group"]: g for g in aggregate(runs, leaderboard_columns(runs))}
    a = agg["lr=0.1"]
    assert a["seeds"] == [0, 1, 2] and a["runs"] == ["lr=0.1,seed=0", "lr=0.1,seed=1", "lr=0.1,seed=2"]
    assert a["columns"]["clean"]["values"] == [0.70, 0.72, 0.74]
    assert a["columns"]["clean"]["mean"] == pytest.approx(0.72)
    assert a["columns"]["clean"]["std"] == pytest.approx(0.02)
    assert a["columns"]["clean"]["unit"] == "%"
    assert a["columns"]["autoattack"]["values"] == [0.30, 0.33, 0.36]
    assert a["columns"]["autoattack"]["mean"] == pytest.approx(0.33)
    assert a["columns"]["autoattack"]["std"] == pytest.approx(0.03)
    assert a["columns"]["params"]["std"] == 0.0
    b = agg["lr=0.01"]["columns"]["clean"]
    assert b["mean"] == pytest.approx(0.81) and b["std"] == pytest.approx(0.0003 ** 0.5)
    assert b["std"] == pytest.approx(statistics.stdev([0.80, 0.80, 0.83]))


def test_seeds_table_shows_mean_std_and_each_seed_in_percent(run_dirs):
    runs = load_runs(run_dirs)
    columns = leaderboard_columns(runs)
    table = seeds_table(aggregate(runs, columns), columns)
    assert table.header[:2] == ["group", "seeds"]
    # params, FLOPs: same per seed; the header says what ± means here, and over how many seeds
    assert table.header[2:] == ["clean top1 %: mean ± std (3 seeds)",
                                "AutoAttack top1 % (Linf 0.1): mean ± std (3 seeds)"]
    assert "not a 95% interval" in table.caption
    rows = {row[0]: row for row in table.rows}
    assert rows["lr=0.1"][1] == "0, 1, 2"
    assert rows["lr=0.1"][2:] == ["72.00 ± 2.00 (70.0, 72.0, 74.0)", "33.00 ± 3.00 (30.0, 33.0, 36.0)"]
    assert rows["lr=0.01"][2] == "81.00 ± 1.73 (80.0, 80.0, 83.0)"
    # a group whose runs lack a number in some seed says how many seeds each column averages
    agg = aggregate(runs, columns)
    agg[1]["columns"]["clean"]["values"][2] = None
    assert seeds_table(agg, columns).header[2] == "clean top1 %: mean ± std (2-3 seeds)"


class Tables(HTMLParser):
    """Every table of a page as (header, rows of cell text)."""

    def __init__(self):
        super().__init__()
        self.tables, self.cell = [], None

    def handle_starttag(self, tag, attrs):
        if tag == "table":
            self.tables.append(([], []))
        elif tag == "tr" and self.tables and self.tables[-1][0]:  # the header row holds th cells only
            self.tables[-1][1].append([])
        elif tag in ("th", "td"):
            self.cell = ""

    def handle_data(self, data):
        if self.cell is not None:
            self.cell += data

    def handle_endtag(self, tag):
        if tag in ("th", "td") and self.cell is not None:
            header, rows = self.tables[-1]
            (header if tag == "th" else rows[-1]).append(self.cell)
            self.cell = None


NUMBER_PM = re.compile(r"\d ± \d")  # a number written with ±


def std_cells(tables: list[tuple[list[str], list[list[str]]]]) -> int:
    """How many cells hold a number with ±; each must lie in a column whose header says mean ± std."""
    found = 0
    for header, rows in tables:
        for row in rows:
            for j, cell in enumerate(row):
                if NUMBER_PM.search(cell):
                    assert "mean ± std" in header[j], (header[j], cell)
                    found += 1
    return found


def test_no_interval_is_written_with_pm_where_it_is_lopsided(run_dirs, tmp_path):
    # every accuracy here (n=100, none at 50%) has an asymmetric Wilson interval
    out = build_report(run_dirs[:-1], tmp_path / "report.html")
    page = out.read_text()
    parser = Tables()
    parser.feed(page)
    board = parser.tables[0]
    clean = board[0].index("clean top1 %")
    lo, hi = wilson(74, 100)  # lr=0.1,seed=2: 74 of 100
    assert board[1][0][clean] == f"74.00 [{100 * lo:.2f}, {100 * hi:.2f}]" == "74.00 [64.63, 81.60]"
    # a number with ± only in the Seeds table, whose headers say std: 2 columns x 2 groups
    assert std_cells(parser.tables) == 4 == len(NUMBER_PM.findall(page))
    md = out.with_suffix(".md").read_text()
    blocks = re.findall(r"((?:^\|.*\|\n)+)", md, re.M)
    md_tables = [([c.strip() for c in b.splitlines()[0].strip("|").split(" | ")],
                  [[c.strip() for c in line.strip("|").split(" | ")] for line in b.splitlines()[2:]]) for b in blocks]
    assert std_cells(md_tables) == 4 == len(NUMBER_PM.findall(md))
    assert "a [lo, hi]: the number and its 95% interval" in page


N_IMAGES = 150


def flip(flags: torch.Tensor, wrong=(), right=()) -> torch.Tensor:
    out = flags.clone()
    out[list(wrong)], out[list(right)] = False, True
    return out


def exact_p(a_only: int, b_only: int) -> float:
    """McNemar's exact two-sided p, by hand: 2 P(Binomial(a + b, 1/2) <= min(a, b))."""
    m = a_only + b_only
    return min(1.0, 2 * sum(math.comb(m, i) for i in range(min(a_only, b_only) + 1)) / 2**m)


@pytest.fixture
def paired_groups(tmp_path):
    """Two seed groups (lr=0.01: A, lr=0.1: B; seeds 0 and 1) and a lone run (wd=0.1, seed 0), with clean
    correctness per image on the same 150 images; AutoAttack numbers without per-image results."""
    a0 = torch.arange(N_IMAGES) < 120  # 80.00%
    a1 = flip(a0, wrong=range(12))  # 72.00%: A's seeds differ, significantly (12 / 0 discordant)
    b0 = flip(a0, wrong=range(20, 40), right=range(120, 123))  # 68.67%: vs A0 20 / 3
    b1 = flip(a1, wrong=range(40, 47), right=range(3))  # 69.33%: vs A1 7 / 3
    lone = flip(a0, wrong=range(50, 60), right=range(125, 128))  # 75.33%: vs A0 10 / 3
    # (name, seed, overrides, correct, robust): B's seed 1 has the best robust number, B's mean is lower
    specs = [("lr=0.1,seed=1", 1, [], b1, 0.45), ("lr=0.01,seed=0", 0, ["optim.lr=0.01"], a0, 0.40),
             ("lr=0.1,seed=0", 0, [], b0, 0.30), ("lr=0.01,seed=1", 1, ["optim.lr=0.01"], a1, 0.42),
             ("wd=0.1", 0, ["optim.weight_decay=0.1"], lone, 0.20)]
    dirs = []
    for name, seed, overrides, correct, robust in specs:
        top1 = correct.float().mean().item()
        run = make_run(tmp_path / "runs", name, seed, overrides, top1, robust)
        write_results(run / "results.json", {"clean": {"top1": top1, "n": N_IMAGES}})
        write_per_image(run / "results.json", "clean", {"top1": (correct, "the-same-150")})
        dirs.append(run)
    return dirs


def test_seed_groups_are_compared_as_groups_paired_by_seed(paired_groups, tmp_path):
    board = leaderboard(paired_groups)
    names = [r.name for r in board.runs]
    group_a, group_b = {"lr=0.01,seed=0", "lr=0.01,seed=1"}, {"lr=0.1,seed=0", "lr=0.1,seed=1"}
    paired = board.paired_table()
    # no comparison puts two runs of one group against each other (was: lr=0.01,seed=0 vs lr=0.01,seed=1)
    assert not any({row[1], row[2]} <= g for row in paired.rows for g in (group_a, group_b))
    for c in board.comparisons():
        best = {names[i] for _, i in board.units()[c["best"]].rows}
        other = {names[i] for _, i in board.units()[c["other"]].rows}
        assert not any(best | other <= g for g in (group_a, group_b)) and not best & other
    assert paired.header[1:3] == ["best run or seed group", "other run or seed group"]
    assert "images x seeds" in paired.caption
    # A (mean 76.00) is best; against B seed by seed: +11.33 (20 / 3) and +2.67 (7 / 3), mean +7.00; the
    # combined test counts 27 / 6 discordant images over both seeds
    assert paired.rows == [
        ["clean top1 %", "lr=0.01 (seeds 0, 1)", "lr=0.1 (seeds 0, 1)", f"{100 * (17 + 4) / 2 / N_IMAGES:+.2f}",
         "27 / 6", f"{exact_p(27, 6):.3g}",
         # minimum detectable: (z_0.975 + z_0.8) * sqrt(discordant share / images) over both seeds' images
         f"{100 * 2.8015852 * math.sqrt(33 / (2 * N_IMAGES) / (2 * N_IMAGES)):.2f}", "significant (p < 0.05)",
         f"seed 0: +11.33 (p {exact_p(20, 3):.3g}); seed 1: +2.67 (p {exact_p(7, 3):.3g})"],
        # the lone run has seed 0: paired with A's seed 0 only
        ["clean top1 %", "lr=0.01 (seeds 0, 1)", "wd=0.1", "+4.67", "10 / 3", f"{exact_p(10, 3):.3g}",
         f"{100 * 2.8015852 * math.sqrt(13 / N_IMAGES / N_IMAGES):.2f}",  # one seed's 150 images: 13 discordant
         "not significant", f"seed 0: +4.67 (p {exact_p(10, 3):.3g})"]]
    assert paired.rows[0][3] == "+7.00" and exact_p(7, 3) > 0.05 > exact_p(27, 6)
    # bold: both runs of A and the lone run not significantly worse; B, significantly worse, not at all;
    # AutoAttack (no per-image results): A by its mean 41.00, not B's lucky seed 1 (45.00, mean 37.50)
    table = board.table()
    clean, robust = table.header.index("clean top1 %"), table.header.index("AutoAttack top1 % (Linf 0.1)")
    assert {names[i] for i, j in table.bold if j == clean} == group_a | {"wd=0.1"}
    assert {names[i] for i, j in table.bold if j == robust} == group_a
    assert any("one seed group" in note for note in board.notes())
    page = build_report(paired_groups, tmp_path / "report.html").read_text()
    section = page.split("<section id='paired'>")[1].split("</section>")[0]
    assert "lr=0.01 (seeds 0, 1)" in section and "seed=" not in section  # groups, never their runs


def test_report_has_a_seeds_section_seeds_json_and_the_figure(run_dirs, tmp_path):
    out = build_report(run_dirs, tmp_path / "report" / "report.html")
    page = out.read_text()
    assert "<section id='seeds'>" in page and "Runs repeated over seeds" in page
    assert page.index("<section id='seeds'>") > page.index("<section id='adversarial'>")  # after the others
    assert "group lr=0.1: lr=0.1,seed=0, lr=0.1,seed=1, lr=0.1,seed=2" in page
    assert "72.00 ± 2.00 (70.0, 72.0, 74.0)" in page
    assert "72.00 ± 2.00" in out.with_suffix(".md").read_text()
    saved = {g["group"]: g for g in json.loads((out.parent / "seeds.json").read_text())}
    assert set(saved) == {"lr=0.1", "lr=0.01"}
    assert saved["lr=0.1"]["columns"]["clean"]["values"] == [0.70, 0.72, 0.74]
    assert saved["lr=0.1"]["columns"]["clean"]["std"] == pytest.approx(0.02)
    assert (out.parent / "figures" / "report_seeds.png").is_file()
    # a report with no repeated seeds has neither
    alone = build_report(run_dirs[-2:], tmp_path / "alone" / "report.html")
    assert "id='seeds'" not in alone.read_text() and not (alone.parent / "seeds.json").exists()


def test_seed_bars_and_cost_points_with_error_bars(run_dirs, tmp_path):
    runs = load_runs(run_dirs)
    agg = aggregate(runs, leaderboard_columns(runs))
    assert seed_bars(agg, tmp_path / "bars.png").is_file()
    assert seed_bars([], tmp_path / "none.png") is None
    points = {p["name"]: p for p in cost_points(run_dirs)}
    # one point per seed group, one per lone run
    assert set(points) == {"lr=0.1", "lr=0.01", "wd=0.1", "lr=0.1,seed=3"}
    assert points["lr=0.1"]["clean"] == pytest.approx(0.72) and points["lr=0.1"]["clean_std"] == pytest.approx(0.02)
    assert points["lr=0.1"]["robust_std"] == pytest.approx(0.03) and points["lr=0.1"]["params"] == 1e6
    assert "clean_std" not in points["wd=0.1"] and points["wd=0.1"]["robust"] == 0.20
    assert robustness_vs_cost(list(points.values()), tmp_path / "cost.png").is_file()


def test_plan_repeats_every_run_per_seed(tmp_path):
    spec = SweepSpec(config="quickstart/baseline", grids=[{"optim.lr": [0.1, 0.01]}], seeds=[0, 1, 2])
    runs = plan(spec, "quickstart/baseline", tmp_path)
    assert [r.name for r, _ in runs] == [f"lr={lr},seed={s}" for lr in (0.1, 0.01) for s in (0, 1, 2)]
    assert runs[4][1] == ["optim.lr=0.01", "seed=1", "name=lr=0.01,seed=1"]
    assert [run_seed(o) for _, o in runs] == [0, 1, 2, 0, 1, 2]
    assert load_config("quickstart/baseline", runs[4][1]).seed == 1


def test_plan_with_seeds_still_drops_repeats_but_never_merges_seeds(tmp_path):
    spec = SweepSpec(config="quickstart/baseline", grids=[{"optim.lr": [0.003, 0.001]}, {"optim.weight_decay": [0.05]}],
                     seeds=[0, 1])
    names = [r.name for r, _ in plan(spec, "quickstart/baseline", tmp_path)]
    assert names == ["lr=0.003,seed=0", "lr=0.003,seed=1", "lr=0.001,seed=0", "lr=0.001,seed=1"]


def test_bad_seeds_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match=r"seeds: \[0, 2\] listed more than once"):
        plan(SweepSpec(config="quickstart/baseline", seeds=[0, 2, 1, 0, 2]), "quickstart/baseline", tmp_path)
    with pytest.raises(ConfigError, match="both set the seed"):
        plan(SweepSpec(config="quickstart/baseline", grids=[{"seed": [3, 4]}], seeds=[0, 1]),
             "quickstart/baseline", tmp_path)
    grid = tmp_path / "grid.yaml"
    grid.write_text(yaml.safe_dump({"config": "quickstart/baseline", "seeds": [0, "one"]}))
    with pytest.raises(ConfigError, match="seeds"):
        load_sweep(grid)


def test_dry_run_lists_the_seeded_runs(tmp_path, capsys):
    grid = tmp_path / "grid.yaml"
    grid.write_text(yaml.safe_dump({"name": "s", "config": "quickstart/baseline", "seeds": [0, 1],
                                    "runs": [{"name": "a"}, {"name": "b", "optim.lr": 0.01}]}))
    sweep(grid, tmp_path / "out", dry_run=True)
    text = capsys.readouterr().out
    assert "4 runs (2 configs x 2 seeds)" in text
    for line in ("a,seed=0: seed=0 name=a,seed=0", "a,seed=1: seed=1 name=a,seed=1",
                 "b,seed=1: optim.lr=0.01 seed=1 name=b,seed=1"):
        assert line in text
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_tiny_seeded_sweep_end_to_end(tmp_path, one_thread):
    grid = tmp_path / "grid.yaml"
    grid.write_text(yaml.safe_dump({
        "name": "seeded", "config": "quickstart/baseline", "suite": "clean", "seeds": [0, 1],
        "set": [*TINY, "train.epochs=1", "evaluate.subset=64"],
        "runs": [{"name": "narrow", "model.kwargs": {"embed_dim": 32, "depth": 1, "num_heads": 2}}],
    }))
    out = tmp_path / "out"
    report = sweep(grid, out, progress=False)
    summary = json.loads((out / "sweep.json").read_text())
    assert summary["seeds"] == [0, 1]
    assert [(r["name"], r["group"], r["seed"]) for r in summary["runs"]] == [
        ("narrow,seed=0", "narrow", 0), ("narrow,seed=1", "narrow", 1)]
    assert "<section id='seeds'>" in report.read_text()
    (group,) = json.loads((out / "seeds.json").read_text())
    assert group["group"] == "narrow" and group["seeds"] == [0, 1] and len(group["columns"]["clean"]["values"]) == 2
    assert not (out / "figures" / "robustness_vs_cost.png").exists()  # one point (the group): no cost plot
