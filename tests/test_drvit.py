"""Dr.ViT: token layout, frozen tokenizer, grid matching, straight-through attacks, save/load."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import timm
import torch
import torch.nn.functional as F
from timm.optim import create_optimizer_v2
from timm.scheduler import CosineLRScheduler

from vitrobust.attacks.pgd import pgd_attack
from vitrobust.attacks.straight_through import attack_gradients, resolve_gradient
from vitrobust.checkpoint import save_weights
from vitrobust.config import Config, load_config
from vitrobust.errors import InputError, ModelError
from vitrobust.evaluate import evaluate
from vitrobust.models import build_model, model_spec
from vitrobust.models.drvit import BCE_HEAD_BIAS, CODEBOOK_DELTA_LR_SCALE, DRVIT_MODELS, param_groups
from vitrobust.models.io import load_model
from vitrobust.models.tokenizer_io import save_tokenizer
from vitrobust.models.vqgan import build_tokenizer
from vitrobust.train.trainer import Trainer

pytestmark = pytest.mark.usefixtures("one_thread")

# f=4 on 32 px: an 8x8 code grid = the patch-4 grid, and twice the patch-8 grid
TINY_TOKENIZER = {"ch": 8, "ch_mult": [1, 2, 2], "num_res_blocks": 1, "attn_resolutions": [], "z_channels": 8,
                  "embed_dim": 8, "n_embed": 16, "in_channels": 1, "resolution": 32, "norm_groups": 4}
TINY_VIT = {"in_chans": 1, "embed_dim": 32, "depth": 1, "num_heads": 2, "pixel_channels": 16}
CODE_DIM = TINY_TOKENIZER["embed_dim"]


@pytest.fixture
def tok():
    torch.manual_seed(0)
    tokenizer = build_tokenizer(**TINY_TOKENIZER)
    with torch.no_grad():  # codes drawn from the encoder's own outputs, so images use many of them
        z = tokenizer.latent(images(8, seed=9)).permute(0, 2, 3, 1).reshape(-1, CODE_DIM)
        tokenizer.codebook.embedding.weight.copy_(z[torch.randperm(len(z))[:16]])
    return tokenizer.eval()


def drvit(name: str, tokenizer, **kwargs):
    torch.manual_seed(1)
    return timm.create_model(name, tokenizer=tokenizer, **{**TINY_VIT, **kwargs}).eval()


def images(n: int = 4, seed: int = 2) -> torch.Tensor:
    return torch.rand(n, 1, 32, 32, generator=torch.Generator().manual_seed(seed))


def tokens_of(codes: torch.Tensor) -> torch.Tensor:
    return codes.flatten(2).transpose(1, 2)


def test_fusion_token_is_pixels_then_codes_then_zeros(tok):
    model = drvit("drvit_nano_patch4_32", tok, pixel_channels=12)
    x = images()
    with torch.no_grad():
        emb = model.patch_embed(x)
        proj = model.patch_embed.proj
        pixels = tokens_of(F.conv2d(x, proj.weight, proj.bias, stride=4))
        codes = tokens_of(tok.codes(tok.encode(x)))
    assert emb.shape == (4, 64, 32)
    assert tok.encode(x).unique().numel() > 1
    torch.testing.assert_close(emb[..., :12], pixels)
    torch.testing.assert_close(emb[..., 12:12 + CODE_DIM], codes, rtol=0, atol=0)
    assert torch.all(emb[..., 12 + CODE_DIM:] == 0)


def test_auto_pixel_channels_fill_the_width_and_too_many_are_refused(tok):
    model = drvit("drvit_nano_patch4_32", tok, pixel_channels="auto")
    x = images(2)
    assert model.patch_embed.proj.out_channels == 32 - CODE_DIM
    with torch.no_grad():
        emb = model.patch_embed(x)
        torch.testing.assert_close(emb[..., 32 - CODE_DIM:], tokens_of(tok.codes(tok.encode(x))))
    with pytest.raises(ModelError, match="pixel_channels=30"):
        drvit("drvit_nano_patch4_32", tok, pixel_channels=30)


def test_normalised_input_reaches_the_tokenizer_as_pixels(tok, tiny_spec):
    spec = {**tiny_spec, "name": "drvit_nano_patch4_32", "kwargs": {**TINY_VIT, "tokenizer": tok}}
    model = build_model(spec).eval()
    x = images()
    with torch.no_grad():
        emb = model.net.patch_embed(model.normalize(x))
    p = model.net.patch_embed.pixel_channels
    torch.testing.assert_close(emb[..., p:p + CODE_DIM], tokens_of(tok.codes(tok.encode(x))), rtol=0, atol=0)


def test_code_grid_twice_the_patch_grid_goes_through_a_2x2_stride_2_conv(tok):
    model = drvit("drvit_pico_patch8_32", tok)  # patch 8: 4x4 patches, 8x8 codes
    merge = model.patch_embed.merge
    assert isinstance(merge, torch.nn.Conv2d) and merge.kernel_size == (2, 2) and merge.stride == (2, 2)
    assert model.pos_embed.shape == (1, 1 + 16, 32)
    x = images()
    with torch.no_grad():
        emb = model.patch_embed(x)
        merged = F.conv2d(tok.codes(tok.encode(x)), merge.weight, merge.bias, stride=2)
    torch.testing.assert_close(emb[..., 16:16 + CODE_DIM], tokens_of(merged))
    assert model(x).shape == (4, 10)


def test_grids_that_cannot_match_and_wrong_channels_are_clear_errors(tok):
    with pytest.raises(ModelError, match=r"code grid 8x8 .* patch grid 2x2 .* patch size 4 or 8"):
        drvit("drvit_nano_patch4_32", tok, patch_size=16)
    with pytest.raises(ModelError, match="1-channel images but the model has in_chans=3"):
        drvit("drvit_nano_patch4_32", tok, in_chans=3)


def test_tokenizer_stays_frozen_in_eval_mode_through_a_training_step(tok):
    model = drvit("drvit_pico_patch8_32", tok).train()
    frozen = model.tokenizer
    assert frozen is not tok and not any(m.training for m in frozen.modules())
    assert model.blocks[0].training and not list(frozen.parameters())  # frozen state is buffers, not parameters
    assert "encoder.conv_in.weight" in dict(frozen.named_buffers())
    assert not hasattr(frozen, "decoder") and not any(".decoder." in k for k in model.state_dict())
    before = {k: v.clone() for k, v in frozen.state_dict().items()}
    head_before = model.head.weight.clone()
    opt = create_optimizer_v2(model, "adamw", lr=1e-2, weight_decay=0.05,
                              param_group_fn=lambda m: param_groups(m, 0.05))
    loss = F.cross_entropy(model(images()), torch.arange(4))
    loss.backward()
    opt.step()
    assert all(torch.equal(before[k], v) for k, v in frozen.state_dict().items())
    assert not torch.equal(head_before, model.head.weight)
    assert not any(m.training for m in frozen.modules())


def test_codebook_delta_adds_to_the_codes_and_trains_at_lr_over_100(tok):
    model = drvit("drvit_nano_patch4_32", tok, codebook_delta=True, pixel_channels=8)
    delta = model.patch_embed.codebook_delta
    assert delta.shape == (16, CODE_DIM) and torch.all(delta == 0)
    with torch.no_grad():
        delta.copy_(torch.arange(16 * CODE_DIM, dtype=torch.float32).view(16, CODE_DIM))
    x = images()
    idx = tok.encode(x)
    with torch.no_grad():
        emb = model.patch_embed(x)
    expected = tok.codes(idx) + delta.detach()[idx].permute(0, 3, 1, 2)
    torch.testing.assert_close(emb[..., 8:8 + CODE_DIM], tokens_of(expected))

    opt = create_optimizer_v2(model, "adamw", lr=1e-3, weight_decay=0.1, param_group_fn=lambda m: param_groups(m, 0.1))
    sched = CosineLRScheduler(opt, t_initial=100, warmup_t=0, t_in_epochs=False)
    sched.step_update(10)
    lrs = {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}
    assert lrs[id(delta)] == pytest.approx(CODEBOOK_DELTA_LR_SCALE * lrs[id(model.head.weight)])
    assert lrs[id(model.head.weight)] < 1e-3  # the schedule applies to both
    decay = {id(p): g["weight_decay"] for g in opt.param_groups for p in g["params"]}
    assert decay[id(model.head.bias)] == 0 and decay[id(model.head.weight)] == 0.1
    assert sum(len(g["params"]) for g in opt.param_groups) == sum(p.requires_grad for p in model.parameters())


def test_discrete_only_projects_the_code_vectors_and_ignores_sub_code_changes(tok):
    model = drvit("drvit_discrete_nano_patch4_32", tok)
    proj = model.patch_embed.proj
    assert proj.in_channels == CODE_DIM and proj.kernel_size == (1, 1)
    x = images()
    with torch.no_grad():
        emb = model.patch_embed(x)
        expected = F.conv2d(tok.codes(tok.encode(x)), proj.weight, proj.bias)
        torch.testing.assert_close(emb, tokens_of(expected))
        x2 = (x + 1e-4 * torch.randn_like(x)).clamp(0, 1)
        assert torch.equal(tok.encode(x2), tok.encode(x))
        assert torch.equal(model(x2), model(x))


def test_straight_through_gives_the_attack_a_gradient_and_the_same_forward(tok):
    model = drvit("drvit_nano_patch4_32", tok, pixel_channels=8)
    x = images().requires_grad_(True)
    code_part = model.patch_embed(x)[..., 8:8 + CODE_DIM].sum()
    (exact,) = torch.autograd.grad(code_part, x, allow_unused=True)
    assert torch.all(exact == 0)  # the code choice has no gradient: white-box attacks are masked
    assert resolve_gradient(model) == "straight-through" and resolve_gradient(model, "exact") == "exact"
    with attack_gradients(model) as mode:
        assert mode == "straight-through" and model.tokenizer.straight_through
        emb = model.patch_embed(x)
        (grad,) = torch.autograd.grad(emb[..., 8:8 + CODE_DIM].sum(), x)
    assert not model.tokenizer.straight_through
    assert grad.abs().sum() > 0
    with torch.no_grad():
        torch.testing.assert_close(emb.detach(), model.patch_embed(x))  # z + (q - z): q up to rounding


def test_pgd_with_straight_through_lowers_the_accuracy_of_a_discrete_only_model(tok):
    model = drvit("drvit_discrete_nano_patch4_32", tok).train()
    x, y = images(16), torch.arange(16) % 10
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=5e-3)
    for _ in range(40):  # fit the 16 images, so there is accuracy to attack
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    xg = x.clone().requires_grad_(True)
    assert torch.autograd.grad(F.cross_entropy(model(xg), y), xg, allow_unused=True)[0] is None  # exact: none
    with pytest.raises(InputError, match="no gradient path.*straight-through"):
        pgd_attack(model, x, y, eps=0.1, steps=2)  # an exact-gradient attack says why, instead of a torch error
    eps = 0.1
    with attack_gradients(model):
        (grad,) = torch.autograd.grad(F.cross_entropy(model(xg), y), xg)
        x_adv = pgd_attack(model, x, y, eps=eps, steps=10)
    assert grad.abs().sum() > 0
    assert (x_adv - x).abs().max() <= eps + 1e-6
    noise = (x + eps * torch.randn(x.shape, generator=torch.Generator().manual_seed(5)).sign()).clamp(0, 1)
    with torch.no_grad():
        clean, robust, noisy = ((model(v).argmax(-1) == y).float().mean().item() for v in (x, x_adv, noise))
    assert clean >= 0.75
    assert robust <= min(noisy, clean - 0.5)


def test_bce_head_starts_at_the_reference_bias_and_bad_options_are_refused(tok):
    model = drvit("drvit_nano_patch4_32", tok, head="bce")
    assert torch.all(model.head.bias == BCE_HEAD_BIAS)
    with pytest.raises(ModelError, match="head must be"):
        drvit("drvit_nano_patch4_32", tok, head="sigmoid")
    with pytest.raises(ModelError, match="does not exist"):
        drvit("drvit_nano_patch4_32", "/nonexistent/tokenizer.safetensors")


def test_every_name_is_in_timm_and_builds_without_a_tokenizer():
    assert set(timm.list_models("drvit_*")) >= set(DRVIT_MODELS)
    for name in ("drvit_tiny_patch4_32", "drvit_discrete_pico_patch8_32"):
        with pytest.warns(UserWarning, match="RANDOM vq_f4_32px tokenizer"):
            model = timm.create_model(name, depth=1)
        assert model(torch.rand(1, 3, 32, 32)).shape == (1, 10)
    f16 = {**TINY_TOKENIZER, "ch_mult": [1, 1, 1, 1, 1], "in_channels": 3, "resolution": 224}
    with pytest.warns(UserWarning, match="RANDOM"):
        model = timm.create_model("drvit_discrete_small_patch16_224", depth=1, tokenizer_arch=f16)
    assert model.patch_embed.grid_size == (14, 14) and model(torch.rand(1, 3, 224, 224)).shape == (1, 1000)


def test_saved_model_rebuilds_from_its_weights_file_without_the_tokenizer_file(tok, tmp_path):
    tok_file = save_tokenizer(tok, tmp_path / "tok.safetensors")
    cfg = Config(model={"name": "drvit_pico_patch8_32", "kwargs": {**TINY_VIT, "tokenizer": str(tok_file)}})
    data = SimpleNamespace(num_classes=10, in_chans=1, img_size=32, mean=[0.3], std=[0.4])
    assert "tokenizer_arch" not in model_spec(cfg, data)["kwargs"]  # the built network adds it (spec_kwargs hook)
    torch.manual_seed(3)
    model = build_model(model_spec(cfg, data)).eval()
    spec = model.spec
    assert spec["kwargs"]["tokenizer_arch"] == tok.arch
    save_weights(model, tmp_path / "model.safetensors", spec)
    tok_file.unlink()
    with pytest.warns(UserWarning, match="not found; building its recorded layout"):
        loaded = load_model(tmp_path / "model.safetensors")
    x = images()
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
    torch.testing.assert_close(loaded.net.tokenizer.codebook.embedding.weight, tok.codebook.embedding.weight)
    other = build_tokenizer(**{**TINY_TOKENIZER, "n_embed": 32})
    save_tokenizer(other, tok_file)
    with pytest.raises(ModelError, match="changed since the model was saved"):
        build_model(spec)


def test_trainer_trains_a_drvit_and_the_run_loads_back(tok, tiny_idx_root, tmp_path):
    tok_file = save_tokenizer(tok, tmp_path / "tok.safetensors")
    cfg = load_config("quickstart/drvit", [
        "device=cpu", f"data.root={tiny_idx_root}", "data.batch_size=32", "train.epochs=1", "train.eval_subset=16", "evaluate.attack.subset=8",
        "model.kwargs.embed_dim=32", "model.kwargs.pixel_channels=16", "model.kwargs.depth=1", "model.kwargs.num_heads=2",
        f"model.kwargs.tokenizer={tok_file}", "schedule.warmup_epochs=0"])
    trainer = Trainer(cfg, tmp_path / "run", progress=False)
    trainer.fit()
    loaded = load_model(tmp_path / "run")
    assert loaded.spec["kwargs"]["tokenizer_arch"] == tok.arch
    x = images()
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), trainer.model.eval()(x))
    assert torch.equal(loaded.net.tokenizer.codebook.embedding.weight, tok.codebook.embedding.weight)
    res = evaluate(loaded, "pgd", cfg=cfg, data=trainer.eval_set, subset=8, device="cpu")["pgd"]
    assert res["gradient"] == "straight-through" and res["n"] == 8
