"""`vitrobust import`: released checkpoints in their own key layouts -> vitrobust weights files.

Each fixture is written by the test in the released layout (random weights, one block where the arch
allows), imported, and its logits compared with a forward pass the test computes itself from the layout
description: timm's networks used directly with the file's own normalisation, and for easyrobust's
Dr.ViT a functional taming encoder, nearest-code lookup, [pixels | code] tokens, mean pooling of the
patch tokens and the norm after pooling. None of vitrobust's model code takes part in a reference.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import pytest
import timm
import torch
import torch.nn.functional as F

from vitrobust import import_checkpoint
from vitrobust.cli import main
from vitrobust.errors import CheckpointError, InputError, ModelError
from vitrobust.models import load_model
from vitrobust.models.formats import find_format, read_checkpoint
from vitrobust.models.vqgan import build_tokenizer
from vitrobust.stats import wilson
from vitrobust.zoo import ZOO, compare

pytestmark = pytest.mark.usefixtures("one_thread")

CIFAR_MEAN, CIFAR_STD = [0.4914, 0.4822, 0.4465], [0.2471, 0.2435, 0.2616]
IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def images(size: int, n: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def normalised(x: torch.Tensor, mean, std) -> torch.Tensor:
    return (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


def timm_net(arch: str, seed: int = 0, **kwargs) -> torch.nn.Module:
    torch.manual_seed(seed)
    return timm.create_model(arch, pretrained=False, **kwargs).eval()


def logits_of(model, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x)


def assert_same_logits(ours: torch.Tensor, reference: torch.Tensor) -> None:
    torch.testing.assert_close(ours, reference, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(reference[0], reference[1])  # the images are told apart: a real comparison


def imported_round_trip(src, out, x: torch.Tensor, **kwargs) -> torch.Tensor:
    """Import, check the file loads back to the same logits, return them."""
    model = import_checkpoint(src, out, **kwargs)
    first = logits_of(model, x)
    torch.testing.assert_close(logits_of(load_model(out), x), first, rtol=0, atol=0)
    return first


# --- fixtures in the released layouts -------------------------------------------------------------


def vit_tiny(seed: int = 0, classes: int = 7) -> torch.nn.Module:
    return timm_net("vit_tiny_patch16_224", seed, depth=1, num_classes=classes)


@pytest.fixture
def timm_file(tmp_path):
    """timm's CheckpointSaver layout under DDP: {'state_dict': {'module.' + key: ...}, 'epoch': ...}."""
    net = vit_tiny()
    path = tmp_path / "timm_vit.pth.tar"
    torch.save({"epoch": 12, "arch": "vit_tiny_patch16_224",
                "state_dict": {f"module.{k}": v for k, v in net.state_dict().items()}}, path)
    return net, path


@pytest.fixture
def robustvit_file(tmp_path):
    """RobustViT's fine-tuning script: state_dict beside epoch, best_loss and the optimizer state."""
    torch.manual_seed(0)
    net = timm_net("vit_base_patch16_224", depth=1, num_classes=1000)
    path = tmp_path / "robustvit_vit_base.pth.tar"
    torch.save({"epoch": 3, "state_dict": net.state_dict(), "best_loss": 0.41,
                "optimizer": {"state": {}, "param_groups": [{"lr": 1e-6, "params": [0, 1]}]}}, path)
    return net, path


def xcit_small(seed: int = 0, classes: int = 10) -> torch.nn.Module:
    return timm_net("xcit_small_12_p16_224", seed, depth=1, num_classes=classes)


@pytest.fixture
def robustbench_cifar_xcit(tmp_path):
    """The light recipe's CIFAR-10 XCiT-S12 as RobustBench ships it: normalize_model's wrapper around the
    ImageNet XCiT whose stem's first two stride-2 convolutions got stride 1 (patch 16 -> 4)."""
    net = xcit_small()
    net.patch_embed.proj[0][0].stride = (1, 1)
    net.patch_embed.proj[2][0].stride = (1, 1)
    state = {"normalize.mean": torch.tensor(CIFAR_MEAN).view(1, 3, 1, 1),
             "normalize.std": torch.tensor(CIFAR_STD).view(1, 3, 1, 1),
             **{f"model.{k}": v for k, v in net.state_dict().items()}}
    path = tmp_path / "Debenedetti2022Light_XCiT-S12.pt"
    torch.save(state, path)
    return net, path


@pytest.fixture
def easyrobust_dat_file(tmp_path):
    """easyrobust's DAT ViT-B: nn.Sequential(normalize, vit) -> keys 0.mean, 0.std, 1.*."""
    net = vit_tiny(classes=1000)
    state = {"0.mean": torch.tensor(IMAGENET_MEAN), "0.std": torch.tensor(IMAGENET_STD),
             **{f"1.{k}": v for k, v in net.state_dict().items()}}
    path = tmp_path / "dat_vit_b.pth"
    torch.save(state, path)
    return net, path


@pytest.fixture
def light_recipe_file(tmp_path):
    """The light recipe's ImageNet XCiT-S12: a bare XCiT state dict whose Fourier position encoding is
    named pos_embeder (timm < 0.6); the network takes [0,1] pixels."""
    net = xcit_small(classes=1000)
    state = {k.replace("pos_embed.", "pos_embeder.", 1) if k.startswith("pos_embed.") else k: v
             for k, v in net.state_dict().items()}
    assert any(k.startswith("pos_embeder.") for k in state)
    path = tmp_path / "xcit-s12-linf-4.pth.tar"
    torch.save(state, path)
    return net, path


# --- easyrobust's Dr.ViT: the layout and an independent forward ---------------------------------

# an f16 taming encoder small enough for a test: 32 channels (taming's 32 GroupNorm groups), five levels,
# attention at the last level (14 px at 224) and in the middle
TAMING = {"ch": 32, "ch_mult": [1, 1, 1, 1, 1], "num_res_blocks": 1, "attn_resolutions": [16], "z_channels": 8,
          "embed_dim": 8, "n_embed": 16, "in_channels": 3, "out_ch": 3, "resolution": 256}
DRVIT_DIM, DRVIT_HEADS = 384, 6


def group_norm(x, sd, p):
    return F.group_norm(x, 32, sd[f"{p}.weight"], sd[f"{p}.bias"], eps=1e-6)


def conv(x, sd, p, stride=1, padding=1):
    return F.conv2d(x, sd[f"{p}.weight"], sd[f"{p}.bias"], stride=stride, padding=padding)


def res_block(x, sd, p):
    h = conv(F.silu(group_norm(x, sd, f"{p}.norm1")), sd, f"{p}.conv1")
    h = conv(F.silu(group_norm(h, sd, f"{p}.norm2")), sd, f"{p}.conv2")
    if f"{p}.nin_shortcut.weight" in sd:
        x = conv(x, sd, f"{p}.nin_shortcut", padding=0)
    return x + h


def attn_block(x, sd, p):
    h = group_norm(x, sd, f"{p}.norm")
    q, k, v = (conv(h, sd, f"{p}.{n}", padding=0) for n in "qkv")
    b, c, hh, ww = q.shape
    w = torch.softmax(q.reshape(b, c, -1).transpose(1, 2) @ k.reshape(b, c, -1) / math.sqrt(c), dim=2)
    h = (v.reshape(b, c, -1) @ w.transpose(1, 2)).reshape(b, c, hh, ww)
    return x + conv(h, sd, f"{p}.proj_out", padding=0)


def taming_latent(x, sd):
    """taming's Encoder + quant_conv on [-1,1] images, from the state dict alone (keys vq_encoder.*)."""
    e = {k[len("vq_encoder."):]: v for k, v in sd.items() if k.startswith("vq_encoder.")}
    h = conv(x, e, "conv_in")
    levels = len(TAMING["ch_mult"])
    for i in range(levels):
        for j in range(TAMING["num_res_blocks"]):
            h = res_block(h, e, f"down.{i}.block.{j}")
            if f"down.{i}.attn.{j}.q.weight" in e:
                h = attn_block(h, e, f"down.{i}.attn.{j}")
        if i < levels - 1:
            h = F.conv2d(F.pad(h, (0, 1, 0, 1)), e[f"down.{i}.downsample.conv.weight"],
                         e[f"down.{i}.downsample.conv.bias"], stride=2)
    h = res_block(attn_block(res_block(h, e, "mid.block_1"), e, "mid.attn_1"), e, "mid.block_2")
    h = conv(F.silu(group_norm(h, e, "norm_out")), e, "conv_out")
    return F.conv2d(h, sd["vq_quant_conv.weight"], sd["vq_quant_conv.bias"])


def drvit_reference(x01: torch.Tensor, sd: dict) -> torch.Tensor:
    """easyrobust's Dr.ViT forward: x normalised with mean = std = 0.5 feeds both the pixel patch embedding
    and the VQ encoder; each token is [pixel embedding | its code's codebook vector]; CLS + pos_embed; the
    blocks (timm's Block with the file's weights); mean of the patch tokens; LayerNorm; head."""
    x = (x01 - 0.5) / 0.5
    pixels = F.conv2d(x, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], stride=16).flatten(2)
    z = taming_latent(x, sd).flatten(2).transpose(1, 2)  # (B, 196, code dim)
    book = sd["quantize.embedding.weight"]
    codes = torch.cdist(z, book.unsqueeze(0).expand(len(z), -1, -1)).argmin(-1)
    tokens = torch.cat([pixels.transpose(1, 2), book[codes]], dim=2)
    tokens = torch.cat([sd["cls_token"].expand(len(x), -1, -1), tokens], dim=1) + sd["pos_embed"]
    block = timm.models.vision_transformer.Block(DRVIT_DIM, DRVIT_HEADS, qkv_bias=True).eval()
    block.load_state_dict({k[len("blocks.0."):]: v for k, v in sd.items() if k.startswith("blocks.0.")})
    pooled = block(tokens)[:, 1:].mean(1)
    pooled = F.layer_norm(pooled, (DRVIT_DIM,), sd["norm.weight"], sd["norm.bias"], eps=1e-6)
    return F.linear(pooled, sd["head.weight"], sd["head.bias"])


@pytest.fixture
def easyrobust_drvit_file(tmp_path):
    """easyrobust's Dr.ViT-S layout (one block, a small f16 encoder), with a codebook spread over the
    encoder's outputs so that images pick different codes."""
    torch.manual_seed(0)
    taming = {k: v for k, v in build_tokenizer(**TAMING).state_dict().items() if not k.startswith("decoder.")}
    code_dim = TAMING["embed_dim"]
    sd = {f"vq_encoder.{k[len('encoder.'):]}": v for k, v in taming.items() if k.startswith("encoder.")}
    sd.update({f"vq_{k}": v for k, v in taming.items() if k.startswith("quant_conv.")})
    vit = timm_net("vit_small_patch16_224", depth=1, num_classes=1000)
    for key, value in vit.state_dict().items():
        if not key.startswith("patch_embed."):
            sd[key] = value.clone()
    sd["patch_embed.proj.weight"] = torch.randn(DRVIT_DIM - code_dim, 3, 16, 16) * 0.02
    sd["patch_embed.proj.bias"] = torch.zeros(DRVIT_DIM - code_dim)
    with torch.no_grad():
        z = taming_latent(images(224, 2, seed=5) * 2 - 1, {**sd, "quantize.embedding.weight": torch.zeros(1)})
        z = z.flatten(2).transpose(1, 2).reshape(-1, code_dim)
    sd["quantize.embedding.weight"] = z[torch.randperm(len(z))[:TAMING["n_embed"]]].clone()
    path = tmp_path / "drvit_small.pth"
    torch.save({"model": sd}, path)
    return sd, path


# --- each format against its reference ----------------------------------------------------------------


def test_timm_layout_with_ddp_prefix_under_state_dict(timm_file, tmp_path):
    net, path = timm_file
    x = images(224)
    ours = imported_round_trip(path, tmp_path / "out.safetensors", x, arch="vit_tiny_patch16_224")
    # vit_tiny_patch16_224's own preprocessing (timm): mean = std = 0.5, crop 0.9, bicubic
    assert_same_logits(ours, logits_of(net, normalised(x, [0.5] * 3, [0.5] * 3)))
    spec = load_model(tmp_path / "out.safetensors").spec
    assert spec["preprocess"] == {"crop_pct": 0.9, "interpolation": "bicubic"}
    assert spec["imported"]["format"] == "timm" and spec["num_classes"] == 7


def test_robustvit_container_through_its_zoo_entry(robustvit_file, tmp_path):
    net, path = robustvit_file
    x = images(224)
    ours = imported_round_trip(path, tmp_path / "rvit.safetensors", x, zoo="RobustViT_ViT-B")
    assert_same_logits(ours, logits_of(net, normalised(x, [0.5] * 3, [0.5] * 3)))
    model = load_model(tmp_path / "rvit.safetensors")
    assert model.spec["zoo"] == "RobustViT_ViT-B"
    assert model.spec["preprocess"] == {"crop_pct": 0.875, "interpolation": "bilinear"}
    assert model.spec["kwargs"]["depth"] == 1  # read from the file: a shortened ViT-B


def test_robustbench_cifar_xcit_with_the_stem_adapted_to_patch_4(robustbench_cifar_xcit, tmp_path):
    net, path = robustbench_cifar_xcit
    x = images(32)
    ours = imported_round_trip(path, tmp_path / "xcit.safetensors", x, zoo="Debenedetti2022Light_XCiT-S12_cifar10_Linf")
    assert_same_logits(ours, logits_of(net, normalised(x, CIFAR_MEAN, CIFAR_STD)))
    spec = load_model(tmp_path / "xcit.safetensors").spec
    assert spec["img_size"] == 32 and spec["mean"] == pytest.approx(CIFAR_MEAN)


def test_easyrobust_dat_sequential_wrapper(easyrobust_dat_file, tmp_path):
    net, path = easyrobust_dat_file
    x = images(224)
    ours = imported_round_trip(path, tmp_path / "dat.safetensors", x, arch="vit_tiny_patch16_224")
    assert_same_logits(ours, logits_of(net, normalised(x, IMAGENET_MEAN, IMAGENET_STD)))


def test_light_recipe_imagenet_xcit_takes_unnormalised_pixels(light_recipe_file, tmp_path):
    net, path = light_recipe_file
    x = images(224)
    ours = imported_round_trip(path, tmp_path / "light.safetensors", x)  # format and arch from the keys
    assert_same_logits(ours, logits_of(net, x))
    spec = load_model(tmp_path / "light.safetensors").spec
    assert spec["name"] == "xcit_small_12_p16_224" and spec["mean"] is None and spec["std"] is None
    assert spec["preprocess"] == {"crop_pct": 1.0, "interpolation": "bicubic"}


def test_easyrobust_drvit_matches_its_token_construction_and_pooling(easyrobust_drvit_file, tmp_path):
    sd, path = easyrobust_drvit_file
    x = images(224, seed=5)
    ours = imported_round_trip(path, tmp_path / "drvit.safetensors", x)
    with torch.no_grad():
        assert_same_logits(ours, drvit_reference(x, sd))
    spec = load_model(tmp_path / "drvit.safetensors").spec
    assert spec["name"] == "drvit_small_patch16_224"
    assert spec["preprocess"] == {"crop_pct": 0.9, "interpolation": "bicubic"}  # 248 -> 224, bicubic


def test_light_recipe_m12_and_l12_are_registered_with_the_published_widths():
    for name, dim, heads in (("xcit_medium_12_p16_224", 512, 8), ("xcit_large_12_p16_224", 768, 16)):
        with torch.device("meta"):
            net = timm.create_model(name)
        assert (net.embed_dim, len(net.blocks), net.blocks[0].attn.num_heads) == (dim, 12, heads)
        assert net.blocks[0].gamma1.shape == (dim,)  # LayerScale with eta = 1.0
        assert net.blocks[0].gamma1.device.type == "meta"


# --- detection ------------------------------------------------------------------------------------


@pytest.mark.parametrize("fixture, expected", [
    ("timm_file", "timm"), ("robustvit_file", "robustvit"), ("robustbench_cifar_xcit", "robustbench"),
    ("easyrobust_dat_file", "robustbench"), ("light_recipe_file", "light-recipe"),
    ("easyrobust_drvit_file", "easyrobust-drvit"),
])
def test_the_format_is_detected_from_the_keys(fixture, expected, request):
    _, path = request.getfixturevalue(fixture)
    assert find_format(read_checkpoint(path)).name == expected


# --- bad input: one line, nothing written ---------------------------------------------------------


def expect_refusal(tmp_path, error, match, src, **kwargs) -> str:
    out = tmp_path / "refused.safetensors"
    with pytest.raises(error, match=match) as info:
        import_checkpoint(src, out, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    assert not out.exists() and not list(tmp_path.glob("*.tmp*")), "a failed import left a file behind"
    return message


def test_unknown_layout_names_the_formats_and_the_first_keys(tmp_path):
    src = tmp_path / "resnet_like.pth"
    torch.save({"conv_a.weight": torch.zeros(2, 3, 3, 3), "bn_a.running_mean": torch.zeros(2)}, src)
    message = expect_refusal(tmp_path, CheckpointError, "no known checkpoint layout", src)
    assert "conv_a.weight" in message and "light-recipe" in message and "timm" in message


def test_a_checkpoint_of_another_family_names_the_arch_and_the_keys(timm_file, tmp_path):
    _, path = timm_file
    message = expect_refusal(tmp_path, CheckpointError, "does not fit xcit_small_12_p16_224", path,
                             arch="xcit_small_12_p16_224")
    assert "missing" in message and "unexpected" in message


def test_a_wrong_arch_of_the_same_family_lists_the_mis_shaped_keys(timm_file, tmp_path):
    _, path = timm_file
    message = expect_refusal(tmp_path, CheckpointError, "does not fit vit_small_patch16_224", path,
                             arch="vit_small_patch16_224")
    assert "wrong shape" in message and "(192" in message  # the file's width beside ours


def test_an_arch_timm_does_not_know_and_a_missing_arch(timm_file, tmp_path):
    _, path = timm_file
    expect_refusal(tmp_path, ModelError, "not a timm model", path, arch="vit_tinyy_patch16_224")
    expect_refusal(tmp_path, CheckpointError, "pass --arch", path)


def test_a_zoo_entry_of_another_format_is_refused(timm_file, tmp_path):
    _, path = timm_file
    expect_refusal(tmp_path, CheckpointError, "looks like the timm format but zoo entry", path,
                   zoo="easyrobust_DrViT-S")
    expect_refusal(tmp_path, InputError, "unknown zoo entry", path, zoo="RobustViT_VIT-B")


def test_pickled_extras_need_trust_and_never_run(tmp_path):
    ran = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (open, (str(ran), "w"))

    net = vit_tiny()
    src = tmp_path / "timm_saver.pth.tar"  # timm's CheckpointSaver also pickles the argparse Namespace
    torch.save({"state_dict": net.state_dict(), "args": argparse.Namespace(lr=0.1), "payload": Payload()}, src)
    message = expect_refusal(tmp_path, CheckpointError, "--trust", src, arch="vit_tiny_patch16_224")
    assert "pickle" in message or "object" in message
    assert not ran.exists()
    model = import_checkpoint(src, tmp_path / "trusted.safetensors", arch="vit_tiny_patch16_224", trust=True)
    assert not ran.exists()  # read as inert placeholders: nothing from the file ran
    x = images(224)
    assert_same_logits(logits_of(model, x), logits_of(net, normalised(x, [0.5] * 3, [0.5] * 3)))


def test_a_truncated_file_is_refused(timm_file, tmp_path):
    _, path = timm_file
    cut = tmp_path / "cut.pth.tar"
    cut.write_bytes(path.read_bytes()[:5000])
    expect_refusal(tmp_path, CheckpointError, "cut.pth.tar", cut, arch="vit_tiny_patch16_224")


def test_the_output_must_be_a_new_safetensors_file(timm_file, tmp_path):
    _, path = timm_file
    with pytest.raises(InputError, match=".safetensors"):
        import_checkpoint(path, tmp_path / "out.pt", arch="vit_tiny_patch16_224")
    first = tmp_path / "first.safetensors"
    import_checkpoint(path, first, arch="vit_tiny_patch16_224")
    with pytest.raises(CheckpointError, match="already a vitrobust weights file"):
        import_checkpoint(first, tmp_path / "second.safetensors")
    assert not (tmp_path / "second.safetensors").exists()


# --- the command line and the zoo ---------------------------------------------------------------------


def test_cli_import_then_evaluate_shows_the_published_number(robustvit_file, tmp_path, capsys, monkeypatch):
    _, path = robustvit_file
    out = tmp_path / "rvit.safetensors"
    assert main(["import", str(path), "--zoo", "RobustViT_ViT-B", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "robustvit format" in printed and "crop_pct 0.875, bilinear" in printed
    assert main(["import", str(path), "--arch", "nope_net", "--out", str(tmp_path / "bad.safetensors")]) == 2
    assert "error: --arch 'nope_net' is not a timm model" in capsys.readouterr().err
    assert not (tmp_path / "bad.safetensors").exists()


def test_zoo_lists_every_entry_and_shows_one(capsys):
    assert main(["zoo"]) == 0
    listing = capsys.readouterr().out
    assert all(name in listing for name, _ in ZOO.items())
    assert main(["zoo", "easyrobust_DrViT-S"]) == 0
    detail = capsys.readouterr().out
    assert "ImageNet-A: 20.79" in detail and "crop_pct 0.9, bicubic" in detail
    assert main(["zoo", "easyrobust_DrVit-S"]) == 2
    assert "did you mean 'easyrobust_DrViT-S'" in capsys.readouterr().err


def test_zoo_entries_name_registered_formats_archs_datasets_and_benchmarks():
    from vitrobust.data import DATASETS
    from vitrobust.evaluate import expand_suite
    from vitrobust.models.formats import CHECKPOINT_FORMATS

    assert len(ZOO.names()) >= 17
    for name, e in ZOO.items():
        assert e.format in CHECKPOINT_FORMATS.names() and timm.is_model(e.arch), name
        assert e.dataset in DATASETS.names(), name
        suite = expand_suite(e.suite)
        for p in e.published:
            assert p.benchmark is None or p.benchmark in suite, (name, p)
            assert p.field in ("top1", "robust_top1", "mce") and 0 < p.value < 100, (name, p)
        assert e.source, name


def test_wilson_interval_against_hand_computed_values():
    lo, hi = wilson(8, 10)  # p = 0.8, z = 1.96: centre 0.7167, half-width 0.2266
    assert (lo, hi) == (pytest.approx(0.4902, abs=1e-4), pytest.approx(0.9433, abs=1e-4))
    assert wilson(0, 10)[0] == 0.0 and wilson(10, 10)[1] == pytest.approx(1.0)


def test_compare_puts_the_published_number_beside_the_measured_one():
    entry = ZOO.get("easyrobust_DrViT-S")
    got = compare(entry, "imagenet_a", {"top1": 0.2, "n": 7500})
    lo, hi = wilson(0.2 * 7500, 7500)
    assert got["published"] == 20.79 and got["measured"] == pytest.approx(20.0)
    assert got["difference"] == pytest.approx(-0.79) and got["ci95"] == pytest.approx([100 * lo, 100 * hi])
    assert got["ci95"] == pytest.approx([19.11, 20.92], abs=0.01) and got["inside_ci95"] is True
    assert compare(entry, "imagenet_a", {"top1": 0.2, "n": 100_000})["inside_ci95"] is False  # [19.75, 20.25]
    mce = compare(entry, "corruptions", {"mce": 51.0})
    assert mce["difference"] == pytest.approx(1.04) and mce["inside_ci95"] is None
    assert compare(entry, "pgd", {"robust_top1": 0.1, "n": 10}) is None


def test_evaluate_and_report_show_published_beside_measured(tmp_path, monkeypatch):
    """A zoo model evaluated on a tiny stand-in for ImageNet val: results.json carries the published number,
    the measured one, the difference and the interval, the images were resized by the entry's rule, and
    the report shows them."""
    from helpers_shifts import WNIDS, tree

    from vitrobust.evaluate import evaluate_path
    from vitrobust.report import build_report

    net = vit_tiny(classes=1000)
    src = tmp_path / "dat_vit_b16.pth"
    torch.save(net.state_dict(), src)
    out = tmp_path / "model" / "dat.safetensors"
    out.parent.mkdir()
    import_checkpoint(src, out, zoo="DAT_ViT-B16_paper", arch="vit_tiny_patch16_224")  # --arch: a small stand-in
    val = tree(tmp_path / "imagenet" / "val", {WNIDS[1]: [1, 1], WNIDS[500]: [500, 500]}).parent
    results, path = evaluate_path(out, "imagenet_val", [f"data.root={val}"])  # as the README says
    entry = json.loads(path.read_text())["imagenet_val"]
    assert entry["resize"] == {"size": 224, "crop_pct": 0.9, "interpolation": "bicubic"}  # the import's rule, not 0.875 bilinear
    pub = entry["published"]
    assert (pub["zoo"], pub["published"], pub["n"]) == ("DAT_ViT-B16_paper", 81.46, 4)
    assert pub["measured"] == pytest.approx(100 * entry["top1"])
    assert pub["difference"] == pytest.approx(pub["measured"] - 81.46)
    lo, hi = wilson(round(entry["top1"] * 4), 4)
    assert pub["ci95"] == pytest.approx([100 * lo, 100 * hi])
    meta = json.loads(path.read_text())["meta"]
    assert meta["zoo"] == "DAT_ViT-B16_paper" and meta["imported"]["format"] == "timm"
    report = build_report([out.parent])
    markdown = report.with_suffix(".md").read_text()
    assert "Published numbers" in markdown and "81.46" in markdown and f"{pub['difference']:+.2f}" in markdown


def test_an_imported_model_is_explained_and_fine_tuned_from_like_any_run(timm_file, tmp_path):
    """`vitrobust explain` reads the imported file's own config and resize rule; `model.init` takes every
    tensor of it."""
    from helpers_shifts import WNIDS, tree

    from vitrobust.explain import explain_run
    from vitrobust.models import build_model, init_from

    net, path = timm_file
    out = tmp_path / "model" / "vit.safetensors"
    import_checkpoint(path, out, arch="vit_tiny_patch16_224")
    root = tree(tmp_path / "imagenet" / "val", {WNIDS[1]: [1], WNIDS[2]: [2]}).parent
    done = explain_run(out, 2, tmp_path / "maps", [f"data.root={root}", "data.name=imagenet"])
    saved = torch.load(done["maps"], weights_only=True)
    assert done["n"] == 2 and saved["maps"].shape == (2, 224, 224)  # maps at the input size the import recorded
    assert torch.isfinite(saved["maps"]).all() and saved["maps"].abs().sum() > 0
    assert done["figures"] and all(Path(f).is_file() for f in done["figures"])
    fresh = build_model(load_model(out).spec)
    assert init_from(fresh, out)["loaded"] == len(fresh.net.state_dict())  # the run keeps its own normalisation
    x = images(224)
    torch.testing.assert_close(logits_of(fresh.eval(), x), logits_of(load_model(out), x), rtol=0, atol=0)
