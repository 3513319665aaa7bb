"""An exported ONNX file as a model the evaluation runs (docs/architecture.md, "Export"): what ships is
what is measured. `RuntimeClassifier` runs the file with onnxruntime behind the `ImageClassifier`
interface ([0,1] images in, logits out, `spec`, `input_shape`, `run_config`), forward only: benchmarks
that need input gradients refuse it (evaluate/core.py). Its spec, run config and size come from the
model card written beside the file at export (FILE.card.json, shared by FILE.int8.onnx).
"""

from __future__ import annotations

import importlib.metadata
import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

from vitrobust.errors import CheckpointError, UserError


def ort_session(path: str | Path):
    """An onnxruntime CPU session of the file, quiet; a clear error without the deploy extra."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise UserError("running an ONNX file needs onnxruntime: pip install 'vitrobust[deploy]' "
                        "(scripts/setup.sh installs it)") from None
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def card_path(path: Path) -> Path:
    stem = path.name.removesuffix(".onnx").removesuffix(".int8")
    return path.with_name(stem + ".card.json")


class RuntimeClassifier(nn.Module):
    forward_only = True  # no gradients: white-box attacks and relevance maps need the PyTorch model

    def __init__(self, path: Path, card: dict):
        super().__init__()
        self.session = ort_session(path)
        self.spec = dict(card["spec"])
        self.input_shape = (self.spec["in_chans"], self.spec["img_size"], self.spec["img_size"])
        self.run_config = card.get("config", "")
        precision = "int8" if path.name.endswith(".int8.onnx") else "fp32"
        self.runtime = {"runtime": "onnxruntime", "version": importlib.metadata.version("onnxruntime"),
                        "precision": precision, "file": path.name, "opset": card.get("opset")}
        self.recorded_size = {"params": card.get("params", 0), "flops": card.get("flops", 0)}
        self.eval()

    @property
    def num_classes(self) -> int:
        return self.spec["num_classes"]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        images = np.ascontiguousarray(x.detach().to("cpu", torch.float32).numpy())
        logits = self.session.run(["logits"], {"images": images})[0]
        return torch.from_numpy(logits).to(x.device)


def load_onnx(path: str | Path) -> RuntimeClassifier:
    path = Path(path)
    card = card_path(path)
    if not path.is_file():
        raise CheckpointError(f"{path} does not exist")
    if not card.is_file():
        raise CheckpointError(f"{path} has no model card ({card.name}) beside it: evaluate ONNX files written by "
                              f"`vitrobust export RUN --format onnx`, which records the spec and data config there")
    data = json.loads(card.read_text())
    if "spec" not in data:
        raise CheckpointError(f"{card} holds no model spec: export the file again with this version of vitrobust")
    return RuntimeClassifier(path, data)


__all__ = ["RuntimeClassifier", "card_path", "load_onnx", "ort_session"]
