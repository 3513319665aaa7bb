"""The configured model of a training run: built, started from `model.init`, patch size adapted."""

from __future__ import annotations

from vitrobust.config import Config
from vitrobust.data.base import ImageSet
from vitrobust.models.adapt import adapt_patch_size
from vitrobust.models.build import build_model, model_spec
from vitrobust.models.classifier import ImageClassifier
from vitrobust.models.io import init_from


def create_model(cfg: Config, data: ImageSet) -> tuple[ImageClassifier, dict | None]:
    """Build the configured model; start from `model.init` weights and adapt its patch size if asked.

    With `model.adapt_patch_size` the network is first built at `model.init_img_size` so the
    init weights fit, then its patch embedding and position embedding are adapted to the data.
    Returns the model and what `init_from` loaded (None without model.init).
    """
    spec = model_spec(cfg, data)
    target_size = spec["img_size"]
    if cfg.model.adapt_patch_size:
        spec["img_size"] = cfg.model.init_img_size
    model = build_model(spec)
    info = init_from(model, cfg.model.init) if cfg.model.init else None
    if cfg.model.adapt_patch_size:
        adapt_patch_size(model, cfg.model.adapt_patch_size, target_size)
    return model, info


__all__ = ["create_model"]
