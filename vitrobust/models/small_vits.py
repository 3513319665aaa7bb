"""Small ViTs for 32-px inputs that train on a CPU, registered in timm's registry.

After `import vitrobust`, `timm.create_model("vit_pico_patch8_32")` works for anyone.
"""

from __future__ import annotations

from timm.models import register_model
from timm.models.vision_transformer import VisionTransformer

# name: (patch, embed_dim, depth, heads)
SMALL_VITS = {
    "vit_pico_patch8_32": (8, 128, 4, 4),
    "vit_nano_patch4_32": (4, 128, 6, 4),
    "vit_tiny_patch4_32": (4, 192, 12, 3),
    "vit_small_patch4_32": (4, 384, 12, 6),
}


def _build(name: str, kwargs: dict) -> VisionTransformer:
    patch, dim, depth, heads = SMALL_VITS[name]
    for key in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir"):
        kwargs.pop(key, None)
    args = {"img_size": 32, "patch_size": patch, "embed_dim": dim, "depth": depth, "num_heads": heads,
            "mlp_ratio": 4.0, "num_classes": 10, **kwargs}
    model = VisionTransformer(**args)
    model.pretrained_cfg = model.default_cfg = {
        "architecture": name, "input_size": (args.get("in_chans", 3), args["img_size"], args["img_size"]),
        "num_classes": args["num_classes"], "mean": None, "std": None,
    }
    return model


def _entry(name: str):
    def create(pretrained: bool = False, **kwargs) -> VisionTransformer:
        if pretrained:
            raise ValueError(f"{name} has no pretrained weights; start from a run with model.init=RUN_DIR")
        return _build(name, kwargs)

    create.__name__ = name
    create.__doc__ = f"ViT {SMALL_VITS[name]} (patch, width, depth, heads) for 32-px images."
    return create


for _name in SMALL_VITS:
    register_model(_entry(_name))
