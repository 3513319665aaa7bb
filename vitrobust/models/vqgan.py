"""A VQGAN tokenizer (encoder, codebook, decoder) in the taming-transformers layout.

Module names and parameter shapes follow taming-transformers' `VQModel` (Encoder/Decoder of
taming/modules/diffusionmodules/model.py, VectorQuantizer with `embedding`), so the public
checkpoints (vqgan_imagenet_f16_1024, vqgan_openimages_f8_16384) load key for key. Callers pass
[0,1] images; the mapping to the range the network was trained on (taming: [-1,1]) happens inside.

Loading and saving files live in `vitrobust.models.tokenizer_io`.
"""

from __future__ import annotations

import contextlib
import difflib
import math
from typing import Any

import torch
import torch.nn.functional as F
from timm.layers import register_notrace_module
from torch import nn

from vitrobust.errors import InputError, ModelError

# Every layout key with its default. `resolution` only decides at which levels attention sits
# (`attn_resolutions` are feature sizes at that input size); any input divisible by f works.
DEFAULT_ARCH: dict[str, Any] = {
    "ch": 128,
    "ch_mult": [1, 1, 2, 2, 4],
    "num_res_blocks": 2,
    "attn_resolutions": [16],
    "z_channels": 256,
    "embed_dim": 256,
    "n_embed": 1024,
    "in_channels": 3,
    "out_ch": None,  # None: same as in_channels
    "resolution": 256,
    "dropout": 0.0,
    "input_range": [-1.0, 1.0],  # the pixel range the network sees; [0,1] images are mapped onto it
    "norm_groups": 32,  # GroupNorm groups (taming: 32); smaller layouts need a divisor of their widths
}

PRESETS: dict[str, dict[str, Any]] = {
    # taming-transformers, ImageNet, f=16 (Dr.ViT): 224 px -> 14x14 codes
    "vqgan_imagenet_f16_1024": {
        "ch": 128, "ch_mult": [1, 1, 2, 2, 4], "num_res_blocks": 2, "attn_resolutions": [16],
        "z_channels": 256, "embed_dim": 256, "n_embed": 1024, "in_channels": 3, "out_ch": 3, "resolution": 256,
    },
    # latent-diffusion / taming, OpenImages, f=8 (DAT): 224 px -> 28x28 codes
    "vqgan_openimages_f8_16384": {
        "ch": 128, "ch_mult": [1, 2, 2, 4], "num_res_blocks": 2, "attn_resolutions": [32],
        "z_channels": 4, "embed_dim": 4, "n_embed": 16384, "in_channels": 3, "out_ch": 3, "resolution": 256,
    },
    # vitrobust quickstart: 1x32x32 Fashion-MNIST -> 8x8 codes; 16 base channels (0.27M parameters,
    # 0.33 GFLOP per training image, a quarter of ch=32) so a useful tokenizer trains in about a CPU minute
    "vq_f4_32px": {
        "ch": 16, "ch_mult": [1, 2, 2], "num_res_blocks": 1, "attn_resolutions": [],
        "z_channels": 32, "embed_dim": 32, "n_embed": 256, "in_channels": 1, "out_ch": 1, "resolution": 32,
        "norm_groups": 8,
    },
}


def resolve_arch(preset: str | None = None, **arch) -> dict[str, Any]:
    """The full layout: defaults, then the preset, then `arch`; checked so the network can be built."""
    if preset is not None and preset not in PRESETS:
        close = difflib.get_close_matches(preset, list(PRESETS), n=1, cutoff=0.5)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ModelError(f"unknown tokenizer preset {preset!r}; {hint}presets: {', '.join(PRESETS)}")
    unknown = [k for k in arch if k not in DEFAULT_ARCH]
    if unknown:
        close = difflib.get_close_matches(unknown[0], list(DEFAULT_ARCH), n=1, cutoff=0.5)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ModelError(f"unknown tokenizer layout key {unknown[0]!r}; {hint}valid keys: {', '.join(DEFAULT_ARCH)}")
    out = {**DEFAULT_ARCH, **(PRESETS[preset] if preset else {}), **arch}
    out["ch_mult"] = [int(m) for m in out["ch_mult"]]
    out["attn_resolutions"] = [int(r) for r in out["attn_resolutions"]]
    out["input_range"] = [float(v) for v in out["input_range"]]
    if out["out_ch"] is None:
        out["out_ch"] = out["in_channels"]
    for key in ("ch", "num_res_blocks", "z_channels", "embed_dim", "n_embed", "in_channels", "out_ch", "resolution",
                "norm_groups"):
        if not isinstance(out[key], int) or out[key] < 1:
            raise ModelError(f"tokenizer layout: {key} must be a positive integer, got {out[key]!r}")
    if not out["ch_mult"] or min(out["ch_mult"]) < 1:
        raise ModelError(f"tokenizer layout: ch_mult must be a non-empty list of positive integers, got {out['ch_mult']}")
    lo, hi = out["input_range"] if len(out["input_range"]) == 2 else (0.0, 0.0)
    if not hi > lo:
        raise ModelError(f"tokenizer layout: input_range must be [low, high] with low < high, got {out['input_range']}")
    widths = {out["ch"] * m for m in out["ch_mult"]} | {out["ch"]}
    bad = sorted(w for w in widths if w % out["norm_groups"])
    if bad:
        raise ModelError(f"tokenizer layout: GroupNorm needs widths divisible by norm_groups={out['norm_groups']}, "
                         f"but ch * ch_mult gives {bad}; set norm_groups to a divisor of {math.gcd(*widths)}")
    return out


def nearest_codes(z: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """[B, D, h, w] vectors, [K, D] codes -> [B, h, w] indices of the closest codes (Euclidean, fp32)."""
    flat = z.permute(0, 2, 3, 1).flatten(0, 2).float()
    e = codebook.float()
    # |z - e|^2 = |z|^2 + |e|^2 - 2 z.e; |z|^2 is the same for every code, so it is left out.
    distance = (e * e).sum(1) - 2 * flat @ e.t()
    return distance.argmin(1).view(z.shape[0], z.shape[2], z.shape[3])


def check_tokenizer_input(x01: torch.Tensor, in_chans: int, f: int) -> None:
    """N x in_chans x H x W with H, W divisible by f, or a clear error. FX records it as one call instead of
    tracing into it (its Python branch on the shape needs concrete values)."""
    if x01.ndim != 4 or x01.shape[1] != in_chans or x01.shape[2] % f or x01.shape[3] % f:
        raise InputError(f"the tokenizer takes N x {in_chans} x H x W images in [0,1] with H and W "
                         f"divisible by {f}, got shape {tuple(x01.shape)}; resize the images or use a "
                         f"tokenizer built for them")


torch.fx.wrap("check_tokenizer_input")


def swish(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(x)


class ResnetBlock(nn.Module):
    """GroupNorm-swish-conv twice plus a skip; a 1x1 `nin_shortcut` where the width changes."""

    def __init__(self, cin: int, cout: int, groups: int, dropout: float):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, cin, eps=1e-6)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.norm2 = nn.GroupNorm(groups, cout, eps=1e-6)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.nin_shortcut = nn.Conv2d(cin, cout, 1) if cin != cout else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(swish(self.norm1(x)))
        h = self.conv2(self.dropout(swish(self.norm2(h))))
        return (x if self.nin_shortcut is None else self.nin_shortcut(x)) + h


class AttnBlock(nn.Module):
    """Single-head self-attention over all positions, with 1x1 convs as projections (taming's q/k/v/proj_out)."""

    def __init__(self, channels: int, groups: int):
        super().__init__()
        self.norm = nn.GroupNorm(groups, channels, eps=1e-6)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        n = self.norm(x)
        q = self.q(n).reshape(b, 1, c, h * w).transpose(2, 3)
        k = self.k(n).reshape(b, 1, c, h * w).transpose(2, 3)
        v = self.v(n).reshape(b, 1, c, h * w).transpose(2, 3)
        out = F.scaled_dot_product_attention(q, k, v)  # softmax(q k^T / sqrt(c)) v, as in taming
        return x + self.proj_out(out.transpose(2, 3).reshape(b, c, h, w))


class Downsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))  # taming pads right/bottom only, then a valid stride-2 conv


class Upsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Middle(nn.Module):
    """Res block, attention, res block at the lowest resolution (taming's `mid`)."""

    def __init__(self, channels: int, groups: int, dropout: float):
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels, groups, dropout)
        self.attn_1 = AttnBlock(channels, groups)
        self.block_2 = ResnetBlock(channels, channels, groups, dropout)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.block_2(self.attn_1(self.block_1(h)))


class Level(nn.Module):
    """One resolution level: res blocks, each followed by attention where the layout puts it.

    Levels without attention hold an `nn.Identity` per block in `attn` (no state-dict keys, so the taming
    layout is unchanged): every block pairs with one attention entry, which TorchScript can iterate.
    """

    def __init__(self, blocks: list[nn.Module], attention: list[nn.Module]):
        super().__init__()
        self.block = nn.ModuleList(blocks)
        self.attn = nn.ModuleList(attention or [nn.Identity() for _ in blocks])

    def blocks(self, h: torch.Tensor) -> torch.Tensor:
        for block, attn in zip(self.block, self.attn):
            h = attn(block(h))
        return h


class DownLevel(Level):
    def __init__(self, blocks: list[nn.Module], attention: list[nn.Module], downsample: nn.Module):
        super().__init__(blocks, attention)
        self.downsample = downsample

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.downsample(self.blocks(h))


class UpLevel(Level):
    def __init__(self, blocks: list[nn.Module], attention: list[nn.Module], upsample: nn.Module):
        super().__init__(blocks, attention)
        self.upsample = upsample

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.upsample(self.blocks(h))


class Encoder(nn.Module):
    def __init__(self, a: dict[str, Any]):
        super().__init__()
        ch, mult, g, p = a["ch"], a["ch_mult"], a["norm_groups"], a["dropout"]
        self.conv_in = nn.Conv2d(a["in_channels"], ch, 3, padding=1)
        self.down = nn.ModuleList()
        res, cin = a["resolution"], ch
        for level, m in enumerate(mult):
            blocks, attention = [], []
            for _ in range(a["num_res_blocks"]):
                blocks.append(ResnetBlock(cin, ch * m, g, p))
                cin = ch * m
                if res in a["attn_resolutions"]:
                    attention.append(AttnBlock(cin, g))
            last = level == len(mult) - 1
            self.down.append(DownLevel(blocks, attention, nn.Identity() if last else Downsample(cin)))
            res = res if last else res // 2
        self.mid = Middle(cin, g, p)
        self.norm_out = nn.GroupNorm(g, cin, eps=1e-6)
        self.conv_out = nn.Conv2d(cin, a["z_channels"], 3, padding=1)  # taming's VQGANs use double_z=False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for level in self.down:
            h = level(h)
        return self.conv_out(swish(self.norm_out(self.mid(h))))


class Decoder(nn.Module):
    def __init__(self, a: dict[str, Any]):
        super().__init__()
        ch, mult, g, p = a["ch"], a["ch_mult"], a["norm_groups"], a["dropout"]
        cin = ch * mult[-1]
        res = a["resolution"] // 2 ** (len(mult) - 1)
        self.conv_in = nn.Conv2d(a["z_channels"], cin, 3, padding=1)
        self.mid = Middle(cin, g, p)
        stages = []
        for level in reversed(range(len(mult))):
            blocks, attention = [], []
            for _ in range(a["num_res_blocks"] + 1):
                blocks.append(ResnetBlock(cin, ch * mult[level], g, p))
                cin = ch * mult[level]
                if res in a["attn_resolutions"]:
                    attention.append(AttnBlock(cin, g))
            stages.append(UpLevel(blocks, attention, Upsample(cin) if level else nn.Identity()))
            res = res * 2 if level else res
        # in the order they run (TorchScript cannot iterate a ModuleList backwards); state dicts use taming's
        # `up.{i}` keys, where up[0] is the full-resolution stage
        self.levels = nn.ModuleList(stages)
        self.register_state_dict_post_hook(self._to_taming_keys)
        self.register_load_state_dict_pre_hook(self._from_taming_keys)
        self.norm_out = nn.GroupNorm(g, cin, eps=1e-6)
        self.conv_out = nn.Conv2d(cin, a["out_ch"], 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.conv_in(z))
        for level in self.levels:
            h = level(h)
        return self.conv_out(swish(self.norm_out(h)))

    @staticmethod
    def _to_taming_keys(module, state_dict, prefix, local_metadata) -> None:
        n = len(module.levels)
        for k in range(n):
            _rename(state_dict, f"{prefix}levels.{k}.", f"{prefix}up.{n - 1 - k}.")

    @staticmethod
    def _from_taming_keys(module, state_dict, prefix, *args) -> None:
        n = len(module.levels)
        for i in range(n):
            _rename(state_dict, f"{prefix}up.{i}.", f"{prefix}levels.{n - 1 - i}.")


@register_notrace_module  # FX keeps the search as one call (its eager path chunks and checks autocast)
class VectorQuantizer(nn.Module):
    """The codebook (taming's `quantize.embedding`) and nearest-code search by Euclidean distance."""

    # rows x codes of the distance matrix computed at once: bounds memory for 16384 codes on big grids
    CHUNK = 1 << 24

    def __init__(self, n_embed: int, embed_dim: int):
        super().__init__()
        self.embedding = nn.Embedding(n_embed, embed_dim)
        self.embedding.weight.data.uniform_(-1.0 / n_embed, 1.0 / n_embed)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """[B, D, h, w] vectors -> [B, h, w] indices of the closest codes.

        Eager: chunked over rows and in fp32 even under autocast. Scripted or compiled (torch.export,
        ONNX): one distance matrix, so the graph has no data-dependent chunk count.
        """
        if torch.jit.is_scripting() or torch.compiler.is_compiling():
            return nearest_codes(z, self.embedding.weight)
        return self.nearest(z)

    def nearest(self, z: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            b, d, h, w = z.shape
            e = self.embedding.weight
            rows = max(1, self.CHUNK // e.shape[0])
            # fp32 even under autocast: a bf16 product would pick other codes than the fp32 reference
            fp32 = torch.amp.is_autocast_available(z.device.type)  # not on the meta device
            with torch.autocast(z.device.type, enabled=False) if fp32 else contextlib.nullcontext():
                idx = [nearest_codes(part, e).flatten() for part in z.split(max(1, rows // (h * w)))]
            return torch.cat(idx).view(b, h, w)

    def lookup(self, indices: torch.Tensor) -> torch.Tensor:
        """[B, h, w] indices -> [B, D, h, w] codebook vectors."""
        return self.embedding(indices).permute(0, 3, 1, 2).contiguous()


class VQTokenizer(nn.Module):
    """[0,1] images <-> grids of code indices, f = `downsample` pixels per code cell.

    encode(x) -> [B, H/f, W/f] indices; codes(indices) -> [B, embed_dim, h, w] vectors;
    quantize(x) -> (z_q, indices); decode(z_q) -> images on the [0,1] scale; reconstruct(x) =
    decode(quantize(x)[0]).clamp(0, 1), also the forward.

    The codebook module is `self.codebook`; in state dicts it appears under taming's name
    `quantize.` (hooks rename it both ways), since `quantize` is also this class's method.
    `straight_through` follows vitrobust.attacks.straight_through: when True, `quantize` returns
    z + (q - z).detach() so attack gradients reach the input through the (frozen) encoder;
    otherwise z_q is the codebook vectors and no gradient reaches the input.
    """

    def __init__(self, arch: dict[str, Any]):
        super().__init__()
        self.arch = resolve_arch(**arch)
        a = self.arch
        self.encoder = Encoder(a)
        self.decoder = Decoder(a)
        self.codebook = VectorQuantizer(a["n_embed"], a["embed_dim"])
        self.quant_conv = nn.Conv2d(a["z_channels"], a["embed_dim"], 1)
        self.post_quant_conv = nn.Conv2d(a["embed_dim"], a["z_channels"], 1)
        self.downsample = 2 ** (len(a["ch_mult"]) - 1)
        self.embed_dim, self.n_embed, self.in_chans = a["embed_dim"], a["n_embed"], a["in_channels"]
        self.straight_through = False
        lo, hi = a["input_range"]
        self._scale, self._shift = hi - lo, lo
        self.register_state_dict_post_hook(_to_taming_keys)
        self.register_load_state_dict_pre_hook(_from_taming_keys)

    def extra_repr(self) -> str:
        return f"f={self.downsample}, codes={self.n_embed}x{self.embed_dim}, in_chans={self.in_chans}"

    def latent(self, x01: torch.Tensor) -> torch.Tensor:
        """The continuous pre-quantisation vectors z [B, embed_dim, H/f, W/f] (with gradient)."""
        if not torch.jit.is_scripting():
            check_tokenizer_input(x01, self.in_chans, self.downsample)
        return self.quant_conv(self.encoder(x01 * self._scale + self._shift))

    def encode(self, x01: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.codebook(self.latent(x01))

    def codes(self, indices: torch.Tensor) -> torch.Tensor:
        return self.codebook.lookup(indices)

    def quantize(self, x01: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.straight_through:
            z = self.latent(x01)
            indices = self.codebook(z)
            return z + (self.codes(indices) - z).detach(), indices
        indices = self.encode(x01)  # no graph through the encoder: the code choice has no gradient anyway
        return self.codes(indices), indices

    def decode(self, z_q: torch.Tensor) -> torch.Tensor:
        """Codebook vectors -> images on the [0,1] scale (not clamped)."""
        if hasattr(self, "decoder"):  # static under TorchScript: an encoder-only tokenizer still scripts
            return (self.decoder(self.post_quant_conv(z_q)) - self._shift) / self._scale
        raise RuntimeError("this tokenizer has no decoder (a Dr.ViT keeps only the encoder and codebook)")

    def reconstruct(self, x01: torch.Tensor) -> torch.Tensor:
        return self.decode(self.quantize(x01)[0]).clamp(0, 1)

    def forward(self, x01: torch.Tensor) -> torch.Tensor:
        return self.reconstruct(x01)


def _rename(state_dict: dict, old: str, new: str) -> None:
    for key in [k for k in state_dict if k.startswith(old)]:
        state_dict[new + key[len(old):]] = state_dict.pop(key)


def _to_taming_keys(module, state_dict, prefix, local_metadata) -> None:
    _rename(state_dict, prefix + "codebook.", prefix + "quantize.")


def _from_taming_keys(module, state_dict, prefix, *args) -> None:
    _rename(state_dict, prefix + "quantize.", prefix + "codebook.")


def build_tokenizer(preset: str | None = None, **arch) -> VQTokenizer:
    """A randomly initialised tokenizer of a preset layout, with `arch` keys overriding the preset's."""
    return VQTokenizer(resolve_arch(preset, **arch))


__all__ = ["PRESETS", "VQTokenizer", "build_tokenizer", "resolve_arch"]
