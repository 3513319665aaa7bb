"""Standard training: cross-entropy with label smoothing and soft (mixup/cutmix) targets."""

from __future__ import annotations

from vitrobust.objectives.base import Objective, ObjectiveParams
from vitrobust.registry import OBJECTIVES


@OBJECTIVES.register
class Standard(Objective):
    name = "standard"
    Params = ObjectiveParams

    def loss(self, model, batch, state):
        logits = model(batch.x)
        loss = self.cross_entropy(logits, batch)
        return loss, {"loss": loss.detach(), "acc": self.accuracy(logits, batch)}
