"""The objectives' training loss: softmax CE or sigmoid BCE (Dr.ViT's reference), against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from vitrobust.data import Batch
from vitrobust.objectives import build_objective


def batch_of(y: list[int], target: torch.Tensor | None = None) -> Batch:
    y = torch.tensor(y)
    return Batch(x=torch.zeros(len(y), 1, 2, 2), y=y, index=torch.arange(len(y)), target=target)


def log_sigmoid(z: float) -> float:
    return -math.log1p(math.exp(-z))


def test_bce_sums_over_classes_and_averages_over_the_batch():
    logits = torch.tensor([[2.0, -1.0, 0.5], [0.0, 1.0, -3.0]])
    loss = build_objective({"name": "standard", "loss": "bce"}).cross_entropy(logits, batch_of([0, 2]))
    expected = 0.0
    for row, label in ((logits[0].tolist(), 0), (logits[1].tolist(), 2)):
        expected -= sum(log_sigmoid(z) if c == label else log_sigmoid(-z) for c, z in enumerate(row))
    assert loss.item() == pytest.approx(expected / 2, rel=1e-6)


def test_bce_uses_smoothed_and_mixed_targets():
    logits = torch.tensor([[1.0, -2.0]])
    mixed = torch.tensor([[0.7, 0.3]])
    objective = build_objective({"name": "standard", "loss": "bce", "label_smoothing": 0.2})
    t = [0.7 * 0.8 + 0.1, 0.3 * 0.8 + 0.1]  # smoothing 0.2 over 2 classes
    expected = -sum(ti * log_sigmoid(z) + (1 - ti) * log_sigmoid(-z) for ti, z in zip(t, [1.0, -2.0]))
    assert objective.cross_entropy(logits, batch_of([0], mixed)).item() == pytest.approx(expected, rel=1e-6)


def test_ce_stays_the_default_and_other_objectives_accept_the_option():
    logits = torch.tensor([[2.0, 0.0]])
    ce = build_objective({"name": "standard"}).cross_entropy(logits, batch_of([0]))
    assert ce.item() == pytest.approx(math.log1p(math.exp(-2.0)), rel=1e-6)
    assert build_objective({"name": "pgd_at", "loss": "bce"}).params.loss == "bce"
