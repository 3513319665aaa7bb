"""Model construction: any timm classifier by name, wrapped so it takes [0,1] images."""

from __future__ import annotations

import timm
import torch

from vitrobust.config import Config, suggest
from vitrobust.data.base import IMAGENET_MEAN, IMAGENET_STD, ImageSet
from vitrobust.errors import UserError
from vitrobust.models import small_vits  # noqa: F401  (registers the 32-px ViTs in timm)
from vitrobust.models.classifier import ImageClassifier, Normalize


class ModelError(UserError, ValueError):
    """A model that cannot be built, with a message that says how to fix it."""


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
        "drop_rate": m.drop_rate, "drop_path_rate": m.drop_path_rate, "kwargs": dict(m.kwargs),
    }


def build_model(spec: dict) -> ImageClassifier:
    name = spec["name"]
    if not timm.is_model(name):
        raise ModelError(
            f"unknown model {name!r}; {suggest(name, timm.list_models())}any timm model name works "
            f"(timm.list_models('*vit*')), plus vitrobust's {', '.join(small_vits.SMALL_VITS)}"
        )
    kwargs = {"num_classes": spec["num_classes"], "in_chans": spec["in_chans"], "img_size": spec["img_size"],
              "drop_rate": spec.get("drop_rate", 0.0), "drop_path_rate": spec.get("drop_path_rate", 0.0)}
    if spec.get("patch_size"):
        kwargs["patch_size"] = spec["patch_size"]
    kwargs.update(spec.get("kwargs", {}))
    try:
        net = timm.create_model(name, pretrained=False, **kwargs)
    except (TypeError, ValueError, AssertionError, RuntimeError) as err:
        raise ModelError(f"cannot build {name} with {kwargs}: {err}") from None
    return ImageClassifier(net, spec)


def create_model(cfg: Config, data: ImageSet) -> ImageClassifier:
    return build_model(model_spec(cfg, data))


def count_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


__all__ = ["ImageClassifier", "ModelError", "Normalize", "build_model", "count_params", "create_model", "model_spec"]
