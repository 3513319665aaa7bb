"""Training: the one trainer loop (any objective), and what training loops share."""

from vitrobust.train.loop import TrainingDiverged
from vitrobust.train.trainer import Trainer, train

__all__ = ["Trainer", "TrainingDiverged", "train"]
