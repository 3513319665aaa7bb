"""Matched controls: the paired statistics, the config match, and the report's comparison of each method
with its control on the same images."""

from __future__ import annotations

import math

import pytest
import torch
import yaml

from vitrobust.config import control_config, control_mismatches, load_config
from vitrobust.report import build_report
from vitrobust.report.controls import _corruption_flags, comparisons, mce_against_control
from vitrobust.report.runs import load_runs
from vitrobust.results import write_per_image, write_results
from vitrobust.stats import (
    min_detectable,
    paired_comparison,
    paired_interval,
    sign_flip_p,
    t_interval,
    tango_score,
)


def flags(*counts: tuple[int, int, int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image correctness of two models from the counts (both right, a only, b only, neither)."""
    both, a_only, b_only, neither = counts[0]
    a = [1] * both + [1] * a_only + [0] * b_only + [0] * neither
    b = [1] * both + [0] * a_only + [1] * b_only + [0] * neither
    return torch.tensor(a).bool(), torch.tensor(b).bool()


def test_paired_interval_by_hand():
    # two models that agree on all n images: Tango's limits solve (n * d)^2 = z^2 * n * d * (1 - d) ... with
    # q = 0 the score is -n d / sqrt(n d (1 - d)), so d = z^2 / (n + z^2) (0.036993 for n = 100)
    a, b = flags((50, 0, 0, 50))
    z2 = 1.959963984540054**2
    assert paired_interval(a, b) == pytest.approx((-z2 / (100 + z2), z2 / (100 + z2)), abs=1e-9)


def test_paired_interval_limits_are_where_the_score_test_rejects():
    a, b = flags((36, 12, 2, 0))
    lo, hi = paired_interval(a, b)
    assert lo < 0.2 < hi
    assert tango_score(12, 2, 50, lo) == pytest.approx(1.959964, abs=1e-5)
    assert tango_score(12, 2, 50, hi) == pytest.approx(-1.959964, abs=1e-5)
    assert tango_score(12, 2, 50, 0.2) == 0.0  # the observed difference
    assert paired_interval(b, a) == pytest.approx((-hi, -lo))  # the same comparison the other way round
    a, b = flags((0, 30, 0, 0))  # every image right only for a
    lo, hi = paired_interval(a, b)
    assert 0 < lo < hi == pytest.approx(1.0)


def test_paired_comparison_of_correctness_uses_mcnemar():
    a, b = flags((36, 12, 2, 0))
    out = paired_comparison(a, b)
    assert out["difference"] == pytest.approx(0.2)
    assert out["test"] == "mcnemar" and (out["a_only"], out["b_only"]) == (12, 2)
    # exact two-sided: 2 * P(X <= 2), X ~ Bin(14, 1/2) = 2 * (1 + 14 + 91) / 2^14
    assert out["p"] == pytest.approx(2 * 106 / 2**14)
    assert out["significant"]


def test_min_detectable_effect_by_hand():
    a, b = flags((80, 6, 4, 10))  # 10 of 100 images discordant
    # (1.959964 + 0.841621) * sqrt(0.1 / 100)
    assert min_detectable(a.double() - b.double(), binary=True) == pytest.approx(2.801585 * math.sqrt(0.001))
    # no discordant image: taken as one, not as an effect of 0 that any sample would "detect"
    a, b = flags((90, 0, 0, 10))
    assert min_detectable(a.double() - b.double(), binary=True) == pytest.approx(2.801585 * math.sqrt(0.01 / 100))
    # four times the images halve it
    a4, b4 = flags((320, 24, 16, 40))
    a1, b1 = flags((80, 6, 4, 10))
    ratio = min_detectable(a1.double() - b1.double(), True) / min_detectable(a4.double() - b4.double(), True)
    assert ratio == pytest.approx(2.0)


def test_scores_get_a_bootstrap_interval_and_a_sign_flip_p():
    gen = torch.Generator().manual_seed(0)
    b = torch.rand(200, generator=gen)
    a = b + 0.05 + 0.01 * torch.randn(200, generator=gen)
    out = paired_comparison(a, b)
    assert out["test"] == "sign-flip" and out["p"] < 0.01
    assert out["ci95"][0] < out["difference"] < out["ci95"][1]
    assert 0.045 < out["difference"] < 0.055
    assert sign_flip_p(torch.zeros(10)) == 1.0
    noise = torch.randn(400, generator=gen)
    assert sign_flip_p(noise) > 0.01  # no effect: not significant (seeded, so this draw is fixed)


def test_t_interval_by_hand():
    # mean 2, sd 1, n 3: t(0.975, 2) = 4.302653; half = 4.302653 / sqrt(3) = 2.484138
    assert t_interval([1.0, 2.0, 3.0]) == pytest.approx([2 - 2.484138, 2 + 2.484138], abs=1e-6)
    assert all(math.isnan(v) for v in t_interval([1.0]))


def test_control_config_changes_only_the_method():
    method = load_config("quickstart/adversarial", ["model.init=/runs/baseline"])
    control = control_config(method)
    assert control.objective["name"] == "standard" and control.model.init == "/runs/baseline"
    assert control_mismatches(method.model_dump(mode="json"), control.model_dump(mode="json")) == []
    drvit = load_config("quickstart/drvit", ["model.init=/runs/baseline"])
    vit = control_config(drvit, "vit_pico_patch8_32")
    assert vit.model.name == "vit_pico_patch8_32" and vit.model.kwargs == {}
    # the quickstart's Dr.ViT and adversarial runs share one control: same start, data, steps, schedule
    assert control_mismatches(drvit.model_dump(mode="json"), control.model_dump(mode="json")) == []
    other = load_config("quickstart/adversarial", ["model.init=/runs/baseline", "optim.lr=0.01", "seed=3"])
    found = control_mismatches(other.model_dump(mode="json"), control.model_dump(mode="json"))
    assert [line.split(":")[0] for line in found] == ["optim.lr", "seed"]


def _run(root, name: str, cfg, entries: dict, per_image: dict):
    run = root / name
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    write_results(run / "results.json", entries, {"model": "vit"})
    for entry, values in per_image.items():
        write_per_image(run / "results.json", entry, values)
    return run


def _corruption_entry(top1: dict) -> dict:
    return {"mean_top1": 0.5, "clean_top1": 0.9, "mce": 100.0, "reference": "base", "n": 100,
            "per_corruption": {name: {str(s): v for s, v in sev.items()} for name, sev in top1.items()}}


def test_report_compares_each_method_with_its_control(tmp_path):
    method_cfg = load_config("quickstart/adversarial", ["model.init=/runs/baseline",
                                                        f"compare.control={tmp_path / 'control'}"])
    control_cfg = control_config(method_cfg)
    a, b = flags((36, 12, 2, 0))
    # corruptions: the control errs on 40% of images at each set, the method on 30%: mCE 75 vs the control
    n = 50
    ctl_flags = {f"per_corruption.{c}.{s}": torch.arange(n) % 10 >= 4 for c in ("fog", "snow") for s in (1, 2)}
    run_flags = {f"per_corruption.{c}.{s}": torch.arange(n) % 10 >= 3 for c in ("fog", "snow") for s in (1, 2)}
    clean = torch.ones(n, dtype=torch.bool)
    control = _run(tmp_path, "control", control_cfg,
                   {"clean": {"top1": 0.76, "n": 50}, "corruptions": _corruption_entry({"fog": {1: .6, 2: .6}})},
                   {"clean": {"top1": (b, "d1")},
                    "corruptions": {"clean_top1": (clean, "d2"), **{k: (v, "d2") for k, v in ctl_flags.items()}}})
    method = _run(tmp_path, "adversarial", method_cfg,
                  {"clean": {"top1": 0.96, "n": 50}, "corruptions": _corruption_entry({"fog": {1: .7, 2: .7}})},
                  {"clean": {"top1": (a, "d1")},
                   "corruptions": {"clean_top1": (clean, "d2"), **{k: (v, "d2") for k, v in run_flags.items()}}})
    found = comparisons(load_runs([control, method]))
    by_label = {c.column.name: c for c in found}
    assert by_label["clean top1"].stats["difference"] == pytest.approx(0.2)
    assert by_label["clean top1"].direction == "better"
    assert by_label["mCE"].method_value == pytest.approx(75.0)
    assert by_label["mCE"].stats["difference"] == pytest.approx(-25.0)
    assert by_label["mCE"].control_value == 100.0
    assert all(c.control.name == "control" for c in found)
    # the control alone, or a method whose control is not on disk: nothing to compare
    assert comparisons(load_runs([control])) == []
    page = build_report([control, method], tmp_path / "report.html").read_text()
    assert "Methods against their matched controls" in page and "+20.00 [+6.11, +34.47]" in page
    alone = _corruption_flags(load_runs([control])[0])
    assert mce_against_control(alone, alone)["mce"]["value"] == 100.0


def test_a_mismatched_control_is_named_in_the_report(tmp_path):
    method_cfg = load_config("quickstart/adversarial", [f"compare.control={tmp_path / 'control'}"])
    control_cfg = control_config(load_config("quickstart/adversarial", ["optim.lr=0.01"]))
    a, b = flags((30, 5, 5, 10))
    control = _run(tmp_path, "control", control_cfg, {"clean": {"top1": 0.7, "n": 50}}, {"clean": {"top1": (b, "d")}})
    method = _run(tmp_path, "adversarial", method_cfg, {"clean": {"top1": 0.7, "n": 50}}, {"clean": {"top1": (a, "d")}})
    page = build_report([method, control], tmp_path / "report.html").read_text()
    assert "is not matched with control: optim.lr: 0.001 vs 0.01" in page


def test_mce_against_the_control_uses_the_benchmarks_formulas():
    from vitrobust.evaluate.corruptions import corruption_errors, mean_ce, relative_corruption_errors
    from vitrobust.report.controls import _mce_scores

    gen = torch.Generator().manual_seed(3)
    sets = [(c, str(s)) for c in ("fog", "snow", "blur") for s in (1, 2, 3)]
    a = {"clean": torch.rand(80, generator=gen) < 0.9, **{k: torch.rand(80, generator=gen) < 0.6 for k in sets}}
    b = {"clean": torch.rand(80, generator=gen) < 0.9, **{k: torch.rand(80, generator=gen) < 0.5 for k in sets}}

    def errors(flags):
        out = {}
        for name, s in sets:
            out.setdefault(name, []).append(1 - float(flags[(name, s)].float().mean()))
        return out, 1 - float(flags["clean"].float().mean())

    (err, clean), (ref, ref_clean) = errors(a), errors(b)
    mce, rel = _mce_scores(a, b, torch.arange(80)[None])
    assert float(mce[0]) == pytest.approx(mean_ce(corruption_errors(err, ref)), rel=1e-5)
    assert float(rel[0]) == pytest.approx(mean_ce(relative_corruption_errors(err, clean, ref, ref_clean)), rel=1e-5)
    same, _ = _mce_scores(a, a, torch.arange(80)[None])
    assert float(same[0]) == pytest.approx(100.0)
