"""Adversarial objectives (pgd_at, trades, fgsm_rs): the eps schedule and step size, the attack budget,
the number and kind of forward passes, the attack mode, TRADES arithmetic, and a tiny training run."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from vitrobust.config import ConfigError, load_config
from vitrobust.data import Batch
from vitrobust.models import build_model
from vitrobust.objectives import TrainState, adversarial, build_objective, objective_params
from vitrobust.objectives.adversarial import eps_schedule, kl_attack
from vitrobust.objectives.standard import Standard
from vitrobust.train import Trainer

EPS = 8 / 255
TOL = 1e-6


def objective(name: str, **params):
    return build_objective({"name": name, **params})


def make_batch(x: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None = None) -> Batch:
    return Batch(x=x, y=y, index=torch.arange(len(y)), target=target)


def image_batch(n: int = 6, seed: int = 0, shape=(3, 8, 8)) -> Batch:
    """Random [0,1] images with some pixels exactly at 0 and at 1, so clamping matters."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(n, *shape, generator=gen)
    x[:, 0, 0, :] = 0.0
    x[:, 0, 1, :] = 1.0
    return make_batch(x, torch.randint(0, 10, (n,), generator=gen))


class Recorder(nn.Module):
    """Wraps a model; remembers every input it is called with and whether dropout was in train mode."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner
        self.inputs: list[torch.Tensor] = []
        self.dropout_training: list[bool] = []

    def forward(self, x):
        self.inputs.append(x.detach().clone())
        drops = [m for m in self.modules() if isinstance(m, nn.Dropout)]
        if drops:
            self.dropout_training.append(drops[0].training)
        return self.inner(x)


def mlp(dropout: float = 0.0, in_features: int = 3 * 8 * 8) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(in_features, 16), nn.ReLU(), nn.Dropout(dropout), nn.Linear(16, 10))


class SignModel(nn.Module):
    """Two classes, logits (s, -s) with s = <w, x>. For label 0 the input gradient of the cross-entropy
    is -2 p_1 w, so every ascent step moves each pixel by -sign(w): attacks have closed-form results."""

    def __init__(self, w: torch.Tensor):
        super().__init__()
        self.w = nn.Parameter(w.clone())

    def forward(self, x):
        s = (x.flatten(1) * self.w.flatten()).sum(1)
        return torch.stack([s, -s], dim=1)


def sign_setup(n: int = 4, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(1, 4, 4, generator=gen)
    x = 0.2 + 0.6 * torch.rand(n, 1, 4, 4, generator=gen)  # interior: no [0,1] clamping within 8/255
    return SignModel(w), make_batch(x, torch.zeros(n, dtype=torch.long))


@pytest.fixture
def torch_flags():
    """Trainer switches on deterministic algorithms process-wide; training is faster on one thread."""
    enabled, warn_only = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(enabled, warn_only=warn_only)


# --- eps schedule and step size ---------------------------------------------------------------


def test_eps_warmup_is_linear_by_integer_epoch_from_a_clean_epoch_0():
    got = [eps_schedule(EPS, e, warmup_epochs=10) for e in range(13)]
    want = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.0, 1.0]
    assert got == pytest.approx([w * EPS for w in want], abs=1e-12)


def test_zero_eps_epochs_come_before_the_ramp():
    got = {e: eps_schedule(EPS, e, warmup_epochs=10, zero_eps_epochs=2) for e in (0, 1, 2, 3, 5, 11, 12, 30)}
    want = {0: 0.0, 1: 0.0, 2: 0.0, 3: 0.1, 5: 0.3, 11: 0.9, 12: 1.0, 30: 1.0}
    assert got == pytest.approx({e: w * EPS for e, w in want.items()}, abs=1e-12)
    # the objective reads the same schedule off state.epoch
    pgd = objective("pgd_at", eps=EPS, warmup_epochs=10, zero_eps_epochs=2)
    assert [pgd.current_eps(TrainState(epoch=e)) for e in want] == pytest.approx(list(got.values()), abs=1e-12)


def test_without_warmup_eps_is_full_after_the_zero_eps_epochs():
    assert eps_schedule(EPS, 0) == EPS
    assert [eps_schedule(EPS, e, zero_eps_epochs=2) for e in range(4)] == [0.0, 0.0, EPS, EPS]


def test_default_step_sizes_come_from_the_full_eps_and_scale_only_when_asked():
    pgd = objective("pgd_at", eps=EPS, steps=4, warmup_epochs=10)
    half = pgd.current_eps(TrainState(epoch=5))
    assert half == pytest.approx(EPS / 2)
    assert pgd.step_size(half) == pytest.approx(1.5 * EPS / 4)  # unchanged during warm-up
    assert pgd.step_size(EPS) == pytest.approx(1.5 * EPS / 4)
    scaled = objective("pgd_at", eps=EPS, steps=4, warmup_epochs=10, scale_step_with_eps=True)
    assert scaled.step_size(half) == pytest.approx(0.75 * EPS / 4)
    assert scaled.step_size(EPS) == pytest.approx(1.5 * EPS / 4)
    assert objective("pgd_at").step_size(4 / 255) == pytest.approx(6 / 255)  # K=1, eps 4/255
    assert objective("fgsm_rs").step_size(EPS) == pytest.approx(10 / 255)  # 1.25 * 8/255
    assert objective("trades").step_size(EPS) == pytest.approx(2 / 255)
    explicit = objective("pgd_at", eps=EPS, step_size=0.01, warmup_epochs=4, scale_step_with_eps=True)
    assert explicit.step_size(EPS / 4) == pytest.approx(0.0025)


def test_pgd_at_attacks_with_the_warmed_up_eps_and_the_full_eps_step(monkeypatch):
    calls = []
    real = adversarial.pgd_attack

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(adversarial, "pgd_attack", spy)
    batch, model = image_batch(), mlp()
    for scale in (False, True):
        pgd = objective("pgd_at", eps=EPS, steps=2, warmup_epochs=10, scale_step_with_eps=scale)
        _, logs = pgd.loss(model, batch, TrainState(epoch=5))
        assert logs["eps"] == pytest.approx(EPS / 2)
    assert [c["eps"] for c in calls] == pytest.approx([EPS / 2, EPS / 2])
    assert [c["step_size"] for c in calls] == pytest.approx([1.5 * EPS / 2, 0.75 * EPS / 2])
    assert [c["steps"] for c in calls] == [2, 2]


def test_defaults_follow_the_recipes():
    p = objective_params({"name": "pgd_at"})
    assert (p.norm, p.eps, p.steps, p.step_size, p.random_start, p.attack_mode) == ("Linf", 4 / 255, 1, None, True, "eval")
    assert (p.warmup_epochs, p.zero_eps_epochs, p.scale_step_with_eps) == (0, 0, False)
    t = objective_params({"name": "trades"})
    assert (t.beta, t.eps, t.steps, t.norm) == (6.0, 8 / 255, 10, "Linf")
    assert objective_params({"name": "fgsm_rs"}).eps == 8 / 255


def test_config_errors_name_the_key():
    with pytest.raises(ConfigError, match=r"objective\.eps.*pixel range"):
        objective_params({"name": "pgd_at", "eps": 8})
    assert objective_params({"name": "pgd_at", "eps": 8, "norm": "L2"}).eps == 8  # L2 radii can exceed 1
    with pytest.raises(ConfigError, match="did you mean 'steps'"):
        objective_params({"name": "trades", "step": 3})


# --- pgd_at -------------------------------------------------------------------------------------


@pytest.mark.parametrize("norm,eps", [("Linf", EPS), ("L2", 0.5)])
def test_pgd_at_adversarial_batch_stays_in_the_eps_ball_and_in_0_1(norm, eps, tiny_spec):
    torch.manual_seed(0)
    model = Recorder(build_model(tiny_spec))
    batch = image_batch(n=8, shape=(1, 32, 32))
    objective("pgd_at", norm=norm, eps=eps, steps=3).loss(model, batch, TrainState())
    delta = model.inputs[-1] - batch.x  # the training forward's input
    assert model.inputs[-1].min() >= 0 and model.inputs[-1].max() <= 1
    size = delta.abs().flatten(1).amax(1) if norm == "Linf" else delta.flatten(1).norm(dim=1)
    assert (size <= eps + TOL).all()
    assert (size > 0.5 * eps).all()  # a real attack, not a no-op


@pytest.mark.parametrize("steps", [1, 3])
def test_pgd_at_step_is_k_attack_passes_plus_one_training_forward_and_no_clean_forward(steps):
    inner = Recorder(mlp())
    outer = Recorder(inner)  # stands for the DDP wrapper; the attack must use state.model
    batch = image_batch()
    loss, _ = objective("pgd_at", eps=EPS, steps=steps).loss(outer, batch, TrainState(model=inner))
    assert len(outer.inputs) == 1
    assert len(inner.inputs) == steps + 1
    assert not any(torch.equal(x, batch.x) for x in inner.inputs)
    assert all(p.grad is None for p in inner.parameters())  # the attack took input gradients only
    loss.backward()
    assert all(p.grad is not None for p in inner.parameters())


def test_pgd_at_without_random_start_takes_the_closed_form_step():
    model, batch = sign_setup()
    direction = -torch.sign(model.w.detach())
    for epoch, eps_now in ((10, EPS), (5, EPS / 2)):  # warm-up: projected onto the smaller ball
        rec = Recorder(model)
        pgd = objective("pgd_at", eps=EPS, steps=1, random_start=False, warmup_epochs=10)
        pgd.loss(rec, batch, TrainState(epoch=epoch))
        assert torch.allclose(rec.inputs[-1], batch.x + eps_now * direction, atol=TOL)


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_attack_mode_sets_dropout_for_the_attack_only(mode):
    steps = 2
    model = Recorder(mlp(dropout=0.5))
    frozen = model.inner[1]
    model.train()
    frozen.eval()  # a submodule kept in eval on purpose must stay in eval
    objective("pgd_at", eps=EPS, steps=steps, attack_mode=mode).loss(model, image_batch(), TrainState())
    assert model.dropout_training == [mode == "train"] * steps + [True]
    assert model.training and model.inner[3].training
    assert not frozen.training


def test_trades_attack_runs_in_eval_mode_and_trains_in_train_mode():
    model = Recorder(mlp(dropout=0.5))
    objective("trades", steps=2).loss(model, image_batch(), TrainState())
    # p_clean, 2 attack steps, then the clean and adversarial training forwards
    assert model.dropout_training == [False, False, False, True, True]
    assert model.training


@pytest.mark.parametrize("name", ["pgd_at", "trades", "fgsm_rs"])
@pytest.mark.parametrize("how", ["eps=0", "warm-up epoch 0"])
def test_zero_eps_is_a_standard_step(name, how):
    params = {"eps": 0.0} if how == "eps=0" else {"eps": EPS, "warmup_epochs": 5}
    batch = image_batch()
    batch.target = F.one_hot(batch.y, 10).float() * 0.7 + 0.03  # soft targets, as after mixup
    model = Recorder(mlp())
    loss, logs = objective(name, label_smoothing=0.1, **params).loss(model, batch, TrainState(epoch=0))
    ref, ref_logs = Standard(objective_params({"name": "standard", "label_smoothing": 0.1})).loss(mlp(), batch,
                                                                                                   TrainState())
    assert len(model.inputs) == 1 and torch.equal(model.inputs[0], batch.x)
    assert torch.equal(loss, ref)
    assert logs["acc"] == ref_logs["acc"] and logs["eps"] == 0.0


# --- fgsm_rs ------------------------------------------------------------------------------------


def test_fgsm_rs_is_one_step_from_a_random_start_within_eps():
    model, batch = sign_setup(n=16)
    direction = -torch.sign(model.w.detach())
    deltas = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        rec = Recorder(model)
        objective("fgsm_rs", eps=EPS).loss(rec, batch, TrainState())
        assert len(rec.inputs) == 2
        deltas.append(rec.inputs[-1] - batch.x)
    for delta in deltas:
        assert delta.abs().max() <= EPS + TOL
        # start in [-eps, eps], step 1.25*eps along -sign(w), clip: lands in [0.25*eps, eps] on that side
        assert torch.equal(torch.sign(delta), direction.expand_as(delta))
        assert delta.abs().min() >= 0.25 * EPS - TOL
        assert (delta.abs() < EPS - 1e-4).any()  # the random start shows where the clip did not bite
    assert not torch.equal(deltas[0], deltas[1])


def test_fgsm_rs_stays_in_0_1_at_saturated_pixels():
    torch.manual_seed(0)
    model, batch = Recorder(mlp()), image_batch()
    objective("fgsm_rs", eps=EPS).loss(model, batch, TrainState())
    x_adv = model.inputs[-1]
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    assert (x_adv - batch.x).abs().max() <= EPS + TOL


# --- trades ---------------------------------------------------------------------------------------


def test_trades_loss_is_ce_plus_beta_kl_by_hand(monkeypatch):
    torch.manual_seed(0)
    n, d, c, beta, ls = 5, 12, 4, 6.0, 0.1
    model = nn.Linear(d, c)
    x = torch.rand(n, d)
    y = torch.tensor([0, 1, 2, 3, 1])
    x_adv = (x + 0.03 * torch.sign(torch.randn(n, d))).clamp(0, 1)
    seen = {}

    def fixed_attack(attacker, x_in, p_clean, **kwargs):
        seen.update(p_clean=p_clean, **kwargs)
        return x_adv

    monkeypatch.setattr(adversarial, "kl_attack", fixed_attack)
    trades = objective("trades", beta=beta, label_smoothing=ls, eps=EPS, steps=7)
    loss, logs = trades.loss(model, make_batch(x, y), TrainState())

    W, b = model.weight, model.bias
    z, z_adv = x @ W.T + b, x_adv @ W.T + b
    p = torch.exp(z) / torch.exp(z).sum(1, keepdim=True)
    q = torch.exp(z_adv) / torch.exp(z_adv).sum(1, keepdim=True)
    log_p_y = torch.log(p[torch.arange(n), y])
    ce = (-(1 - ls) * log_p_y - ls / c * torch.log(p).sum(1)).mean()
    kl = (p * (torch.log(p) - torch.log(q))).sum() / n
    want = ce + beta * kl

    assert torch.allclose(loss, want, atol=1e-6)
    assert float(logs["kl"]) == pytest.approx(float(kl.detach()), abs=1e-6)
    assert torch.allclose(seen["p_clean"], p, atol=1e-6) and not seen["p_clean"].requires_grad
    assert seen["steps"] == 7 and seen["eps"] == EPS and seen["step_size"] == pytest.approx(2 / 255)
    # the training KL is differentiated on both sides, as in the reference
    (g_obj,) = torch.autograd.grad(loss, W)
    (g_hand,) = torch.autograd.grad(want, W)
    assert torch.allclose(g_obj, g_hand, atol=1e-6)


def test_trades_attack_steps_by_hand():
    """Linf steps from x + 0.001*N(0,1) along sign of grad_x KL(p_clean || p(x_adv)), projected each time.

    A large eps, so the steps leave the region where KL(p||q) and KL(q||p) have the same gradient."""
    torch.manual_seed(0)
    model, x = nn.Linear(12, 4), 0.1 + 0.8 * torch.rand(5, 12)
    model.weight.data *= 4
    eps, step = 0.4, 0.15
    with torch.no_grad():
        p = F.softmax(model(x), -1)
    torch.manual_seed(1)
    x_adv = kl_attack(model, x, p, eps=eps, norm="Linf", steps=4, step_size=step)

    torch.manual_seed(1)
    want = x + 0.001 * torch.randn_like(x)
    for _ in range(4):
        want.requires_grad_(True)
        z = model(want)
        log_q = z - torch.log(torch.exp(z).sum(1, keepdim=True))
        (g,) = torch.autograd.grad((p * (torch.log(p) - log_q)).sum(), want)
        want = (x + (want.detach() + step * torch.sign(g) - x).clamp(-eps, eps)).clamp(0, 1)
    assert torch.allclose(x_adv, want, atol=1e-6)


@pytest.mark.parametrize("norm,eps", [("Linf", EPS), ("L2", 0.5)])
def test_trades_attack_stays_in_the_ball_and_raises_the_kl(norm, eps):
    torch.manual_seed(0)
    model, batch = mlp().eval(), image_batch(n=8)
    with torch.no_grad():
        p_clean = F.softmax(model(batch.x), dim=-1)
    x_adv = kl_attack(model, batch.x, p_clean, eps=eps, norm=norm, steps=5, step_size=eps / 4)
    delta = x_adv - batch.x
    size = delta.abs().flatten(1).amax(1) if norm == "Linf" else delta.flatten(1).norm(dim=1)
    assert (size <= eps + TOL).all() and x_adv.min() >= 0 and x_adv.max() <= 1

    def kl(x):
        with torch.no_grad():
            return F.kl_div(F.log_softmax(model(x), -1), p_clean, reduction="batchmean")

    noise = torch.sign(torch.randn_like(batch.x)) * eps if norm == "Linf" else torch.randn_like(batch.x)
    if norm == "L2":
        noise = noise / noise.flatten(1).norm(dim=1).view(-1, 1, 1, 1) * eps
    assert kl(x_adv) > 3 * kl((batch.x + noise).clamp(0, 1))


def test_trades_counts_k_plus_three_forwards_on_the_right_models():
    inner = Recorder(mlp())
    outer = Recorder(inner)
    objective("trades", steps=3).loss(outer, image_batch(), TrainState(model=inner))
    assert len(outer.inputs) == 2  # clean and adversarial training forwards
    assert len(inner.inputs) == 3 + 3  # p_clean + 3 attack steps, plus the two above


# --- a training run -----------------------------------------------------------------------------


def test_pgd_at_trains_end_to_end(tmp_path, torch_flags):
    overrides = ["device=cpu", "data.train_subset=128", "data.test_subset=64", "data.batch_size=32",
                 "train.epochs=1", "train.eval_subset=64", "train.log_every=1",
                 "objective.name=pgd_at", "objective.eps=0.1"]
    trainer = Trainer(load_config("quickstart/baseline", overrides), tmp_path / "run", progress=False)
    run = trainer.fit()
    assert "objective:\n  name: pgd_at" in (run / "config.yaml").read_text()
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if r["kind"] == "train"]
    assert len(train_rows) == 4 and all(0 < r["loss"] < 10 for r in train_rows)
    assert any(r["kind"] == "eval" for r in rows)
    assert all(r["eps"] == pytest.approx(0.1) for r in train_rows)  # the objective's own logs reach metrics
