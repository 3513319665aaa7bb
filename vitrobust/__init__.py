"""vitrobust: train, attack, evaluate and explain robust Vision Transformers."""

__version__ = "0.1.0"

from vitrobust import models  # noqa: E402,F401  (registers vitrobust's models in timm)
from vitrobust.evaluate import evaluate  # noqa: E402  (also registers every benchmark)
from vitrobust.models import import_checkpoint, load_model  # noqa: E402
from vitrobust.objectives import build_objective  # noqa: E402,F401  (registers every objective)

__all__ = ["__version__", "evaluate", "import_checkpoint", "load_model"]
