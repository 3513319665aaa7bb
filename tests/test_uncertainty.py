"""Numbers with their uncertainty (vitrobust/stats.py): Wilson intervals, McNemar's exact test and the
seeded bootstrap against hand-computed values; every accuracy of an evaluation carries n and ci95, its
per-image results are saved beside results.json; the report shows intervals and paired comparisons."""

from __future__ import annotations

import json
import math

import pytest
import torch
from helpers_train import untrained_run

from vitrobust.evaluate import evaluate_path
from vitrobust.evaluate.core import annotate
from vitrobust.evaluate.corruptions import Reference, flag_path, mce_intervals, score
from vitrobust.report import build_report, leaderboard
from vitrobust.results import PER_IMAGE_FILE, read_per_image, write_per_image, write_results
from vitrobust.stats import bootstrap, interval, mcnemar, min_detectable, wilson

pytestmark = pytest.mark.usefixtures("one_thread")


def test_wilson_matches_hand_computed_bounds():
    # 40/100, z = 1.96: centre (0.4 + z^2/200) / (1 + z^2/100) = 0.40370, half-width 0.09430
    lo, hi = wilson(40, 100)
    assert lo == pytest.approx(0.30940, abs=5e-5) and hi == pytest.approx(0.49800, abs=5e-5)
    # 0/10: the lower bound is 0, the upper z^2 / (n + z^2) = 3.8415 / 13.8415
    assert wilson(0, 10) == pytest.approx((0.0, 0.27753), abs=5e-5)
    assert wilson(10, 10)[1] == 1.0 and wilson(10, 10)[0] == pytest.approx(1 - 0.27753, abs=5e-5)
    assert wilson(0, 0) == (0.0, 1.0)
    flags = torch.tensor([True] * 40 + [False] * 60)
    assert interval(flags) == [pytest.approx(0.30940, abs=1e-5), pytest.approx(0.49800, abs=1e-5)]


def pair(a_only: int, b_only: int, both: int = 7, neither: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    a = [True] * a_only + [False] * b_only + [True] * both + [False] * neither
    b = [False] * a_only + [True] * b_only + [True] * both + [False] * neither
    return torch.tensor(a), torch.tensor(b)


def test_mcnemar_exact_matches_a_hand_computed_table():
    # 10 vs 2 discordant images: p = 2 * (C(12,0) + C(12,1) + C(12,2)) / 2^12 = 2 * 79 / 4096
    result = mcnemar(*pair(10, 2))
    assert (result["a_only"], result["b_only"]) == (10, 2)
    assert result["p"] == pytest.approx(2 * 79 / 4096) and result["significant"]
    # 5 vs 3: p = 2 * (1 + 8 + 28 + 56) / 256 = 0.7266: not significant; the test is symmetric
    assert mcnemar(*pair(5, 3))["p"] == pytest.approx(2 * 93 / 256) == mcnemar(*reversed(pair(5, 3)))["p"]
    assert not mcnemar(*pair(5, 3))["significant"]
    assert mcnemar(*pair(0, 0))["p"] == 1.0 and mcnemar(*pair(4, 4))["p"] == 1.0  # capped at 1
    with pytest.raises(ValueError, match="pairs images"):
        mcnemar(torch.ones(3, dtype=torch.bool), torch.ones(4, dtype=torch.bool))


def test_bootstrap_is_reproducible_for_a_seed_and_brackets_the_estimate():
    values = torch.linspace(0, 1, 200, dtype=torch.float64)

    def mean(idx):
        return float(values[idx].mean())

    first, again = bootstrap(mean, 200, 300, seed=3), bootstrap(mean, 200, 300, seed=3)
    assert first == again and bootstrap(mean, 200, 300, seed=4) != first
    assert first[0] < 0.5 < first[1] and first[1] - first[0] < 0.2
    both = bootstrap(lambda idx: {"mean": mean(idx), "twice": 2 * mean(idx)}, 200, 300, seed=3)
    assert both["mean"] == first and both["twice"] == pytest.approx([2 * v for v in first], abs=2e-6)  # same draws
    constant = torch.full((50,), 0.25, dtype=torch.float64)
    assert bootstrap(lambda idx: float(constant[idx].mean()), 50, 100) == [0.25, 0.25]
    # a statistic undefined in some resamples (here: those that draw image 0) has no interval
    scores = torch.ones(50, dtype=torch.float64)
    scores[0] = math.nan
    assert all(math.isnan(v) for v in bootstrap(lambda idx: float(scores[idx].mean()), 50, 100))


def test_annotate_gives_wilson_for_correctness_and_a_bootstrap_for_scores():
    labels_like = torch.zeros(30)
    entry = {"top1": 0.4, "n": 30, "per_image": {"top1": (torch.arange(30) % 5 < 2, "d"),
                                                 "share": (labels_like + 0.5, "d")}}
    annotate(entry, resamples=50, seed=0)
    assert entry["ci95"]["top1"] == interval(torch.arange(30) % 5 < 2)
    assert entry["ci95"]["share"] == [0.5, 0.5] and entry["bootstrap"] == {"resamples": 50, "seed": 0}


def test_per_image_file_round_trip_keeps_other_entries(tmp_path):
    path = tmp_path / "results.json"
    flags, scores = torch.tensor([True, False, True]), torch.tensor([0.1, 0.7, 0.2])
    write_per_image(path, "clean", {"top1": (flags, "abc")})
    write_per_image(path, "relevance", {"foreground_share": (scores, "def")})
    write_per_image(path, "clean", {"top1": (~flags, "abc")})  # replaces this entry only
    stored = read_per_image(path)
    assert torch.equal(stored["clean"]["top1"][0], ~flags) and stored["clean"]["top1"][1] == "abc"
    assert torch.allclose(stored["relevance"]["foreground_share"][0], scores)
    assert (tmp_path / PER_IMAGE_FILE).is_file()


def test_mce_interval_is_a_seeded_bootstrap_around_the_estimate():
    gen = torch.Generator().manual_seed(0)
    n = 200
    flags = {flag_path(name, s): torch.rand(n, generator=gen) < 0.8 - 0.1 * s for name in ("fog", "snow") for s in (1, 2)}
    clean = torch.rand(n, generator=gen) < 0.9
    ref = Reference("ref", errors={"fog": [0.3, 0.4], "snow": [0.35, 0.45]}, clean_error=0.2)
    per = {name: {str(s): flags[flag_path(name, s)].float().mean().item() for s in (1, 2)} for name in ("fog", "snow")}
    point = score(per, clean.float().mean().item(), ref)
    ci, notes = mce_intervals(flags, clean, ref, 200, 0)
    assert ci == mce_intervals(flags, clean, ref, 200, 0)[0]
    assert ci["mce"][0] < point["mce"] < ci["mce"][1] and ci["relative_mce"][0] < point["relative_mce"]
    assert "held fixed" in notes[0]
    paired_ref = Reference("ref", errors=ref.errors, clean_error=0.2,
                           flags={**{k: ~v for k, v in flags.items()}, "clean_top1": clean})
    paired_ci, paired_notes = mce_intervals(flags, clean, paired_ref, 200, 0)
    assert "paired" in paired_notes[0] and paired_ci["mce"] != ci["mce"]  # the reference moves with the images
    assert mce_intervals(flags, clean, Reference("self", is_self=True), 50, 0) == ({}, [])


def test_a_relative_mce_undefined_in_some_resamples_gets_no_interval():
    n = 50
    clean, ours = torch.ones(n, dtype=torch.bool), {flag_path("fog", 1): torch.arange(n) % 2 == 0}
    ref_clean = (torch.arange(n) < 10) | (torch.arange(n) >= 20)  # wrong on images 10-19
    ref_fog = ref_clean.clone()
    ref_fog[30] = False  # fog costs the reference image 30 only: resamples without it lose nothing to fog
    ref = Reference("ref", errors={"fog": [11 / n]}, clean_error=10 / n,
                    flags={flag_path("fog", 1): ref_fog, "clean_top1": ref_clean})
    point = score({"fog": {"1": 0.5}}, 1.0, ref)
    assert point["relative_mce"] == pytest.approx(100 * 0.5 / (1 / n))
    ci, notes = mce_intervals(ours, clean, ref, 200, 0)
    assert "relative_mce" not in ci and "mce" in ci
    undefined = int(notes[1].split("undefined in ")[1].split(" of")[0])
    assert 200 * 0.2 < undefined < 200 * 0.6  # (1 - 1/n)^n = 36% of resamples miss image 30


@pytest.fixture
def run_dir(tmp_path, tiny_spec):
    return untrained_run(tmp_path / "run", tiny_spec, "data.test_subset=48")


def test_an_evaluation_stores_intervals_and_per_image_results(run_dir):
    results, path = evaluate_path(run_dir, "clean")
    entry = json.loads(path.read_text())["clean"]
    assert "per_image" not in entry and "per_image" not in results["clean"]
    flags, digest = read_per_image(path)["clean"]["top1"]
    assert len(flags) == entry["n"] == 48 and flags.float().mean().item() == pytest.approx(entry["top1"])
    assert entry["ci95"]["top1"] == interval(flags)
    assert entry["ci95"]["top1"][0] <= entry["top1"] <= entry["ci95"]["top1"][1]
    evaluate_path(run_dir, "clean", ["evaluate.subset=16"])  # a variant: its own per-image results
    assert len(read_per_image(path)["clean@n=16"]["top1"][0]) == 16
    assert read_per_image(path)["clean"]["top1"][1] == digest  # the main entry's are untouched


def fake_run(root, name: str, correct: torch.Tensor, digest: str = "same-images"):
    run = root / name
    entry = {"top1": correct.float().mean().item(), "n": len(correct), "per_image": {"top1": (correct, digest)}}
    annotate(entry, 100, 0)
    write_per_image(run / "results.json", "clean", entry.pop("per_image"))
    write_results(run / "results.json", {"clean": entry}, {"model": "m"})
    return run


def test_the_report_shows_intervals_and_which_differences_are_significant(tmp_path):
    best = torch.tensor([True] * 80 + [False] * 20)
    close = best.clone()
    close[:3] = False  # 77%: 3 discordant images, p = 0.25
    far = best.clone()
    far[:30] = False  # 50%: 30 discordant images
    runs = [fake_run(tmp_path, "best", best), fake_run(tmp_path, "close", close), fake_run(tmp_path, "far", far),
            fake_run(tmp_path, "elsewhere", close, digest="other-images")]
    board = leaderboard(runs)
    table = board.table()
    shown = {row[0]: row[2] for row in table.rows}
    lo, hi = wilson(80, 100)  # [71.1, 86.7]%: lopsided, so written as its bounds
    assert shown["best"] == f"80.00 [{100 * lo:.2f}, {100 * hi:.2f}]"
    bold = {table.rows[i][0] for i, j in table.bold}
    assert bold == {"best", "close"}  # the best, and the one not significantly worse; far and elsewhere not
    paired = board.paired_table()
    rows = {row[2]: row for row in paired.rows}
    assert set(rows) == {"close", "far"}  # elsewhere was measured on other images: not paired
    assert rows["close"][5] == f"{mcnemar(best, close)['p']:.3g}" and rows["close"][7] == "not significant"
    assert rows["close"][6] == f"{100 * min_detectable(best.double() - close.double(), binary=True):.2f}"
    assert rows["far"][7].startswith("significant") and rows["far"][3] == "+30.00"
    csv_header = board.csv().splitlines()[0]
    assert "ci95 low" in csv_header and "ci95 high" in csv_header
    page = build_report(runs, tmp_path / "report.html").read_text()
    assert "Paired comparisons" in page and "McNemar" in page and "a [lo, hi]: the number and its 95% interval" in page


def test_the_eps_curve_draws_its_interval_band(tmp_path, monkeypatch):
    import vitrobust.figures.adversarial as figures

    bands = []
    real = figures.plt.Axes.fill_between
    monkeypatch.setattr(figures.plt.Axes, "fill_between", lambda ax, x, lo, hi, **kw: bands.append((lo, hi))
                        or real(ax, x, lo, hi, **kw))
    sweep = {"eps_list": [0.0, 0.1], "robust_top1": [0.8, 0.4], "norm": "Linf", "attack": "pgd",
             "ci95": {"robust_top1.0": [0.7, 0.88], "robust_top1.1": [0.3, 0.5]}}
    path = figures.accuracy_vs_eps({"with": sweep, "without": {**sweep, "ci95": {}}}, tmp_path / "eps.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert bands == [([70.0, 30.0], [88.0, 50.0])]  # one band, in percent, for the run with intervals


def test_mce_against_a_reference_run_is_paired_through_its_per_image_file(tmp_path, tiny_spec):
    runs = []
    for seed, name in ((0, "reference"), (1, "model")):
        torch.manual_seed(seed)
        runs.append(untrained_run(tmp_path / name, tiny_spec, "data.test_subset=40"))
    settings = ["evaluate.corruptions.subset=40", "evaluate.corruptions.names=[fog,contrast]",
                "evaluate.corruptions.severities=[1,3]"]
    evaluate_path(runs[0], "corruptions", settings)
    evaluate_path(runs[1], "corruptions", [*settings, f"evaluate.corruptions.reference={runs[0]}"])
    entry = json.loads((runs[1] / "results.json").read_text())["corruptions"]
    lo, hi = entry["ci95"]["mce"]
    assert lo <= entry["mce"] <= hi and "paired" in entry["notes"][-1]
    assert entry["relative_mce"] is not None or "relative_mce" not in entry["ci95"]
