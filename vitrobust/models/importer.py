"""`vitrobust import`: a released checkpoint in a foreign layout -> a vitrobust weights file.

The output is an ordinary vitrobust .safetensors file: the tensors under ImageClassifier keys, the model
spec (timm arch, classes, input size, normalisation, the file's resize rule under `preprocess`, where it
came from under `imported`) and a run config in its metadata, so `vitrobust evaluate|explain|report` and
`model.init` take it unchanged and every benchmark that resizes images uses the checkpoint's own rule
(data.crop_pct, data.interpolation). Nothing is written unless the whole conversion succeeds; nothing
from the input file runs (formats.read_checkpoint).

Where a fact comes from, first given wins: the caller (--format, --arch), then the zoo entry (--zoo),
then the file (its keys, a normaliser's mean/std), then the format's defaults, then timm's defaults for
the architecture.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import timm
import yaml

from vitrobust.checkpoint import save_weights
from vitrobust.config import build_config
from vitrobust.errors import CheckpointError, InputError, ModelError
from vitrobust.models.build import build_model
from vitrobust.models.classifier import ImageClassifier
from vitrobust.models.formats import (
    CHECKPOINT_FORMATS,
    Found,
    Layout,
    block_count,
    find_format,
    read_checkpoint,
)
from vitrobust.models.io import load_model
from vitrobust.zoo import ZOO, ZooEntry

HEAD_KEYS = ("head.weight", "head.fc.weight", "fc.weight", "classifier.weight")
DATASET_BY_CLASSES = {1000: "imagenet", 10: "cifar10", 100: "cifar100"}


def _arch_defaults(arch: str) -> dict:
    """timm's pretrained config of an architecture (input size, mean/std, crop_pct, interpolation)."""
    cfg = timm.models.get_pretrained_cfg(arch.split(".")[0])
    if cfg is None:
        return {}
    return cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg.__dict__)


def _stats(layout_value, entry_value, arch_value, what: str):
    """mean or std: the file's own (a list from the layout), else the zoo entry's, else the arch's."""
    if isinstance(layout_value, list):
        return layout_value
    if layout_value is None:
        return None
    if isinstance(entry_value, list):
        return [float(v) for v in entry_value]
    if entry_value is None:
        return None
    if entry_value == "file":
        raise CheckpointError(f"the zoo entry takes the {what} from the file, but the file holds none: it is not in "
                              f"the entry's format")
    return [float(v) for v in arch_value] if arch_value is not None else None


def _classes(tensors: dict) -> int:
    for key in HEAD_KEYS:
        if key in tensors and tensors[key].ndim == 2:
            return int(tensors[key].shape[0])
    raise CheckpointError(f"cannot tell the number of classes: none of {', '.join(HEAD_KEYS)} is in the file")


def _key_report(arch: str, own: dict, theirs: dict) -> str | None:
    missing = [k for k in own if k not in theirs]
    unexpected = [k for k in theirs if k not in own]
    wrong = [f"{k} {tuple(theirs[k].shape)} vs {tuple(own[k].shape)}" for k in theirs
             if k in own and theirs[k].shape != own[k].shape]
    if not (missing or unexpected or wrong):
        return None
    parts = [f"{label} ({len(keys)}): {', '.join(keys[:4])}{' ...' if len(keys) > 4 else ''}"
             for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)) if keys]
    return f"the file does not fit {arch}: " + "; ".join(parts)


def convert(found: Found, fmt_name: str | None = None, arch: str | None = None,
            entry: ZooEntry | None = None) -> tuple[ImageClassifier, dict]:
    """The filled model and its run config (a dict), from a read checkpoint."""
    fmt = CHECKPOINT_FORMATS.get(fmt_name, key="--format") if fmt_name else find_format(found)
    if fmt.own:
        raise CheckpointError(f"{found.source} is already a vitrobust weights file: load it with vitrobust.load_model")
    if entry is not None and fmt.name != entry.format and fmt_name is None:
        raise CheckpointError(f"{found.source} looks like the {fmt.name} format but zoo entry {entry.name} is "
                              f"{entry.format}: is it the right file? (--format overrides)")
    layout: Layout = fmt.layout(found)
    arch = arch or (entry.arch if entry else None) or layout.arch
    if not arch:
        raise CheckpointError(f"the {fmt.name} format does not say which network it is: pass --arch (a timm model "
                              f"name, e.g. vit_base_patch16_224) or --zoo ENTRY")
    if not timm.is_model(arch):
        raise ModelError(f"--arch {arch!r} is not a timm model (timm.list_models() lists them)")
    defaults = _arch_defaults(arch)
    num_classes = _classes(layout.tensors)
    img_size = (entry.img_size if entry else None) or int((defaults.get("input_size") or (3, 224, 224))[-1])
    kwargs = {**(entry.kwargs if entry else {}), **layout.kwargs}
    spec = {"name": arch, "num_classes": num_classes, "in_chans": 3, "img_size": img_size, "patch_size": None,
            "mean": _stats(layout.mean, entry.mean if entry else "arch", defaults.get("mean"), "mean"),
            "std": _stats(layout.std, entry.std if entry else "arch", defaults.get("std"), "std"),
            "drop_rate": 0.0, "drop_path_rate": 0.0, "kwargs": kwargs}
    if entry is not None and entry.adapt_patch_size:
        spec["adapt"] = {"patch_size": entry.adapt_patch_size, "from_img_size": 224}
    crop_pct = (entry.crop_pct if entry else None) or layout.crop_pct or defaults.get("crop_pct")
    interpolation = (entry.interpolation if entry else None) or layout.interpolation or defaults.get("interpolation")
    interpolation = interpolation if interpolation in ("bilinear", "bicubic") else "bilinear"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # e.g. a Dr.ViT's tokenizer layout built before its weights are loaded
        model = build_model(spec)
        if block_count(layout.tensors) and "depth" not in kwargs:
            own_depth = block_count(model.net.state_dict())
            if own_depth != block_count(layout.tensors):  # a shortened model of the family (depth read from the file)
                spec["kwargs"] = {**kwargs, "depth": block_count(layout.tensors)}
                model = build_model(spec)
    notes = list(layout.notes)
    own = model.net.state_dict()
    problem = _key_report(arch, own, layout.tensors)
    if problem:
        raise CheckpointError(f"{found.source} ({fmt.name} format): {problem}")
    model.net.load_state_dict(layout.tensors)
    model.spec["preprocess"] = {"crop_pct": crop_pct, "interpolation": interpolation}
    model.sync_pretrained_cfg()
    model.spec["imported"] = {"format": fmt.name, "file": Path(found.source).name, "notes": notes}
    if entry is not None:
        model.spec["zoo"] = entry.name
    dataset = (entry.dataset if entry else None) or DATASET_BY_CLASSES.get(num_classes)
    config = {"name": entry.name if entry else Path(found.source).stem,
              "data": {**({"name": dataset} if dataset else {}), "img_size": img_size,
                       **({"crop_pct": crop_pct} if crop_pct and img_size > 64 else {}),
                       **({"interpolation": interpolation} if img_size > 64 else {})},
              "model": {"name": arch, "mean": spec["mean"] or "none", "std": spec["std"] or "none", "kwargs": kwargs}}
    if entry is not None and entry.threat:
        config["evaluate"] = {"attack": dict(entry.threat)}
    build_config(config)  # must be a valid run config
    return model.eval(), config


def import_checkpoint(checkpoint: str | Path, out: str | Path, *, format: str | None = None, arch: str | None = None,
                      zoo: str | None = None, trust: bool = False) -> ImageClassifier:
    """Convert a released checkpoint into the vitrobust weights file `out` and return the model loaded from it
    (eval mode, [0,1] input). See the module docstring for where each fact comes from."""
    out = Path(out)
    if out.suffix != ".safetensors":
        raise InputError(f"--out {out} must name a .safetensors file")
    if Path(checkpoint).resolve() == out.resolve():
        raise InputError("--out must differ from the checkpoint being imported")
    entry = ZOO.get(zoo, key="--zoo") if zoo else None
    found = read_checkpoint(checkpoint, trust)
    model, config = convert(found, format, arch, entry)
    save_weights(model, out, model.spec, yaml.safe_dump(config, sort_keys=False))
    return load_model(out)


__all__ = ["convert", "import_checkpoint"]
