"""Model construction: any timm classifier by name, wrapped so it takes [0,1] images."""

from __future__ import annotations

import timm
import torch

from vitrobust.config import Config
from vitrobust.data.base import IMAGENET_MEAN, IMAGENET_STD, ImageSet
from vitrobust.errors import ModelError, suggest
from vitrobust.models.adapt import adapt_patch_size
from vitrobust.models.classifier import ImageClassifier
from vitrobust.models.frozen import frozen_tensors
from vitrobust.models.small_vits import SMALL_VITS


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
    """What is needed to rebuild the network, resolved against the dataset. The built model's `spec` adds
    what its network records through the `spec_kwargs` hook; that is the spec weights files carry."""
    m = cfg.model
    return {
        "name": m.name, "num_classes": data.num_classes, "in_chans": data.in_chans,
        "img_size": cfg.data.img_size or data.img_size, "patch_size": m.patch_size,
        "mean": _stats(m.mean, data.mean, data.in_chans, "mean"), "std": _stats(m.std, data.std, data.in_chans, "std"),
        "drop_rate": m.drop_rate, "drop_path_rate": m.drop_path_rate, "kwargs": dict(m.kwargs),
    }


def build_model(spec: dict) -> ImageClassifier:
    name = spec["name"]
    if not timm.is_model(name):
        raise ModelError(
            f"unknown model {name!r}; {suggest(name, [*SMALL_VITS, *timm.list_models()], n=3)}"
            f"any timm model name works "
            f"(timm.list_models('*vit*')), plus vitrobust's {', '.join(SMALL_VITS)}"
        )
    adapt = spec.get("adapt")
    kwargs = {"num_classes": spec["num_classes"], "in_chans": spec["in_chans"],
              "img_size": adapt["from_img_size"] if adapt else spec["img_size"],
              "drop_rate": spec.get("drop_rate", 0.0), "drop_path_rate": spec.get("drop_path_rate", 0.0)}
    if spec.get("patch_size"):
        kwargs["patch_size"] = spec["patch_size"]
    kwargs.update(spec.get("kwargs", {}))
    try:
        net = timm.create_model(name, pretrained=False, **kwargs)
    except (TypeError, ValueError, AssertionError, RuntimeError) as err:
        raise ModelError(f"cannot build {name} with {kwargs}: {err}") from None
    model = ImageClassifier(net, {k: v for k, v in spec.items() if k != "adapt"})
    if adapt:
        adapt_patch_size(model, adapt["patch_size"], spec["img_size"])
    return model


def count_params(model: torch.nn.Module) -> int:
    """Parameters plus frozen weights (a Dr.ViT's tokenizer, held as buffers): the size of what runs."""
    if getattr(model, "recorded_size", None):  # an exported file: the figures of its PyTorch model
        return int(model.recorded_size["params"])
    return sum(p.numel() for p in model.parameters()) + sum(t.numel() for _, t in frozen_tensors(model))


def count_flops(model: ImageClassifier) -> int:
    """Forward FLOPs for one image (a multiply-add counts 2), by PyTorch's own flop counter."""
    if getattr(model, "recorded_size", None):
        return int(model.recorded_size["flops"])
    from torch.utils.flop_counter import FlopCounterMode

    device = next(model.parameters()).device
    x = torch.zeros(1, *model.input_shape, device=device)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    return int(counter.get_total_flops())


__all__ = ["build_model", "count_flops", "count_params", "model_spec"]
