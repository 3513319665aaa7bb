"""Relevance maps of ViT classifiers: Chefer et al.'s gradient-weighted attention and attention rollout.

Chefer rule (Chefer, Gur, Wolf 2021, "Generic attention-model explainability", rules 5-6), as RobustViT
uses it: with s = sum_b logits[b, target_b] and every block's attention A^l (B x heads x N x N),
    Abar^l = mean_heads(clamp(dA^l s * A^l, min=0)),   R = I,   R <- R + Abar^l R  (l = 1..L),
and the map is R's CLS row over the patch columns, upsampled (bilinear) and min-max normalised per image.
All gradients come from ONE autograd.grad call (the reference calls it once per block: same numbers).
The gradients are constants: with `differentiable=True` the map keeps its graph through A only.

Attention rollout (Abnar & Zuidema 2020) as commonly implemented: Ahat^l = row-normalised
(mean_heads(A^l) + I), i.e. the residual connection is added as 0.5*A + 0.5*I; R = Ahat^L ... Ahat^1.
No head fusion other than the mean and no discarding of low attentions. Rollout ignores the target.

Only R's CLS row is needed, and R is a product of per-block factors, so the row is carried from the
last block down to the first (a vector-matrix product per block instead of an N x N matrix product):
the same R[:, 0] as the matrix recursion, at O(N^2) instead of O(N^3) per block.

A is captured as the output of each attention module's `attn_drop` (the tensor multiplied with the
values), as in the reference; in eval mode it is the softmax output. timm's fused attention never
materialises A, so `fused_attn` is switched off while capturing and restored afterwards.

Supported: timm `Attention` with a CLS token read by the head (ViT, DeiT, DeiT distilled, register
tokens, Dr.ViT), and CaiT (talking-heads self-attention over the patches, then class attention of
the CLS token over [CLS, patches]: only the CLS row of R changes there; rollout is not defined for
talking heads). Extra prefix tokens (distillation, registers) are dropped from the patch columns; the
map is the CLS row even where a distillation head also feeds the logits. XCiT (attention across
channels), windowed or pooled attention, and models without a CLS-token head raise UnsupportedModel.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from timm.layers import Attention
from timm.models.cait import ClassAttn, TalkingHeadAttn
from timm.models.xcit import XCA
from torch import nn

from vitrobust.errors import InputError, ModelError

METHODS = ("chefer", "rollout")
SUPPORTED = (Attention, TalkingHeadAttn, ClassAttn)
SUPPORTED_MODELS = "ViT, DeiT, CaiT and Dr.ViT-style models (timm Attention with a CLS-token head)"


class UnsupportedModel(ModelError):
    """A model whose attention gives no token-to-token relevance map."""


@dataclass
class Explanation:
    """Relevance maps of a batch and what they explain."""

    maps: torch.Tensor  # B x H x W in [0, 1], per-image min-max normalised
    tokens: torch.Tensor  # B x gh x gw relevance of the patch tokens before upsampling and normalisation
    logits: torch.Tensor  # B x classes, from the same forward pass
    target: torch.Tensor  # B classes explained (rollout: the prediction, for the record)


@dataclass
class _Captured:
    module: nn.Module
    attn: torch.Tensor


def unwrap(model: nn.Module) -> nn.Module:
    """The timm network inside DDP and vitrobust's ImageClassifier."""
    model = getattr(model, "module", model)
    return getattr(model, "net", model)


def attention_modules(model: nn.Module) -> list[nn.Module]:
    """The supported attention modules of `model`, or UnsupportedModel saying why there are none."""
    net = unwrap(model)
    name = type(net).__name__
    found = []
    for m in net.modules():
        if isinstance(m, XCA):
            raise UnsupportedModel(f"{name} uses cross-covariance attention (XCiT), which attends across channels, "
                                   f"not tokens: it has no token-to-token relevance map; relevance maps need "
                                   f"{SUPPORTED_MODELS}")
        if isinstance(m, SUPPORTED):
            found.append(m)
        elif isinstance(getattr(m, "attn_drop", None), nn.Module):
            raise UnsupportedModel(f"{name} has attention of type {type(m).__name__}, for which vitrobust draws no "
                                   f"relevance map; supported: {SUPPORTED_MODELS}")
    if not found:
        raise UnsupportedModel(f"{name} has no attention layers: relevance maps need {SUPPORTED_MODELS}")
    if getattr(net, "global_pool", "token") != "token" or getattr(net, "cls_token", None) is None:
        raise UnsupportedModel(f"{name} classifies from pooled patch tokens (global_pool="
                               f"{getattr(net, 'global_pool', None)!r}), not a CLS token: the relevance map is "
                               f"the CLS token's row, so build the model with global_pool='token'")
    return found


@contextlib.contextmanager
def capture_attention(model: nn.Module):
    """Within the block, every forward of `model` appends each attention map (in call order) to the
    yielded list. Fused attention is off meanwhile (it never materialises A) and restored afterwards."""
    modules = attention_modules(model)
    captured: list[_Captured] = []
    handles, flags = [], []

    def hook(module):
        return lambda _drop, _inputs, output: captured.append(_Captured(module, output))

    try:
        for m in modules:
            if hasattr(m, "fused_attn"):
                flags.append((m, m.fused_attn))
                m.fused_attn = False
            handles.append(m.attn_drop.register_forward_hook(hook(m)))
        yield captured
    finally:
        for handle in handles:
            handle.remove()
        for m, fused in flags:
            m.fused_attn = fused


def _token_layout(model: nn.Module) -> tuple[int, tuple[int, int]]:
    """(number of prefix tokens before the patches, patch grid); UnsupportedModel if there is no such layout."""
    attention_modules(model)
    net = unwrap(model)
    grid = getattr(getattr(net, "patch_embed", None), "grid_size", None)
    if grid is None:
        raise UnsupportedModel(f"{type(net).__name__} has no patch_embed.grid_size: cannot place patch tokens on the image")
    return int(getattr(net, "num_prefix_tokens", 1)), (int(grid[0]), int(grid[1]))


def _positions(item: _Captured, prefix: int, patches: int) -> tuple[slice, slice]:
    """(query, key) token positions of one attention map in the sequence [prefix tokens | patches]."""
    _, _, nq, nk = item.attn.shape
    total = prefix + patches
    if isinstance(item.module, TalkingHeadAttn) and nq == nk == patches:  # CaiT: before the CLS token joins
        return slice(prefix, total), slice(prefix, total)
    if isinstance(item.module, ClassAttn) and nq == 1 and nk == total:  # CaiT: the CLS token attends
        return slice(0, 1), slice(0, total)
    if isinstance(item.module, Attention) and nq == nk == total:
        return slice(0, total), slice(0, total)
    raise UnsupportedModel(f"{type(item.module).__name__} attention of shape {nq} x {nk} does not fit {prefix} "
                           f"prefix + {patches} patch tokens: the model's token layout is not supported")


def _as_target(target, logits: torch.Tensor) -> torch.Tensor:
    if target is None:
        return logits.detach().argmax(-1)
    target = torch.as_tensor(target, device=logits.device).long().reshape(-1)
    if target.numel() == 1 and len(logits) > 1:
        target = target.expand(len(logits))
    if len(target) != len(logits):
        raise InputError(f"target holds {len(target)} classes for {len(logits)} images: give one per image")
    if (target < 0).any() or (target >= logits.shape[-1]).any():
        raise InputError(f"target classes must lie in 0..{logits.shape[-1] - 1}, got {target.tolist()[:8]}")
    return target


def attention_gradients(score: torch.Tensor, attns: list[torch.Tensor], *, per_block: bool = False,
                        retain_graph: bool = False) -> list[torch.Tensor]:
    """d score / d A^l for every block: one autograd.grad call, or one per block as the reference does."""
    if not per_block:
        grads = torch.autograd.grad(score, attns, retain_graph=retain_graph, allow_unused=True)
    else:
        grads = [torch.autograd.grad(score, [a], retain_graph=retain_graph or i + 1 < len(attns), allow_unused=True)[0]
                 for i, a in enumerate(attns)]
    return [torch.zeros_like(a) if g is None else g for a, g in zip(attns, grads)]


def chefer_factors(attns: list[torch.Tensor], grads: list[torch.Tensor]) -> list[torch.Tensor]:
    """Rule 5: Abar^l = mean over heads of clamp(G^l * A^l, min=0), in float32."""
    return [(g.float() * a.float()).clamp(min=0).mean(dim=1) for a, g in zip(attns, grads)]


def _cls_row(factors: list[torch.Tensor], positions: list[tuple[slice, slice]], total: int, *,
             residual: bool) -> torch.Tensor:
    """Row 0 of R = M^L ... M^1, carried from the last block down. A block's M is the identity outside its
    query rows; its query rows hold I + Abar (Chefer, `residual=True`) or Ahat (rollout, `residual=False`)."""
    b = factors[0].shape[0]
    v = torch.zeros(b, total, device=factors[0].device, dtype=torch.float32)
    v[:, 0] = 1.0
    for abar, (q, k) in zip(reversed(factors), reversed(positions)):
        contrib = torch.einsum("bq,bqk->bk", v[:, q], abar)
        keep = v if residual else torch.cat([v[:, : q.start], torch.zeros_like(v[:, q]), v[:, q.stop :]], dim=1)
        v = keep + torch.cat([v.new_zeros(b, k.start), contrib, v.new_zeros(b, total - k.stop)], dim=1)
    return v


def rollout_factors(attns: list[torch.Tensor]) -> list[torch.Tensor]:
    """Ahat^l = row-normalised mean_heads(A^l) + I (the residual connection)."""
    out = []
    for a in attns:
        mean = a.float().mean(dim=1)
        eye = torch.eye(mean.shape[-1], device=mean.device, dtype=mean.dtype)
        mixed = mean + eye
        out.append(mixed / mixed.sum(dim=-1, keepdim=True))
    return out


def normalise(maps: torch.Tensor) -> torch.Tensor:
    """Per-image min-max to [0, 1]; a constant map becomes all zeros (no NaN)."""
    flat = maps.flatten(1)
    low, high = flat.min(dim=1, keepdim=True).values, flat.max(dim=1, keepdim=True).values
    return ((flat - low) / (high - low).clamp_min(1e-12)).view_as(maps)


def explain(model: nn.Module, x: torch.Tensor, target=None, *, method: str = "chefer",
            differentiable: bool = False, per_block_grads: bool = False) -> Explanation:
    """Relevance maps of `model` (ImageClassifier, timm ViT or DDP of one) for the [0,1] images `x`.

    target: classes to explain (tensor of B, or one int); None explains the model's prediction.
    differentiable: keep the maps' graph through the attention maps (the RobustViT loss); the logits then
    keep theirs too. Otherwise everything returned is detached.
    """
    if method not in METHODS:
        raise InputError(f"unknown relevance method {method!r}: use one of {', '.join(METHODS)}")
    prefix, (gh, gw) = _token_layout(model)
    if not differentiable:
        x = x.detach().requires_grad_(True)  # A gets a graph even when the weights are frozen
    with torch.enable_grad(), capture_attention(model) as captured:
        logits = model(x)
    if not captured:
        raise UnsupportedModel(f"{type(unwrap(model)).__name__} ran no attention layer in its forward pass")
    positions = [_positions(c, prefix, gh * gw) for c in captured]
    attns = [c.attn for c in captured]
    if differentiable and not attns[0].requires_grad:
        raise InputError("differentiable relevance needs trainable weights or an input that requires grad")
    target = _as_target(target, logits)
    with torch.enable_grad():
        score = logits.float().gather(1, target[:, None]).sum()
    with torch.set_grad_enabled(differentiable):  # only the loss needs a graph through the maps
        if method == "chefer":
            grads = attention_gradients(score, attns, per_block=per_block_grads, retain_graph=differentiable)
            row = _cls_row(chefer_factors(attns, grads), positions, prefix + gh * gw, residual=True)
        else:
            if any(isinstance(c.module, TalkingHeadAttn) for c in captured):
                raise UnsupportedModel("attention rollout needs attention rows that are distributions; talking-"
                                       "heads attention (CaiT) mixes heads after the softmax: use method chefer")
            row = _cls_row(rollout_factors(attns), positions, prefix + gh * gw, residual=False)
        tokens = row[:, prefix:].reshape(-1, 1, gh, gw)
        maps = F.interpolate(tokens, size=tuple(x.shape[-2:]), mode="bilinear", align_corners=False)[:, 0]
        maps = normalise(maps)
    if not differentiable:
        maps, tokens, logits = maps.detach(), tokens.detach(), logits.detach()
    return Explanation(maps=maps, tokens=tokens[:, 0], logits=logits, target=target)


class LogitsAndRollout(nn.Module):
    """`model` with a second output: its attention-rollout map at patch resolution (B x gh x gw, min-max
    normalised per image), forward only, so an exported graph computes it in any runtime. The same map as
    `explain(model, x, method="rollout").tokens`, normalised."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.prefix, self.grid = _token_layout(model)
        if any(isinstance(m, TalkingHeadAttn) for m in attention_modules(model)):
            raise UnsupportedModel("attention rollout needs attention rows that are distributions; talking-heads "
                                   "attention (CaiT) mixes heads after the softmax")

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with capture_attention(self.model) as captured:
            logits = self.model(x)
        (gh, gw), n = self.grid, self.grid[0] * self.grid[1]
        positions = [_positions(c, self.prefix, n) for c in captured]
        row = _cls_row(rollout_factors([c.attn for c in captured]), positions, self.prefix + n, residual=False)
        return logits, normalise(row[:, self.prefix:].reshape(-1, gh, gw))


def relevance_map(model: nn.Module, x: torch.Tensor, target=None, *, method: str = "chefer",
                  differentiable: bool = False) -> torch.Tensor:
    """B x H x W relevance maps in [0, 1] (see `explain`)."""
    return explain(model, x, target, method=method, differentiable=differentiable).maps


def reference_relevance(model: nn.Module, x: torch.Tensor, target=None) -> torch.Tensor:
    """The reference's algorithm step by step (one autograd.grad call per block, the full N x N matrix R);
    for tests and benchmarks that check `explain` against it. ViT-style models only."""
    prefix, (gh, gw) = _token_layout(model)
    x = x.detach().requires_grad_(True)
    with torch.enable_grad(), capture_attention(model) as captured:
        logits = model(x)
    attns = [c.attn for c in captured]
    target = _as_target(target, logits)
    score = logits.float().gather(1, target[:, None]).sum()
    n = attns[0].shape[-1]
    r = torch.eye(n, device=x.device).expand(len(x), n, n)
    for i, a in enumerate(attns):
        g = torch.autograd.grad(score, [a], retain_graph=i + 1 < len(attns))[0]
        abar = (g.float() * a.float()).clamp(min=0).mean(dim=1)
        r = r + abar @ r
    tokens = r[:, 0, prefix:].reshape(-1, 1, gh, gw)
    maps = F.interpolate(tokens, size=tuple(x.shape[-2:]), mode="bilinear", align_corners=False)[:, 0]
    return normalise(maps).detach()
