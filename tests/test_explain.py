"""Relevance maps (vitrobust.explain): the captured attention, the Chefer rule against hand-built matrix
recursions (ViT, DeiT distilled, CaiT, Dr.ViT), rollout, targets, the differentiable path, unsupported
models, the overlay figure, and `vitrobust explain` end to end on a tiny trained run."""

from __future__ import annotations

import warnings

import pytest
import timm
import torch
import torch.nn.functional as F
from helpers_train import tiny_config, train_run
from PIL import Image

import vitrobust  # noqa: F401  (registers the small ViTs and Dr.ViT in timm)
from vitrobust.cli import main
from vitrobust.data import load_split
from vitrobust.errors import InputError
from vitrobust.explain import UnsupportedModel, capture_attention, explain, relevance_map
from vitrobust.explain.relevance import normalise, reference_relevance
from vitrobust.figures.relevance import relevance_grid
from vitrobust.models import build_model
from vitrobust.models.io import load_model

pytestmark = pytest.mark.usefixtures("one_thread")


def vit(depth: int = 1, num_classes: int = 10, name: str = "vit_pico_patch8_32", **kwargs) -> torch.nn.Module:
    """A small 1-channel 32-px model (16 patches of 8 px) in eval mode."""
    torch.manual_seed(0)
    spec = {"name": name, "num_classes": num_classes, "in_chans": 1, "img_size": 32, "mean": [0.25], "std": [0.5],
            "kwargs": {"embed_dim": 32, "depth": depth, "num_heads": 2, **kwargs}}
    return build_model(spec).eval()


def images(n: int = 3, channels: int = 1, seed: int = 1) -> torch.Tensor:
    return torch.rand(n, channels, 32, 32, generator=torch.Generator().manual_seed(seed))


def upsampled(tokens: torch.Tensor, size: int = 32) -> torch.Tensor:
    """B x gh x gw token relevance -> B x size x size, bilinear, min-max per image (the map's last steps)."""
    return normalise(F.interpolate(tokens[:, None], size=(size, size), mode="bilinear", align_corners=False)[:, 0])


def captured_attention_and_grads(model, x, target):
    """A^l and dA^l s, each gradient from its own autograd.grad call, as the reference computes them."""
    with capture_attention(model) as captured:
        logits = model(x)
    attns = [c.attn for c in captured]
    score = logits.gather(1, target[:, None]).sum()
    grads = [torch.autograd.grad(score, [a], retain_graph=True)[0] for a in attns]
    return logits, attns, grads


def chefer_by_matrices(model, x, target, prefix: int = 1) -> torch.Tensor:
    """Rules 5-6 with the full N x N matrix R: R = I, R <- R + Abar R; tokens = R[:, 0, prefix:] on the grid."""
    _, attns, grads = captured_attention_and_grads(model, x, target)
    n = attns[0].shape[-1]
    r = torch.eye(n).expand(len(x), n, n)
    for a, g in zip(attns, grads):
        r = r + (g * a).clamp(min=0).mean(1) @ r
    side = int(round((n - prefix) ** 0.5))
    return r[:, 0, prefix:].reshape(-1, side, side).detach()


# --- the Chefer rule ----------------------------------------------------------------------------


def test_one_block_map_is_abar_cls_row_of_the_true_attention_and_gradient():
    """One block: R = I + Abar, so the patch relevance is Abar[:, 0, 1:]. A is checked against softmax(q k^T
    * scale) computed from the block's own weights, and G against a finite difference through A."""
    model = vit(depth=1).double()
    x, target = images().double(), torch.tensor([3, 1, 4])
    net = model.net
    block_input = {}
    handle = net.blocks[0].norm1.register_forward_hook(lambda m, i, o: block_input.setdefault("h", o.detach()))
    logits, attns, grads = captured_attention_and_grads(model, x, target)
    handle.remove()
    attn_mod = net.blocks[0].attn
    qkv = attn_mod.qkv(block_input["h"]).reshape(3, 17, 3, 2, 16).permute(2, 0, 3, 1, 4)  # B=3, N=17, heads 2
    expected_a = torch.softmax((qkv[0] @ qkv[1].transpose(-2, -1)) * attn_mod.scale, dim=-1)
    assert attns[0].shape == (3, 2, 17, 17)
    assert torch.allclose(attns[0], expected_a, atol=1e-10)

    # <G, D> = d/de s(A + e D): perturb the captured tensor itself (the one multiplied with V)
    direction = torch.randn(attns[0].shape, dtype=torch.float64, generator=torch.Generator().manual_seed(2))

    def score(eps: float) -> float:
        attn_mod.fused_attn = False  # the fused kernel never calls attn_drop
        h = attn_mod.attn_drop.register_forward_hook(lambda m, i, o: o + eps * direction)
        with torch.no_grad():
            s = model(x).gather(1, target[:, None]).sum().item()
        h.remove()
        return s

    eps = 1e-5
    assert (grads[0] * direction).sum().item() == pytest.approx((score(eps) - score(-eps)) / (2 * eps), rel=1e-6)

    abar = (grads[0] * attns[0]).clamp(min=0).mean(dim=1)
    tokens = abar[:, 0, 1:].reshape(3, 4, 4)
    got = explain(model, x, target)
    assert torch.allclose(got.tokens.double(), tokens, atol=1e-6)
    assert torch.allclose(got.maps.double(), upsampled(tokens), atol=1e-5)
    assert torch.equal(got.target, target)


def test_deep_model_single_call_equals_per_block_calls_and_the_matrix_recursion():
    model, x, target = vit(depth=3), images(4), torch.tensor([0, 5, 9, 2])
    single = explain(model, x, target)
    per_block = explain(model, x, target, per_block_grads=True)
    assert torch.allclose(single.maps, per_block.maps, atol=1e-7)
    tokens = chefer_by_matrices(model, x, target)
    assert torch.allclose(single.tokens, tokens, atol=1e-6)
    assert torch.allclose(single.maps, upsampled(tokens), atol=1e-5)
    assert torch.allclose(reference_relevance(model, x, target), single.maps, atol=1e-5)


def test_maps_are_batched_in_unit_range_and_constant_maps_give_zeros():
    model, x = vit(depth=2), images(5)
    maps = relevance_map(model, x)
    assert maps.shape == (5, 32, 32) and not maps.requires_grad
    assert torch.isfinite(maps).all()
    flat = maps.flatten(1)
    assert torch.allclose(flat.min(1).values, torch.zeros(5)) and torch.allclose(flat.max(1).values, torch.ones(5))
    # each image's map is its own: the batch gives what single images give
    assert torch.allclose(relevance_map(model, x[2:3]), maps[2:3], atol=1e-5)
    constant = normalise(torch.full((2, 4, 4), 0.3))
    assert torch.equal(constant, torch.zeros(2, 4, 4))


def test_target_prediction_vs_label():
    model, x = vit(depth=2), images(4)
    with torch.no_grad():
        pred = model(x).argmax(-1)
    wrong = (pred + 1) % 10
    by_pred = explain(model, x)  # target None: the prediction
    assert torch.equal(by_pred.target, pred)
    assert torch.allclose(by_pred.maps, explain(model, x, pred).maps)
    by_label = explain(model, x, wrong)
    for i in range(4):
        assert not torch.allclose(by_label.maps[i], by_pred.maps[i], atol=1e-3)
    with pytest.raises(InputError, match="one per image"):
        explain(model, x, torch.tensor([1, 2]))
    with pytest.raises(InputError, match="0..9"):
        explain(model, x, torch.tensor([1, 2, 3, 10]))


def test_differentiable_maps_carry_the_graph_through_attention_with_constant_gradients():
    """d(maps)/d(weights) flows through A only: the test rebuilds the map with G detached and compares."""
    model, x, target = vit(depth=2), images(2), torch.tensor([1, 7])
    weight = torch.randn(2, 32, 32, generator=torch.Generator().manual_seed(3))
    got = explain(model, x, target, differentiable=True)
    assert got.maps.requires_grad and got.logits.requires_grad
    (got.maps * weight).sum().backward()
    ours = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    assert ours["net.blocks.0.attn.qkv.weight"].abs().sum() > 0
    model.zero_grad()

    _, attns, grads = captured_attention_and_grads(model, x, target)
    r = torch.eye(17).expand(2, 17, 17)
    for a, g in zip(attns, grads):
        r = r + (g.detach() * a).clamp(min=0).mean(1) @ r
    (upsampled(r[:, 0, 1:].reshape(2, 4, 4)) * weight).sum().backward()
    for name, p in model.named_parameters():
        if name in ours:
            assert torch.allclose(ours[name], p.grad, atol=1e-5, rtol=1e-4), name
    detached = explain(model, x, target)
    assert not detached.maps.requires_grad and not detached.logits.requires_grad


def test_capture_restores_fused_attention_and_removes_hooks():
    model = vit(depth=2)
    attn = model.net.blocks[0].attn
    attn.fused_attn = True
    explain(model, images(2))
    assert attn.fused_attn is True
    assert not attn.attn_drop._forward_hooks
    with pytest.raises(RuntimeError):
        with capture_attention(model):
            assert attn.fused_attn is False
            raise RuntimeError("boom")
    assert attn.fused_attn is True and not attn.attn_drop._forward_hooks


# --- rollout ------------------------------------------------------------------------------------


def test_rollout_is_the_product_of_residual_mixed_attention():
    model, x = vit(depth=2), images(3)
    with torch.no_grad(), capture_attention(model) as captured:
        model(x)
    mixed = [(c.attn.mean(1) + torch.eye(17)) / 2 for c in captured]  # rows of A sum to 1: (A + I) / 2
    rollout = mixed[1] @ mixed[0]
    got = explain(model, x, method="rollout")
    assert torch.allclose(got.tokens, rollout[:, 0, 1:].reshape(3, 4, 4), atol=1e-6)
    # the target plays no part in rollout
    assert torch.allclose(explain(model, x, torch.tensor([0, 0, 0]), method="rollout").maps, got.maps)


# --- other families -----------------------------------------------------------------------------


def test_deit_distilled_drops_the_distillation_token():
    torch.manual_seed(0)
    net = timm.create_model("deit_tiny_distilled_patch16_224", num_classes=10, img_size=32, patch_size=8,
                            embed_dim=32, depth=2, num_heads=2).eval()
    x, target = images(2, 3), torch.tensor([2, 6])
    got = explain(net, x, target)
    assert got.tokens.shape == (2, 4, 4)
    assert torch.allclose(got.tokens, chefer_by_matrices(net, x, target, prefix=2), atol=1e-6)


def test_cait_class_attention_updates_only_the_cls_row():
    """CaiT: talking-heads self-attention over the 16 patches, then the CLS token attends over [CLS, patches].
    Hand recursion in the full 17-token space: patch blocks act on R[1:, 1:], class blocks on R's row 0."""
    torch.manual_seed(0)
    net = timm.create_model("cait_xxs24_224", num_classes=10, img_size=32, patch_size=8, embed_dim=32, depth=2,
                            num_heads=2, depth_token_only=2).eval()
    x, target = images(2, 3), torch.tensor([4, 8])
    _, attns, grads = captured_attention_and_grads(net, x, target)
    assert [tuple(a.shape[-2:]) for a in attns] == [(16, 16), (16, 16), (1, 17), (1, 17)]
    r = torch.eye(17).expand(2, 17, 17)
    for a, g in zip(attns, grads):
        abar = (g * a).clamp(min=0).mean(1)
        m = torch.eye(17).repeat(2, 1, 1)
        if abar.shape[-2] == 16:
            m[:, 1:, 1:] += abar
        else:
            m[:, 0:1, :] += abar
        r = m @ r
    got = explain(net, x, target)
    assert torch.allclose(got.tokens, r[:, 0, 1:].reshape(2, 4, 4).detach(), atol=1e-6)
    with pytest.raises(UnsupportedModel, match="talking-heads"):
        explain(net, x, method="rollout")


def test_drvit_maps_follow_the_rule():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a random tokenizer: fine for the relevance arithmetic
        model = vit(depth=2, name="drvit_pico_patch8_32", embed_dim=96)  # pixel 32 | code 32 | zeros 32
    x, target = images(2), torch.tensor([1, 2])
    got = explain(model, x, target)
    assert got.maps.shape == (2, 32, 32)
    assert torch.allclose(got.tokens, chefer_by_matrices(model, x, target), atol=1e-6)


def test_unsupported_models_raise_clear_errors():
    xcit = timm.create_model("xcit_nano_12_p8_224", num_classes=10, img_size=32, depth=1)
    with pytest.raises(UnsupportedModel, match="cross-covariance attention"):
        explain(xcit, images(1, 3))
    pooled = timm.create_model("vit_pico_patch8_32", num_classes=10, in_chans=1, global_pool="avg", class_token=False)
    with pytest.raises(UnsupportedModel, match="global_pool='token'"):
        explain(pooled, images(1))
    convnet = timm.create_model("resnet10t", num_classes=10, in_chans=1)
    with pytest.raises(UnsupportedModel, match="no attention layers"):
        explain(convnet, images(1))
    with pytest.raises(InputError, match="unknown relevance method"):
        explain(vit(), images(1), method="gradcam")


# --- figures ------------------------------------------------------------------------------------


def test_relevance_grid_png(tmp_path):
    x, maps = images(5), torch.rand(5, 32, 32)
    masks = torch.rand(5, 1, 32, 32) > 0.5
    with_mask = relevance_grid(x, maps, tmp_path / "a.png", masks=masks, labels=[0, 1, 2, 3, 4], preds=[0, 1, 1, 3, 4],
                               targets=[0, 1, 2, 3, 4], classes=list("abcdefghij"), columns=4)
    without = relevance_grid(x, maps, tmp_path / "b.png", columns=4)
    for path in (with_mask, without):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # two groups of columns (5 images, 4 per group), 3 rows each with masks, 2 without
    h_mask, h_plain = Image.open(with_mask).size[1], Image.open(without).size[1]
    assert h_mask > 1.3 * h_plain
    with pytest.raises(ValueError, match="as many maps"):
        relevance_grid(x, maps[:2], tmp_path / "c.png")


# --- vitrobust explain --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("explain") / "run"
    cfg = tiny_config("train.epochs=1", "train.eval_subset=32", "model.kwargs={embed_dim: 32, depth: 2, num_heads: 2}")
    train_run(cfg, run)
    return run


def test_cli_explain_writes_figure_and_maps(tiny_run, tmp_path, capsys):
    """`vitrobust explain` through the command-line parser (in-process: a subprocess only adds import time)."""
    out = tmp_path / "explained"
    assert main(["explain", str(tiny_run), "--n", "5", "--out", str(out), "--set", "data.masks.source=threshold"]) == 0
    stdout = capsys.readouterr().out
    assert f"figure: {out / 'relevance.png'}" in stdout and f"maps: {out / 'relevance_maps.pt'}" in stdout
    assert (out / "relevance.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    saved = torch.load(out / "relevance_maps.pt", weights_only=True)
    assert saved["method"] == "chefer" and saved["target"] == "label"
    assert saved["maps"].shape == (5, 32, 32) and saved["mask"].shape == (5, 1, 32, 32)
    # the maps are those of the run's model on its first 5 test images, explaining their labels
    model = load_model(tiny_run)
    data = load_split(tiny_config().data, "test").subset(5)
    assert torch.equal(saved["labels"], data.labels) and torch.equal(saved["targets"], data.labels)
    expected = explain(model, data.images.float() / 255, data.labels)
    assert torch.allclose(saved["maps"], expected.maps, atol=1e-5)
    assert torch.equal(saved["predictions"], expected.logits.argmax(-1))


def test_cli_explain_prediction_rollout_and_errors(tiny_run, tmp_path, capsys):
    out = tmp_path / "rollout"
    assert main(["explain", str(tiny_run), "--n", "3", "--out", str(out), "--method", "rollout",
                 "--target", "prediction"]) == 0
    saved = torch.load(out / "relevance_maps.pt", weights_only=True)
    assert saved["method"] == "rollout" and saved["maps"].shape == (3, 32, 32) and "mask" not in saved
    assert torch.equal(saved["targets"], saved["predictions"])
    capsys.readouterr()
    assert main(["explain", str(tiny_run), "--n", "0", "--out", str(out)]) == 2
    assert "error: --n must be at least 1" in capsys.readouterr().err
    assert main(["explain", str(tmp_path / "missing"), "--out", str(out)]) == 2
    assert "does not exist" in capsys.readouterr().err
