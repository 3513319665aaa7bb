"""Adversarial training and evaluation work for every model family of the foundation."""

from __future__ import annotations

import pytest
import torch

from vitrobust.attacks import pgd_attack
from vitrobust.data.loader import Batch
from vitrobust.models import build_model
from vitrobust.objectives import TrainState, build_objective

FAMILIES = {  # small variants of each family at 32 px
    "vit_pico_patch8_32": {},
    "deit_tiny_patch16_224": {"patch_size": 8, "kwargs": {"depth": 1}},
    "cait_xxs24_224": {"patch_size": 8, "kwargs": {"depth": 1, "depth_token_only": 1}},
    "xcit_nano_12_p8_224": {"kwargs": {"depth": 1}},
    "mobilevit_xxs": {},
}


@pytest.mark.parametrize("name", list(FAMILIES))
def test_pgd_at_step_and_attack_on_each_family(name):
    torch.manual_seed(0)
    extra = FAMILIES[name]
    model = build_model({"name": name, "num_classes": 10, "in_chans": 1, "img_size": 32, "mean": [0.2],
                         "std": [0.3], **extra})
    x, y = torch.rand(4, 1, 32, 32), torch.randint(0, 10, (4,))
    objective = build_objective({"name": "pgd_at", "eps": 0.1, "steps": 1})
    model.train()
    loss, logs = objective.loss(model, Batch(x=x, y=y, index=torch.arange(4)), TrainState(model=model))
    loss.backward()
    assert torch.isfinite(loss) and logs["eps"] == pytest.approx(0.1)
    assert model.training  # the attack ran in eval mode and handed the model back in train mode
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert any(g is not None and g.abs().sum() > 0 for g in grads)
    model.eval()
    x_adv = pgd_attack(model, x, y, eps=0.1, steps=3)
    assert (x_adv - x).abs().max() <= 0.1 + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1
    with torch.no_grad():
        loss_clean = torch.nn.functional.cross_entropy(model(x), y)
        loss_adv = torch.nn.functional.cross_entropy(model(x_adv), y)
    assert loss_adv > loss_clean  # the attack found a worse point on every architecture
