"""DAT (objective `dat`): each step of the reference algorithm against hand-computed values on a linear
model and a grid-rounding stand-in tokenizer, the options, the errors, and `vitrobust train` end to end."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from helpers_adversarial import RoundToGrid
from helpers_train import explain, run_cmd, set_args, tensors, torch_flags_restored, vitrobust_cmd
from torch import nn

from vitrobust.config import ConfigError, load_config
from vitrobust.data import Batch
from vitrobust.errors import InputError
from vitrobust.models import tokenizer_io, vqgan
from vitrobust.objectives import ObjectiveContext, TrainState, build_objective
from vitrobust.objectives import dat as dat_module
from vitrobust.objectives.dat import DAT, DATParams
from vitrobust.train import Trainer

LEVELS = 64
TOL = 1e-6


class GridTokenizer(nn.Module):
    """Stands in for a VQTokenizer (encode / codes / reconstruct, in_chans, downsample): one code per pixel,
    the pixel rounded to LEVELS grey levels. Remembers every input and whether autocast was on."""

    def __init__(self, levels: int = LEVELS, in_chans: int = 1, downsample: int = 1):
        super().__init__()
        self.levels, self.in_chans, self.downsample = levels, in_chans, downsample
        self.embed_dim, self.n_embed, self.straight_through = in_chans, levels, False
        self.scale = nn.Parameter(torch.ones(()))  # a weight, to see that it is frozen
        self.inputs: list[torch.Tensor] = []
        self.autocast: list[bool] = []

    def encode(self, x01: torch.Tensor) -> torch.Tensor:
        return torch.round(x01.clamp(0, 1) * (self.levels - 1)).long()[:, 0]

    def codes(self, indices: torch.Tensor) -> torch.Tensor:
        return (indices.float() / (self.levels - 1))[:, None] * self.scale

    def reconstruct(self, x01: torch.Tensor) -> torch.Tensor:
        self.inputs.append(x01.detach().clone())
        self.autocast.append(torch.is_autocast_enabled("cpu"))
        return self.codes(self.encode(x01)).clamp(0, 1)

    forward = reconstruct


def grid(x: torch.Tensor) -> torch.Tensor:
    return torch.round(x * (LEVELS - 1)) / (LEVELS - 1)


class Probe(nn.Module):
    """Identity that records each input, the mode it ran in and whether autocast was on."""

    def __init__(self):
        super().__init__()
        self.inputs: list[torch.Tensor] = []
        self.modes: list[bool] = []
        self.autocast: list[bool] = []

    def forward(self, x):
        self.inputs.append(x.detach().clone())
        self.modes.append(self.training)
        self.autocast.append(torch.is_autocast_enabled("cpu"))
        return x


def linear(classes: int = 3, pixels: int = 16, seed: int = 0) -> nn.Sequential:
    """Probe -> flatten -> linear: the input gradient of the CE is (softmax - target) @ W, per sample."""
    torch.manual_seed(seed)
    return nn.Sequential(Probe(), nn.Flatten(), nn.Linear(pixels, classes))


def batch(n: int = 6, seed: int = 0, classes: int = 3, lo: float = 0.2, hi: float = 0.8) -> Batch:
    gen = torch.Generator().manual_seed(seed)
    x = lo + (hi - lo) * torch.rand(n, 1, 4, 4, generator=gen)
    return Batch(x=x, y=torch.randint(0, classes, (n,), generator=gen), index=torch.arange(n))


def dat(tokenizer=None, **params) -> DAT:
    return build_objective({"name": "dat", **params}, tokenizer=tokenizer if tokenizer is not None else GridTokenizer())


def input_grad(model: nn.Sequential, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(softmax(W x + b) - target) @ W, reshaped like x: the CE's input gradient up to a per-sample factor."""
    lin = model[2]
    p = F.softmax(lin(x.flatten(1)), dim=-1)
    return ((p - target) @ lin.weight).view_as(x)


def unit(v: torch.Tensor) -> torch.Tensor:
    return v / v.flatten(1).norm(dim=1).view(-1, 1, 1, 1)


def l2(v: torch.Tensor) -> torch.Tensor:
    return v.flatten(1).norm(dim=1)


# --- options and errors ---------------------------------------------------------------------------


def test_defaults_are_the_reference_values():
    p = DATParams()
    assert (p.norm, p.eps, p.step_size, p.steps) == ("L2", 0.1, 0.1, 1)
    assert (p.random_start, p.random_start_per_sample, p.attack_mode) == (0.8, False, "train")
    assert (p.weight, p.perturb, p.tokenizer_precision) == (1.0, "reconstruction", "fp32")


def test_config_accepts_dat_and_names_bad_keys():
    cfg = load_config("quickstart/baseline", ["objective.name=dat", "objective.tokenizer=/some/tok.safetensors"])
    assert cfg.objective["name"] == "dat" and cfg.objective["eps"] == 0.1
    with pytest.raises(ConfigError, match="objective.epsilon.*did you mean 'eps'"):
        load_config(None, ["objective.name=dat", "objective.epsilon=0.2"])
    with pytest.raises(ConfigError, match="objective.random_start"):
        load_config(None, ["objective.name=dat", "objective.random_start=1.5"])
    with pytest.raises(ConfigError, match="objective.perturb"):
        load_config(None, ["objective.name=dat", "objective.perturb=latent"])


def test_shipped_configs_keep_the_reference_algorithm():
    algorithm = ("norm", "eps", "step_size", "steps", "random_start", "random_start_per_sample", "attack_mode",
                 "weight", "perturb")
    defaults = DATParams().model_dump()
    for name in ("quickstart/dat", "recipes/dat_vit_base_imagenet"):
        cfg = load_config(name)
        assert cfg.objective["name"] == "dat" and cfg.objective["tokenizer"] is None  # given by the user
        assert {k: cfg.objective[k] for k in algorithm} == {k: defaults[k] for k in algorithm}, name
    cfg = load_config("recipes/dat_vit_base_imagenet")
    assert cfg.objective["tokenizer_preset"] == "vqgan_openimages_f8_16384" and cfg.objective["label_smoothing"] == 0.1
    assert (cfg.model.name, cfg.model.drop_path_rate, cfg.train.ema_decay) == ("vit_base_patch16_224", 0.25, 0.99992)
    assert (cfg.optim.name, cfg.optim.lr, cfg.optim.weight_decay, cfg.schedule.warmup_epochs) == ("adamw", 1e-3, 0.05, 5)
    assert (cfg.augment.mixup, cfg.augment.cutmix, cfg.augment.random_erasing) == (0.8, 1.0, 0.25)
    assert cfg.augment.randaugment.startswith("rand-m9-mstd0.5") and cfg.train.epochs == 300


def test_missing_tokenizer_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="objective.tokenizer: DAT needs a VQ tokenizer"):
        build_objective({"name": "dat"})
    with pytest.raises(ConfigError, match=f"nothing at {tmp_path / 'nope.safetensors'}"):
        build_objective({"name": "dat", "tokenizer": str(tmp_path / "nope.safetensors")})


def test_tokenizer_must_fit_the_training_images():
    rgb = SimpleNamespace(name="rgb", in_chans=3, img_size=32)
    with pytest.raises(ConfigError, match="1 input channels but the rgb images have 3"):
        build_objective({"name": "dat"}, ObjectiveContext(dataset=rgb), tokenizer=GridTokenizer())
    grey30 = SimpleNamespace(name="grey", in_chans=1, img_size=30)
    with pytest.raises(ConfigError, match="downsamples 4x but the images are 30 px"):
        build_objective({"name": "dat"}, ObjectiveContext(dataset=grey30), tokenizer=GridTokenizer(downsample=4))
    cfg = load_config(None, ["data.img_size=32"])  # the loader resizes to 32: fits
    build_objective({"name": "dat"}, ObjectiveContext(cfg=cfg, dataset=grey30), tokenizer=GridTokenizer(downsample=4))


def test_a_tokenizer_that_changes_the_shape_is_an_input_error():
    tok = GridTokenizer()
    tok.codes = lambda idx: (idx.float() / (LEVELS - 1))[:, None, ::2, ::2]
    with pytest.raises(InputError, match=r"maps \(6, 1, 4, 4\) images to \(6, 1, 2, 2\)"):
        dat(tok).loss(linear(), batch(), TrainState())


def test_the_tokenizer_is_frozen():
    tok = GridTokenizer().train()
    dat(tok)
    assert not tok.training and not tok.scale.requires_grad


# --- the algorithm, step by step ------------------------------------------------------------------


def test_without_random_start_x_adv_is_q_of_one_normalised_step_from_q_x_and_the_loss_adds_up():
    model, b, tok = linear(), batch(), GridTokenizer()
    loss, logs = dat(tok, random_start=0.0, weight=0.5).loss(model, b, TrainState())
    xq = grid(b.x)
    target = F.one_hot(b.y, 3).float()
    x1 = xq + 0.1 * unit(input_grad(model, xq, target))  # ||step|| = eps: the projection keeps it
    probe = model[0]
    assert len(probe.inputs) == 3  # clean, attack, adversarial: no extra forward
    assert torch.equal(probe.inputs[0], b.x)
    assert torch.allclose(probe.inputs[1], xq, atol=TOL)  # the attack starts at Q(x)
    assert len(tok.inputs) == 2 and torch.equal(tok.inputs[0], b.x)
    assert torch.allclose(tok.inputs[1], x1, atol=TOL)  # x1, handed to Q
    x_adv = probe.inputs[2]
    assert torch.equal(x_adv, grid(tok.inputs[1]))  # the model trains on Q(x1), never on x1
    assert not torch.equal(x_adv, xq)  # the step moved some pixels to another code
    with torch.no_grad():
        clean = F.cross_entropy(model[1:](b.x), b.y)
        adv = F.cross_entropy(model[1:](x_adv), b.y)
    assert loss.item() == pytest.approx((clean + 0.5 * adv).item(), abs=TOL)
    assert logs["clean_loss"].item() == pytest.approx(clean.item(), abs=TOL)
    assert logs["adv_loss"].item() == pytest.approx(adv.item(), abs=TOL)
    assert float(logs["random_start"]) == 0.0


def test_a_step_longer_than_eps_is_projected_back_onto_the_ball_around_q_x():
    model, b, tok = linear(), batch(), GridTokenizer()
    dat(tok, random_start=0.0, eps=0.05, step_size=0.3).loss(model, b, TrainState())
    xq = grid(b.x)
    expected = xq + 0.05 * unit(input_grad(model, xq, F.one_hot(b.y, 3).float()))
    assert torch.allclose(tok.inputs[1], expected, atol=TOL)
    assert torch.allclose(l2(tok.inputs[1] - xq), torch.full((6,), 0.05), atol=TOL)


def test_the_step_is_clipped_to_0_1():
    model, b, tok = linear(), batch(lo=0.0, hi=1.0), GridTokenizer()
    b.x[:, :, :2] = 0.0
    b.x[:, :, 2:] = 1.0  # every pixel saturated: most step components leave [0,1]
    dat(tok, random_start=0.0, eps=1.0, step_size=1.0).loss(model, b, TrainState())
    xq = grid(b.x)
    expected = (xq + unit(input_grad(model, xq, F.one_hot(b.y, 3).float()))).clamp(0, 1)
    assert torch.allclose(tok.inputs[1], expected, atol=TOL)
    assert tok.inputs[1].min() >= 0 and tok.inputs[1].max() <= 1


def test_random_start_lies_on_the_eps_sphere_and_the_result_stays_in_the_ball():
    for seed in range(5):
        model, b, tok = linear(), batch(seed=seed), GridTokenizer()
        torch.manual_seed(seed)
        _, logs = dat(tok, random_start=1.0).loss(model, b, TrainState())
        xq = grid(b.x)
        x0 = model[0].inputs[1]
        assert torch.allclose(l2(x0 - xq), torch.full((6,), 0.1), atol=TOL)  # interior: no clipping
        assert (l2(tok.inputs[1] - xq) <= 0.1 + TOL).all()
        assert float(logs["random_start"]) == 1.0
        # the step from x0 follows the normalised gradient at x0, then the projection around Q(x)
        step = x0 + 0.1 * unit(input_grad(model, x0, F.one_hot(b.y, 3).float())) - xq
        expected = xq + step * (0.1 / l2(step)).clamp(max=1).view(-1, 1, 1, 1)
        assert torch.allclose(tok.inputs[1], expected, atol=TOL)


@pytest.mark.parametrize("per_sample", [False, True])
def test_random_start_is_drawn_per_batch_or_per_sample_from_the_seeded_global_generator(per_sample):
    outcomes = []
    for seed in range(12):
        model, b = linear(), batch(n=16, seed=seed)
        torch.manual_seed(seed)
        expected = torch.rand(16) < 0.5 if per_sample else (torch.rand(()) < 0.5).expand(16)
        torch.manual_seed(seed)
        _, logs = dat(random_start=0.5, random_start_per_sample=per_sample).loss(model, b, TrainState())
        started = (model[0].inputs[1] - grid(b.x)).flatten(1).abs().amax(1) > TOL
        assert torch.equal(started, expected)
        assert float(logs["random_start"]) == pytest.approx(expected.float().mean().item())
        outcomes.append(started)
    started = torch.stack(outcomes)
    if per_sample:
        assert any(0 < row.sum() < 16 for row in started)  # mixed within a batch
    else:
        assert all(row.all() or not row.any() for row in started)  # all or none
        assert started.all(1).any() and not started.any(1).all()  # both outcomes over the seeds


def test_linf_option_starts_in_the_box_and_steps_by_the_gradient_sign():
    model, b, tok = linear(), batch(), GridTokenizer()
    torch.manual_seed(0)
    dat(tok, norm="Linf", eps=0.03, step_size=0.01, random_start=1.0).loss(model, b, TrainState())
    xq, x0 = grid(b.x), model[0].inputs[1]
    assert (x0 - xq).abs().max() <= 0.03 + TOL and (x0 - xq).abs().max() > 0.02
    sign = input_grad(model, x0, F.one_hot(b.y, 3).float()).sign()
    expected = xq + (x0 + 0.01 * sign - xq).clamp(-0.03, 0.03)
    assert torch.allclose(tok.inputs[1], expected, atol=TOL)


def test_mixed_batches_attack_the_soft_targets_with_label_smoothing():
    model, b, tok = linear(), batch(), GridTokenizer()
    lam = 0.7
    b.target = lam * F.one_hot(b.y, 3).float() + (1 - lam) * F.one_hot(b.y.flip(0), 3).float()
    loss, _ = dat(tok, random_start=0.0, label_smoothing=0.1).loss(model, b, TrainState())
    smoothed = b.target * 0.9 + 0.1 / 3
    xq = grid(b.x)
    assert torch.allclose(tok.inputs[1], xq + 0.1 * unit(input_grad(model, xq, smoothed)), atol=TOL)
    with torch.no_grad():
        def soft_ce(x):
            return -(smoothed * F.log_softmax(model[1:](x), -1)).sum(-1).mean()
        expected = soft_ce(b.x) + soft_ce(model[0].inputs[2])
    assert loss.item() == pytest.approx(expected.item(), abs=TOL)


def test_perturb_input_attacks_around_x_and_quantises_once():
    model, b, tok = linear(), batch(), GridTokenizer()
    dat(tok, random_start=0.0, perturb="input", eps=0.05, step_size=0.3).loss(model, b, TrainState())
    assert torch.equal(model[0].inputs[1], b.x)  # the attack starts at x, not Q(x)
    assert len(tok.inputs) == 1  # only Q(x1)
    expected = b.x + 0.05 * unit(input_grad(model, b.x, F.one_hot(b.y, 3).float()))
    assert torch.allclose(tok.inputs[0], expected, atol=TOL)
    assert torch.equal(model[0].inputs[2], grid(tok.inputs[0]))


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_attack_mode_applies_to_the_attack_pass_only(mode):
    torch.manual_seed(0)
    probe = Probe()
    model = nn.Sequential(probe, nn.Flatten(), nn.Linear(16, 8), nn.BatchNorm1d(8), nn.Dropout(0.5), nn.Linear(8, 3))
    model.train()
    dat(random_start=0.0, attack_mode=mode).loss(model, batch(), TrainState())
    assert probe.modes == [True, mode == "train", True]
    assert model.training and all(m.training for m in model.modules())
    # BatchNorm statistics move on every train-mode pass, the attack's included only in train mode
    assert int(model[3].num_batches_tracked) == (3 if mode == "train" else 2)


def test_the_attack_leaves_parameter_gradients_alone_and_runs_on_the_unwrapped_model():
    inner = linear()
    outer = nn.Sequential(Probe(), inner)  # stands for the DDP wrapper
    for p in inner.parameters():
        p.grad = torch.full_like(p, 7.0)
    loss, _ = dat(random_start=1.0).loss(outer, batch(), TrainState(model=inner))
    assert all(torch.equal(p.grad, torch.full_like(p, 7.0)) for p in inner.parameters())
    assert len(outer[0].inputs) == 2 and len(inner[0].inputs) == 3  # the attack pass bypassed the wrapper
    assert loss.requires_grad


@pytest.mark.parametrize("gradient", ["auto", "exact"])
def test_a_model_with_a_quantiser_inside_is_attacked_straight_through_by_default(gradient):
    torch.manual_seed(0)
    rounding = RoundToGrid(8)
    model = nn.Sequential(Probe(), rounding, nn.Flatten(), nn.Linear(16, 3))
    b, tok = batch(), GridTokenizer()
    dat(tok, random_start=0.0, gradient=gradient).loss(model, b, TrainState())
    xq = grid(b.x)
    if gradient == "exact":  # rounding has no gradient: the step is zero
        assert torch.allclose(tok.inputs[1], xq, atol=TOL)
    else:  # straight through the rounding: the linear model's gradient at the rounded input
        lin = model[3]
        p = F.softmax(lin(rounding(xq).flatten(1)), -1)
        g = ((p - F.one_hot(b.y, 3).float()) @ lin.weight).view_as(xq)
        assert torch.allclose(tok.inputs[1], xq + 0.1 * unit(g), atol=TOL)
    assert rounding.straight_through is False  # put back after the attack


def test_precision_the_tokenizer_runs_in_fp32_and_the_attack_under_the_trainers_autocast():
    for attack_precision, tokenizer_precision in [("train", "fp32"), ("fp32", "train")]:
        model, tok = linear(), GridTokenizer()
        obj = dat(tok, attack_precision=attack_precision, tokenizer_precision=tokenizer_precision)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss, _ = obj.loss(model, batch(), TrainState())
        assert torch.isfinite(loss)
        assert model[0].autocast == [True, attack_precision == "train", True]
        assert tok.autocast == [tokenizer_precision == "train"] * 2


def test_zero_eps_trains_on_q_of_q_x_without_an_attack_pass():
    model, b, tok = linear(), batch(), GridTokenizer()
    dat(tok, eps=0.0).loss(model, b, TrainState())
    assert len(model[0].inputs) == 2
    assert torch.equal(tok.inputs[1], grid(b.x)) and torch.equal(model[0].inputs[1], grid(b.x))


# --- training runs with a real (tiny, untrained) tokenizer ----------------------------------------

TINY_RUN = ["device=cpu", "data.batch_size=32", "train.epochs=2", "train.log_every=1", "train.eval_subset=32",
            "objective.name=dat", "objective.random_start=1.0"]


def tiny_tokenizer(path: Path) -> Path:
    torch.manual_seed(0)
    tok = vqgan.build_tokenizer("vq_f4_32px", ch=8, z_channels=4, embed_dim=4, n_embed=16)
    return tokenizer_io.save_tokenizer(tok, path)


def test_training_loads_the_tokenizer_once_and_logs_the_dat_metrics(tiny_idx_root, tmp_path, monkeypatch):
    calls = []
    real = tokenizer_io.load_tokenizer

    def counting(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(dat_module, "load_tokenizer", counting)
    tok = tiny_tokenizer(tmp_path / "tok.safetensors")
    cfg = load_config("quickstart/baseline", [*TINY_RUN, f"data.root={tiny_idx_root}", f"objective.tokenizer={tok}"])
    with torch_flags_restored():
        run = Trainer(cfg, tmp_path / "run", progress=False).fit()
    assert len(calls) == 1  # once per run, not per epoch or step (2 epochs x 2 steps here)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if r["kind"] == "train"]
    assert len(train_rows) == 4
    for r in train_rows:
        assert {"loss", "clean_loss", "adv_loss", "acc", "adv_acc", "random_start"} <= r.keys()
        assert r["loss"] == pytest.approx(r["clean_loss"] + r["adv_loss"], rel=1e-5)
        assert r["random_start"] == 1.0 and 0 <= r["adv_acc"] <= 1


@pytest.mark.slow
def test_vitrobust_train_with_dat_end_to_end(tiny_idx_root, tmp_path):
    tok = tiny_tokenizer(tmp_path / "tok.safetensors")
    run = tmp_path / "dat"
    overrides = [*TINY_RUN, "train.epochs=1", f"data.root={tiny_idx_root}", f"objective.tokenizer={tok}"]
    proc = run_cmd([*vitrobust_cmd(), "train", "quickstart/baseline", *set_args(overrides), "--out", run,
                    "--no-progress"], cwd=tmp_path)
    assert proc.returncode == 0, explain(proc)
    saved = load_config(run / "config.yaml")
    assert saved.objective["name"] == "dat" and saved.objective["tokenizer"] == str(tok)
    with torch_flags_restored():  # the same config's initial weights: training moved them
        init = Trainer(saved, tmp_path / "init", progress=False).model.state_dict()
    trained = tensors(run / "model.safetensors")
    assert trained.keys() == init.keys() and any(not torch.equal(trained[k], init[k]) for k in init)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["kind"] for r in rows].count("train") == 2 and all(
        0 < r["adv_loss"] < 10 for r in rows if r["kind"] == "train")


def test_a_run_without_tokenizer_stops_before_writing_anything(tiny_idx_root, tmp_path):
    cfg = load_config("quickstart/baseline", [*TINY_RUN, f"data.root={tiny_idx_root}"])
    with pytest.raises(ConfigError, match="objective.tokenizer: DAT needs a VQ tokenizer"):
        Trainer(cfg, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("gradient", ["auto", "exact"])
def test_a_discrete_only_drvit_is_attacked_straight_through_and_exact_gives_no_step(gradient):
    import timm

    torch.manual_seed(0)
    inner_tok = vqgan.build_tokenizer("vq_f4_32px", ch=8, z_channels=8, embed_dim=8, n_embed=16, norm_groups=4)
    model = timm.create_model("drvit_discrete_nano_patch4_32", tokenizer=inner_tok, in_chans=1, embed_dim=32,
                              depth=1, num_heads=2).train()
    gen = torch.Generator().manual_seed(0)
    x = 0.2 + 0.6 * torch.rand(4, 1, 32, 32, generator=gen)  # interior: no clipping
    b = Batch(x=x, y=torch.tensor([0, 1, 2, 3]), index=torch.arange(4))
    tok = GridTokenizer()
    loss, _ = dat(tok, random_start=0.0, gradient=gradient).loss(model, b, TrainState())
    moved = l2(tok.inputs[1] - grid(b.x))
    if gradient == "exact":  # the code choice has no gradient, and the input reaches the ViT only through it
        assert torch.equal(moved, torch.zeros(4))
    else:
        assert torch.allclose(moved, torch.full((4,), 0.1), atol=1e-5)
    assert torch.isfinite(loss) and loss.requires_grad
    internal = [m for m in model.modules() if isinstance(m, vqgan.VQTokenizer)]
    assert internal and all(not m.straight_through and not m.training for m in internal)
