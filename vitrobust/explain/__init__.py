"""Explanations of ViT classifiers: relevance maps (Chefer rule, attention rollout) and overlay figures.

`explain(model, x, target)` gives batched maps in [0,1]; `explain_run` is what `vitrobust explain` does.
"""

from __future__ import annotations

from vitrobust.explain.relevance import (
    METHODS,
    Explanation,
    UnsupportedModel,
    attention_modules,
    capture_attention,
    explain,
    relevance_map,
)
from vitrobust.explain.run import explain_run

__all__ = ["METHODS", "Explanation", "UnsupportedModel", "attention_modules", "capture_attention", "explain",
           "explain_run", "relevance_map"]
