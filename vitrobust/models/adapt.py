"""Patch-size adaptation of a trained ViT (e.g. ImageNet 224 px / patch 16 -> CIFAR 32 px / patch 4).

As in the light recipe's CIFAR fine-tuning: for convolutional patch stems (XCiT) the first
stride-2 convolutions get stride 1; for linear patch embeddings (ViT, DeiT, CaiT) the kernel is
resampled (timm's resample_patch_embed) and the absolute position embedding is interpolated to the
new grid (timm's resample_abs_pos_embed).
"""

from __future__ import annotations

import math

import torch
from timm.layers import resample_abs_pos_embed, resample_patch_embed
from torch import nn

from vitrobust.errors import ModelError
from vitrobust.models.classifier import ImageClassifier


def _stride2_convs(module: nn.Module) -> list[nn.Conv2d]:
    return [m for m in module.modules() if isinstance(m, nn.Conv2d) and m.stride == (2, 2)]


def _pair(v) -> int:
    return v[0] if isinstance(v, (tuple, list)) else int(v)


@torch.no_grad()
def adapt_patch_size(model: ImageClassifier, patch_size: int, img_size: int) -> ImageClassifier:
    """Change the patch size and input size of `model` in place, keeping its trained weights."""
    net = model.net
    embed = getattr(net, "patch_embed", None)
    if embed is None:
        raise ModelError(f"{model.spec['name']} has no patch_embed: patch adaptation needs a ViT-family model")
    old_patch, old_img = _pair(embed.patch_size), _pair(embed.img_size)
    grid = img_size // patch_size
    if img_size % patch_size:
        raise ModelError(f"img_size {img_size} is not a multiple of the new patch size {patch_size}")
    proj = embed.proj
    if isinstance(proj, nn.Conv2d):  # linear patch embedding
        new = nn.Conv2d(proj.in_channels, proj.out_channels, patch_size, stride=patch_size,
                        bias=proj.bias is not None).to(proj.weight)
        new.weight.copy_(resample_patch_embed(proj.weight, [patch_size, patch_size]))
        if proj.bias is not None:
            new.bias.copy_(proj.bias)
        embed.proj = new
        pos = getattr(net, "pos_embed", None)
        if isinstance(pos, nn.Parameter):
            old_tokens = (old_img // old_patch) ** 2
            prefix = pos.shape[1] - old_tokens
            net.pos_embed = nn.Parameter(resample_abs_pos_embed(pos, [grid, grid], num_prefix_tokens=prefix))
    else:  # convolutional stem: drop stride-2 steps from the front
        ratio = old_patch / patch_size
        steps = int(round(math.log2(ratio))) if ratio >= 1 else -1
        convs = _stride2_convs(proj)
        if steps < 0 or 2**steps != ratio or steps > len(convs):
            raise ModelError(f"cannot turn patch {old_patch} into {patch_size}: the stem has {len(convs)} stride-2 convs")
        for conv in convs[:steps]:
            conv.stride = (1, 1)
    embed.patch_size = (patch_size, patch_size) if isinstance(embed.patch_size, tuple) else patch_size
    embed.img_size = (img_size, img_size) if isinstance(embed.img_size, tuple) else img_size
    if hasattr(embed, "grid_size"):
        embed.grid_size = (grid, grid)
    embed.num_patches = grid * grid
    model.spec.update(img_size=img_size, adapt={"patch_size": patch_size, "from_img_size": old_img})
    model.input_shape = (model.input_shape[0], img_size, img_size)
    return model
