"""The VQGAN tokenizer: taming layout, the [0,1] API, straight-through, and safe loading of files."""

from __future__ import annotations

import argparse
import io

import pytest
import torch

from vitrobust.attacks.straight_through import resolve_gradient, straight_through_modules
from vitrobust.checkpoint import CheckpointError
from vitrobust.errors import InputError, ModelError
from vitrobust.models.tokenizer_io import infer_arch, load_tokenizer, read_meta, save_tokenizer
from vitrobust.models.vqgan import (
    PRESETS,
    AttnBlock,
    VectorQuantizer,
    VQTokenizer,
    build_tokenizer,
    resolve_arch,
)

# 16 px RGB -> 8x8 codes, attention at the 8-px level; widths 32/64 work with taming's 32 GroupNorm groups
TINY = {"ch": 32, "ch_mult": [1, 2], "num_res_blocks": 1, "attn_resolutions": [8], "z_channels": 8,
        "embed_dim": 8, "n_embed": 16, "in_channels": 3, "out_ch": 3, "resolution": 16}

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(seed: int = 0) -> VQTokenizer:
    torch.manual_seed(seed)
    tok = build_tokenizer(**TINY)
    with torch.no_grad():  # spread the codes like encoder outputs, so different inputs pick different codes
        tok.codebook.embedding.weight.normal_(0, 0.5)
    return tok.eval().requires_grad_(False)


def images(n: int = 3, seed: int = 1, size: int = 16) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _meta_state(preset: str) -> dict[str, torch.Tensor]:
    with torch.device("meta"):  # shapes only: the published layouts have 72M / 68M parameters
        return build_tokenizer(preset).state_dict()


# --- layouts --------------------------------------------------------------------------------


def test_imagenet_f16_preset_has_the_taming_keys_and_shapes():
    sd = _meta_state("vqgan_imagenet_f16_1024")
    assert sd["quantize.embedding.weight"].shape == (1024, 256)
    assert sd["quant_conv.weight"].shape == (256, 256, 1, 1)
    assert sd["post_quant_conv.weight"].shape == (256, 256, 1, 1)
    assert sd["encoder.conv_in.weight"].shape == (128, 3, 3, 3)
    assert sd["encoder.conv_out.weight"].shape == (256, 512, 3, 3)  # z_channels, no double_z
    assert sd["encoder.down.2.block.0.nin_shortcut.weight"].shape == (256, 128, 1, 1)  # 128 -> 256 at level 2
    assert sd["encoder.down.3.downsample.conv.weight"].shape == (256, 256, 3, 3)
    assert "encoder.down.4.downsample.conv.weight" not in sd  # the last level does not downsample
    assert sd["encoder.mid.attn_1.q.weight"].shape == (512, 512, 1, 1)
    assert sd["decoder.conv_in.weight"].shape == (512, 256, 3, 3)
    assert sd["decoder.up.4.block.2.conv2.weight"].shape == (512, 512, 3, 3)  # num_res_blocks + 1 per level
    assert sd["decoder.up.1.upsample.conv.weight"].shape == (128, 128, 3, 3)
    assert "decoder.up.0.upsample.conv.weight" not in sd
    assert sd["decoder.conv_out.weight"].shape == (3, 128, 3, 3)
    # attention only at the 16-px level (level 4 of 256 px): 2 blocks in the encoder, 3 in the decoder
    attn_q = sorted(k for k in sd if k.endswith(".q.weight") and ".mid." not in k)
    assert attn_q == [f"decoder.up.4.attn.{j}.q.weight" for j in range(3)] + \
        [f"encoder.down.4.attn.{j}.q.weight" for j in range(2)]
    assert {k.split(".")[0] for k in sd} == {"encoder", "decoder", "quantize", "quant_conv", "post_quant_conv"}
    assert not any("temb" in k or "codebook" in k for k in sd)


def test_openimages_f8_preset_has_the_taming_keys_and_shapes():
    sd = _meta_state("vqgan_openimages_f8_16384")
    assert sd["quantize.embedding.weight"].shape == (16384, 4)
    assert sd["encoder.conv_out.weight"].shape == (4, 512, 3, 3)
    assert sd["quant_conv.weight"].shape == (4, 4, 1, 1)
    assert sd["decoder.conv_in.weight"].shape == (512, 4, 3, 3)
    assert "encoder.down.3.downsample.conv.weight" not in sd and "encoder.down.2.downsample.conv.weight" in sd
    attn_q = sorted(k for k in sd if k.endswith(".q.weight") and ".mid." not in k)
    assert attn_q == [f"decoder.up.3.attn.{j}.q.weight" for j in range(3)] + \
        [f"encoder.down.3.attn.{j}.q.weight" for j in range(2)]


@pytest.mark.parametrize("preset, grid", [("vqgan_imagenet_f16_1024", 14), ("vqgan_openimages_f8_16384", 28)])
def test_published_layouts_give_the_patch_grid_at_224_px(preset, grid):
    with torch.device("meta"):
        tok = build_tokenizer(preset)
        x = torch.empty(2, 3, 224, 224)
        assert tok.encode(x).shape == (2, grid, grid)
        assert tok.quantize(x)[0].shape == (2, tok.embed_dim, grid, grid)
        assert tok.reconstruct(x).shape == (2, 3, 224, 224)
    assert tok.downsample == 224 // grid


@pytest.mark.parametrize("preset", list(PRESETS))
def test_layout_is_read_back_from_tensor_shapes(preset):
    expected = resolve_arch(preset)
    inferred = resolve_arch(**infer_arch(_meta_state(preset)), norm_groups=expected["norm_groups"])
    keys = ("ch", "ch_mult", "num_res_blocks", "z_channels", "embed_dim", "n_embed", "in_channels", "out_ch")
    assert {k: inferred[k] for k in keys} == {k: expected[k] for k in keys}
    # same attention levels, whatever resolution they are expressed at
    levels = lambda a: [i for i in range(len(a["ch_mult"])) if a["resolution"] // 2**i in a["attn_resolutions"]]  # noqa: E731
    assert levels(inferred) == levels(expected)


def test_bad_layouts_are_explained():
    with pytest.raises(ModelError, match="did you mean 'vq_f4_32px'"):
        build_tokenizer("vq_f4_32")
    with pytest.raises(ModelError, match="did you mean 'n_embed'"):
        build_tokenizer("vq_f4_32px", n_embeds=64)
    with pytest.raises(ModelError, match="norm_groups"):
        build_tokenizer("vq_f4_32px", ch=20)
    with pytest.raises(ModelError, match="input_range"):
        build_tokenizer("vq_f4_32px", input_range=[1, 0])


# --- the API --------------------------------------------------------------------------------


def test_api_shapes_ranges_and_consistency():
    tok, x = tiny(), images()
    idx = tok.encode(x)
    assert idx.shape == (3, 8, 8) and idx.dtype == torch.long
    assert 0 <= int(idx.min()) and int(idx.max()) < 16 and idx.unique().numel() > 1
    z_q, idx2 = tok.quantize(x)
    assert torch.equal(idx, idx2)
    assert torch.equal(z_q, tok.codes(idx)) and z_q.shape == (3, 8, 8, 8)
    assert torch.equal(tok.codes(idx)[1, :, 2, 5], tok.codebook.embedding.weight[idx[1, 2, 5]])
    rec = tok.reconstruct(x)
    assert rec.shape == x.shape and float(rec.min()) >= 0 and float(rec.max()) <= 1
    assert torch.equal(rec, tok.decode(tok.codes(idx)).clamp(0, 1))
    assert torch.equal(tok(x), rec)
    assert (tok.downsample, tok.embed_dim, tok.n_embed, tok.in_chans) == (2, 8, 16, 3)


def test_codes_are_the_nearest_codebook_vectors():
    q = VectorQuantizer(n_embed=37, embed_dim=5)
    torch.manual_seed(3)
    q.embedding.weight.data.normal_()
    z = torch.randn(2, 5, 4, 3)
    flat = z.permute(0, 2, 3, 1).reshape(-1, 5)
    expected = torch.cdist(flat, q.embedding.weight).argmin(1).view(2, 4, 3)
    assert torch.equal(q.nearest(z), expected)
    q.CHUNK = 37 * 5  # 5 rows at a time: the chunked search must give the same answer
    assert torch.equal(q.nearest(z), expected)
    many = torch.randn(2, 5, 32, 32)  # a bf16 distance product flips some of these 2048 choices
    exact = torch.cdist(many.permute(0, 2, 3, 1).reshape(-1, 5), q.embedding.weight).argmin(1).view(2, 32, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(q.nearest(many), exact)


def test_images_are_mapped_to_the_taming_range_inside():
    tok, x = tiny(), images(1)
    seen = {}

    def keep_input(module, inputs, output):
        seen["x"] = inputs[0]

    tok.encoder.conv_in.register_forward_hook(keep_input)
    tok.encode(x)
    assert torch.allclose(seen["x"], 2 * x - 1)  # [0,1] -> [-1,1]
    z = torch.randn(1, 8, 8, 8)
    raw = tok.decoder(tok.post_quant_conv(z))
    assert torch.allclose(tok.decode(z), (raw + 1) / 2, atol=1e-6)
    unit = build_tokenizer(**TINY, input_range=[0, 1]).eval()
    unit.encoder.conv_in.register_forward_hook(keep_input)
    unit.encode(x)
    assert torch.equal(seen["x"], x)


def test_attention_block_is_taming_softmax_attention():
    torch.manual_seed(0)
    attn = AttnBlock(32, groups=8)
    x = torch.randn(2, 32, 3, 4)
    h = attn.norm(x)
    q, k, v = (conv(h).flatten(2) for conv in (attn.q, attn.k, attn.v))  # [b, c, hw]
    weights = torch.softmax(q.transpose(1, 2) @ k / 32**0.5, dim=2)  # [b, hw_q, hw_k]
    expected = x + attn.proj_out((v @ weights.transpose(1, 2)).view(2, 32, 3, 4))
    assert torch.allclose(attn(x), expected, atol=1e-5)


def test_straight_through_passes_gradients_to_the_input_only_when_enabled():
    tok = tiny()
    x = images(2).requires_grad_(True)
    z_q, _ = tok.quantize(x)
    assert not z_q.requires_grad  # the code choice has no gradient
    assert straight_through_modules(tok) == [tok] and resolve_gradient(tok) == "straight-through"
    tok.straight_through = True
    z_st, idx = tok.quantize(x)
    assert torch.allclose(z_st, z_q, atol=1e-6) and torch.equal(idx, tok.encode(x))
    tok.decode(z_st).sum().backward()
    assert x.grad is not None and float(x.grad.abs().sum()) > 0


def test_wrong_images_are_refused():
    tok = tiny()
    with pytest.raises(InputError, match="N x 3 x H x W"):
        tok.encode(torch.rand(2, 1, 16, 16))
    with pytest.raises(InputError, match="divisible by 2"):
        tok.reconstruct(torch.rand(2, 3, 15, 16))


# --- files ----------------------------------------------------------------------------------


def test_save_and_load_give_the_same_outputs(tmp_path):
    tok, x = tiny(), images()
    path = save_tokenizer(tok, tmp_path / "tokenizer.safetensors", meta={"psnr": 21.5})
    loaded = load_tokenizer(path)
    assert loaded.arch == tok.arch and not loaded.training
    assert not any(p.requires_grad for p in loaded.parameters())
    assert torch.equal(loaded.encode(x), tok.encode(x))
    assert torch.equal(loaded.reconstruct(x), tok.reconstruct(x))
    assert read_meta(path)["psnr"] == 21.5
    assert torch.equal(load_tokenizer(tmp_path).encode(x), tok.encode(x))  # a run directory works too
    with pytest.raises(CheckpointError, match="carries its own layout, which differs .* in ch, ch_mult"):
        load_tokenizer(path, preset="vq_f4_32px")
    assert load_tokenizer(path, arch={"dropout": 0.0}).arch == tok.arch  # agreeing keys are fine
    trainable = load_tokenizer(path, freeze=False)
    assert trainable.training and all(p.requires_grad for p in trainable.parameters())


def _lightning_ckpt(tok: VQTokenizer, **extra) -> dict:
    """What taming's Lightning training writes: the model's state dict with its loss modules, plus counters."""
    state = dict(tok.state_dict())
    state["loss.discriminator.main.0.weight"] = torch.randn(4, 3, 4, 4)
    state["loss.perceptual_loss.net.slice1.0.weight"] = torch.randn(4, 3, 3, 3)
    return {"epoch": 3, "global_step": 1200, "pytorch-lightning_version": "1.0.8", "state_dict": state, **extra}


def test_taming_checkpoint_loads_key_for_key(tmp_path):
    tok, x = tiny(), images()
    torch.save(_lightning_ckpt(tok), tmp_path / "last.ckpt")
    loaded = load_tokenizer(tmp_path / "last.ckpt")  # layout read from the shapes
    assert torch.equal(loaded.encode(x), tok.encode(x))
    assert torch.allclose(loaded.reconstruct(x), tok.reconstruct(x))
    torch.save(tok.state_dict(), tmp_path / "weights.pth")  # a bare state dict
    assert torch.equal(load_tokenizer(tmp_path / "weights.pth").encode(x), tok.encode(x))


def test_checkpoint_with_small_norm_groups_needs_its_layout(tmp_path):
    torch.manual_seed(0)
    tok = build_tokenizer("vq_f4_32px").eval()  # norm_groups 8 cannot be read from shapes
    x = torch.rand(2, 1, 32, 32)
    torch.save(_lightning_ckpt(tok), tmp_path / "small.ckpt")
    loaded = load_tokenizer(tmp_path / "small.ckpt", preset="vq_f4_32px")
    assert torch.allclose(loaded.reconstruct(x), tok.reconstruct(x))
    loaded = load_tokenizer(tmp_path / "small.ckpt", arch={"norm_groups": 8})  # the rest read from shapes
    assert torch.allclose(loaded.reconstruct(x), tok.reconstruct(x))
    with pytest.raises(CheckpointError, match=r"norm_groups=32.*pass the preset or arch=\{'norm_groups'"):
        load_tokenizer(tmp_path / "small.ckpt")


CALLS: list[str] = []


def _record(tag: str) -> str:
    CALLS.append(tag)
    return tag


class Payload:
    """Unpickling this calls _record: a stand-in for code a malicious checkpoint would run."""

    def __reduce__(self):
        return _record, ("payload ran",)


def test_pickled_objects_need_trust_and_never_run(tmp_path):
    tok, x = tiny(), images()
    ckpt = _lightning_ckpt(tok, hyper_parameters=argparse.Namespace(embed_dim=8, n_embed=16),
                           callbacks={argparse.ArgumentParser: {"best_model_score": torch.tensor(0.5)}},
                           payload=Payload())
    torch.save(ckpt, tmp_path / "lightning.ckpt")
    with pytest.raises(CheckpointError, match="trust=True") as err:
        load_tokenizer(tmp_path / "lightning.ckpt")
    assert "argparse.Namespace" in str(err.value)
    loaded = load_tokenizer(tmp_path / "lightning.ckpt", trust=True)
    assert torch.equal(loaded.encode(x), tok.encode(x))
    assert CALLS == []  # the payload's function was replaced by an inert placeholder


def test_foreign_and_corrupt_files_give_clear_errors(tmp_path):
    tok = tiny()
    (tmp_path / "junk.ckpt").write_bytes(b"not a checkpoint" * 8)
    with pytest.raises(CheckpointError, match="not a readable torch checkpoint"):
        load_tokenizer(tmp_path / "junk.ckpt")
    buf = io.BytesIO()
    torch.save({"state_dict": {"net.head.weight": torch.zeros(10, 4)}}, buf)
    (tmp_path / "classifier.ckpt").write_bytes(buf.getvalue())
    with pytest.raises(CheckpointError, match="not a VQGAN checkpoint"):
        load_tokenizer(tmp_path / "classifier.ckpt")
    good = save_tokenizer(tok, tmp_path / "t.safetensors")
    (tmp_path / "cut.safetensors").write_bytes(good.read_bytes()[:200])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_tokenizer(tmp_path / "cut.safetensors")
    torch.save(tok.state_dict(), tmp_path / "tiny.pth")
    with pytest.raises(CheckpointError, match="does not fit the tokenizer layout"):
        load_tokenizer(tmp_path / "tiny.pth", preset="vq_f4_32px")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_tokenizer(tmp_path / "missing.ckpt")
    (tmp_path / "run").mkdir()
    with pytest.raises(CheckpointError, match="holds no tokenizer.safetensors"):
        load_tokenizer(tmp_path / "run")
