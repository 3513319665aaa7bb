"""Every architecture vitrobust registers in timm keeps timm's model contract (docs/architecture.md,
"timm's contract"), checked here in our own words: builds without arguments, a complete default cfg
that `resolve_data_config` reads correctly, `features_only`, `forward_intermediates`, `reset_classifier`,
a gradient for every parameter (a Dr.ViT's frozen tokenizer is buffers), TorchScript, FX, `torch.export`.
The 32-px names run in CI; the 224-px names are `slow`."""

from __future__ import annotations

import copy
import warnings

import pytest
import timm
import torch
from timm.data import resolve_data_config
from timm.models import get_notrace_functions, get_notrace_modules
from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names

import vitrobust  # noqa: F401  (registers the architectures)
from vitrobust.models import build_model, count_params
from vitrobust.models.drvit import DRVIT_MODELS
from vitrobust.models.small_vits import SMALL_VITS
from vitrobust.models.vqgan import build_tokenizer
from vitrobust.models.xcit_light import LIGHT_XCITS

OURS = [*SMALL_VITS, *DRVIT_MODELS, *LIGHT_XCITS]
SMALL = [n for n in OURS if n.endswith("_32")]
LARGE = [n for n in OURS if n not in SMALL]
NAMES = [*SMALL, *(pytest.param(n, marks=pytest.mark.slow) for n in LARGE)]


def build(name: str, **kwargs) -> torch.nn.Module:
    torch.manual_seed(0)  # the same weights for every build of a name (plain or features_only)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a Dr.ViT without a tokenizer file says its tokenizer is random
        return timm.create_model(name, **kwargs).eval()


@pytest.fixture(scope="module", params=NAMES)
def built(request) -> tuple[str, torch.nn.Module]:
    """(name, model) built once per name (timm's init of 20M weights takes seconds); module-scoped, so pytest
    runs every test of one name before building the next, and frees it after."""
    return request.param, build(request.param)


def create(built) -> torch.nn.Module:
    return copy.deepcopy(built[1])


def images(model: torch.nn.Module, n: int = 2) -> torch.Tensor:
    return torch.rand(n, *model.pretrained_cfg["input_size"], generator=torch.Generator().manual_seed(0))


def test_all_twenty_names_are_registered_with_their_module():
    assert len(OURS) == 20 and all(timm.is_model(n) for n in OURS)
    modules = {timm.models.get_pretrained_cfg(n).architecture for n in OURS}
    assert modules == set(OURS)  # each name has its own default cfg, found by timm


def test_builds_without_arguments_with_a_complete_default_cfg(built):
    model = create(built)
    cfg = model.pretrained_cfg
    state = model.state_dict()
    first = cfg["first_conv"] if isinstance(cfg["first_conv"], tuple) else (cfg["first_conv"],)
    assert all(f"{conv}.weight" in state for conv in first)
    assert f"{cfg['classifier']}.weight" in state
    assert cfg["fixed_input_size"] and cfg["pool_size"] is None and cfg["num_classes"] == model.num_classes
    data = resolve_data_config(model=model)  # no ImageNet statistics or 0.875 crop invented for a [0,1] network
    assert data["mean"] == (0.0,) * 3 and data["std"] == (1.0,) * 3 and data["crop_pct"] == 1.0
    assert data["input_size"] == cfg["input_size"]
    assert model(images(model)).shape == (2, model.num_classes)


def test_features_intermediates_head_and_classifier_reset(built):
    name, model = built[0], create(built)
    x = images(model, 1)
    final, inter = model.forward_intermediates(x)
    assert torch.allclose(final, model.forward_features(x))
    grid = model.pretrained_cfg["input_size"][-1] // model.feature_info[-1]["reduction"]
    assert [tuple(t.shape) for t in inter][-1] == (1, model.embed_dim, grid, grid)

    feats = build(name, features_only=True)
    outs = feats(x)
    assert [o.shape[1] for o in outs] == feats.feature_info.channels()
    assert all(o.shape[-1] == x.shape[-1] // r for o, r in zip(outs, feats.feature_info.reduction(), strict=True))
    assert torch.allclose(outs[-1], inter[-1], atol=1e-5)

    pre = model.forward_head(model.forward_features(x), pre_logits=True)
    model.reset_classifier(0)
    assert model.num_classes == 0 and torch.allclose(model(x), pre, atol=1e-6)
    model.reset_classifier(7)
    assert model(x).shape == (1, 7)


def test_every_parameter_gets_a_gradient(built):
    model = create(built).train()
    model.reset_classifier(5)
    model(images(model)).mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing


@pytest.mark.parametrize("name", ["drvit_pico_patch8_32", "drvit_discrete_pico_patch8_32"])
def test_drvit_tokenizer_is_frozen_state_not_parameters(name):
    model = build(name)
    tokenizer_keys = [k for k in model.state_dict() if k.startswith("patch_embed.tokenizer.")]
    assert "patch_embed.tokenizer.quantize.embedding.weight" in tokenizer_keys  # taming's key names stay
    assert "patch_embed.tokenizer.encoder.conv_in.weight" in tokenizer_keys
    assert not [n for n, _ in model.named_parameters() if n.startswith("patch_embed.tokenizer.")]
    frozen = sum(model.state_dict()[k].numel() for k in tokenizer_keys)
    own = sum(p.numel() for p in model.parameters())
    spec = {"name": name, "num_classes": 10, "in_chans": 3, "img_size": 32, "mean": None, "std": None}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        built = build_model(spec)
    assert count_params(built) == own + frozen  # what runs, frozen part included
    moved = model.to(torch.float64)
    assert moved.patch_embed.tokenizer.encoder.conv_in.weight.dtype == torch.float64  # .to() still moves it


def assert_scripts_traces_and_exports(module: torch.nn.Module, x: torch.Tensor, x_other_batch: torch.Tensor) -> None:
    """TorchScript, FX (timm's tracer settings) and torch.export (dynamic batch) give the eager outputs."""
    with torch.no_grad():
        want = module(x)
        assert torch.allclose(torch.jit.script(module)(x), want, atol=1e-5)
        tracer = {"leaf_modules": get_notrace_modules(), "autowrap_functions": get_notrace_functions()}
        _, nodes = get_graph_node_names(module, tracer_kwargs=tracer)
        fx = create_feature_extractor(module, return_nodes=[nodes[-1]], tracer_kwargs=tracer)
        assert torch.equal(next(iter(fx(x).values())), want)
    program = torch.export.export(module, (x,), dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=512)},))
    with torch.no_grad():
        assert torch.allclose(program.module()(x_other_batch), module(x_other_batch), atol=1e-5)


def test_torchscript_fx_and_export_give_the_eager_outputs(built):
    model = create(built)  # scriptable without timm's set_scriptable (nothing here depends on it)
    assert_scripts_traces_and_exports(model, images(model), images(model, 3))


def test_the_tokenizer_scripts_traces_and_exports_with_its_decoder():
    tok = build_tokenizer("vq_f4_32px").eval()
    assert_scripts_traces_and_exports(tok, torch.rand(2, 1, 32, 32), torch.rand(3, 1, 32, 32))
