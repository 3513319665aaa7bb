"""A model built outside vitrobust and handed to `vitrobust.evaluate` at the wrong resolution or channel
count gets a clear InputError before any benchmark runs (evaluate/core.check_model_input)."""

from __future__ import annotations

import pytest
import timm
import torch

from vitrobust import evaluate
from vitrobust.config import Config
from vitrobust.data import ImageSet
from vitrobust.errors import InputError
from vitrobust.evaluate.core import model_input_shape

pytestmark = pytest.mark.usefixtures("one_thread")

N, SIZE = 12, 28


def gray_set() -> ImageSet:
    images = torch.randint(0, 256, (N, 1, SIZE, SIZE), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    return ImageSet(labels=torch.arange(N) % 10, classes=[str(i) for i in range(10)], img_size=SIZE, in_chans=1,
                    mean=(0.5,), std=(0.5,), images=images, name="gray28")


def vit(**kwargs) -> torch.nn.Module:
    args = dict(patch_size=4, embed_dim=32, depth=1, num_heads=2, num_classes=10)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, **{**args, **kwargs}).eval()


def test_a_timm_model_at_the_datas_size_is_evaluated():
    model = vit(img_size=SIZE, in_chans=1)
    assert model_input_shape(model) == (1, SIZE, SIZE)
    result = evaluate(model, "clean", cfg=Config(), data=gray_set(), device="cpu")["clean"]
    assert result["n"] == N and 0 <= result["top1"] <= 1


@pytest.mark.parametrize("kwargs, needles", [
    (dict(img_size=224, in_chans=1), ["1 x 224 x 224", "gives 1 x 28 x 28", "data.img_size=224", "img_size=28"]),
    (dict(img_size=SIZE, in_chans=3), ["3 x 28 x 28", "gives 1 x 28 x 28", "3-channel data", "in_chans=1"]),
])
def test_a_timm_model_at_another_size_or_channel_count_is_a_clear_error(kwargs, needles):
    with pytest.raises(InputError) as err:
        evaluate(vit(**kwargs), "clean", cfg=Config(), data=gray_set(), device="cpu")
    message = str(err.value)
    assert "gray28" in message and "\n" not in message
    for needle in needles:
        assert needle in message, message


def test_a_convnet_takes_any_size_but_not_other_channels():
    net = timm.create_model("resnet10t", pretrained=False, num_classes=10, in_chans=1).eval()
    assert model_input_shape(net) == (1, None, None)
    assert evaluate(net, "clean", cfg=Config(), data=gray_set(), device="cpu")["clean"]["n"] == N
    rgb = timm.create_model("resnet10t", pretrained=False, num_classes=10).eval()
    with pytest.raises(InputError, match="3-channel images but the evaluation data"):
        evaluate(rgb, "clean", cfg=Config(), data=gray_set(), device="cpu")
