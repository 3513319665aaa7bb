"""The AutoAttack adapter against the authors' code, its invariants, resuming, sharding, bad input,
and straight-through gradients. A small MLP trained on real Fashion-MNIST (helpers_adversarial)."""

from __future__ import annotations

import json
import logging
import math
import re

import pytest
import torch
from helpers_adversarial import RoundToGrid, killed_after_first, trained_model
from helpers_adversarial import test_images as first_test_images
from pyautoattack import AutoAttack
from torch import nn

from vitrobust.attacks import pgd_attack
from vitrobust.attacks.autoattack import FIRST_PIECE, AutoAttackSpec, run_autoattack
from vitrobust.attacks.straight_through import attack_gradients, resolve_gradient, straight_through
from vitrobust.errors import InputError
from vitrobust.registry import ATTACK_ENGINES

EPS = 0.05
CUSTOM = ["apgd-ce", "apgd-t"]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def authors_engine():
    """Swap the `authors` engine for a stand-in (`swap(fn)`); the real one is put back afterwards."""
    real = ATTACK_ENGINES.get("authors")
    yield real, lambda fn: ATTACK_ENGINES.add("authors", fn, replace=True)
    ATTACK_ENGINES.add("authors", real, replace=True)


@pytest.fixture(scope="module")
def model():
    return trained_model()


@pytest.fixture(scope="module")
def images():
    return first_test_images(64)


def authors(model, x, y, *, version, attacks=None, eps=EPS, batch_size=64, norm="Linf", log=None):
    """The authors' code called directly, as their README shows."""
    aa = AutoAttack(model, norm=norm, eps=eps, version=version, attacks=attacks, seed=0, device="cpu")
    aa.verbose = log is not None
    return aa.run_standard_evaluation(x, y, batch_size=batch_size)


class Lines(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record):
        self.lines.append(record.getMessage())


def adversarial_images(result_chunks: dict, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(x, x_adv) in sample order from the on_chunk callback's records."""
    parts = [result_chunks[k] for k in sorted(result_chunks)]
    x = torch.cat([p[1] for p in parts])
    x_adv = torch.cat([p[2] for p in parts])
    assert len(x) == n
    return x, x_adv


@pytest.fixture(scope="module")
def custom_run(model, images):
    x, y = images
    chunks = {}
    torch.manual_seed(123)
    state = torch.random.get_rng_state()
    result = run_autoattack(model, x, y, eps=EPS, version="custom", attacks=CUSTOM, batch_size=64,
                            on_chunk=lambda index, xc, x_adv, records: chunks.update({int(index[0]): (index, xc, x_adv, records)}))
    assert torch.equal(torch.random.get_rng_state(), state)  # the authors' re-seeding does not leak out
    return result, chunks


def test_custom_version_equals_the_authors_code(model, images, custom_run):
    x, y = images
    result, chunks = custom_run
    x_adv_authors, y_adv_authors = authors(model, x, y, version="custom", attacks=CUSTOM)
    robust_authors = y_adv_authors == y
    assert result.flags("robust").tolist() == robust_authors.tolist()
    assert result.robust_top1 == robust_authors.float().mean().item()
    _, x_adv = adversarial_images(chunks, len(x))
    assert torch.equal(x_adv, x_adv_authors)  # the very same adversarial images
    # the model is trained enough for the comparison to mean something
    assert 0.7 < result.clean_top1 and 0.2 < result.robust_top1 < result.clean_top1 - 0.2
    assert result.gradient == "exact" and result.messages == []


@pytest.mark.slow
def test_standard_version_equals_the_authors_code_attack_by_attack(model, images):
    x, y = images[0][:16], images[1][:16]
    result = run_autoattack(model, x, y, eps=EPS, version="standard", batch_size=16)
    logger = logging.getLogger("auto-attack")
    lines, level = Lines(), logger.level
    logger.addHandler(lines)
    logger.setLevel(logging.DEBUG)
    try:
        _, y_adv = authors(model, x, y, version="standard", batch_size=16, log=True)
    finally:
        logger.removeHandler(lines)
        logger.setLevel(level)
    assert result.flags("robust").tolist() == (y_adv == y).tolist()
    # the authors log "robust accuracy after APGD-CE: 43.75% ..." after each attack
    logged = {m.group(1).lower(): float(m.group(2))
              for m in (re.search(r"robust accuracy after (\S+): ([\d.]+)%", line) for line in lines.lines) if m}
    after = result.robust_after()
    assert list(after) == ["apgd-ce", "apgd-t", "fab-t", "square"]
    assert {k: round(100 * v, 2) for k, v in after.items() if k in logged} == logged
    assert "apgd-ce" in logged
    assert list(after.values()) == sorted(after.values(), reverse=True)
    assert all(r["attack"] in (None, *after) for r in result.samples.values())


def test_adversarial_examples_stay_in_the_ball_and_in_the_image_range(model, images, custom_run):
    result, chunks = custom_run
    x, x_adv = adversarial_images(chunks, len(images[0]))
    broken = result.flags("clean") & ~result.flags("robust")
    assert broken.any()
    assert (x_adv - x).abs().amax() <= EPS + 1e-6
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    assert torch.equal(x_adv[~broken], x[~broken])  # unbroken images are returned unchanged
    assert result.max_delta() <= EPS + 1e-6
    assert max(r["delta"] for r in result.samples.values() if r["attack"]) == pytest.approx(result.max_delta())
    # robust implies clean, per sample
    assert not (result.flags("robust") & ~result.flags("clean")).any()

    l2 = {}
    eps_l2 = 0.5
    res_l2 = run_autoattack(model, *images, norm="L2", eps=eps_l2, version="custom", attacks=["apgd-ce"], batch_size=64,
                            on_chunk=lambda index, xc, xa, rec: l2.update({0: (index, xc, xa, rec)}))
    x, x_adv = adversarial_images(l2, len(images[0]))
    assert (x_adv - x).flatten(1).norm(dim=1).max() <= eps_l2 + 1e-5
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    assert res_l2.robust_top1 < res_l2.clean_top1


def test_a_killed_run_resumes_with_the_remaining_chunks_only(model, images, tmp_path, authors_engine):
    x, y = images
    kw = dict(eps=EPS, version="custom", attacks=["apgd-ce"], batch_size=16)
    uninterrupted = run_autoattack(model, x, y, **kw)
    real, swap = authors_engine
    done = []

    def killed_after_first_chunk(*args, **kwargs):
        if done:
            raise KeyboardInterrupt("killed")
        done.append(1)
        return real(*args, **kwargs)

    swap(killed_after_first_chunk)
    with pytest.raises(KeyboardInterrupt):
        run_autoattack(model, x, y, progress=tmp_path, **kw)
    (progress,) = tmp_path.glob("*.json")
    saved = json.loads(progress.read_text())
    assert sorted(int(i) for i in saved["samples"]) == list(range(16))
    assert saved["key"]["eps"] == EPS and saved["key"]["attacks"] == ["apgd-ce"]

    sizes = []

    def counted(model_, xc, *args, **kwargs):
        sizes.append(len(xc))
        return real(model_, xc, *args, **kwargs)

    swap(counted)
    resumed = run_autoattack(model, x, y, progress=tmp_path, **kw)
    assert resumed.resumed == [0] and resumed.attacked == [1, 2, 3] and sizes == [16, 16, 16]
    assert resumed.samples == uninterrupted.samples
    assert resumed.robust_top1 == uninterrupted.robust_top1

    again = run_autoattack(model, x, y, progress=tmp_path, **kw)  # finished: nothing left to attack
    assert again.attacked == [] and len(sizes) == 3 and again.samples == uninterrupted.samples
    other = run_autoattack(model, x, y, progress=tmp_path, **{**kw, "eps": 0.02})  # another config: its own file
    assert other.attacked == [0, 1, 2, 3] and len(list(tmp_path.glob("*.json"))) == 2


def test_progress_of_another_model_or_other_images_is_refused(model, images, tmp_path):
    x, y = images[0][:16], images[1][:16]
    kw = dict(eps=EPS, version="custom", attacks=["apgd-ce"], batch_size=16, progress=tmp_path / "aa.json")
    run_autoattack(model, x, y, **kw)
    changed = trained_model()
    with torch.no_grad():
        changed.net[1].bias += 0.01
    with pytest.raises(InputError, match="another attack or model"):
        run_autoattack(changed, x, y, **kw)
    with pytest.raises(InputError, match="other labels"):
        run_autoattack(model, x, (y + 1) % 10, **kw)


@pytest.mark.slow
def test_two_ranks_give_the_per_sample_results_of_one(model, images, tmp_path):
    x, y = images
    kw = dict(eps=EPS, version="custom", attacks=["apgd-ce"], batch_size=16)
    one = run_autoattack(model, x, y, **kw)
    ranks = [run_autoattack(model, x, y, rank=r, world=2, gather=False, progress=tmp_path, **kw) for r in (0, 1)]
    assert ranks[0].attacked == [0, 2] and ranks[1].attacked == [1, 3]
    assert {**ranks[0].samples, **ranks[1].samples} == one.samples
    assert sorted(p.name.split(".", 1)[1] for p in tmp_path.glob("*.json")) == ["rank0.json", "rank1.json"]
    resumed = run_autoattack(model, x, y, progress=tmp_path, **kw)  # one rank reads both ranks' files
    assert resumed.attacked == [] and resumed.samples == one.samples
    # each chunk is one call of the authors' code with batch_size = chunk size
    for start in range(0, 64, 16):
        _, y_adv = authors(model, x[start:start + 16], y[start:start + 16], version="custom", attacks=["apgd-ce"],
                           batch_size=16)
        assert [one.samples[start + i]["robust"] for i in range(16)] == (y_adv == y[start:start + 16]).tolist()


def test_randomized_model_with_the_rand_version(model, images):
    class Noisy(nn.Module):
        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, x):
            return self.net(x + 0.02 * torch.randn_like(x))

    x, y = images[0][:8], images[1][:8]
    noisy = Noisy(model).eval()
    result = run_autoattack(noisy, x, y, eps=0.1, version="rand", batch_size=8)
    assert result.robust_after() is None
    assert {r["attack"] for r in result.samples.values()} <= {None, "unknown"}
    assert any(r["attack"] == "unknown" for r in result.samples.values())
    assert result.robust_top1 < result.clean_top1


def test_fewer_than_ten_classes_use_every_other_class_as_target(images):
    torch.manual_seed(0)
    five = nn.Sequential(nn.Flatten(), nn.Linear(1024, 5)).eval()
    x = images[0][:8]
    with torch.no_grad():
        y = five(x).argmax(-1)  # all correct on clean images
    # some images survive every target class: with the authors' 9 targets, APGD-T raises an IndexError
    result = run_autoattack(five, x, y, eps=0.01, version="custom", attacks=["apgd-t", "fab-t"], batch_size=8)
    assert result.clean_top1 == 1.0 and 0 < result.robust_top1 < 1.0


def test_bad_input_is_refused_with_clear_messages(model, images):
    x, y = images[0][:4], images[1][:4]
    with pytest.raises(InputError, match=r"outside the \[0,1\] pixel range"):
        run_autoattack(model, x, y, eps=8)
    with pytest.raises(InputError, match="eps must be >= 0"):
        run_autoattack(model, x, y, eps=-0.1)
    with pytest.raises(InputError, match="L2 eps=40.0 exceeds 32"):
        run_autoattack(model, x, y, norm="L2", eps=40.0)
    with pytest.raises(InputError, match=r"\[0,1\] pixels"):
        run_autoattack(model, x * 2 - 0.5, y, eps=EPS)
    with pytest.raises(InputError, match="needs a list of attacks"):
        run_autoattack(model, x, y, eps=EPS, version="custom")
    with pytest.raises(InputError, match="unknown AutoAttack attack.*'apgd-xx'"):
        run_autoattack(model, x, y, eps=EPS, version="custom", attacks=["apgd-ce", "apgd-xx"])
    with pytest.raises(InputError, match="only used with version=custom"):
        run_autoattack(model, x, y, eps=EPS, version="standard", attacks=["apgd-ce"])
    with pytest.raises(InputError, match="version must be"):
        AutoAttackSpec(version="strong")
    three = nn.Sequential(nn.Flatten(), nn.Linear(1024, 3)).eval()
    with pytest.raises(InputError, match="apgd-t needs at least 4 classes"):
        run_autoattack(three, x, y % 3, eps=EPS, version="standard")
    training = trained_model().train()
    with pytest.raises(InputError, match="train mode"):
        run_autoattack(training, x, y, eps=EPS)


# --- straight-through gradients --------------------------------------------------------------


def quantized(model):
    return nn.Sequential(RoundToGrid(), model).eval()


def test_straight_through_switch_is_scoped_and_recorded(model):
    q = quantized(model)
    assert resolve_gradient(model, "auto") == "exact"
    assert resolve_gradient(model, "straight-through") == "exact"  # nothing to pass straight through
    assert resolve_gradient(q, "auto") == "straight-through"
    assert resolve_gradient(q, "exact") == "exact"
    with pytest.raises(InputError, match="gradient must be one of"):
        resolve_gradient(q, "bpda")
    with straight_through(q) as modules:
        assert modules == [q[0]] and q[0].straight_through is True
    assert q[0].straight_through is False
    q[0].straight_through = True
    with attack_gradients(q, "exact") as mode:  # forcing exact switches a preset flag off
        assert mode == "exact" and q[0].straight_through is False
    assert q[0].straight_through is True


def test_straight_through_unmasks_a_quantizing_model(model, images):
    q = quantized(model)
    x, y = images
    x_in = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(nn.functional.cross_entropy(q(x_in), y), x_in)
    assert torch.count_nonzero(grad) == 0  # the rounding masks every gradient
    with torch.no_grad():
        clean = (q(x).argmax(-1) == y).float().mean().item()

    def pgd_top1(gradient):
        with attack_gradients(q, gradient):
            x_adv = pgd_attack(q, x, y, eps=0.1, steps=10, random_start=False)
        with torch.no_grad():  # judged by the exact (rounding) forward
            return (q(x_adv).argmax(-1) == y).float().mean().item()

    assert pgd_top1("exact") == clean  # masked: PGD cannot move
    assert pgd_top1("auto") < clean - 0.4  # straight-through: the attack succeeds
    with straight_through(q):
        x_in = x.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(nn.functional.cross_entropy(q(x_in), y), x_in)
        assert torch.count_nonzero(grad.flatten(1).abs().sum(1)) == len(x)
        assert torch.equal(q(x).argmax(-1), model(RoundToGrid()(x)).argmax(-1))  # same forward value

    kw = dict(eps=0.1, version="custom", attacks=["apgd-ce"], batch_size=64)
    exact = run_autoattack(q, x, y, gradient="exact", **kw)
    auto = run_autoattack(q, x, y, **kw)
    assert exact.gradient == "exact" and auto.gradient == "straight-through"
    assert exact.robust_top1 > auto.robust_top1 + 0.3
    assert math.isclose(exact.clean_top1, clean) and math.isclose(auto.clean_top1, clean)
    assert q[0].straight_through is False  # restored after the attack


def test_a_chunk_is_saved_in_timed_pieces_and_an_interrupted_chunk_resumes_inside(model, images, tmp_path,
                                                                                  authors_engine):
    """With checkpoint_seconds a chunk is attacked in pieces (the first of FIRST_PIECE images, then as many as
    fit in the time), each saved when done; a run killed inside the chunk resumes with its other samples."""
    x, y = images[0][:40], images[1][:40]
    kw = dict(eps=EPS, version="custom", attacks=["apgd-ce"], batch_size=40, progress=tmp_path)
    real, swap = authors_engine
    sizes = []
    swap(killed_after_first(real, sizes))
    with pytest.raises(KeyboardInterrupt):
        run_autoattack(model, x, y, checkpoint_seconds=1e-9, **kw)  # every later piece: one image
    (progress,) = tmp_path.glob("*.json")
    assert sizes == [FIRST_PIECE] and sorted(int(i) for i in json.loads(progress.read_text())["samples"]) == \
        list(range(FIRST_PIECE))

    later = []

    def counted(model_, xc, *args, **kwargs):
        later.append(len(xc))
        return real(model_, xc, *args, **kwargs)

    swap(counted)
    resumed = run_autoattack(model, x, y, checkpoint_seconds=3600, **kw)  # a first piece, then the rest at once
    assert later == [FIRST_PIECE, 40 - 2 * FIRST_PIECE] and sorted(resumed.samples) == list(range(40))
    assert resumed.attacked == [0] and resumed.robust_top1 <= resumed.clean_top1
    later.clear()
    tiny = run_autoattack(model, x, y, checkpoint_seconds=1e-9, **{**kw, "progress": tmp_path / "other"})
    assert later == [FIRST_PIECE] + [1] * (40 - FIRST_PIECE) and sorted(tiny.samples) == list(range(40))
