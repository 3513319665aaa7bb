"""XCiT-M12 and XCiT-L12, the two larger models of "A Light Recipe to Train Robust Vision Transformers"
(Debenedetti et al.), registered in timm's registry (timm ships XCiT-S12 as `xcit_small_12_p16_224`
but only 24-block M and L models). Same family as S12: patch 16, 12 blocks, eta 1.0, tokens_norm.
The recipe's models take [0,1] pixels without normalisation, resized bicubic without a crop.
"""

from __future__ import annotations

from timm.models import generate_default_cfgs
from timm.models.xcit import Xcit

from vitrobust.models.timm_contract import cfg, register

# name: (embed_dim, heads)
LIGHT_XCITS = {
    "xcit_medium_12_p16_224": (512, 8),
    "xcit_large_12_p16_224": (768, 16),
}

default_cfgs = generate_default_cfgs({name: cfg(3, 224, 1000, "patch_embed.proj.0.0", interpolation="bicubic")
                                      for name in LIGHT_XCITS})


for _name, (_dim, _heads) in LIGHT_XCITS.items():
    register(__name__, _name, f"XCiT patch 16, 12 blocks, width {_dim}, {_heads} heads (the light recipe's M/L models).",
             Xcit, {"patch_size": 16, "embed_dim": _dim, "depth": 12, "num_heads": _heads, "eta": 1.0, "tokens_norm": True})

__all__ = ["LIGHT_XCITS"]
