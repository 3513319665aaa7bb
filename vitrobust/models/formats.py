"""Checkpoint formats: the key layouts released models come in, and how each maps onto a timm network
inside vitrobust's ImageClassifier (keys `normalize.*` and `net.*`).

A format is a registered record (`CHECKPOINT_FORMATS`): `detect(found)` says how specifically a file's
keys match it (0: not at all, 1: any timm-style state dict, 2: a family's architecture, 3: a marker only
that format has), and `layout(found)` gives the network's tensors plus what the format knows about the
model (architecture, normalisation, resize rule, extra timm arguments). `model.init` and
`vitrobust import` (models/importer.py) both go through here. The facts of each layout were read from
the reference code: RobustBench's `normalize_model`, the light recipe's XCiT models, easyrobust's
Dr.ViT and DAT releases, RobustViT's fine-tuning script.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from vitrobust.checkpoint import load_torch_file, read_weights
from vitrobust.errors import CheckpointError
from vitrobust.models.tokenizer_io import infer_arch
from vitrobust.models.vqgan import PRESETS, resolve_arch
from vitrobust.registry import Registry

Tensors = dict[str, torch.Tensor]
WRAPPERS = ("state_dict", "state_dict_ema", "model", "model_ema")  # where training scripts nest the weights
DDP_PREFIX = "module."
TIMM_PREFIXES = ("patch_embed.", "blocks.", "stages.", "stem.", "layers.", "cls_token", "pos_embed", "head.",
                 "norm.", "fc_norm.", "features.", "conv1.", "conv_stem.", "fc.", "cls_attn_blocks.")
TRUST_HINT = "pass --trust (Python: trust=True)"


@dataclass(frozen=True)
class Found:
    """What a checkpoint file holds: the keys at its top level (a wrapper's, or the state dict's own) and
    its tensors, unwrapped from state_dict / state_dict_ema / model / model_ema and DDP's `module.`."""

    container: frozenset[str]
    tensors: Tensors
    source: str = "the checkpoint"


@dataclass
class Layout:
    """A network's tensors (timm keys) and what the format says about the model. `mean`/`std` "arch" means
    the timm architecture's own statistics, None means the network takes [0,1] pixels."""

    tensors: Tensors
    arch: str | None = None
    mean: list[float] | None | str = "arch"
    std: list[float] | None | str = "arch"
    kwargs: dict = field(default_factory=dict)
    crop_pct: float | None = None
    interpolation: str | None = None
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class CheckpointFormat:
    name: str
    about: str  # whose files these are and what their keys look like
    detect: Callable[[Found], int]
    layout: Callable[[Found], Layout]
    own: bool = False  # vitrobust's own keys (normalize.*, net.*): taken as they are

    def classifier_tensors(self, found: Found) -> Tensors:
        """The tensors under ImageClassifier keys (what `model.init` loads)."""
        if self.own:
            return dict(found.tensors)
        return {f"net.{k}": v for k, v in self.layout(found).tensors.items()}


CHECKPOINT_FORMATS: Registry[CheckpointFormat] = Registry("checkpoint format", error=CheckpointError)


# --- reading files --------------------------------------------------------------------------------


def state_tensors(content, where: str = "the checkpoint") -> Tensors:
    """The tensors of a loaded checkpoint: a state dict, or one nested under state_dict / state_dict_ema /
    model / model_ema (the first found), with DDP's `module.` prefix removed; non-tensor entries dropped."""
    state = content
    if isinstance(content, dict):
        state = next((content[k] for k in WRAPPERS if isinstance(content.get(k), dict)), content)
    if not isinstance(state, dict):
        raise CheckpointError(f"{where} holds no state dict (found {type(content).__name__})")
    tensors = {k: v for k, v in state.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    if tensors and all(k.startswith(DDP_PREFIX) for k in tensors):
        tensors = {k[len(DDP_PREFIX):]: v for k, v in tensors.items()}
    return tensors


def read_checkpoint(path: str | Path, trust: bool = False, trust_hint: str = TRUST_HINT) -> Found:
    """A checkpoint file (safetensors, or a torch file read without running code from it) as `Found`;
    `trust_hint` tells the user how to trust a file that pickles objects."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if path.suffix == ".safetensors":
        tensors, _ = read_weights(path)
        return Found(frozenset(tensors), tensors, str(path))
    content = load_torch_file(path, trust, trust_hint)
    tensors = state_tensors(content, str(path))
    container = frozenset(k for k in content if isinstance(k, str)) if isinstance(content, dict) else frozenset()
    return Found(container, tensors, str(path))


def find_format(found: Found) -> CheckpointFormat:
    """The registered format that matches the keys most specifically; an unknown or ambiguous layout is a
    CheckpointError naming the candidates and the first keys."""
    scores = {name: fmt.detect(found) for name, fmt in CHECKPOINT_FORMATS.items()}
    best = max(scores.values(), default=0)
    shown = ", ".join(list(found.tensors)[:6]) or "no tensors"
    if best == 0:
        raise CheckpointError(f"{found.source}: no known checkpoint layout (formats: "
                              f"{', '.join(CHECKPOINT_FORMATS.names())}); its first keys: {shown}")
    top = [name for name, score in scores.items() if score == best]
    if len(top) > 1:
        raise CheckpointError(f"{found.source}: the keys fit several formats ({', '.join(top)}); pass --format; "
                              f"its first keys: {shown}")
    return CHECKPOINT_FORMATS.get(top[0])


# --- helpers the layouts share ----------------------------------------------------------------------


def _has(tensors: Tensors, *prefixes: str) -> bool:
    return any(k.startswith(prefixes) for k in tensors)


def _strip(tensors: Tensors, prefix: str) -> Tensors:
    return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}


def _stats(t: torch.Tensor) -> list[float]:
    return [float(v) for v in t.detach().flatten().tolist()]


def block_count(tensors: Tensors, prefix: str = "blocks.") -> int:
    """How many transformer blocks the keys hold (0 when none)."""
    return len({k[len(prefix):].split(".", 1)[0] for k in tensors if k.startswith(prefix)})


def width(tensors: Tensors) -> int | None:
    for key in ("cls_token", "pos_embed", "norm.weight", "fc_norm.weight"):
        if key in tensors:
            return int(tensors[key].shape[-1])
    return None


# --- the formats ----------------------------------------------------------------------------------

CHECKPOINT_FORMATS.register(CheckpointFormat(
    "vitrobust", "vitrobust's own weights: normalize.* and net.* (the timm network)",
    detect=lambda f: 3 if _has(f.tensors, "net.") else 0,
    layout=lambda f: Layout(_strip(f.tensors, "net."), mean=_stats(f.tensors["normalize.mean"])
                            if "normalize.mean" in f.tensors else "arch",
                            std=_stats(f.tensors["normalize.std"]) if "normalize.std" in f.tensors else "arch"),
    own=True))

CHECKPOINT_FORMATS.register(CheckpointFormat(
    "timm", "a timm network's state dict, bare or under state_dict / state_dict_ema / model / model_ema, "
            "with or without DDP's module. prefix; --arch names the model; normalisation: the arch's own",
    detect=lambda f: 1 if _has(f.tensors, *TIMM_PREFIXES) and not _has(f.tensors, "net.") else 0,
    layout=lambda f: Layout(dict(f.tensors))))


def _robustbench(found: Found) -> Layout:
    t = found.tensors
    for norm, body in (("normalize.", "model."), ("0.", "1.")):
        if f"{norm}mean" in t and f"{norm}std" in t:
            return Layout(_strip(t, body), mean=_stats(t[f"{norm}mean"]), std=_stats(t[f"{norm}std"]),
                          notes=[f"mean/std read from the file ({norm}mean, {norm}std)"])
    raise CheckpointError(f"{found.source}: no normalize.mean/std or 0.mean/std keys")


CHECKPOINT_FORMATS.register(CheckpointFormat(
    "robustbench", "a normaliser wrapper: normalize.mean, normalize.std, model.* (RobustBench's normalize_model; "
                   "the light recipe's CIFAR XCiTs) or 0.mean, 0.std, 1.* (easyrobust's DAT ViT-B); mean/std "
                   "from the file",
    detect=lambda f: 3 if (({"normalize.mean", "normalize.std"} <= f.tensors.keys() and _has(f.tensors, "model."))
                           or ({"0.mean", "0.std"} <= f.tensors.keys() and _has(f.tensors, "1."))) else 0,
    layout=_robustbench))

LIGHT_RECIPE_ARCHS = {384: "xcit_small_12_p16_224", 512: "xcit_medium_12_p16_224", 768: "xcit_large_12_p16_224"}


def _light_recipe(found: Found) -> Layout:
    # timm < 0.6 named XCiT's Fourier position encoding `pos_embeder`
    t = {k.replace("pos_embeder.", "pos_embed.", 1) if k.startswith("pos_embeder.") else k: v
         for k, v in found.tensors.items()}
    dim, depth = width(t), block_count(t)
    kwargs = {"depth": depth} if depth and depth != 12 else {}
    return Layout(t, arch=LIGHT_RECIPE_ARCHS.get(dim), mean=None, std=None, kwargs=kwargs, crop_pct=1.0,
                  interpolation="bicubic",
                  notes=["[0,1] input, no normalisation (trained with --no-normalize)"])


CHECKPOINT_FORMATS.register(CheckpointFormat(
    "light-recipe", "the light recipe's ImageNet XCiT-S12/M12/L12 (bare XCiT keys, [0,1] input without "
                    "normalisation; older files name the position encoding pos_embeder)",
    detect=lambda f: 2 if ("patch_embed.proj.0.0.weight" in f.tensors and _has(f.tensors, "cls_attn_blocks.")
                           and not _has(f.tensors, "net.")) else 0,
    layout=_light_recipe))

EASYROBUST_DRVIT_ARCHS = {384: "drvit_small_patch16_224", 768: "drvit_base_patch16_224"}
DRVIT_RENAMES = (("vq_encoder.", "patch_embed.tokenizer.encoder."),
                 ("vq_quant_conv.", "patch_embed.tokenizer.quant_conv."),
                 ("quantize.", "patch_embed.tokenizer.quantize."), ("norm.", "fc_norm."))


def _easyrobust_drvit(found: Found) -> Layout:
    t = found.tensors
    taming = {**{f"encoder.{k}": v for k, v in _strip(t, "vq_encoder.").items()},
              **{f"quant_conv.{k}": v for k, v in _strip(t, "vq_quant_conv.").items()},
              "quantize.embedding.weight": t["quantize.embedding.weight"]}
    arch = infer_arch(taming)
    preset = next((name for name, p in PRESETS.items() if resolve_arch(name) == resolve_arch(**arch)), None)
    renamed = {}
    for key, value in t.items():
        new = next((new + key[len(old):] for old, new in DRVIT_RENAMES if key.startswith(old)), key)
        renamed[new] = value
    depth = block_count(t)
    kwargs = {"tokenizer_arch": resolve_arch(preset) if preset else arch, "tokenizer_from_checkpoint": True,
              "pixel_channels": "auto", "global_pool": "avg", **({"depth": depth} if depth and depth != 12 else {})}
    notes = [f"VQ encoder {preset or 'layout read from the shapes'}; its codebook (updated in training) from this file",
             "tokens [pixel patch embedding | codebook vector]; head on the mean of the patch tokens, norm after pooling"]
    return Layout(renamed, arch=EASYROBUST_DRVIT_ARCHS.get(width(t)), mean=[0.5] * 3, std=[0.5] * 3, kwargs=kwargs,
                  crop_pct=0.9, interpolation="bicubic", notes=notes)


CHECKPOINT_FORMATS.register(CheckpointFormat(
    "easyrobust-drvit", "easyrobust's Dr.ViT: timm-0.5.4 ViT keys, patch_embed.proj of embed_dim-256 channels, "
                        "the taming encoder under vq_encoder.*, vq_quant_conv.*, quantize.embedding.weight",
    detect=lambda f: 3 if ("quantize.embedding.weight" in f.tensors and _has(f.tensors, "vq_encoder.")) else 0,
    layout=_easyrobust_drvit))

CHECKPOINT_FORMATS.register(CheckpointFormat(
    "robustvit", "RobustViT's fine-tuned ViT-B, DeiT-B, AugReg-B: timm keys under state_dict beside epoch, "
                 "best_loss and optimizer; mean/std 0.5; resize 256, crop 224, bilinear",
    detect=lambda f: 3 if {"state_dict", "best_loss"} <= f.container else 0,
    layout=lambda f: Layout(dict(f.tensors), mean=[0.5] * 3, std=[0.5] * 3, crop_pct=0.875, interpolation="bilinear")))

__all__ = ["CHECKPOINT_FORMATS", "CheckpointFormat", "Found", "Layout", "block_count", "find_format",
           "read_checkpoint", "state_tensors", "width"]
