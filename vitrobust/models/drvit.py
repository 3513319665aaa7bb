"""Dr.ViT (Mao et al., ICLR 2022): a ViT whose tokens carry the codes of a frozen VQ tokenizer.

`drvit_*` (the paper's model): each patch token is, along channels,
[pixel patch embedding (`pixel_channels`) | codebook vector of the patch's code | zeros to embed_dim].
`drvit_discrete_*` (the paper's ablation): a learned 1x1 projection of the codebook vector alone.
The variant is part of the registered name rather than a keyword, so a run's model name says which
model it is. Everything after the patch embedding is timm's VisionTransformer (CLS token, pre-LN
blocks, timm Attention), so tools written for timm ViTs (relevance maps, `model.init` from a plain
ViT of the same width) work unchanged.

The tokenizer is frozen: eval mode whatever `model.train()` says, no trainable parameter. Its
decoder is dropped (Dr.ViT never decodes), and the encoder and codebook are saved with the model,
so a saved Dr.ViT rebuilds from its weights file alone (`tokenizer_arch` records the layout).
The code choice has no gradient, which masks white-box attacks: the tokenizer's `straight_through`
flag (vitrobust.attacks.straight_through) makes the quantizer the identity on the backward pass.

The optional codebook delta (zero-initialised, reference config) must train at lr/100: the model's
`param_groups` hook gives optimizer groups that carry timm's `lr_scale` (the trainer uses it).
"""

from __future__ import annotations

import copy
import json
import warnings
from collections.abc import Sequence
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from timm.layers import to_2tuple
from timm.models import generate_default_cfgs
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from vitrobust.errors import ModelError
from vitrobust.models.frozen import freeze
from vitrobust.models.groups import decay_groups
from vitrobust.models.small_vits import SMALL_VITS
from vitrobust.models.timm_contract import cfg, register
from vitrobust.models.tokenizer_io import load_tokenizer
from vitrobust.models.vqgan import VQTokenizer, build_tokenizer, resolve_arch

# name stem: (img_size, patch, width, depth, heads); the 32-px sizes are vitrobust's small ViTs
SIZES = {
    **{name.removeprefix("vit_"): (32, *size) for name, size in SMALL_VITS.items()},
    "tiny_patch16_224": (224, 16, 192, 12, 3),
    "small_patch16_224": (224, 16, 384, 12, 6),
    "base_patch16_224": (224, 16, 768, 12, 12),
}
# random tokenizer used when none is given (the registry contract: every name builds without arguments)
DEFAULT_PRESETS = {32: "vq_f4_32px", 224: "vqgan_imagenet_f16_1024"}
MODES = {"drvit_": "fusion", "drvit_discrete_": "discrete"}
DRVIT_MODELS = {f"{prefix}{stem}": mode for prefix, mode in MODES.items() for stem in SIZES}

CODEBOOK_DELTA_LR_SCALE = 0.01  # the reference config trains the codebook delta at lr / 100
BCE_HEAD_BIAS = -6.9  # reference (AugReg-style sigmoid loss): every class starts at p ~ 0.001
DECODER_PARTS = ("decoder", "post_quant_conv")


def _same_layout(a: dict, b: dict) -> bool:
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def resolve_tokenizer(tokenizer: str | Path | VQTokenizer | None, preset: str | None, arch: dict | None,
                      in_chans: int, default_preset: str, model: str, trust: bool = False,
                      from_checkpoint: bool = False, max_code_dim: int | None = None) -> VQTokenizer:
    """The model's own frozen, encoder-only tokenizer.

    A path is loaded; a missing path with a recorded `arch` (a saved model moved to another
    machine) builds that layout, its weights then come from the model's checkpoint. With
    `from_checkpoint` (an imported model whose file holds the tokenizer, e.g. easyrobust's Dr.ViT) the
    recorded layout is built without a file. Otherwise, without a path the tokenizer is random: fine
    for tests and the registry, useless for training; its code vectors are narrowed to `max_code_dim`
    where the preset's are wider than the token has room for (drvit_tiny: 192 - 32 pixel channels).
    The result is frozen: its parameters become buffers (vitrobust.models.frozen).
    """
    arch = dict(arch or {})
    if isinstance(tokenizer, nn.Module):
        tok = copy.deepcopy(tokenizer)  # freezing must not touch the caller's tokenizer
    elif tokenizer is not None:
        path = Path(tokenizer)
        if path.exists():
            tok = load_tokenizer(path, preset=preset, trust=trust)
            if arch and not _same_layout(tok.arch, arch):
                raise ModelError(f"tokenizer {path} has layout {tok.arch} but the model spec records {arch}: "
                                 f"the file changed since the model was saved; give the original tokenizer")
        elif arch:
            warnings.warn(f"{model}: tokenizer file {path} not found; building its recorded layout, "
                          f"whose weights must come from the model's checkpoint", stacklevel=3)
            tok = build_tokenizer(**arch)
        else:
            raise ModelError(f"{model}: tokenizer file {path} does not exist; set model.kwargs.tokenizer to a "
                             f"tokenizer file (train one with `vitrobust tokenizer train`)")
    elif from_checkpoint:
        if not (preset or arch):
            raise ModelError(f"{model}: tokenizer_from_checkpoint needs the layout (tokenizer_arch or tokenizer_preset)")
        tok = build_tokenizer(preset, **arch)
    else:
        if not (preset or arch):
            preset, arch = default_preset, {"in_channels": in_chans, "out_ch": in_chans}
            if max_code_dim is not None and resolve_arch(preset)["embed_dim"] > max_code_dim:
                arch["embed_dim"] = max_code_dim
        warnings.warn(f"{model}: no tokenizer given, using a RANDOM {preset or 'custom'} tokenizer; for "
                      f"training set tokenizer=PATH (model.kwargs.tokenizer)", stacklevel=3)
        tok = build_tokenizer(preset, **arch)
    if tok.in_chans != in_chans:
        raise ModelError(f"{model}: the tokenizer takes {tok.in_chans}-channel images but the model has "
                         f"in_chans={in_chans}; use a tokenizer trained on this data")
    for part in DECODER_PARTS:
        if hasattr(tok, part):
            delattr(tok, part)
    return freeze(tok)


class DiscreteTokenEmbed(nn.Module):
    """Patch tokens from pixels and VQ codes; a drop-in for timm's PatchEmbed (same attributes).

    Takes the network's (normalised) input; `input_mean/std` undo the normalisation for the
    tokenizer, which works on [0,1] pixels.
    """

    def __init__(self, img_size, patch_size, in_chans: int, embed_dim: int, *, mode: str, code_dim: int,
                 code_factor: int, n_codes: int, pixel_channels: int | str = 32, codebook_delta: bool = False,
                 input_mean: Sequence[float] | None = None, input_std: Sequence[float] | None = None,
                 bias: bool = True, dynamic_img_pad: bool = False, device=None, dtype=None, **unsupported):
        super().__init__()
        if unsupported or dynamic_img_pad:
            names = sorted([*unsupported, *(["dynamic_img_pad"] if dynamic_img_pad else [])])
            raise ModelError(f"Dr.ViT has a fixed code grid: remove {', '.join(names)} (dynamic_img_size/"
                             f"embed_norm_layer) from model.kwargs")
        self.img_size, self.patch_size = to_2tuple(img_size), to_2tuple(patch_size)
        self.grid_size = self._grid(self.img_size, self.patch_size, "patch size")
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.code_grid = self._grid(self.img_size, (code_factor, code_factor), "tokenizer downsampling")
        self.mode, self.embed_dim, self.code_dim = mode, embed_dim, code_dim
        self.tokenizer: VQTokenizer | None = None  # attached after timm's weight init (see DrViT)
        dd = {"device": device, "dtype": dtype}

        if self.code_grid == self.grid_size:
            self.merge = nn.Identity()
        elif self.code_grid == tuple(2 * g for g in self.grid_size):
            # an f8 tokenizer under patch 16 (28x28 codes, 14x14 patches): learned 2x2 stride-2 conv
            self.merge = nn.Conv2d(code_dim, code_dim, 2, stride=2, **dd)
        else:
            raise ModelError(
                f"the tokenizer's code grid {self.code_grid[0]}x{self.code_grid[1]} (image {self.img_size[0]} / "
                f"f={code_factor}) does not match the patch grid {self.grid_size[0]}x{self.grid_size[1]} (patch "
                f"{self.patch_size[0]}) nor twice it: use patch size {code_factor} or {2 * code_factor}, or a "
                f"tokenizer with f={self.patch_size[0]}")

        if mode == "fusion":
            if pixel_channels == "auto":  # easyrobust's port: the pixels fill what the codes leave
                pixel_channels = embed_dim - code_dim
            if code_dim >= embed_dim:
                raise ModelError(f"the tokenizer's {code_dim} code channels leave no room for pixel channels in "
                                 f"embed_dim={embed_dim}: use a wider model (embed_dim > {code_dim}), a tokenizer with "
                                 f"fewer code channels, or the discrete-only model (drvit_discrete_*)")
            if not isinstance(pixel_channels, int) or pixel_channels < 1 or pixel_channels + code_dim > embed_dim:
                raise ModelError(f"pixel_channels={pixel_channels!r} plus the {code_dim} code channels must fit "
                                 f"embed_dim={embed_dim}: use 1..{embed_dim - code_dim} or 'auto'")
            self.pixel_channels = pixel_channels
            self.proj = nn.Conv2d(in_chans, pixel_channels, self.patch_size, stride=self.patch_size, bias=bias, **dd)
        else:
            self.pixel_channels = 0
            self.proj = nn.Conv2d(code_dim, embed_dim, 1, bias=bias, **dd)
        self.codebook_delta = nn.Parameter(torch.zeros(n_codes, code_dim, **dd)) if codebook_delta else None
        self.set_input_normalization(input_mean, input_std)

    def set_input_normalization(self, mean: Sequence[float] | None, std: Sequence[float] | None) -> None:
        """Set (or clear) the statistics `pixels` undoes; buffers not saved (they come from the model spec)."""
        device = self.proj.weight.device
        for name, value in (("input_mean", mean), ("input_std", std)):
            stats = torch.tensor(value, dtype=torch.float32, device=device).view(1, -1, 1, 1) if value is not None else None
            self.register_buffer(name, stats, persistent=False)

    def _grid(self, img_size: tuple, cell: tuple, what: str) -> tuple[int, int]:
        if img_size[0] % cell[0] or img_size[1] % cell[1]:
            raise ModelError(f"image size {img_size[0]}x{img_size[1]} is not divisible by the {what} {cell[0]}: "
                             f"change data.img_size or the {what}")
        return img_size[0] // cell[0], img_size[1] // cell[1]

    def feat_ratio(self, as_scalar: bool = True):
        return self.patch_size[0] if as_scalar else self.patch_size

    def dynamic_feat_size(self, img_size: tuple[int, int]) -> tuple[int, int]:
        """The token grid of an image size (timm's PatchEmbed API; forward_intermediates reshapes with it)."""
        return img_size[0] // self.patch_size[0], img_size[1] // self.patch_size[1]

    def set_input_size(self, img_size=None, patch_size=None, **unused) -> None:
        raise ModelError("Dr.ViT's code grid is fixed by its tokenizer: build the model for the new size "
                         "(img_size=...) instead of resizing it")

    def train(self, mode: bool = True) -> DiscreteTokenEmbed:
        super().train(mode)
        if self.tokenizer is not None:
            self.tokenizer.eval()  # frozen: its dropout stays off while the ViT trains
        return self

    def pixels(self, x: torch.Tensor) -> torch.Tensor:
        std, mean = self.input_std, self.input_mean
        if std is not None:
            x = x * std
        if mean is not None:
            x = x + mean
        return x

    def code_vectors(self, x01: torch.Tensor) -> torch.Tensor:
        """[B, code_dim, h, w] codebook vectors on the tokenizer's grid (straight-through if asked)."""
        tok = self.tokenizer
        if tok.straight_through:
            e, indices = tok.quantize(x01)
        else:
            with torch.no_grad():
                indices = tok.encode(x01)
                e = tok.codes(indices)
        delta = self.codebook_delta
        if delta is not None:
            e = e + F.embedding(indices, delta).permute(0, 3, 1, 2)
        return e

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        codes = self.merge(self.code_vectors(self.pixels(x)))
        if self.mode == "discrete":
            tokens = self.proj(codes.to(x.dtype))
        else:
            pix = self.proj(x)
            tokens = torch.cat([pix, codes.to(pix.dtype)], dim=1)
        tokens = tokens.flatten(2).transpose(1, 2)
        return F.pad(tokens, (0, self.embed_dim - tokens.shape[-1]))

    def extra_repr(self) -> str:
        layout = (f"pixel {self.pixel_channels} | code {self.code_dim} | zeros "
                  f"{self.embed_dim - self.pixel_channels - self.code_dim}") if self.mode == "fusion" else \
            f"code {self.code_dim} -> {self.embed_dim}"
        return f"{self.mode}: {layout}, grid {self.grid_size}, codes {self.code_grid}"


class DrViT(VisionTransformer):
    """timm's VisionTransformer with `DiscreteTokenEmbed` as its patch embedding.

    tokenizer: a tokenizer file or run directory (vitrobust.models.vqgan) or a VQTokenizer (copied).
    tokenizer_preset / tokenizer_arch: layout of a random tokenizer, or the preset of a taming .ckpt.
    trust_tokenizer: read a taming/Lightning .ckpt that also pickles objects (as inert placeholders).
    tokenizer_from_checkpoint: the tokenizer's weights come with the model's weights (imported files).
    pixel_channels: width of the pixel part (reference 32) or "auto" (embed_dim - code dim, easyrobust).
    codebook_delta: learn a zero-initialised codebook correction (train it at lr/100: `param_groups`).
    head: "softmax" (cross-entropy) or "bce" (reference sigmoid loss; head bias starts at -6.9).
    input_mean / input_std: the normalisation of the network's input (vitrobust's build_model sets them).
    """

    def __init__(self, *, mode: str = "fusion", tokenizer=None, tokenizer_preset: str | None = None,
                 tokenizer_arch: dict | None = None, trust_tokenizer: bool = False, tokenizer_from_checkpoint: bool = False,
                 pixel_channels: int | str = 32, codebook_delta: bool = False,
                 head: str = "softmax", input_mean: Sequence[float] | None = None,
                 input_std: Sequence[float] | None = None, default_preset: str = DEFAULT_PRESETS[224],
                 name: str = "drvit", **vit_kwargs):
        if mode not in MODES.values():
            raise ModelError(f"Dr.ViT mode must be one of {', '.join(MODES.values())}, got {mode!r}")
        if head not in ("softmax", "bce"):
            raise ModelError(f"{name}: head must be 'softmax' or 'bce', got {head!r}")
        in_chans = vit_kwargs.get("in_chans", 3)
        room = vit_kwargs.get("embed_dim", 768) - (pixel_channels if isinstance(pixel_channels, int) else 0)
        tok = resolve_tokenizer(tokenizer, tokenizer_preset, tokenizer_arch, in_chans, default_preset, name,
                                trust_tokenizer, tokenizer_from_checkpoint, max_code_dim=room if mode == "fusion" else None)
        embed = partial(DiscreteTokenEmbed, mode=mode, code_dim=tok.embed_dim, code_factor=tok.downsample,
                        n_codes=tok.n_embed, pixel_channels=pixel_channels, codebook_delta=codebook_delta,
                        input_mean=input_mean, input_std=input_std)
        super().__init__(embed_layer=embed, **vit_kwargs)
        # attached after timm's init, which would otherwise re-initialise the tokenizer's layers
        self.patch_embed.tokenizer = tok
        self.tokenizer_arch = tok.arch
        if head == "bce" and isinstance(self.head, nn.Linear):
            nn.init.constant_(self.head.bias, BCE_HEAD_BIAS)

    __jit_unused_properties__ = ["tokenizer"]  # TorchScript: reached through patch_embed instead

    @property
    def tokenizer(self) -> VQTokenizer:
        return self.patch_embed.tokenizer

    # --- model hooks (docs/architecture.md) ------------------------------------------------------

    def param_groups(self, weight_decay: float) -> list[dict]:
        """timm's weight-decay split, plus the codebook delta at lr/100 through timm's `lr_scale`."""
        return param_groups(self, weight_decay)

    def spec_kwargs(self) -> dict:
        """The tokenizer's layout, recorded in the model spec so a saved model rebuilds without its file."""
        return {"tokenizer_arch": self.tokenizer_arch}

    def set_input_normalization(self, mean: Sequence[float] | None, std: Sequence[float] | None) -> None:
        """How the network's input was normalised, so the tokenizer gets the [0,1] pixels back."""
        self.patch_embed.set_input_normalization(mean, std)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Optimizer groups for a model holding Dr.ViT embeddings: `decay_groups` with every codebook delta
    at lr/100. Use as `create_optimizer_v2(model, ..., param_group_fn=lambda m: param_groups(m, wd))`."""
    return decay_groups(model, weight_decay, {"codebook_delta": CODEBOOK_DELTA_LR_SCALE})


def _stem(name: str) -> tuple[str, str]:
    prefix = "drvit_discrete_" if name.startswith("drvit_discrete_") else "drvit_"
    return prefix, name.removeprefix(prefix)


def _default_cfg(name: str) -> dict:
    prefix, stem = _stem(name)
    img = SIZES[stem][0]
    first = "patch_embed.tokenizer.encoder.conv_in"  # the codes' first conv (frozen, a buffer)
    return cfg(3, img, 10 if img == 32 else 1000, ("patch_embed.proj", first) if MODES[prefix] == "fusion" else first)


default_cfgs = generate_default_cfgs({name: _default_cfg(name) for name in DRVIT_MODELS})


for _name in DRVIT_MODELS:
    _img, _patch, _dim, _depth, _heads = SIZES[_stem(_name)[1]]
    register(__name__, _name, f"Dr.ViT ({DRVIT_MODELS[_name]}) for {_img}-px images: patch {_patch}, width {_dim}, "
                              f"depth {_depth}, {_heads} heads.", DrViT,
             {"patch_size": _patch, "embed_dim": _dim, "depth": _depth, "num_heads": _heads, "mlp_ratio": 4.0,
              "mode": DRVIT_MODELS[_name], "name": _name, "default_preset": DEFAULT_PRESETS[_img]})
