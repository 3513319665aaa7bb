"""Models leaving vitrobust: a run or weights file written in a format other tools load (docs/architecture.md,
"Export"). `export_timm` writes the Hugging Face Hub folder timm reads (`timm.create_model('local-dir:DIR')`),
`export_onnx` an ONNX file (fp32, optionally int8) checked against PyTorch, with its model card."""

from vitrobust.export.onnx_file import export_onnx
from vitrobust.export.timm_folder import export_timm

__all__ = ["export_onnx", "export_timm"]
