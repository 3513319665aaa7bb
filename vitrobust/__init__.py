"""vitrobust: train, attack, evaluate and explain robust Vision Transformers."""

__version__ = "0.1.0"

from vitrobust import models  # noqa: E402,F401  (registers vitrobust's models in timm)
from vitrobust.evaluate import evaluate  # noqa: E402
from vitrobust.models.io import load_model  # noqa: E402

__all__ = ["__version__", "evaluate", "load_model"]
