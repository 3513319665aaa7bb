"""XCiT-M12 and XCiT-L12, the two larger models of "A Light Recipe to Train Robust Vision Transformers"
(Debenedetti et al.), registered in timm's registry (timm ships XCiT-S12 as `xcit_small_12_p16_224`
but only 24-block M and L models). Same family as S12: patch 16, 12 blocks, eta 1.0, tokens_norm.
"""

from __future__ import annotations

from timm.models import register_model
from timm.models.xcit import Xcit

# name: (embed_dim, heads)
LIGHT_XCITS = {
    "xcit_medium_12_p16_224": (512, 8),
    "xcit_large_12_p16_224": (768, 16),
}


def _entry(name: str):
    dim, heads = LIGHT_XCITS[name]

    def create(pretrained: bool = False, **kwargs) -> Xcit:
        if pretrained:
            raise ValueError(f"{name} has no weights to download here; import the released file with "
                             f"`vitrobust import FILE --zoo ...`")
        for key in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir"):
            kwargs.pop(key, None)
        args = {"patch_size": 16, "embed_dim": dim, "depth": 12, "num_heads": heads, "eta": 1.0,
                "tokens_norm": True, **kwargs}
        model = Xcit(**args)
        size = args.get("img_size", 224)
        model.pretrained_cfg = model.default_cfg = {
            "architecture": name, "input_size": (args.get("in_chans", 3), size, size),
            "num_classes": args.get("num_classes", 1000), "mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0),
            "interpolation": "bicubic", "crop_pct": 1.0,
        }
        return model

    create.__name__ = name
    create.__doc__ = f"XCiT patch 16, 12 blocks, width {dim}, {heads} heads (the light recipe's M/L models)."
    return create


for _name in LIGHT_XCITS:
    register_model(_entry(_name))

__all__ = ["LIGHT_XCITS"]
