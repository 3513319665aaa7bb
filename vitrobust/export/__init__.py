"""Models leaving vitrobust: a run or weights file written in a format other tools load (docs/architecture.md,
"Export"). `export_timm` writes the Hugging Face Hub folder timm reads (`timm.create_model('local-dir:DIR')`)."""

from vitrobust.export.timm_folder import export_timm

__all__ = ["export_timm"]
