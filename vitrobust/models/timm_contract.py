"""What every architecture vitrobust registers in timm shares (docs/architecture.md, "timm's contract").

A registered name behaves like a timm model: its module holds `default_cfgs` (timm's complete
pretrained-cfg keys: classifier, first_conv, pool_size, fixed_input_size, mean/std, crop), and its
entrypoint builds through timm's `build_model_with_cfg`, so `features_only=True`, `out_indices`,
`pretrained_cfg` overlays and `local-dir:`/Hub folders work as for timm's own models.

Registered defaults describe a network built without weights: [0,1] pixels in (mean 0, std 1), so
`resolve_data_config` never invents ImageNet statistics. A model vitrobust builds for a run carries
the run's own preprocessing instead (`run_pretrained_cfg`).
"""

from __future__ import annotations

import sys

import yaml
from timm.models import build_model_with_cfg, register_model

NO_WEIGHTS = ("{name} has no weights to download; start from a run (model.init=RUN_DIR), load a run exported "
              "with `vitrobust export RUN --format timm` as timm.create_model('local-dir:DIR', pretrained=True), "
              "or import a released file with `vitrobust import FILE`")


def cfg(in_chans: int, size: int, num_classes: int, first_conv: str | tuple[str, ...], *,
        mean: tuple[float, ...] | None = None, std: tuple[float, ...] | None = None, crop_pct: float = 1.0,
        interpolation: str = "bilinear", classifier: str = "head", **extra) -> dict:
    """A complete pretrained cfg (no weights) for a fixed-size network taking `in_chans` x size x size."""
    return {"url": "", "num_classes": num_classes, "input_size": (in_chans, size, size), "pool_size": None,
            "crop_pct": crop_pct, "interpolation": interpolation, "fixed_input_size": True,
            "mean": mean or (0.0,) * in_chans, "std": std or (1.0,) * in_chans,
            "first_conv": first_conv, "classifier": classifier, "license": "apache-2.0", **extra}


def register(module: str, name: str, doc: str, model_cls: type, fixed: dict) -> None:
    """Register `name` in timm: an entrypoint that builds `model_cls(**{**fixed, **kwargs})` through
    `build_model_with_cfg`, with timm's forward_intermediates feature wrapper (`feature_cls='getter'`).

    `module` is the defining module's `__name__`: timm looks its `default_cfgs` up there.
    """

    def create(pretrained: bool = False, **kwargs):
        if pretrained and not kwargs.get("pretrained_cfg"):
            raise ValueError(NO_WEIGHTS.format(name=name))
        out_indices = kwargs.pop("out_indices", 3)
        args = {**fixed, **kwargs}
        return build_model_with_cfg(model_cls, name, pretrained,
                                    feature_cfg={"out_indices": out_indices, "feature_cls": "getter"}, **args)

    create.__name__ = create.__qualname__ = name
    create.__module__ = module
    create.__doc__ = doc
    setattr(sys.modules[module], name, create)  # the entrypoint lives where timm records its module
    register_model(create)


IMAGENET_RULE = {"crop_pct": 0.875, "interpolation": "bilinear"}  # torchvision's Resize(256) + CenterCrop(224)


def resize_rule(spec: dict, run_config: str = "") -> dict:
    """How test images are resized for the model: an imported file's own rule (spec["preprocess"]), else its
    run's data config (data.crop_pct / data.interpolation; ImageNet's 0.875 bilinear, else a plain resize)."""
    pre = dict(spec.get("preprocess") or {})
    if pre.get("crop_pct") and pre.get("interpolation"):
        return pre
    data = (yaml.safe_load(run_config or "") or {}).get("data") or {}
    default = IMAGENET_RULE if data.get("name") == "imagenet" else {"crop_pct": 1.0, "interpolation": "bilinear"}
    return {"crop_pct": data.get("crop_pct") or default["crop_pct"],
            "interpolation": data.get("interpolation") or default["interpolation"]}


def run_pretrained_cfg(net, spec: dict, rule: dict | None = None) -> dict:
    """The network's pretrained cfg with what a vitrobust run trained it on: input size, classes, the
    normalisation the network's input has (mean 0 / std 1 where none), the resize rule (`resize_rule`)."""
    base = dict(getattr(net, "pretrained_cfg", None) or {})
    chans, size = spec["in_chans"], spec["img_size"]
    pre = rule or resize_rule(spec)
    base.update({
        "architecture": spec["name"], "num_classes": spec["num_classes"], "input_size": (chans, size, size),
        "mean": tuple(spec.get("mean") or (0.0,) * chans), "std": tuple(spec.get("std") or (1.0,) * chans),
        "crop_pct": float(pre.get("crop_pct") or 1.0),
        "interpolation": pre.get("interpolation") or base.get("interpolation") or "bilinear",
        "fixed_input_size": True,
    })
    base.setdefault("pool_size", None)
    base.setdefault("classifier", "head")
    return base


__all__ = ["cfg", "register", "resize_rule", "run_pretrained_cfg"]
