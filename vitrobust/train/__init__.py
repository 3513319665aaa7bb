"""Training: the trainer loop, checkpoints and distributed helpers."""

from vitrobust.train.trainer import Trainer, TrainingDiverged, train

__all__ = ["Trainer", "TrainingDiverged", "train"]
