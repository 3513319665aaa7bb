"""Training objectives by name. A method is an Objective; the trainer is the same for all.

An objective declares its options as a pydantic `Params` model; the config's `objective:` section is
`{name: ..., <params>}` and is validated against it (vitrobust.config.objective_params). Importing
this package registers every objective in `OBJECTIVES`.
"""

from __future__ import annotations

from typing import Any

from vitrobust.config import objective_params
from vitrobust.objectives import adversarial, dat, relevance, standard  # noqa: F401  (register themselves)
from vitrobust.objectives.base import Objective, ObjectiveContext, TrainState, ValidationMetric
from vitrobust.registry import OBJECTIVES


def build_objective(section: dict[str, Any], context: ObjectiveContext | None = None, **kwargs) -> Objective:
    """The objective `section` names, built with its validated params and the run's context; `kwargs` go
    to that objective's constructor (e.g. a ready tokenizer for dat)."""
    params = objective_params(section)
    return OBJECTIVES.get(section.get("name", "standard"), key="objective.name")(params, context, **kwargs)


__all__ = ["OBJECTIVES", "Objective", "ObjectiveContext", "TrainState", "ValidationMetric", "build_objective",
           "objective_params"]
