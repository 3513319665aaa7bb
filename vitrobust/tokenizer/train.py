"""`vitrobust tokenizer train`: fit a VQ tokenizer to any dataset, report PSNR and codebook usage.

The run directory mirrors a classifier run: config.yaml, tokenizer.safetensors (taming key names,
layout in the metadata), trainer_state.pt for --resume, metrics.jsonl, results.json with a
`tokenizer` entry, figures/reconstructions.png. One process (no torchrun).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch
from timm.optim import create_optimizer_v2

from vitrobust.checkpoint import atomic_write_text, load_state, save_state
from vitrobust.config import Config
from vitrobust.data import BatchLoader, load_split
from vitrobust.distributed import resolve_device
from vitrobust.errors import CheckpointError, ConfigError
from vitrobust.figures.tokenizer import reconstruction_figure
from vitrobust.models.tokenizer_io import WEIGHTS_NAME, is_tokenizer_file, load_tokenizer, save_tokenizer
from vitrobust.models.vqgan import VQTokenizer, build_tokenizer
from vitrobust.results import MetricsLog, write_results
from vitrobust.tokenizer.metrics import evaluate_tokenizer
from vitrobust.tokenizer.model import TrainingTokenizer
from vitrobust.train.loop import (
    EpochProgress,
    autocast,
    build_scheduler,
    config_diff,
    diverged,
    optimizer_step,
    seed_step,
)
from vitrobust.train.metrics import Window

STATE_FILE = "trainer_state.pt"
STATE_FORMAT = "vitrobust-tokenizer-trainer-v1"
FIGURE = "reconstructions.png"


def build_from_config(cfg: Config, in_chans: int) -> tuple[VQTokenizer, bool]:
    """The tokenizer to train and whether it starts from trained weights. Channels follow the data
    unless the layout names them."""
    t = cfg.tokenizer
    arch = dict(t.arch)
    if t.init:
        # a vitrobust file carries its layout; preset/arch describe only a foreign (taming) checkpoint
        own = is_tokenizer_file(t.init)
        tok = load_tokenizer(t.init, trust=t.trust_checkpoint, preset=None if own else t.preset,
                             arch=None if own else arch or None, freeze=False)
        if tok.in_chans != in_chans:
            raise ConfigError(f"tokenizer.init {t.init} takes {tok.in_chans}-channel images but the data has "
                              f"{in_chans}; choose a matching tokenizer or dataset")
        return tok, True
    arch.setdefault("in_channels", in_chans)
    arch.setdefault("out_ch", arch["in_channels"])
    return build_tokenizer(t.preset, **arch), False


class TokenizerTrainer:
    def __init__(self, cfg: Config, run_dir: str | Path, resume: bool = False, progress: bool = True):
        self.cfg, self.run_dir, self.progress = cfg, Path(run_dir), progress
        t = cfg.tokenizer
        if t.perceptual_weight > 0 or t.gan_weight > 0:
            name = "perceptual_weight" if t.perceptual_weight > 0 else "gan_weight"
            raise ConfigError(f"tokenizer.{name} > 0 needs a pretrained network (LPIPS/VGG features, a "
                              f"discriminator) that vitrobust does not ship and cannot download offline; set "
                              f"tokenizer.{name}=0")
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise ConfigError("tokenizer training runs in one process: start it without torchrun")
        if (self.run_dir / STATE_FILE).exists() and not resume:
            raise FileExistsError(f"{self.run_dir} already holds a tokenizer run: pass --resume to continue it, "
                                  f"or choose another --out")
        self.device = resolve_device(cfg.device)
        seed_step(cfg.seed, 0, 0)
        self.train_set = load_split(cfg.data, "train")
        self.eval_set = load_split(cfg.data, "test").subset(cfg.train.eval_subset, cfg.data.subset_seed)
        tokenizer, pretrained = build_from_config(cfg, self.train_set.in_chans)
        size = cfg.data.img_size or self.train_set.img_size
        if size % tokenizer.downsample:
            raise ConfigError(f"images of {size} px do not divide into the tokenizer's {tokenizer.downsample}x"
                              f"{tokenizer.downsample} cells: set data.img_size to a multiple of {tokenizer.downsample}")
        self.tokenizer = tokenizer.to(self.device).train()
        self.model = TrainingTokenizer(tokenizer, t, pretrained_codebook=pretrained).to(self.device)
        self.loader = BatchLoader(self.train_set, cfg.data.batch_size, self.device, train=True,
                                  img_size=cfg.data.img_size, augment=cfg.augment, seed=cfg.seed,
                                  num_workers=cfg.data.num_workers)
        self.steps_per_epoch = len(self.loader)
        if self.steps_per_epoch == 0:
            raise ConfigError(f"the training set has {len(self.train_set)} images, fewer than one batch "
                              f"(data.batch_size={cfg.data.batch_size}): lower the batch size")
        o = cfg.optim
        self.optimizer = create_optimizer_v2(self.model, opt=o.name, lr=o.lr, weight_decay=o.weight_decay,
                                             **({"betas": o.betas} if "adam" in o.name else {"momentum": o.momentum}))
        self.scheduler = build_scheduler(cfg, self.optimizer, self.steps_per_epoch)
        self.scaler = torch.amp.GradScaler(self.device.type) if cfg.train.precision == "fp16" else None
        self.metrics = MetricsLog(self.run_dir)
        self.step, self.start_epoch, self.start_batch = 0, 0, 0
        self._write_config(resume)
        if resume:
            self._load_checkpoint()

    # --- checkpoints ------------------------------------------------------------------------

    def _write_config(self, resume: bool) -> None:
        config_yaml = self.cfg.to_yaml()
        saved = self.run_dir / "config.yaml"
        if resume and saved.is_file() and saved.read_text() != config_yaml:
            print(f"note: resuming with a config that differs from the saved one:\n"
                  f"{config_diff(saved.read_text(), config_yaml)}")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(saved, config_yaml)

    def _save_checkpoint(self, epoch: int, batch: int) -> None:
        """State first, then the published weights; each write is atomic."""
        state = {"format": STATE_FORMAT, "epoch": epoch, "batch": batch, "step": self.step,
                 "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                 "scaler": self.scaler.state_dict() if self.scaler else None}
        save_state(state, self.run_dir / STATE_FILE)
        save_tokenizer(self.tokenizer, self.run_dir / WEIGHTS_NAME, meta={"step": self.step, "epoch": epoch})

    def _load_checkpoint(self) -> None:
        path = self.run_dir / STATE_FILE
        if not path.exists():
            return
        state = load_state(path)
        if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
            raise CheckpointError(f"{path} is not a vitrobust tokenizer trainer state; delete it to restart the run")
        try:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            if self.scaler and state.get("scaler"):
                self.scaler.load_state_dict(state["scaler"])
        except (RuntimeError, ValueError, KeyError) as err:
            raise CheckpointError(f"{path} does not fit this config's tokenizer/optimizer ({str(err)[:300]}); "
                                  f"resume with the config the run was started with") from None
        self.step, self.start_epoch, self.start_batch = state["step"], state["epoch"], state["batch"]
        self.scheduler.step_update(self.step)

    # --- the loop ---------------------------------------------------------------------------

    def fit(self) -> Path:
        cfg = self.cfg
        if self.start_epoch >= cfg.train.epochs:
            if not (self.run_dir / "results.json").is_file():
                self._finish()
            print(f"{self.run_dir}: already trained for {cfg.train.epochs} epochs")
            return self.run_dir
        if self.step == 0:
            self.metrics.log("start", params=sum(p.numel() for p in self.tokenizer.parameters()),
                             arch=self.tokenizer.arch, steps_per_epoch=self.steps_per_epoch)
        self.scheduler.step_update(self.step)
        for epoch in range(self.start_epoch, cfg.train.epochs):
            self._train_epoch(epoch, self.start_batch if epoch == self.start_epoch else 0)
        self._finish()
        return self.run_dir

    def _train_epoch(self, epoch: int, start_batch: int) -> None:
        cfg = self.cfg
        self.loader.set_epoch(epoch, start_batch)
        self.model.train()
        window, totals = Window(), Window()
        bar = EpochProgress(self.loader, len(self.loader) - start_batch, f"epoch {epoch + 1}/{cfg.train.epochs}",
                            self.progress, start_batch)
        for i, batch in enumerate(bar, start=start_batch):
            seed_step(cfg.seed, self.step, 0)
            logs = self._step(batch.x, epoch)
            for w in (window, totals):
                w.add(logs, len(batch))
            if self.step % cfg.train.log_every == 0:
                self._log_window("train", window, epoch)
                bar.show(loss=f"{logs['loss']:.3f}", psnr=f"{logs['psnr']:.1f}")
            if cfg.train.checkpoint_every_steps and self.step % cfg.train.checkpoint_every_steps == 0:
                self._save_checkpoint(epoch, i + 1)
        bar.close()
        row = self._log_window("epoch", totals, epoch) if totals.n else {}
        last = epoch + 1 == cfg.train.epochs
        if (cfg.train.eval_every and (epoch + 1) % cfg.train.eval_every == 0) and not last:
            evals = self._evaluate()
            self.metrics.log("eval", epoch=epoch + 1, step=self.step, **evals)
            row.update(evals)
        self._save_checkpoint(epoch + 1, 0)
        parts = [f"epoch {epoch + 1}/{cfg.train.epochs}"] + [
            f"{k} {row[k]:.4g}" for k in ("loss", "psnr", "perplexity", "used_codes", "img_per_s") if k in row]
        print("  ".join(parts), flush=True)

    def _step(self, x: torch.Tensor, epoch: int) -> dict[str, float]:
        cfg = self.cfg
        with autocast(self.device, cfg.train.precision):
            loss, logs = self.model(x)
        if not math.isfinite(float(loss.detach())):
            self.metrics.log("diverged", epoch=epoch, step=self.step, loss=float(loss.detach()))
            raise diverged("tokenizer loss", float(loss.detach()), epoch, self.step,
                           (self.run_dir / STATE_FILE).exists(), self.run_dir, "Lower optim.lr or set optim.clip_grad.")
        optimizer_step(loss, self.optimizer, self.scaler, self.model, cfg.optim.clip_grad)
        self.step += 1
        self.scheduler.step_update(self.step)
        return {k: float(v) for k, v in logs.items()}

    def _log_window(self, kind: str, window: Window, epoch: int) -> dict:
        row = {"epoch": epoch + 1, "step": self.step, **window.means(self.device),
               "lr": self.optimizer.param_groups[0]["lr"], "img_per_s": window.images / window.seconds(),
               "seconds": window.seconds()}
        self.metrics.log(kind, **row)
        window.reset()
        return row

    def _evaluate(self) -> dict:
        return evaluate_tokenizer(self.tokenizer, self.eval_set, self.device, self.cfg.data.eval_batch_size)

    def _finish(self) -> None:
        """Final evaluation on the test subset, results.json and the reconstruction figure."""
        results = self._evaluate()
        self.metrics.log("eval", epoch=self.cfg.train.epochs, step=self.step, **results)
        k = min(self.cfg.tokenizer.grid, len(self.eval_set))
        shown = self.eval_set.subset(k, self.cfg.data.subset_seed)
        x = next(iter(BatchLoader(shown, k, self.device, train=False))).x
        self.tokenizer.eval()
        with torch.no_grad():
            recon = self.tokenizer.reconstruct(x)
        reconstruction_figure(x, recon, self.run_dir / "figures" / FIGURE,
                              title=f"{self.cfg.name}: PSNR {results['psnr']:.1f} dB, {results['used_codes']}/"
                                    f"{results['n_embed']} codes used")
        entry = {**results, "sample": self.eval_set.sample_info(), "figures": [FIGURE]}  # the images measured
        write_results(self.run_dir / "results.json", {"tokenizer": entry}, meta={"weights": WEIGHTS_NAME})
        print(f"tokenizer: PSNR {results['psnr']:.2f} dB on {results['n']} test images, perplexity "
              f"{results['perplexity']:.1f}, {results['used_codes']}/{results['n_embed']} codes used "
              f"({results['dead_codes']} dead)", flush=True)


def train_tokenizer(cfg: Config, out_dir: str | Path, resume: bool = False, progress: bool = True) -> Path:
    """Train (or resume) a tokenizer run; returns the run directory."""
    return TokenizerTrainer(cfg, out_dir, resume=resume, progress=progress).fit()
