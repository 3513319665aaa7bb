"""Small ViTs for 32-px inputs that train on a CPU, registered in timm's registry.

After `import vitrobust`, `timm.create_model("vit_pico_patch8_32")` works for anyone, with timm's whole
contract (docs/architecture.md, "timm's contract"): `features_only`, `forward_intermediates`,
`reset_classifier`, TorchScript, FX and `torch.export`.
"""

from __future__ import annotations

from timm.models import generate_default_cfgs
from timm.models.vision_transformer import VisionTransformer

from vitrobust.models.timm_contract import cfg, register

# name: (patch, embed_dim, depth, heads)
SMALL_VITS = {
    "vit_pico_patch8_32": (8, 128, 4, 4),
    "vit_nano_patch4_32": (4, 128, 6, 4),
    "vit_tiny_patch4_32": (4, 192, 12, 3),
    "vit_small_patch4_32": (4, 384, 12, 6),
}

default_cfgs = generate_default_cfgs({name: cfg(3, 32, 10, "patch_embed.proj") for name in SMALL_VITS})


for _name, (_patch, _dim, _depth, _heads) in SMALL_VITS.items():
    register(__name__, _name, f"ViT for 32-px images: patch {_patch}, width {_dim}, depth {_depth}, {_heads} heads.",
             VisionTransformer, {"patch_size": _patch, "embed_dim": _dim, "depth": _depth, "num_heads": _heads,
                                 "mlp_ratio": 4.0})

__all__ = ["SMALL_VITS"]
