"""Tokenizer files: vitrobust safetensors (layout in the metadata) and taming-transformers checkpoints.

A taming/Lightning `.ckpt` is read with `checkpoint.load_torch_file`: `torch.load(weights_only=True)`,
and a file that also pickles objects (Lightning's hyper-parameter Namespaces, callback classes) only
with `trust=True`, its objects rebuilt as inert placeholders; only the tensors under `state_dict` are used.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as st_save

from vitrobust.checkpoint import atomic_write_bytes, load_torch_file, read_weights
from vitrobust.errors import CheckpointError, ModelError
from vitrobust.models.vqgan import VQTokenizer, resolve_arch

TOKENIZER_FORMAT = "vitrobust-tokenizer-v1"
WEIGHTS_NAME = "tokenizer.safetensors"
TAMING_PREFIXES = ("encoder.", "decoder.", "quantize.", "quant_conv.", "post_quant_conv.")
IGNORED_PREFIXES = ("loss.",)  # the discriminator and LPIPS of taming's training loss
TRUST_HINT = "pass trust=True (config: --set tokenizer.trust_checkpoint=true)"


def save_tokenizer(tokenizer: VQTokenizer, path: str | Path, meta: dict | None = None) -> Path:
    """Write the weights (taming key names) with the layout in the metadata; atomic."""
    path = Path(path)
    tensors = {k: v.detach().contiguous().cpu() for k, v in tokenizer.state_dict().items()}
    metadata = {"format": TOKENIZER_FORMAT, "arch": json.dumps(tokenizer.arch),
                **{k: json.dumps(v) for k, v in (meta or {}).items()}}
    atomic_write_bytes(path, st_save(tensors, metadata=metadata))
    return path


def read_meta(path: str | Path) -> dict[str, Any]:
    """The JSON metadata save_tokenizer wrote (arch and the caller's meta), decoded."""
    _, meta = read_weights(_weights_path(Path(path)))
    out = {}
    for key, value in meta.items():
        try:
            out[key] = json.loads(value)
        except ValueError:
            out[key] = value
    return out


def is_tokenizer_file(path: str | Path) -> bool:
    """A file (or run directory) written by save_tokenizer, which carries its own layout."""
    path = Path(path)
    if path.is_dir():
        path = path / WEIGHTS_NAME
    if path.suffix != ".safetensors" or not path.is_file():
        return False
    try:
        with safe_open(str(path), framework="pt") as fh:
            return (fh.metadata() or {}).get("format") == TOKENIZER_FORMAT
    except (SafetensorError, OSError, ValueError):
        return False


def _weights_path(path: Path) -> Path:
    if path.is_dir():
        file = path / WEIGHTS_NAME
        if not file.is_file():
            raise CheckpointError(f"{path} holds no {WEIGHTS_NAME}: finish or resume the tokenizer training "
                                  f"(vitrobust tokenizer train ... --resume), or give the weights file")
        return file
    if not path.is_file():
        raise CheckpointError(f"tokenizer checkpoint {path} does not exist")
    return path


def taming_state_dict(content: Any, path: Path) -> dict[str, torch.Tensor]:
    """The tokenizer tensors of a checkpoint: a Lightning dict's `state_dict` or a plain state dict."""
    state = content.get("state_dict", content) if isinstance(content, dict) else None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} holds no state dict (found {type(content).__name__})")
    tensors = {k: v for k, v in state.items() if isinstance(k, str) and isinstance(v, torch.Tensor)
               and not k.startswith(IGNORED_PREFIXES)}
    if not any(k.startswith("quantize.") for k in tensors) or not any(k.startswith("encoder.") for k in tensors):
        sample = ", ".join(list(tensors)[:4]) or "no tensors"
        raise CheckpointError(f"{path} is not a VQGAN checkpoint in the taming-transformers layout (expected "
                              f"encoder.*, decoder.*, quantize.embedding.weight; found {sample})")
    return tensors


def infer_arch(tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
    """The layout read off the tensor shapes of a taming state dict.

    GroupNorm's group count cannot be read from shapes: taming's 32 is assumed. `resolution` is set
    so that the levels holding attention keep it (only the ratio matters)."""
    try:
        ch, in_channels = tensors["encoder.conv_in.weight"].shape[:2]
        levels = 1 + max(int(k.split(".")[2]) for k in tensors if k.startswith("encoder.down."))
        blocks = 1 + max(int(k.split(".")[4]) for k in tensors if k.startswith("encoder.down.0.block."))
        mult = [tensors[f"encoder.down.{i}.block.0.conv2.weight"].shape[0] // ch for i in range(levels)]
        n_embed, embed_dim = tensors["quantize.embedding.weight"].shape
        z_channels = tensors["quant_conv.weight"].shape[1]
        out_ch = tensors["decoder.conv_out.weight"].shape[0] if "decoder.conv_out.weight" in tensors else in_channels
    except (KeyError, ValueError) as err:
        raise CheckpointError(f"cannot read the tokenizer layout from the checkpoint's tensors (missing {err}); "
                              f"pass the preset it was trained with") from None
    resolution = max(256, 2 ** (levels - 1))
    attn = [resolution // 2**i for i in range(levels) if f"encoder.down.{i}.attn.0.q.weight" in tensors]
    return {"ch": int(ch), "ch_mult": mult, "num_res_blocks": blocks, "attn_resolutions": attn,
            "z_channels": int(z_channels), "embed_dim": int(embed_dim), "n_embed": int(n_embed),
            "in_channels": int(in_channels), "out_ch": int(out_ch), "resolution": resolution}


def load_tokenizer(path: str | Path, *, trust: bool = False, preset: str | None = None, freeze: bool = True,
                   device: str | torch.device = "cpu", arch: dict | None = None) -> VQTokenizer:
    """A tokenizer from a vitrobust run directory / .safetensors, or a taming .ckpt/.pth/.pt file.

    The layout comes from the file's vitrobust metadata (a preset/arch that disagrees is an error), else
    from `preset`, else from the tensor shapes (taming files; GroupNorm groups, which shapes do not
    show, are taken as 32); `arch` keys go over the latter two. `freeze`: eval mode, no gradients.
    """
    path = _weights_path(Path(path))
    saved_arch = None
    if path.suffix == ".safetensors":
        tensors, meta = read_weights(path)
        if meta.get("format") == TOKENIZER_FORMAT:
            try:
                saved_arch = json.loads(meta["arch"])
            except (KeyError, ValueError):
                raise CheckpointError(f"{path} has a damaged tokenizer layout in its metadata; restore the file "
                                      f"or re-run the tokenizer training") from None
        else:
            tensors = taming_state_dict(tensors, path)
    else:
        tensors = taming_state_dict(load_torch_file(path, trust, TRUST_HINT), path)
    try:
        if saved_arch is not None:
            layout = resolve_arch(**saved_arch)
            if preset is not None or arch:
                asked = resolve_arch(preset, **(arch or {})) if preset else resolve_arch(**{**saved_arch, **arch})
                differ = [k for k in layout if layout[k] != asked[k]]
                if differ:
                    raise CheckpointError(f"{path} carries its own layout, which differs from the given preset/arch "
                                          f"in {', '.join(differ)}; leave preset and arch out for vitrobust files")
        elif preset is not None:
            layout = resolve_arch(preset, **(arch or {}))
        else:
            layout = resolve_arch(**{**infer_arch(tensors), **(arch or {})})
    except ModelError as err:
        hint = "" if saved_arch or preset else " (the file does not record it: pass the preset or arch={'norm_groups': N})"
        raise CheckpointError(f"{path}: {err}{hint}") from None
    tokenizer = VQTokenizer(layout)
    own = tokenizer.state_dict()
    missing = [k for k in own if k not in tensors]
    unexpected = [k for k in tensors if k not in own]
    wrong = [f"{k} {tuple(tensors[k].shape)} vs {tuple(own[k].shape)}" for k in tensors
             if k in own and tensors[k].shape != own[k].shape]
    if missing or unexpected or wrong:
        raise CheckpointError(
            f"{path} does not fit the tokenizer layout {_short(layout)}: missing {missing[:3]}, unexpected "
            f"{unexpected[:3]}, wrong shape {wrong[:3]}; give the preset (or arch keys) it was trained with")
    tokenizer.load_state_dict(tensors)
    tokenizer.to(device)
    if freeze:
        tokenizer.eval().requires_grad_(False)
    return tokenizer


def _short(layout: dict) -> str:
    keys = ("ch", "ch_mult", "num_res_blocks", "attn_resolutions", "z_channels", "embed_dim", "n_embed")
    return "{" + ", ".join(f"{k}: {layout[k]}" for k in keys) + "}"
