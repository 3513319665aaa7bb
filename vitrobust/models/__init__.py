"""Model construction: any timm classifier by name, wrapped so it takes [0,1] images."""

from __future__ import annotations

import timm
import torch

from vitrobust.config import Config, suggest
from vitrobust.data.base import IMAGENET_MEAN, IMAGENET_STD, ImageSet
from vitrobust.errors import ModelError
from vitrobust.models import drvit, small_vits  # both register their models in timm
from vitrobust.models.adapt import adapt_patch_size
from vitrobust.models.classifier import ImageClassifier, Normalize


def _stats(value, dataset_value, in_chans: int, what: str):
    if value == "none":
        return None
    if value == "dataset":
        value = dataset_value
    elif value == "imagenet":
        value = IMAGENET_MEAN if what == "mean" else IMAGENET_STD
    value = [float(v) for v in value]
    if len(value) == 1 and in_chans > 1:
        value = value * in_chans
    if len(value) != in_chans:
        raise ModelError(f"model.{what} has {len(value)} values but the images have {in_chans} channels")
    return value


def model_spec(cfg: Config, data: ImageSet) -> dict:
    """Everything needed to rebuild the network, resolved against the dataset."""
    m = cfg.model
    return {
        "name": m.name, "num_classes": data.num_classes, "in_chans": data.in_chans,
        "img_size": cfg.data.img_size or data.img_size, "patch_size": m.patch_size,
        "mean": _stats(m.mean, data.mean, data.in_chans, "mean"), "std": _stats(m.std, data.std, data.in_chans, "std"),
        "drop_rate": m.drop_rate, "drop_path_rate": m.drop_path_rate,
        "kwargs": drvit.spec_kwargs(dict(m.kwargs)) if m.name in drvit.DRVIT_MODELS else dict(m.kwargs),
    }


def build_model(spec: dict) -> ImageClassifier:
    name = spec["name"]
    if not timm.is_model(name):
        raise ModelError(
            f"unknown model {name!r}; {suggest(name, [*small_vits.SMALL_VITS, *timm.list_models()], n=3)}"
            f"any timm model name works "
            f"(timm.list_models('*vit*')), plus vitrobust's {', '.join(small_vits.SMALL_VITS)}"
        )
    adapt = spec.get("adapt")
    kwargs = {"num_classes": spec["num_classes"], "in_chans": spec["in_chans"],
              "img_size": adapt["from_img_size"] if adapt else spec["img_size"],
              "drop_rate": spec.get("drop_rate", 0.0), "drop_path_rate": spec.get("drop_path_rate", 0.0)}
    if spec.get("patch_size"):
        kwargs["patch_size"] = spec["patch_size"]
    if name in drvit.DRVIT_MODELS:  # its tokenizer needs the [0,1] pixels back from the normalised input
        kwargs.update(input_mean=spec.get("mean"), input_std=spec.get("std"))
    kwargs.update(spec.get("kwargs", {}))
    try:
        net = timm.create_model(name, pretrained=False, **kwargs)
    except (TypeError, ValueError, AssertionError, RuntimeError) as err:
        raise ModelError(f"cannot build {name} with {kwargs}: {err}") from None
    model = ImageClassifier(net, {k: v for k, v in spec.items() if k != "adapt"})
    if adapt:
        adapt_patch_size(model, adapt["patch_size"], spec["img_size"])
    return model


def create_model(cfg: Config, data: ImageSet) -> tuple[ImageClassifier, dict | None]:
    """Build the configured model; start from `model.init` weights and adapt its patch size if asked.

    With `model.adapt_patch_size` the network is first built at `model.init_img_size` so the
    init weights fit, then its patch embedding and position embedding are adapted to the data.
    """
    from vitrobust.models.io import init_from

    spec = model_spec(cfg, data)
    target_size = spec["img_size"]
    if cfg.model.adapt_patch_size:
        spec["img_size"] = cfg.model.init_img_size
    model = build_model(spec)
    info = init_from(model, cfg.model.init) if cfg.model.init else None
    if cfg.model.adapt_patch_size:
        adapt_patch_size(model, cfg.model.adapt_patch_size, target_size)
    return model, info


def count_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_flops(model: ImageClassifier) -> int:
    """Forward FLOPs for one image (a multiply-add counts 2), by PyTorch's own flop counter."""
    from torch.utils.flop_counter import FlopCounterMode

    device = next(model.parameters()).device
    x = torch.zeros(1, *model.input_shape, device=device)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    return int(counter.get_total_flops())


__all__ = ["ImageClassifier", "ModelError", "Normalize", "build_model", "count_flops", "count_params", "create_model", "model_spec"]
