"""A run as a timm model folder: `config.json` (architecture, num_classes, model_args, pretrained_cfg with
the run's mean/std and resize rule) and `model.safetensors`, written by timm's own `save_for_hf`.

The folder holds the timm network without vitrobust's [0,1] wrapper: as for any timm model, the
normalisation is the data transform's (`resolve_data_config` + `create_transform`). Architectures
vitrobust registers (`vit_pico_patch8_32`, `drvit_*`, the light recipe's XCiT-M/L) need `import vitrobust`
in the loading process, only to register them; timm's own architectures load with timm alone.
"""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import timm
import torch
from timm.models import save_for_hf

from vitrobust.errors import CheckpointError
from vitrobust.models import load_model
from vitrobust.models.classifier import ImageClassifier

# model_args that only make sense on the machine that trained the run: the tokenizer comes from the weights
LOCAL_ARGS = ("tokenizer", "trust_tokenizer", "tokenizer_preset")
MAX_DIFF = 1e-4  # largest logit difference between the run and the folder loaded by timm


def _model_args(model: ImageClassifier) -> dict:
    """What rebuilds the network: timm's recorded build arguments, cleaned of local paths and drop rates,
    with a Dr.ViT's tokenizer rebuilt from its recorded layout and its input normalisation."""
    spec, net = model.spec, model.net
    args = {k: v for k, v in getattr(net, "_model_args", {}).items()
            if k not in LOCAL_ARGS and "drop" not in k and not k.startswith("pretrained")}
    if "tokenizer_arch" in spec.get("kwargs", {}):  # Dr.ViT: weights of the frozen tokenizer are in the file
        args.update(tokenizer_arch=spec["kwargs"]["tokenizer_arch"], tokenizer_from_checkpoint=True,
                    input_mean=spec.get("mean"), input_std=spec.get("std"))
    return args


def export_timm(source: str | Path, out: str | Path, *, ema: bool = False, overwrite: bool = False) -> Path:
    """Write the run (directory or .safetensors) as a timm folder at `out`; nothing is left half-written."""
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise CheckpointError(f"{out} exists and is not empty: choose another --out, or add --overwrite")
    model = load_model(source, ema=ema)
    net = model.net  # its pretrained cfg holds the run's normalisation and resize rule (load_model)
    net._model_args = _model_args(model)
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        save_for_hf(net, str(tmp), safe_serialization=True)
    _check_round_trip(model, tmp)
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return out


def _check_round_trip(model: ImageClassifier, folder: Path) -> None:
    """The folder, loaded the way a timm user loads it, gives the run's logits (else nothing is written)."""
    x = torch.rand(4, *model.input_shape, generator=torch.Generator().manual_seed(0))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            loaded = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
        cfg = loaded.pretrained_cfg
        mean, std = (torch.tensor(cfg[k]).view(1, -1, 1, 1) for k in ("mean", "std"))
        with torch.no_grad():
            diff = (model(x) - loaded((x - mean) / std)).abs().max().item()
        problem = f"max logit difference {diff:.2e}" if diff > MAX_DIFF else ""
    except Exception as err:  # anything timm cannot load or run is this export's failure, reported as such
        problem = f"{type(err).__name__}: {err}"
    if problem:
        shutil.rmtree(folder, ignore_errors=True)
        raise CheckpointError(f"the timm folder does not reproduce the run's logits ({problem}); nothing was written")


__all__ = ["export_timm"]
