"""Models: any timm classifier wrapped to take [0,1] images (ImageClassifier), vitrobust's small ViTs
and Dr.ViT (registered in timm's registry on import), VQ tokenizers, and weights files."""

from vitrobust.errors import ModelError
from vitrobust.models import drvit, small_vits, xcit_light  # noqa: F401  (register their models in timm)
from vitrobust.models.build import build_model, count_flops, count_params, model_spec
from vitrobust.models.classifier import ImageClassifier, Normalize
from vitrobust.models.create import create_model
from vitrobust.models.formats import CHECKPOINT_FORMATS
from vitrobust.models.importer import import_checkpoint
from vitrobust.models.io import init_from, load_model, weights_file

__all__ = ["CHECKPOINT_FORMATS", "ImageClassifier", "ModelError", "Normalize", "build_model", "count_flops",
           "count_params", "create_model", "import_checkpoint", "init_from", "load_model", "model_spec", "weights_file"]
