"""The `fast` AutoAttack engine against the authors' code: the same verdicts, adversarial images in the
ball, fp32 re-checks of reduced-precision successes, resuming through the adapter, seeding, config.
A small MLP trained on real Fashion-MNIST (helpers_adversarial)."""

from __future__ import annotations

import json

import pytest
import torch
from helpers_adversarial import killed_after_first, trained_model
from helpers_adversarial import test_images as first_test_images
from torch import nn

from vitrobust.attacks import autoattack as aa_mod
from vitrobust.attacks import fast_engine
from vitrobust.attacks.apgd import Forward, apgd, dlr_loss, targeted_dlr_loss
from vitrobust.attacks.autoattack import AutoAttackSpec, run_autoattack
from vitrobust.config import load_config
from vitrobust.errors import ConfigError, InputError
from vitrobust.registry import ATTACK_ENGINES

EPS = 0.05
WHITE_BOX = ["apgd-ce", "apgd-t"]

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model():
    return trained_model()


@pytest.fixture(scope="module")
def images():
    return first_test_images(64)


def collect(result_chunks: dict):
    """on_chunk callback filling result_chunks[first index] = (x, x_adv, records)."""
    return lambda index, xc, x_adv, records: result_chunks.update({int(index[0]): (xc, x_adv, records)})


def attacked(chunks: dict) -> tuple[torch.Tensor, torch.Tensor]:
    parts = [chunks[k] for k in sorted(chunks)]
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


@pytest.fixture(scope="module")
def white_box_runs(model, images):
    """authors and fast, Linf and L2, on the same 64 images: {(engine, norm): (result, x, x_adv)}."""
    x, y = images
    out = {}
    for norm, eps in (("Linf", EPS), ("L2", 0.5)):
        for engine in ("authors", "fast"):
            chunks = {}
            res = run_autoattack(model, x, y, norm=norm, eps=eps, version="custom", attacks=WHITE_BOX, batch_size=64,
                                 engine=engine, on_chunk=collect(chunks))
            out[engine, norm] = (res, *attacked(chunks))
    return out


@pytest.mark.parametrize("norm", ["Linf", "L2"])
def test_fast_breaks_what_the_authors_break(white_box_runs, norm):
    authors, fast = white_box_runs["authors", norm][0], white_box_runs["fast", norm][0]
    a, f = authors.flags("robust"), fast.flags("robust")
    assert fast.spec.engine == "fast" and authors.spec.engine == "authors"
    assert fast.flags("clean").tolist() == authors.flags("clean").tolist()
    # the model is trained enough for the comparison to mean something: attacks break points, some survive
    assert 0.2 < authors.robust_top1 < authors.clean_top1 - 0.1
    assert (f & ~a).sum() <= 1  # robust for fast but broken by the authors: at most one of 64
    assert abs(fast.robust_top1 - authors.robust_top1) <= 2 / 64
    assert {r["attack"] for r in fast.samples.values()} <= {None, *WHITE_BOX}
    assert all((r["attack"] is None) == (r["robust"] or not r["clean"]) for r in fast.samples.values())


@pytest.mark.parametrize("norm", ["Linf", "L2"])
def test_adversarial_examples_lie_in_the_ball_and_fool_the_fp32_model(model, images, white_box_runs, norm):
    res, x, x_adv = white_box_runs["fast", norm]
    eps = res.spec.eps
    broken = res.flags("clean") & ~res.flags("robust")
    assert broken.sum() >= 5
    delta = (x_adv - x).flatten(1)
    size = delta.abs().amax(1) if norm == "Linf" else delta.norm(dim=1)
    assert size.max() <= eps + 1e-5 and x_adv.min() >= 0 and x_adv.max() <= 1
    assert torch.equal(x_adv[~broken], x[~broken])  # only broken points carry a perturbation
    with torch.no_grad():
        assert (model(x_adv[broken]).argmax(1) != images[1][broken]).all()
    assert res.max_delta() <= eps + 1e-5


@pytest.mark.parametrize(("norm", "eps"), [("Linf", EPS), ("L2", 0.5)])
def test_fab_t_breaks_what_the_authors_fab_t_breaks(model, images, norm, eps):
    """FAB-T alone (deterministic: no random start) on the clean-correct points of 16 images."""
    x, y = images[0][:16], images[1][:16]
    kw = dict(norm=norm, eps=eps, version="custom", attacks=["fab-t"], batch_size=16)
    authors = run_autoattack(model, x, y, **kw)
    chunks = {}
    fast = run_autoattack(model, x, y, engine="fast", on_chunk=collect(chunks), **kw)
    a, f = authors.flags("robust"), fast.flags("robust")
    assert authors.robust_top1 < authors.clean_top1 - 0.1  # FAB-T breaks some points
    assert (f & ~a).sum() <= 1 and abs(fast.robust_top1 - authors.robust_top1) <= 1 / 16
    xs, x_adv = attacked(chunks)
    broken = fast.flags("clean") & ~f
    with torch.no_grad():
        assert (model(x_adv[broken]).argmax(1) != y[broken]).all()
    delta = (x_adv - xs).flatten(1)
    assert (delta.abs().amax(1) if norm == "Linf" else delta.norm(dim=1)).max() <= eps + 1e-5


@pytest.mark.slow
@pytest.mark.parametrize(("norm", "eps"), [("Linf", EPS), ("L2", 0.5)])
def test_standard_version_agrees_with_the_authors(model, images, norm, eps):
    x, y = images[0][:32], images[1][:32]
    kw = dict(norm=norm, eps=eps, version="standard", batch_size=32)
    authors = run_autoattack(model, x, y, **kw)
    fast = run_autoattack(model, x, y, engine="fast", **kw)
    a, f = authors.flags("robust"), fast.flags("robust")
    assert (f & ~a).sum() <= 1 and abs(fast.robust_top1 - authors.robust_top1) <= 1 / 32
    assert list(fast.robust_after()) == ["apgd-ce", "apgd-t", "fab-t", "square"]


@pytest.mark.slow
def test_plus_version_agrees_with_the_authors(model, images):
    """Version plus: 5 restarts of APGD-CE and APGD-DLR as rows, the authors' untargeted FAB and Square."""
    x, y = images[0][:16], images[1][:16]
    kw = dict(eps=EPS, version="plus", batch_size=16)
    authors = run_autoattack(model, x, y, **kw)
    fast = run_autoattack(model, x, y, engine="fast", **kw)
    a, f = authors.flags("robust"), fast.flags("robust")
    assert (f & ~a).sum() <= 1 and abs(fast.robust_top1 - authors.robust_top1) <= 1 / 16
    assert list(fast.robust_after()) == ["apgd-ce", "apgd-dlr", "fab", "square", "apgd-t", "fab-t"]


# --- reduced precision ----------------------------------------------------------------------------


class LowPrecisionLiar(nn.Module):
    """Correct in fp32; under autocast it claims the least likely class wins (every point "misclassified")."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net, self.lies = net, 0

    def forward(self, x):
        logits = self.net(x)
        if torch.is_autocast_enabled(x.device.type):
            self.lies += 1
            bonus = 1e3 * nn.functional.one_hot(logits.argmin(1), logits.shape[1]).to(logits.dtype)
            return logits + bonus.detach()
        return logits


def test_a_reduced_precision_success_that_fp32_refuses_is_not_counted(model, images):
    x, y = images[0][:16], images[1][:16]
    liar = LowPrecisionLiar(model).eval()
    spec = AutoAttackSpec(eps=1e-3, version="custom", attacks=("apgd-ce", "apgd-t", "fab-t", "square"),
                          batch_size=16, engine="fast")
    records, x_adv, _ = fast_engine.fast_attack_chunk(liar, x, y, spec, precision="bf16")
    assert liar.lies > 100  # the attacks did run in reduced precision and were lied to
    clean = [r["clean"] for r in records]
    assert sum(clean) > 10
    # at eps=1e-3 the fp32 model keeps every point: none may be counted broken
    assert [r["robust"] for r in records] == clean and all(r["attack"] is None for r in records)
    assert torch.equal(x_adv, x)


def test_fab_t_and_square_run_in_fp32_whatever_the_precision(model, images):
    """bf16 blurs the small logit differences that FAB-T and Square decide on: they never see autocast."""
    x, y = images[0][:8], images[1][:8]
    liar = LowPrecisionLiar(model).eval()
    spec = AutoAttackSpec(eps=EPS, version="custom", attacks=("fab-t", "square"), batch_size=8, engine="fast")
    records, _, _ = fast_engine.fast_attack_chunk(liar, x, y, spec, precision="bf16")
    assert liar.lies == 0 and any(r["robust"] is False and r["clean"] for r in records)


def test_a_refused_row_keeps_being_attacked(model, images):
    """APGD rows whose first success fp32 refuses stay in the batch and are broken later, for real."""
    x, y = images[0][:32], images[1][:32]
    ok = model(x).argmax(1) == y
    x, y = x[ok], y[ok]

    class LiesOnce(LowPrecisionLiar):
        def forward(self, x):
            return super().forward(x) if self.lies == 0 else self.net(x)

    liar = LiesOnce(model).eval()
    fwd = Forward(liar, torch.bfloat16)
    found, x_found = apgd(fwd, x, y, eps=0.1, norm="Linf", n_iter=20, generator=torch.Generator().manual_seed(0))
    assert fwd.rejected >= len(x) - 2  # (nearly) every row was refused once, at the random start
    assert found.float().mean() > 0.5  # and most were broken afterwards
    with torch.no_grad():
        assert (model(x_found[found]).argmax(1) != y[found]).all()


def test_precision_setting(model, images, monkeypatch):
    x = images[0][:8]
    monkeypatch.delenv("VITROBUST_AA_PRECISION", raising=False)
    assert fast_engine.choose_precision(model, x) == "fp32"  # the default: the authors' verdicts exactly
    assert fast_engine.choose_precision(model, x, "auto") in ("fp32", "bf16")  # timed on this machine
    monkeypatch.setenv("VITROBUST_AA_PRECISION", "bf16")
    assert fast_engine.choose_precision(model, x) == "bf16"
    with pytest.raises(InputError, match="precision"):
        fast_engine.choose_precision(model, x, "fp8")


def test_dlr_losses_match_their_definition():
    z = torch.tensor([[3.0, 1.0, 2.0, 0.0, -1.0], [0.5, 4.0, 1.0, 2.0, 3.0]])
    y, t = torch.tensor([0, 0]), torch.tensor([2, 4])
    # row 0: y on top, runner-up 2, z(1) - z(3) = 3 - 1; row 1: y not on top, best other 4, z(1) - z(3) = 4 - 2
    assert torch.allclose(dlr_loss(z, y), torch.tensor([-(3 - 2) / 2, -(0.5 - 4) / 2]))
    assert torch.allclose(targeted_dlr_loss(z, y, t), torch.tensor([-(3 - 2) / (3 - 0.5), -(0.5 - 3) / (4 - 1.5)]))


# --- through the adapter --------------------------------------------------------------------------


@pytest.fixture
def fast_engine_swap():
    real = ATTACK_ENGINES.get("fast")
    yield real, lambda fn: ATTACK_ENGINES.add("fast", fn, replace=True)
    ATTACK_ENGINES.add("fast", real, replace=True)


def test_fast_engine_resumes_through_the_adapter(model, images, tmp_path, fast_engine_swap):
    x, y = images[0][:32], images[1][:32]
    kw = dict(eps=EPS, version="custom", attacks=["apgd-ce"], batch_size=8, engine="fast")
    torch.manual_seed(5)
    state = torch.random.get_rng_state()
    uninterrupted = run_autoattack(model, x, y, **kw)
    assert torch.equal(torch.random.get_rng_state(), state)  # the caller's RNG is untouched
    assert run_autoattack(model, x, y, **kw).samples == uninterrupted.samples  # seeded: the same again
    real, swap = fast_engine_swap
    calls = []
    swap(killed_after_first(real, calls))
    with pytest.raises(KeyboardInterrupt):
        run_autoattack(model, x, y, progress=tmp_path, **kw)
    (progress,) = tmp_path.glob("*.json")
    saved = json.loads(progress.read_text())
    assert saved["key"]["engine"] == "fast" and sorted(int(i) for i in saved["samples"]) == list(range(8))

    def counted(model_, xc, *args, **kwargs):
        calls.append(len(xc))
        return real(model_, xc, *args, **kwargs)

    swap(counted)
    resumed = run_autoattack(model, x, y, progress=tmp_path, **kw)
    assert resumed.resumed == [0] and resumed.attacked == [1, 2, 3] and calls == [8, 8, 8, 8]
    assert resumed.samples == uninterrupted.samples
    authors = run_autoattack(model, x, y, progress=tmp_path, **{**kw, "engine": "authors"})
    assert authors.attacked == [0, 1, 2, 3]  # another engine: its own progress file
    assert len(list(tmp_path.glob("*.json"))) == 2


def test_another_seed_draws_other_random_starts(model, images):
    x, y = images[0][:16], images[1][:16]
    chunks = {0: {}, 1: {}}
    for seed in (0, 1):
        run_autoattack(model, x, y, eps=EPS, version="custom", attacks=["apgd-ce"], batch_size=16, seed=seed,
                       engine="fast", on_chunk=collect(chunks[seed]))
    assert not torch.equal(chunks[0][0][1], chunks[1][0][1])


class FirstGradientInput(nn.Module):
    """The model, noting the input of the first gradient pass after each `arm()` (an APGD run's start)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net, self.armed, self.starts = net, False, []

    def forward(self, x):
        if self.armed and x.requires_grad:
            self.starts.append(x.detach().clone())
            self.armed = False
        return self.net(x)


def test_apgd_starts_where_the_authors_code_starts_with_the_same_seed(model, images, monkeypatch):
    from pyautoattack.autopgd_base import APGDAttack

    from vitrobust.attacks import apgd as apgd_mod
    x, y = images[0][:24], images[1][:24]
    spy = FirstGradientInput(model).eval()
    authors_run = APGDAttack.attack_single_run
    monkeypatch.setattr(APGDAttack, "attack_single_run", lambda self, *a, **k: setattr(spy, "armed", True)
                        or authors_run(self, *a, **k))
    ours, draw = [], apgd_mod.random_start
    monkeypatch.setattr(apgd_mod, "random_start", lambda *a, **k: ours.append(draw(*a, **k)) or ours[-1])
    monkeypatch.setenv("VITROBUST_AA_PRECISION", "fp32")
    for seed in (0, 3):
        spy.starts.clear(), ours.clear()
        kw = dict(eps=EPS, version="custom", attacks=WHITE_BOX, batch_size=24, seed=seed)
        authors = run_autoattack(spy, x, y, **kw, engine="authors")
        fast = run_autoattack(model, x, y, **kw, engine="fast")
        assert [r["robust"] for r in fast.samples.values()] == [r["robust"] for r in authors.samples.values()]
        # version custom keeps the authors' 5 restarts of APGD-CE, then 9 target classes, each run while points are left
        assert 2 <= len(ours) == len(spy.starts) <= 14
        for mine, theirs in zip(ours, spy.starts):
            torch.testing.assert_close(mine, theirs, rtol=0, atol=1e-7)


def test_version_rand_is_the_authors_engine(model, images, monkeypatch):
    x, y = images[0][:8], images[1][:8]
    calls = []
    monkeypatch.setattr(aa_mod, "attack_chunk", lambda *args, **kwargs: calls.append(args[3]) or ([], x, []))
    spec = AutoAttackSpec(eps=EPS, version="rand", batch_size=8, engine="fast")
    assert fast_engine.fast_attack_chunk(model, x, y, spec) == ([], x, []) and calls == [spec]


def test_fewer_classes_and_standard_version_run(images):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(1024, 5)).eval()
    x = images[0][:8]
    y = net(x).argmax(1).detach()  # every point correct on clean images
    res = run_autoattack(net, x, y, eps=0.02, version="standard", batch_size=8, engine="fast")
    assert res.clean_top1 == 1.0 and list(res.robust_after()) == ["apgd-ce", "apgd-t", "fab-t", "square"]


def test_config_selects_the_engine_and_fast_is_the_default():
    assert load_config(None, []).evaluate.attack.engine == "fast"
    assert load_config(None, ["evaluate.attack.engine=authors"]).evaluate.attack.engine == "authors"
    with pytest.raises(ConfigError, match="did you mean 'fast'"):
        load_config(None, ["evaluate.attack.engine=fats"])
