"""Model construction: timm families at 32 px, the normalisation front, input checks, errors."""

from __future__ import annotations

import pytest
import timm
import torch

import vitrobust  # noqa: F401  (registers the small ViTs in timm)
from vitrobust.config import Config, load_config
from vitrobust.data import ImageSet
from vitrobust.models import ImageClassifier, ModelError, Normalize, build_model, count_params, model_spec
from vitrobust.models.small_vits import SMALL_VITS


def spec(name: str, in_chans: int = 3, num_classes: int = 7, img_size: int = 32, **extra) -> dict:
    out = {"name": name, "num_classes": num_classes, "in_chans": in_chans, "img_size": img_size,
           "patch_size": None, "mean": None, "std": None, "drop_rate": 0.0, "drop_path_rate": 0.0, "kwargs": {}}
    out.update(extra)
    return out


def dataset(in_chans: int = 1, num_classes: int = 10, img_size: int = 32,
            mean=(0.2,), std=(0.4,)) -> ImageSet:
    return ImageSet(labels=torch.zeros(1, dtype=torch.int64), classes=[str(i) for i in range(num_classes)],
                    img_size=img_size, in_chans=in_chans, mean=mean, std=std)


# Deep families are cut to 2 blocks through model.kwargs: the 32-px handling (img_size, patch size,
# position embeddings) is the same, and weight initialisation of the full depth is what costs time.
FAMILIES = [
    ("vit_pico_patch8_32", {}),
    ("deit_tiny_patch16_224", {"patch_size": 4, "kwargs": {"depth": 2}}),
    ("cait_xxs24_224", {"patch_size": 4, "kwargs": {"depth": 2, "depth_token_only": 1}}),
    ("xcit_nano_12_p8_224", {"kwargs": {"depth": 2}}),
    ("mobilevit_xxs", {}),
]


@pytest.mark.parametrize(("name", "extra"), FAMILIES, ids=[f[0] for f in FAMILIES])
def test_families_forward_at_32px(name, extra):
    torch.manual_seed(0)
    model = build_model(spec(name, mean=[0.5, 0.5, 0.5], std=[0.25, 0.25, 0.25], **extra)).eval()
    assert isinstance(model, ImageClassifier)
    assert model.input_shape == (3, 32, 32) and model.num_classes == 7
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits = model(x)
    assert logits.shape == (2, 7)
    assert torch.isfinite(logits).all()
    assert not torch.equal(logits[0], logits[1])  # the input matters
    if extra.get("patch_size"):
        assert model.net.patch_embed.proj.kernel_size == (4, 4)
        assert model.net.patch_embed.num_patches == 64
    if "depth" in extra.get("kwargs", {}):
        assert len(model.net.blocks) == 2


def test_single_channel_model():
    model = build_model(spec("vit_pico_patch8_32", in_chans=1, num_classes=3, mean=[0.2], std=[0.4])).eval()
    assert model.net.patch_embed.proj.in_channels == 1
    with torch.no_grad():
        assert model(torch.rand(2, 1, 32, 32)).shape == (2, 3)


def test_small_vits_registered_in_timm():
    for name in SMALL_VITS:
        assert timm.is_model(name)
    net = timm.create_model("vit_pico_patch8_32")
    patch, dim, depth, heads = SMALL_VITS["vit_pico_patch8_32"]
    assert net.patch_embed.proj.kernel_size == (patch, patch)
    assert net.embed_dim == dim and len(net.blocks) == depth
    assert net.num_classes == 10
    with torch.no_grad():
        assert net.eval()(torch.rand(1, 3, 32, 32)).shape == (1, 10)
    custom = timm.create_model("vit_nano_patch4_32", num_classes=4, in_chans=1, depth=1)
    assert len(custom.blocks) == 1
    with torch.no_grad():
        assert custom.eval()(torch.rand(1, 1, 32, 32)).shape == (1, 4)


def test_small_vit_has_no_pretrained_weights():
    with pytest.raises(ValueError, match="no weights to download"):
        timm.create_model("vit_pico_patch8_32", pretrained=True)


def test_first_module_is_normalisation_by_hand(tiny_spec):
    s = dict(tiny_spec, in_chans=3, mean=[0.1, 0.5, 0.9], std=[0.2, 0.25, 0.5])
    model = build_model(s).eval()
    first_name, first = next(iter(model.named_children()))
    assert first_name == "normalize" and isinstance(first, Normalize)
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    by_hand = torch.stack([(x[:, 0] - 0.1) / 0.2, (x[:, 1] - 0.5) / 0.25, (x[:, 2] - 0.9) / 0.5], dim=1)
    torch.testing.assert_close(first(x), by_hand, rtol=1e-6, atol=1e-6)
    # a pixel by hand: value 0.6 in channel 2 -> (0.6 - 0.9) / 0.5 = -0.6
    pixel = torch.full((1, 3, 1, 1), 0.6)
    assert first(pixel)[0, 2, 0, 0].item() == pytest.approx(-0.6, abs=1e-6)
    with torch.no_grad():
        torch.testing.assert_close(model(x), model.net(by_hand), rtol=1e-5, atol=1e-5)
    assert model.normalize.mean.flatten().tolist() == pytest.approx([0.1, 0.5, 0.9])


def test_normalize_none_is_identity(tiny_spec):
    model = build_model(dict(tiny_spec, mean=None, std=None)).eval()
    x = torch.rand(2, 1, 32, 32)
    assert torch.equal(model.normalize(x), x)
    with torch.no_grad():
        assert torch.equal(model(x), model.net(x))


def test_model_spec_resolves_stats():
    data = dataset(in_chans=1, mean=(0.2,), std=(0.4,))
    cfg = Config()
    s = model_spec(cfg, data)
    assert (s["mean"], s["std"]) == ([0.2], [0.4])
    assert (s["num_classes"], s["in_chans"], s["img_size"], s["name"]) == (10, 1, 32, "vit_pico_patch8_32")
    none = model_spec(load_config(None, ["model.mean=none", "model.std=none"]), data)
    assert none["mean"] is None and none["std"] is None
    model = build_model(none)
    x = torch.rand(1, 1, 32, 32)
    assert torch.equal(model.normalize(x), x)
    rgb = dataset(in_chans=3, mean=(0.1, 0.2, 0.3), std=(0.3, 0.2, 0.1))
    imagenet = model_spec(load_config(None, ["model.mean=imagenet", "model.std=imagenet"]), rgb)
    assert imagenet["mean"] == pytest.approx([0.485, 0.456, 0.406])
    assert imagenet["std"] == pytest.approx([0.229, 0.224, 0.225])
    # one value is broadcast to every channel
    single = model_spec(load_config(None, ["model.mean=[0.5]", "model.std=[0.25]"]), rgb)
    assert single["mean"] == [0.5, 0.5, 0.5] and single["std"] == [0.25, 0.25, 0.25]
    # data.img_size overrides the dataset's size
    assert model_spec(load_config(None, ["data.img_size=64"]), rgb)["img_size"] == 64


def test_std_none_with_dataset_mean_subtracts_mean_only():
    """std 'none' with a mean: (x - mean) / 1, built without a raw RuntimeError."""
    rgb = dataset(in_chans=3, mean=(0.1, 0.2, 0.3), std=(0.3, 0.2, 0.1))
    s = model_spec(load_config(None, ["model.std=none"]), rgb)
    assert s["std"] is None and s["mean"] == pytest.approx([0.1, 0.2, 0.3])
    model = build_model(dict(s, kwargs={"embed_dim": 32, "depth": 1, "num_heads": 2}))
    x = torch.rand(2, 3, 32, 32)
    want = x - torch.tensor([0.1, 0.2, 0.3]).view(1, 3, 1, 1)
    torch.testing.assert_close(model.normalize(x), want)


@pytest.mark.parametrize(("stat", "value"), [("mean", "[0.1, 0.2]"), ("std", "[0.1, 0.2, 0.3, 0.4]")])
def test_stats_with_wrong_length(stat, value):
    with pytest.raises(ModelError, match=rf"model\.{stat} has \d values but the images have 3 channels"):
        model_spec(load_config(None, [f"model.{stat}={value}"]), dataset(in_chans=3, mean=(0.5,) * 3, std=(0.5,) * 3))


@pytest.mark.parametrize(
    ("shape", "got"),
    [((2, 3, 32, 32), "3x32x32"), ((2, 1, 28, 28), "1x28x28"), ((2, 1, 32, 32, 1), "a 5-d tensor"),
     ((1, 32, 32), "a 3-d tensor")],
)
def test_wrong_input_shape_names_expected(tiny_spec, shape, got):
    model = build_model(tiny_spec).eval()
    with pytest.raises(ValueError) as info:
        model(torch.rand(*shape))
    msg = str(info.value)
    assert "N x 1 x 32 x 32" in msg
    assert got in msg
    assert "data.img_size=32" in msg


def test_unknown_model_suggests():
    with pytest.raises(ModelError, match=r"unknown model 'vit_pico_patch8_23'; did you mean 'vit_pico_patch8_32'"):
        build_model(spec("vit_pico_patch8_23"))
    with pytest.raises(ModelError) as info:
        build_model(spec("deit_tiny_patch16_2244"))
    assert "'deit_tiny_patch16_224'" in str(info.value)
    assert issubclass(ModelError, ValueError)


def test_bad_timm_kwargs_give_model_error(tiny_spec):
    with pytest.raises(ModelError, match="cannot build vit_pico_patch8_32"):
        build_model(dict(tiny_spec, kwargs={"embed_dim": 30, "num_heads": 4, "depth": 1}))


def test_create_model_uses_config_and_dataset():
    from vitrobust.models import create_model

    cfg = load_config(None, ["model.kwargs={embed_dim: 32, depth: 1, num_heads: 2}"])
    model, init_info = create_model(cfg, dataset(in_chans=1, num_classes=4))
    assert init_info is None
    assert model.num_classes == 4 and model.input_shape == (1, 32, 32)
    assert model.spec["mean"] == [0.2] and model.spec["std"] == [0.4]
    assert count_params(model) == sum(p.numel() for p in model.net.parameters())
