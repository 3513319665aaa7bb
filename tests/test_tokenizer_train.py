"""`vitrobust tokenizer train` on real Fashion-MNIST (tiny subsets, a tiny layout): the run directory,
the EMA codebook in the taming key, resume, divergence, the loss rules and the metrics."""

from __future__ import annotations

import argparse
import json
import math

import pytest
import torch
from helpers_train import assert_same_tensors, tensors

from vitrobust.checkpoint import CheckpointError, load_state
from vitrobust.cli import main
from vitrobust.config import ConfigError, load_config
from vitrobust.data import load_split
from vitrobust.models.tokenizer_io import load_tokenizer, save_tokenizer
from vitrobust.models.vqgan import build_tokenizer
from vitrobust.results import read_metrics
from vitrobust.tokenizer import TokenizerTrainer, code_usage, evaluate_tokenizer, psnr, train_tokenizer
from vitrobust.tokenizer.model import TrainingTokenizer
from vitrobust.train import TrainingDiverged

pytestmark = pytest.mark.usefixtures("one_thread")

TINY_ARCH = "{ch: 8, ch_mult: [1, 2, 2], n_embed: 16, embed_dim: 8, z_channels: 8, norm_groups: 4}"
# 128 training images in batches of 16: 8 steps per epoch; 32 test images for the metrics
TINY = ["device=cpu", "data.train_subset=128", "data.test_subset=64", "data.batch_size=16",
        "train.eval_subset=32", "train.epochs=2", "train.log_every=2", "tokenizer.grid=4",
        f"tokenizer.arch={TINY_ARCH}", "optim.lr=3e-3"]
STEPS_PER_EPOCH = 8


def tiny_config(*overrides: str):
    return load_config("quickstart/tokenizer", [*TINY, *overrides])


class Killed(Exception):
    """Stands in for the process being killed."""


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted 2-epoch run through the command line."""
    run = tmp_path_factory.mktemp("tok") / "run"
    args = [arg for item in TINY for arg in ("--set", item)]
    assert main(["tokenizer", "train", "quickstart/tokenizer", *args, "--out", str(run), "--no-progress"]) == 0
    return run


# --- metrics --------------------------------------------------------------------------------


def test_psnr_and_code_usage_against_hand_values():
    x = torch.zeros(2, 1, 4, 4)
    y = torch.full((2, 1, 4, 4), 0.1)
    y[1] = 0.01
    assert torch.allclose(psnr(x, y), torch.tensor([20.0, 40.0]), atol=1e-4)  # 10 log10(1 / mse)
    assert float(psnr(x, x)[0]) == 100.0
    usage = code_usage(torch.tensor([5, 5, 0, 0]))
    assert usage == {"perplexity": pytest.approx(2.0), "used_codes": 2, "dead_codes": 2}
    assert code_usage(torch.tensor([3, 3, 3, 3]))["perplexity"] == pytest.approx(4.0)
    assert code_usage(torch.tensor([8, 0, 0, 0]))["perplexity"] == pytest.approx(1.0)


# --- the run --------------------------------------------------------------------------------


def test_run_directory_holds_weights_metrics_results_and_figure(reference):
    for name in ("config.yaml", "tokenizer.safetensors", "trainer_state.pt", "metrics.jsonl", "results.json",
                 "figures/reconstructions.png"):
        assert (reference / name).is_file(), name
    entry = json.loads((reference / "results.json").read_text())["tokenizer"]
    assert entry["n"] == 32 and entry["n_embed"] == 16 and entry["figures"] == ["reconstructions.png"]
    assert entry["used_codes"] + entry["dead_codes"] == 16 and 1.0 <= entry["perplexity"] <= 16.0
    # the reported numbers are those of the saved weights
    cfg = tiny_config()
    tok = load_tokenizer(reference)
    again = evaluate_tokenizer(tok, load_split(cfg.data, "test").subset(32), torch.device("cpu"))
    assert again["psnr"] == pytest.approx(entry["psnr"], abs=1e-4)
    assert again["used_codes"] == entry["used_codes"]
    rows = read_metrics(reference)
    kinds = [r["kind"] for r in rows]
    assert kinds.count("epoch") == 2 and kinds[-1] == "eval" and "start" in kinds
    train_rows = [r for r in rows if r["kind"] == "train"]
    assert train_rows[-1]["step"] == 2 * STEPS_PER_EPOCH and train_rows[-1]["img_per_s"] > 0
    assert {"loss", "recon", "commit", "psnr", "perplexity"} <= set(train_rows[0])


def test_training_improves_reconstructions(reference):
    cfg = tiny_config()
    torch.manual_seed(cfg.seed)
    untrained = build_tokenizer("vq_f4_32px", **cfg.tokenizer.arch)
    test = load_split(cfg.data, "test").subset(32)
    before = evaluate_tokenizer(untrained, test, torch.device("cpu"))["psnr"]
    after = json.loads((reference / "results.json").read_text())["tokenizer"]["psnr"]
    assert after > before + 3.0, (before, after)


def test_saved_codebook_is_the_ema_codebook(reference):
    """The EMA codebook of vector-quantize-pytorch is written into taming's quantize.embedding.weight."""
    state = load_state(reference / "trainer_state.pt")["model"]
    saved = tensors(reference / "tokenizer.safetensors")
    assert torch.equal(state["vq._codebook.embed"][0], saved["quantize.embedding.weight"])
    assert torch.equal(state["tokenizer.quantize.embedding.weight"], saved["quantize.embedding.weight"])
    # and the tokenizer picks exactly the codes vector-quantize-pytorch picks
    cfg = tiny_config()
    trainer = TokenizerTrainer(cfg, reference, resume=True, progress=False)
    trainer.model.eval()
    x = next(iter(trainer.loader)).x
    _, vq_indices, _ = trainer.model.vq(trainer.tokenizer.latent(x))
    assert torch.equal(trainer.tokenizer.encode(x), vq_indices)


def test_resume_after_a_kill_gives_the_uninterrupted_weights(reference, tmp_path, monkeypatch):
    run = tmp_path / "run"
    original = TrainingTokenizer.forward
    calls = {"n": 0}

    def dying(self, x):
        calls["n"] += 1
        if calls["n"] == STEPS_PER_EPOCH + 4:  # mid-epoch 2, after the step-2 checkpoint of that epoch
            raise Killed()
        return original(self, x)

    monkeypatch.setattr(TrainingTokenizer, "forward", dying)
    with pytest.raises(Killed):
        train_tokenizer(tiny_config("train.checkpoint_every_steps=2"), run, progress=False)
    assert load_state(run / "trainer_state.pt")["step"] == STEPS_PER_EPOCH + 2
    monkeypatch.setattr(TrainingTokenizer, "forward", original)
    with pytest.raises(FileExistsError, match="--resume"):
        train_tokenizer(tiny_config("train.checkpoint_every_steps=2"), run, progress=False)
    train_tokenizer(tiny_config("train.checkpoint_every_steps=2"), run, resume=True, progress=False)
    assert_same_tensors(tensors(run / "tokenizer.safetensors"), tensors(reference / "tokenizer.safetensors"),
                        atol=1e-5)


def test_nan_loss_stops_and_keeps_the_last_checkpoint(tmp_path, monkeypatch):
    run = tmp_path / "run"
    original = TrainingTokenizer.forward
    calls = {"n": 0}

    def poisoned(self, x):
        calls["n"] += 1
        loss, logs = original(self, x)
        return (loss * math.nan if calls["n"] > STEPS_PER_EPOCH + 1 else loss), logs

    monkeypatch.setattr(TrainingTokenizer, "forward", poisoned)
    with pytest.raises(TrainingDiverged, match="last good checkpoint"):
        train_tokenizer(tiny_config(), run, progress=False)
    assert load_state(run / "trainer_state.pt")["step"] == STEPS_PER_EPOCH  # the end-of-epoch-1 checkpoint
    tok = load_tokenizer(run)
    assert all(torch.isfinite(p).all() for p in tok.parameters())
    assert read_metrics(run)[-1]["kind"] == "diverged"


def test_taming_loss_rule_trains_the_codebook_parameter(tmp_path):
    cfg = tiny_config("tokenizer.codebook_update=loss", "tokenizer.kmeans_init=false",
                      "tokenizer.dead_code_threshold=0", "train.epochs=1")
    trainer = TokenizerTrainer(cfg, tmp_path / "run", progress=False)
    assert trainer.model.vq is None and trainer.tokenizer.codebook.embedding.weight.requires_grad
    before = trainer.tokenizer.codebook.embedding.weight.detach().clone()
    trainer.fit()
    after = tensors(tmp_path / "run" / "tokenizer.safetensors")["quantize.embedding.weight"]
    assert not torch.equal(before, after)
    rows = [r for r in read_metrics(tmp_path / "run") if r["kind"] == "train"]
    assert "codebook" in rows[0] and "commit" in rows[0]


def test_init_seeds_the_ema_codebook_from_a_trained_tokenizer(tmp_path):
    cfg = tiny_config()
    torch.manual_seed(5)
    start = build_tokenizer("vq_f4_32px", **cfg.tokenizer.arch)
    path = save_tokenizer(start, tmp_path / "start.safetensors")
    trainer = TokenizerTrainer(tiny_config(f"tokenizer.init={path}", "tokenizer.dead_code_threshold=0"),
                               tmp_path / "run", progress=False)
    codes = start.codebook.embedding.weight.detach()
    assert torch.equal(trainer.model.vq.codebook, codes)
    assert bool(trainer.model.vq._codebook.initted)  # no k-means over the given codes
    assert torch.equal(trainer.tokenizer.encoder.conv_in.weight, start.encoder.conv_in.weight)
    trainer.model.train()
    x = next(iter(trainer.loader)).x
    with torch.no_grad():
        used = trainer.tokenizer.encode(x).unique()
        trainer.model(x)  # one EMA step: the chosen codes move towards their inputs, the others stay
    unused = torch.ones(16, dtype=torch.bool)
    unused[used] = False
    moved = trainer.model.vq.codebook
    assert unused.any() and torch.allclose(moved[unused], codes[unused], atol=1e-4)
    assert not torch.allclose(moved[used], codes[used], atol=1e-4)
    assert torch.equal(trainer.tokenizer.codebook.embedding.weight, moved)


def test_init_from_a_lightning_checkpoint_needs_trust(tmp_path):
    cfg = tiny_config()
    torch.manual_seed(6)
    start = build_tokenizer("vq_f4_32px", **cfg.tokenizer.arch)
    ckpt = {"state_dict": {**start.state_dict(), "loss.logvar": torch.zeros(())},
            "hyper_parameters": argparse.Namespace(n_embed=16)}
    torch.save(ckpt, tmp_path / "last.ckpt")
    with pytest.raises(CheckpointError, match="tokenizer.trust_checkpoint=true"):
        TokenizerTrainer(tiny_config(f"tokenizer.init={tmp_path / 'last.ckpt'}"), tmp_path / "a", progress=False)
    trainer = TokenizerTrainer(tiny_config(f"tokenizer.init={tmp_path / 'last.ckpt'}", "tokenizer.trust_checkpoint=true"),
                               tmp_path / "b", progress=False)  # layout: the config's preset + arch (norm_groups 4)
    assert torch.equal(trainer.tokenizer.decoder.conv_out.weight, start.decoder.conv_out.weight)
    assert torch.equal(trainer.model.vq.codebook, start.codebook.embedding.weight)


# --- refused configs ------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["perceptual_weight", "gan_weight"])
def test_perceptual_and_gan_terms_say_they_need_a_network(tmp_path, key):
    with pytest.raises(ConfigError, match=f"tokenizer.{key} > 0 needs a pretrained network.*offline"):
        TokenizerTrainer(tiny_config(f"tokenizer.{key}=0.1"), tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_update_rule_options_are_checked():
    with pytest.raises(ConfigError, match="tokenizer.codebook_weight: applies to codebook_update=loss"):
        tiny_config("tokenizer.codebook_weight=0.5")
    with pytest.raises(ConfigError, match="tokenizer.kmeans_init: needs codebook_update=ema"):
        tiny_config("tokenizer.codebook_update=loss")  # the shipped config turns k-means on


def test_layouts_that_do_not_fit_the_data_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="multiple of 4"):
        TokenizerTrainer(tiny_config("data.img_size=30"), tmp_path / "a", progress=False)
    rgb = save_tokenizer(build_tokenizer("vq_f4_32px", in_channels=3), tmp_path / "rgb.safetensors")
    with pytest.raises(ConfigError, match="3-channel images but the data has 1"):
        TokenizerTrainer(tiny_config(f"tokenizer.init={rgb}"), tmp_path / "b", progress=False)
