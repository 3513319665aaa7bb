"""Patch-size adaptation (16 -> 4) keeps trained weights and rebuilds from the saved spec."""

from __future__ import annotations

import pytest
import torch
from timm.layers import resample_abs_pos_embed, resample_patch_embed

from vitrobust.checkpoint import save_weights
from vitrobust.config import load_config
from vitrobust.data.base import ImageSet
from vitrobust.errors import ModelError
from vitrobust.models import build_model, create_model
from vitrobust.models.adapt import adapt_patch_size
from vitrobust.models.io import load_model

SMALL = {"depth": 2}


def spec(name: str, img_size: int = 64, **kwargs) -> dict:
    return {"name": name, "num_classes": 5, "in_chans": 3, "img_size": img_size, "mean": None, "std": None,
            "kwargs": {**SMALL, **kwargs}}


def test_vit_patch_embedding_and_position_embedding_are_resampled():
    torch.manual_seed(0)
    model = build_model(spec("deit_tiny_patch16_224"))  # 64 px, patch 16: a 4x4 grid
    old_pos = model.net.pos_embed.detach().clone()
    old_w = model.net.patch_embed.proj.weight.detach().clone()
    adapt_patch_size(model, 4, 32)  # 32 px, patch 4: an 8x8 grid
    proj = model.net.patch_embed.proj
    assert proj.kernel_size == (4, 4) and proj.stride == (4, 4)
    assert model.net.pos_embed.shape == (1, 1 + 64, old_pos.shape[-1])
    # the class-token position is kept, the patch positions are interpolated from the old grid
    assert torch.equal(model.net.pos_embed[:, :1], old_pos[:, :1])
    expected = resample_abs_pos_embed(old_pos, [8, 8], num_prefix_tokens=1)
    assert torch.allclose(model.net.pos_embed, expected)
    assert torch.allclose(proj.weight, resample_patch_embed(old_w, [4, 4]))
    model.eval()
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 5)
    assert model.input_shape == (3, 32, 32) and model.spec["adapt"] == {"patch_size": 4, "from_img_size": 64}


def test_xcit_stem_convolutions_lose_their_first_strides():
    model = build_model(spec("xcit_nano_12_p16_224"))
    strides_before = [m.stride for m in model.net.patch_embed.proj.modules() if isinstance(m, torch.nn.Conv2d)]
    adapt_patch_size(model, 4, 32)
    strides = [m.stride for m in model.net.patch_embed.proj.modules() if isinstance(m, torch.nn.Conv2d)]
    assert strides_before == [(2, 2)] * 4 and strides == [(1, 1), (1, 1), (2, 2), (2, 2)]
    model.eval()
    tokens, grid = model.net.patch_embed(torch.rand(1, 3, 32, 32))
    assert grid == (8, 8) and tokens.shape[1] == 64


def test_adapted_model_round_trips_through_its_weights_file(tmp_path):
    model = build_model(spec("deit_tiny_patch16_224"))
    adapt_patch_size(model, 4, 32)
    model.eval()
    save_weights(model, tmp_path / "m.safetensors", model.spec)
    loaded = load_model(tmp_path / "m.safetensors")
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def test_create_model_inits_at_the_old_size_then_adapts(tmp_path):
    source = build_model(spec("deit_tiny_patch16_224"))
    save_weights(source, tmp_path / "imagenet.safetensors", source.spec)
    data = ImageSet(labels=torch.zeros(4, dtype=torch.long), classes=list("abcde"), img_size=32, in_chans=3,
                    mean=(0.5,) * 3, std=(0.5,) * 3, images=torch.zeros(4, 3, 32, 32, dtype=torch.uint8))
    cfg = load_config(None, ["model.name=deit_tiny_patch16_224", "model.kwargs={depth: 2}", "model.mean=none",
                             "model.std=none", f"model.init={tmp_path / 'imagenet.safetensors'}",
                             "model.init_img_size=64", "model.adapt_patch_size=4"])
    model, info = create_model(cfg, data)
    assert info["skipped"] == []  # every tensor fitted before the adaptation
    expected = resample_abs_pos_embed(source.net.pos_embed.detach(), [8, 8], num_prefix_tokens=1)
    assert torch.allclose(model.net.pos_embed, expected)
    assert torch.equal(model.net.blocks[0].attn.qkv.weight, source.net.blocks[0].attn.qkv.weight)


def test_impossible_adaptations_are_clear_errors():
    with pytest.raises(ModelError, match="not a multiple"):
        adapt_patch_size(build_model(spec("deit_tiny_patch16_224")), 5, 32)
    with pytest.raises(ModelError, match="cannot turn patch 16 into 3"):
        adapt_patch_size(build_model(spec("xcit_nano_12_p16_224")), 3, 33)
    with pytest.raises(ModelError, match="no patch_embed"):
        adapt_patch_size(build_model({**spec("mobilevit_xxs", img_size=32), "kwargs": {}}), 4, 32)
