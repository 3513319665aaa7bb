"""The claims study: verdicts from the seeds' interval, effects from paired per-image results, and the
command end to end on tiny data."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from test_controls import _run, flags

from vitrobust.config import control_config, load_config
from vitrobust.study import CLAIMS, claim_results, verdict


def test_verdict_reads_the_interval_in_the_claimed_direction():
    assert verdict([1.0, 3.0], +1) == "holds"
    assert verdict([-3.0, -1.0], -1) == "holds"  # lower is the claim: an interval below 0 supports it
    assert verdict([-3.0, -1.0], +1) == "opposite"
    assert verdict([-1.0, 2.0], +1) == "not distinguishable"
    assert verdict([float("nan"), float("nan")], +1) == "not distinguishable"


def _pair(root, seed: int, counts):
    """An adversarial run and its control with AutoAttack per-image results on the same 50 images."""
    method_cfg = load_config("quickstart/adversarial", [f"seed={seed}"])
    a, b = flags(counts)
    entry = lambda acc: {"robust_top1": acc, "clean_top1": 0.8, "n": 50, "norm": "Linf", "eps": 0.1}  # noqa: E731
    control = _run(root / f"seed_{seed}", "control", control_config(method_cfg),
                   {"autoattack": entry(float(b.float().mean()))}, {"autoattack": {"robust_top1": (b, "d")}})
    method = _run(root / f"seed_{seed}", "adversarial", method_cfg,
                  {"autoattack": entry(float(a.float().mean()))}, {"autoattack": {"robust_top1": (a, "d")}})
    return {"adversarial": method, "control": control}


def test_claim_results_pair_each_seed_and_summarise_over_seeds(tmp_path):
    # seed 0: the method breaks 10 fewer images (+20 points), seed 1: +16, seed 2: +24
    runs = {0: _pair(tmp_path, 0, (5, 10, 0, 35)), 1: _pair(tmp_path, 1, (5, 8, 0, 37)),
            2: _pair(tmp_path, 2, (5, 12, 0, 33))}
    found = claim_results(runs)
    at = next(c for c in found["claims"] if c["key"] == "at_autoattack")
    assert [at["per_seed"][s]["difference"] for s in "012"] == pytest.approx([20.0, 16.0, 24.0])
    assert at["mean"] == pytest.approx(20.0) and at["std"] == pytest.approx(4.0)
    # t(0.975, 2) = 4.302653: 20 +- 4.302653 * 4 / sqrt(3)
    assert at["ci95_seeds"] == pytest.approx([20 - 9.93655, 20 + 9.93655], abs=1e-3)
    # the images' interval: every seed's method is right on 35-37 images its control gets wrong out of 50
    lo, hi = at["ci95_images"]
    assert 5 < lo < 20 < hi < 35
    assert at["ci95"] == [min(lo, at["ci95_seeds"][0]), max(hi, at["ci95_seeds"][1])]
    assert at["verdict"] == "holds"
    # claims whose runs are missing are said to be unmeasured, not silently dropped
    assert {c["key"]: c["verdict"] for c in found["claims"]}["drvit_mce"] == "not measured"
    assert len(found["claims"]) == len(CLAIMS)


def test_seeds_that_agree_by_chance_keep_the_images_uncertainty(tmp_path):
    # two seeds with the same +4 points on 50 images: a t interval of width 0, but 2 of 50 images decide it
    runs = {0: _pair(tmp_path, 0, (5, 2, 0, 43)), 1: _pair(tmp_path, 1, (5, 2, 0, 43))}
    at = next(c for c in claim_results(runs)["claims"] if c["key"] == "at_autoattack")
    assert at["ci95_seeds"] == pytest.approx([4.0, 4.0])
    assert at["ci95"][0] <= 0.0 < 4.0 < at["ci95"][1]
    assert at["verdict"] == "not distinguishable"


def test_seeds_that_disagree_give_no_verdict(tmp_path):
    runs = {0: _pair(tmp_path, 0, (5, 10, 0, 35)), 1: _pair(tmp_path, 1, (5, 0, 9, 36))}
    at = next(c for c in claim_results(runs)["claims"] if c["key"] == "at_autoattack")
    assert at["verdict"] == "not distinguishable"


@pytest.mark.slow
def test_study_command_end_to_end_on_tiny_data(tmp_path):
    tiny = ["data.train_subset=256", "data.test_subset=100", "train.eval_subset=50", "data.batch_size=64",
            "evaluate.attack.subset=20", "evaluate.attack.version=custom", "evaluate.attack.attacks=[apgd-ce]",
            "evaluate.corruptions.subset=20", "evaluate.corruptions.names=[gaussian_noise,fog]",
            "evaluate.corruptions.severities=[1,3]", "evaluate.relevance.subset=20", "evaluate.background.subset=20",
            "tokenizer.kmeans_init=false"]
    cmd = [sys.executable, "-m", "vitrobust", "study", "claims", "--seeds", "2", "--quick", "--out", str(tmp_path),
           "--no-progress", *(a for t in tiny for a in ("--set", t))]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, proc.stderr[-3000:]
    found = json.loads((tmp_path / "claims.json").read_text())
    assert [c["key"] for c in found["claims"]] == [c.key for c in CLAIMS]
    for claim in found["claims"]:
        assert claim["verdict"] in ("holds", "not distinguishable", "opposite"), claim
        assert claim["seeds"] == 2
    page = (tmp_path / "report.html").read_text()
    assert "Claims" in page and "verdict" in page
    assert (tmp_path / "seed_1" / "dat_eps0" / "results.json").is_file()
    assert not (tmp_path / "seed_1" / "baseline").exists()  # the start is shared by the seeds
