"""Loading models from run directories and weight files, never executing code from them."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch

from vitrobust.checkpoint import FORMAT, read_weights
from vitrobust.errors import CheckpointError
from vitrobust.models.build import build_model
from vitrobust.models.classifier import ImageClassifier
from vitrobust.models.formats import find_format, read_checkpoint
from vitrobust.models.runtime import load_onnx
from vitrobust.models.timm_contract import resize_rule


def weights_file(path: str | Path, ema: bool = False) -> Path:
    path = Path(path)
    if path.is_dir():
        file = path / ("ema.safetensors" if ema else "model.safetensors")
        if not file.is_file():
            hint = "train with train.ema_decay set" if ema else "finish or resume the training (vitrobust train ... --resume)"
            raise CheckpointError(f"{path} holds no {file.name}: {hint}")
        return file
    if not path.exists():
        raise CheckpointError(f"{path} does not exist: give a run directory or a .safetensors file")
    return path


def load_model(path: str | Path, *, ema: bool = False, device: str | torch.device = "cpu") -> ImageClassifier:
    """A vitrobust model from a run directory or its .safetensors file, in eval mode, taking [0,1] images;
    an exported .onnx file runs on onnxruntime (models/runtime.py, forward only)."""
    if Path(path).suffix == ".onnx":
        return load_onnx(path)
    file = weights_file(path, ema)
    tensors, meta = read_weights(file)
    if meta.get("format") != FORMAT:
        raise CheckpointError(
            f"{file} is not a vitrobust checkpoint (its metadata has no vitrobust model spec); to start "
            f"from foreign weights, train with --set model.init={file}"
        )
    try:
        spec = json.loads(meta.get("spec", ""))
        if not isinstance(spec, dict) or not {"name", "num_classes", "in_chans", "img_size"} <= spec.keys():
            raise ValueError("expected a mapping with name, num_classes, in_chans and img_size")
    except ValueError as err:  # json.JSONDecodeError is a ValueError
        raise CheckpointError(f"{file} has a damaged model spec in its metadata ({err}); restore the file "
                              f"or re-run the training") from None
    model = build_model(spec)
    own = model.state_dict()
    missing = [k for k in own if k not in tensors]
    unexpected = [k for k in tensors if k not in own]
    wrong = [k for k in tensors if k in own and tensors[k].shape != own[k].shape]
    if missing or unexpected or wrong:
        raise CheckpointError(f"{file} does not match its model spec: missing {missing[:5]}, "
                              f"unexpected {unexpected[:5]}, wrong shape {wrong[:5]}")
    model.load_state_dict(tensors)
    model.run_config = meta.get("config", "")
    model.sync_pretrained_cfg(resize_rule(model.spec, model.run_config))  # timm's data config: the run's rule
    return model.eval().to(device)


def init_from(model: ImageClassifier, path: str | Path) -> dict:
    """Start from other weights (fine-tuning): a vitrobust run/file, or a plain timm state dict (bare or
    under state_dict / model / ..., DDP prefix or not), told apart by CHECKPOINT_FORMATS.

    Tensors whose shape differs (e.g. a classifier head for another number of classes) are skipped
    with a warning; returns {"loaded": n, "skipped": [...]}.
    """
    file = weights_file(path)
    found = read_checkpoint(file, trust_hint="convert it first with `vitrobust import FILE --trust --out "
                                             "FILE.safetensors` (nothing from the file runs)")
    if not found.tensors:
        raise CheckpointError(f"{file} holds no tensors")
    tensors = find_format(found).classifier_tensors(found)
    own = model.state_dict()
    keep = {k: v for k, v in tensors.items() if k in own and own[k].shape == v.shape}
    if not keep:
        raise CheckpointError(f"{file} shares no tensor with {model.spec['name']}: is it weights for another model?")
    skipped = sorted(k for k in tensors if k not in keep)
    if skipped:
        warnings.warn(f"model.init: skipped {len(skipped)} tensors that do not fit ({', '.join(skipped[:4])}...)",
                      stacklevel=2)
    if any(k.startswith("normalize.") for k in keep):  # keep this run's normalisation
        keep = {k: v for k, v in keep.items() if not k.startswith("normalize.")}
    model.load_state_dict(keep, strict=False)
    return {"loaded": len(keep), "skipped": skipped}
