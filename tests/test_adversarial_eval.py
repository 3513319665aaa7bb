"""The adversarial benchmarks (pgd, autoattack, eps_sweep): results, self-checks, figures, bad input,
and a real 2-rank run. A small MLP trained on real Fashion-MNIST (helpers_adversarial)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from helpers_adversarial import MLP, RoundToGrid, as_float, attack_context, trained_model
from torch import nn

from vitrobust.attacks.autoattack import run_autoattack
from vitrobust.errors import ConfigError, InputError
from vitrobust.evaluate import SUITES, evaluate
from vitrobust.evaluate import adversarial as adv
from vitrobust.evaluate.adversarial import CheckWarning, autoattack, eps_sweep, pgd
from vitrobust.evaluate.core import run_suite
from vitrobust.figures.adversarial import accuracy_vs_eps, adversarial_grid

TESTS = Path(__file__).parent
EPS = 0.05
CUSTOM = ["evaluate.attack.version=custom", "evaluate.attack.attacks=[apgd-ce,apgd-t]"]
PNG = b"\x89PNG\r\n\x1a\n"


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model():
    return trained_model()


def all_ok(checks: dict) -> bool:
    return all(c["ok"] for c in checks.values())


def test_benchmarks_are_registered_in_their_suites():
    assert SUITES["adversarial"] == ["pgd", "autoattack", "eps_sweep"]
    assert "autoattack" in SUITES["quick"] and "clean" in SUITES["quick"]


def test_pgd_benchmark(model, tmp_path):
    ctx = attack_context(f"evaluate.attack.eps={EPS}", "evaluate.attack.subset=64", out_dir=tmp_path, n=1000)
    res = evaluate(model, "pgd", cfg=ctx.cfg, data=ctx.data, device="cpu", out_dir=tmp_path)["pgd"]
    assert res["n"] == 64 and res["norm"] == "Linf" and res["eps"] == EPS and res["steps"] == 10
    assert res["gradient"] == "exact" and res["restarts"] == 1
    assert 0.1 < res["robust_top1"] < res["clean_top1"] - 0.1
    assert all_ok(res["checks"]), res["checks"]
    assert {"deterministic", "logits", "input_gradients", "robust_le_clean", "large_eps", "square"} <= set(res["checks"])
    assert (tmp_path / "pgd_examples.png").read_bytes()[:8] == PNG and res["figures"] == ["pgd_examples.png"]
    stronger = attack_context(f"evaluate.attack.eps={EPS}", "evaluate.attack.restarts=3", "evaluate.attack.steps=20", n=64)
    assert pgd(model, stronger)["robust_top1"] <= res["robust_top1"]


@pytest.mark.slow
def test_autoattack_benchmark_follows_the_design_and_resumes(model, tmp_path):
    ctx = attack_context(f"evaluate.attack.eps={EPS}", *CUSTOM, out_dir=tmp_path, n=64, batch_size=32)
    res = autoattack(model, ctx)
    assert {"norm", "eps", "version", "attacks", "clean_top1", "robust_top1", "n", "gradient", "checks"} <= set(res)
    assert res["version"] == "custom" and res["attacks"] == ["apgd-ce", "apgd-t"] and res["n"] == 64
    assert res["gradient"] == "exact" and res["batch_size"] == 32 and res["resumed_chunks"] == 0
    assert all_ok(res["checks"]), res["checks"]
    assert set(res["checks"]) >= {"in_ball", "square", "large_eps", "authors_checks", "robust_le_clean"}
    assert res["robust_after"]["apgd-t"] == res["robust_top1"] <= res["robust_after"]["apgd-ce"] < res["clean_top1"]
    x, y = as_float(ctx.data, 64)  # the benchmark's balanced sample, attacked directly
    direct = run_autoattack(model, x, y, eps=EPS, version="custom", attacks=["apgd-ce", "apgd-t"], batch_size=32)
    assert res["robust_top1"] == direct.robust_top1 and res["clean_top1"] == direct.clean_top1
    assert (tmp_path / "autoattack_examples.png").read_bytes()[:8] == PNG
    (progress,) = (tmp_path / "progress").glob("autoattack-*.json")
    again = autoattack(model, ctx)
    assert again["resumed_chunks"] == 2 and again["robust_top1"] == res["robust_top1"]
    assert json.loads(progress.read_text())["samples"] == {str(i): r for i, r in sorted(direct.samples.items())}


def test_eps_sweep_is_non_increasing_and_collapses_at_a_huge_eps(model, tmp_path):
    ctx = attack_context(f"evaluate.attack.eps={EPS}", out_dir=tmp_path, n=64)
    res = eps_sweep(model, ctx)
    assert res["eps_list"] == [0.0, EPS / 4, EPS / 2, EPS, 2 * EPS] and res["attack"] == "pgd"
    acc = res["robust_top1"]
    assert acc[0] == res["clean_top1"] and acc == sorted(acc, reverse=True) and acc[-1] < acc[0] - 0.3
    assert all_ok(res["checks"]) and res["checks"]["large_eps"]["detail"].startswith("PGD-10 at Linf eps=0.5")
    assert (tmp_path / "eps_sweep.png").read_bytes()[:8] == PNG

    aa = attack_context("evaluate.attack.sweep_attack=autoattack", "evaluate.attack.eps_list=[0.5, 0, 0.05]",
                        "evaluate.attack.version=custom", "evaluate.attack.attacks=[apgd-ce]", n=32)
    res = eps_sweep(model, aa)
    assert res["eps_list"] == [0.0, 0.05, 0.5] and res["attacks"] == ["apgd-ce"]
    assert res["robust_top1"][0] == res["clean_top1"] > res["robust_top1"][1] > res["robust_top1"][2] == 0.0


def test_sweep_check_flags_accuracy_that_rises_with_eps(model, monkeypatch):
    def rising(model_, ctx, data, eps, examples=0):
        robust = torch.arange(len(data)) < int(eps * 400)  # more robust images at larger eps
        return torch.ones(len(data), dtype=torch.bool), robust, None

    monkeypatch.setattr(adv, "pgd_outcomes", rising)
    with pytest.warns(CheckWarning, match="monotone"):
        res = eps_sweep(model, attack_context("evaluate.attack.eps_list=[0.01, 0.05]", n=32))
    assert res["checks"]["monotone"]["ok"] is False and "0.01 to 0.05" in res["checks"]["monotone"]["detail"]


def test_checks_expose_a_masked_gradient_and_straight_through_fixes_it(model):
    q = nn.Sequential(RoundToGrid(), model).eval()
    ctx = attack_context("evaluate.attack.eps=0.1", "evaluate.attack.gradient=exact", n=64)
    with pytest.warns(CheckWarning) as caught:
        masked = pgd(q, ctx)
    failed = {re.search(r"self-check '(\w+)' failed", str(w.message)).group(1) for w in caught}
    assert failed == {"input_gradients", "large_eps", "square"}
    assert masked["gradient"] == "exact"
    assert not masked["checks"]["input_gradients"]["ok"]
    assert "64 of 64 images have an all-zero input gradient" in masked["checks"]["input_gradients"]["detail"]
    assert not masked["checks"]["square"]["ok"]  # black-box Square breaks what masked PGD could not
    unmasked = pgd(q, attack_context("evaluate.attack.eps=0.1", n=64))
    assert unmasked["gradient"] == "straight-through" and all_ok(unmasked["checks"]), unmasked["checks"]
    assert unmasked["robust_top1"] < masked["robust_top1"] - 0.3
    aa = autoattack(q, attack_context("evaluate.attack.eps=0.1", *CUSTOM, n=32))
    assert aa["gradient"] == "straight-through" and aa["robust_top1"] <= unmasked["robust_top1"] + 0.1


def test_bad_input_is_refused(model):
    probabilities = nn.Sequential(model, nn.Softmax(-1)).eval()
    with pytest.raises(InputError, match="probabilities"):
        autoattack(probabilities, attack_context(n=8))
    with pytest.raises(InputError, match="train mode"):
        pgd(trained_model().train(), attack_context(n=8))
    half_training = trained_model()
    half_training.net[1].train()
    with pytest.raises(InputError, match=r"submodules net\.1.*train mode"):
        autoattack(half_training, attack_context(n=8))
    with pytest.raises(ConfigError, match="evaluate.attack.eps: Linf eps=2.0 > 1 is outside the"):
        attack_context("evaluate.attack.eps=2", n=8)  # the config refuses it before anything is attacked
    with pytest.raises(InputError, match="L2 eps=50.0 exceeds 32"):
        autoattack(model, attack_context("evaluate.attack.norm=L2", "evaluate.attack.eps=50", n=8))
    with pytest.raises(InputError, match="eps must be >= 0"):
        eps_sweep(model, attack_context("evaluate.attack.eps_list=[0, -0.1]", n=8))
    with pytest.raises(InputError, match="needs a list of attacks"):
        autoattack(model, attack_context("evaluate.attack.version=custom", n=8))
    with pytest.raises(InputError, match="eval mode"):
        run_suite(trained_model().train(), "adversarial", attack_context(n=8))


def test_plots_overlay_runs_and_draw_examples(tmp_path):
    a = {"norm": "Linf", "attack": "pgd", "eps_list": [0, 0.1, 0.2], "robust_top1": [0.9, 0.5, 0.1]}
    b = {**a, "robust_top1": [0.8, 0.6, 0.4]}
    path = accuracy_vs_eps({"baseline": a, "adversarial training": b}, tmp_path / "sweep.png")
    assert path.read_bytes()[:8] == PNG
    assert accuracy_vs_eps([a, b], tmp_path / "list.png").is_file()
    with pytest.raises(ValueError, match="3 eps values but 2 accuracies"):
        accuracy_vs_eps({**a, "robust_top1": [0.9, 0.5]}, tmp_path / "bad.png")
    x = torch.rand(4, 3, 16, 16)
    x_adv = (x + 0.03 * torch.randn_like(x).sign()).clamp(0, 1)
    x_adv[1] = x[1]  # an unchanged image must not break the amplification
    labels, pred = torch.tensor([0, 1, 2, 0]), torch.tensor([0, 1, 1, 2])
    grid = adversarial_grid(x, x_adv, labels, labels, pred, tmp_path / "grid.png", classes=["cat", "dog", "emu"])
    assert grid.read_bytes()[:8] == PNG


@pytest.mark.slow
def test_two_ranks_give_the_results_of_one(model, tmp_path):
    """A real 2-process torchrun (gloo): per-sample AutoAttack results and PGD numbers as in one process."""
    weights = tmp_path / "mlp.pt"
    torch.save(model.state_dict(), weights)
    overrides = [f"evaluate.attack.eps={EPS}", "evaluate.attack.version=custom", "evaluate.attack.attacks=[apgd-ce]",
                 "evaluate.attack.check_n=8", "evaluate.attack.square_queries=0"]
    script = tmp_path / "ranks.py"
    script.write_text(textwrap.dedent(f"""
        import json, sys
        from pathlib import Path
        import torch
        sys.path.insert(0, {str(TESTS)!r})
        from helpers_adversarial import MLP, attack_context
        from vitrobust.distributed import setup_distributed
        from vitrobust.evaluate.adversarial import autoattack, pgd
        torch.set_num_threads(1)
        model = MLP()
        model.load_state_dict(torch.load({str(weights)!r}, weights_only=True))
        model.eval()
        dist = setup_distributed("cpu")
        out = Path({str(tmp_path / "two")!r})
        ctx = attack_context(*{overrides!r}, out_dir=out, n=64, batch_size=16, dist=dist)
        res = {{"autoattack": autoattack(model, ctx), "pgd": pgd(model, ctx)}}
        for entry in res.values():
            entry.pop("per_image")  # tensors: results.json keeps them in per_image.safetensors
        if dist.main:
            (out / "results.json").write_text(json.dumps(res))
    """))
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    torchrun = Path(sys.executable).parent / "torchrun"
    proc = subprocess.run([str(torchrun), "--standalone", "--nproc_per_node=2", str(script)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    two = json.loads((tmp_path / "two" / "results.json").read_text())

    local = MLP()
    local.load_state_dict(torch.load(weights, weights_only=True))
    one = {"autoattack": autoattack(local.eval(), attack_context(*overrides, out_dir=tmp_path / "one", n=64, batch_size=16))}
    one["pgd"] = pgd(local, attack_context(*overrides, n=64, batch_size=16))
    for name in ("autoattack", "pgd"):
        assert two[name]["robust_top1"] == one[name]["robust_top1"] and two[name]["clean_top1"] == one[name]["clean_top1"]
        assert two[name]["n"] == 64
    (file_two,) = (tmp_path / "two" / "progress").glob("*.json")  # rank files merged into one, then removed
    (file_one,) = (tmp_path / "one" / "progress").glob("*.json")
    assert file_two.name == file_one.name
    assert json.loads(file_two.read_text())["samples"] == json.loads(file_one.read_text())["samples"]


def test_console_summary_of_robust_entries_and_of_sweeps():
    from vitrobust.evaluate.core import summarize

    assert summarize("square", {"robust_top1": 0.25, "clean_top1": 0.5, "n": 8}) == "robust top1 25.00% (clean 50.00%, n=8)"
    sweep = summarize("eps_sweep", {"eps": [0.0, 0.1], "robust_top1": [0.5, 0.2], "clean_top1": 0.5, "n": 8})
    assert "robust top1" not in sweep and '"n": 8' in sweep  # a sweep's lists are not one headline number
