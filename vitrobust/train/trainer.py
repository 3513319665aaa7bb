"""The one training loop. A method plugs in as an Objective; everything else is shared."""

from __future__ import annotations

import math
from pathlib import Path

import torch
from timm.data import Mixup
from timm.data.random_erasing import RandomErasing
from timm.optim import create_optimizer_v2
from timm.utils import ModelEmaV3
from torch.nn.parallel import DistributedDataParallel

from vitrobust.checkpoint import atomic_write_text, load_state, save_state, save_weights
from vitrobust.config import Config
from vitrobust.data import BatchLoader, load_split
from vitrobust.distributed import any_true, barrier, setup_distributed
from vitrobust.errors import CheckpointError, ConfigError
from vitrobust.evaluate.core import EvalContext, clean
from vitrobust.models import count_params, create_model
from vitrobust.models.frozen import frozen_tensors
from vitrobust.objectives import ObjectiveContext, TrainState, build_objective
from vitrobust.results import MetricsLog
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
STATE_FORMAT = "vitrobust-trainer-v1"


class Trainer:
    def __init__(self, cfg: Config, run_dir: str | Path, resume: bool = False, progress: bool = True):
        self.cfg, self.run_dir = cfg, Path(run_dir)
        self.dist = setup_distributed(cfg.device)
        self.device = self.dist.device
        if (self.run_dir / STATE_FILE).exists() and not resume:
            raise FileExistsError(f"{self.run_dir} already holds a run: pass --resume to continue it, "
                                  f"or choose another --out")
        seed_step(cfg.seed, 0, 0)

        self.train_set = load_split(cfg.data, "train")
        test = load_split(cfg.data, "test")
        self.eval_set = test.subset(cfg.train.eval_subset, cfg.data.subset_seed)
        self.model, self.init_info = create_model(cfg, self.train_set)
        self.model.to(self.device)
        self.loader = BatchLoader(self.train_set, cfg.data.batch_size, self.device, train=True,
                                  img_size=cfg.data.img_size, augment=cfg.augment, seed=cfg.seed,
                                  rank=self.dist.rank, world=self.dist.world, num_workers=cfg.data.num_workers)
        self.steps_per_epoch = len(self.loader)
        if self.steps_per_epoch == 0:
            raise ConfigError(f"the training set has {len(self.train_set)} samples, fewer than one batch "
                             f"(data.batch_size={cfg.data.batch_size}): lower the batch size")
        self.objective = build_objective(cfg.objective, ObjectiveContext(cfg=cfg, dataset=self.train_set,
                                                                         device=self.device))
        o = cfg.optim
        groups = self.model.param_groups(o.weight_decay)  # the model's own groups (its param_groups hook), or None
        self.optimizer = create_optimizer_v2(self.model, opt=o.name, lr=o.lr, weight_decay=o.weight_decay,
                                             param_group_fn=(lambda m: groups) if groups is not None else None,
                                             **({"betas": o.betas} if "adam" in o.name else {"momentum": o.momentum}))
        self.scheduler = build_scheduler(cfg, self.optimizer, self.steps_per_epoch)
        self.ema = ModelEmaV3(self.model, decay=cfg.train.ema_decay) if cfg.train.ema_decay else None
        self.mixup = self._mixup()
        a = cfg.augment
        self.erasing = RandomErasing(a.random_erasing, mode="pixel", device=str(self.device)) if a.random_erasing else None
        self.scaler = torch.amp.GradScaler(self.device.type) if cfg.train.precision == "fp16" else None
        self.ddp = self._wrap_ddp() if self.dist.enabled else self.model
        self.metrics = MetricsLog(self.run_dir, enabled=self.dist.main)
        self.state = TrainState(epochs=cfg.train.epochs, steps_per_epoch=self.steps_per_epoch, model=self.model)
        self.best = -math.inf
        self.selection = ("test_top1", True)  # (metric, higher is better) for train.keep_best
        self.start_epoch, self.start_batch = 0, 0
        self.show_progress = progress and self.dist.main
        self._write_config(resume)
        if resume:
            self._load_checkpoint()

    # --- setup ------------------------------------------------------------------------------

    def _wrap_ddp(self) -> DistributedDataParallel:
        """DDP that does not broadcast frozen weights (a Dr.ViT's tokenizer) at every step: every rank
        built them from the same file, and they never change."""
        frozen = [name for name, _ in frozen_tensors(self.model)]
        if frozen:
            DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(self.model, frozen)
        return DistributedDataParallel(self.model)

    def _write_config(self, resume: bool) -> None:
        """Written once everything was built from it, so a config that fails leaves no run behind."""
        config_yaml = self.cfg.to_yaml()
        if resume and (self.run_dir / "config.yaml").is_file():
            saved = (self.run_dir / "config.yaml").read_text()
            if saved != config_yaml and self.dist.main:
                print(f"note: resuming with a config that differs from the saved one:\n{config_diff(saved, config_yaml)}")
        if self.dist.main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.run_dir / "config.yaml", config_yaml)
        barrier()

    def _mixup(self):
        a = self.cfg.augment
        if not (a.mixup > 0 or a.cutmix > 0):
            return None
        if (self.cfg.data.batch_size // self.dist.world) % 2:
            raise ConfigError("mixup/cutmix pair samples within a batch: use an even per-rank batch size")
        return Mixup(mixup_alpha=a.mixup, cutmix_alpha=a.cutmix, prob=a.mixup_prob, switch_prob=a.mixup_switch_prob,
                     label_smoothing=0.0, num_classes=self.train_set.num_classes)

    # --- checkpoints ------------------------------------------------------------------------

    def _save_checkpoint(self, epoch: int, batch: int) -> None:
        """Resume point = (epoch, next batch). State first, then the published weights, each atomic."""
        if not self.dist.main:
            barrier()
            return
        state = {
            "format": STATE_FORMAT, "epoch": epoch, "batch": batch, "step": self.state.step, "best": self.best,
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "ema": self.ema.module.state_dict() if self.ema else None,
            "scaler": self.scaler.state_dict() if self.scaler else None,
        }
        save_state(state, self.run_dir / STATE_FILE)
        spec, config_yaml = self.model.spec, self.cfg.to_yaml()
        save_weights(self.model, self.run_dir / "model.safetensors", spec, config_yaml, step=self.state.step)
        if self.ema:
            save_weights(self.ema.module, self.run_dir / "ema.safetensors", spec, config_yaml, step=self.state.step)
        barrier()

    def _load_checkpoint(self) -> None:
        path = self.run_dir / STATE_FILE
        if not path.exists():  # nothing to resume yet: start from scratch
            return
        state = load_state(path)
        if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
            raise CheckpointError(f"{path} is not a vitrobust trainer state; delete it to restart the run")
        try:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            if self.ema and state.get("ema") is not None:
                self.ema.module.load_state_dict(state["ema"])
            if self.scaler and state.get("scaler"):
                self.scaler.load_state_dict(state["scaler"])
        except (RuntimeError, ValueError, KeyError) as err:
            raise CheckpointError(f"{path} does not fit this config's model/optimizer ({str(err)[:300]}); "
                                  f"resume with the config the run was started with") from None
        self.state.step, self.best = state["step"], state.get("best", -math.inf)
        self.start_epoch, self.start_batch = state["epoch"], state["batch"]
        self.scheduler.step_update(self.state.step)

    # --- the loop ---------------------------------------------------------------------------

    def fit(self) -> Path:
        cfg = self.cfg
        start_epoch, start_batch = self.start_epoch, self.start_batch
        if start_epoch >= cfg.train.epochs:
            if self.dist.main:
                print(f"{self.run_dir}: already trained for {cfg.train.epochs} epochs")
            return self.run_dir
        if self.dist.main and start_epoch == 0 and start_batch == 0:
            self.metrics.log("start", params=count_params(self.model), model=self.model.spec["name"],
                             world=self.dist.world, steps_per_epoch=self.steps_per_epoch,
                             train_samples=len(self.loader.data),  # an epoch sees steps x batch_size of them
                             init=self.init_info)
        self.scheduler.step_update(self.state.step)
        for epoch in range(start_epoch, cfg.train.epochs):
            self._train_epoch(epoch, start_batch if epoch == start_epoch else 0)
        return self.run_dir

    def _train_epoch(self, epoch: int, start_batch: int) -> None:
        cfg, state = self.cfg, self.state
        state.epoch = epoch
        self.loader.set_epoch(epoch, start_batch)
        self.ddp.train()
        window, totals = Window(), Window()
        bar = EpochProgress(self.loader, len(self.loader) - start_batch, f"epoch {epoch + 1}/{cfg.train.epochs}",
                            self.show_progress, start_batch)
        for i, batch in enumerate(bar, start=start_batch):
            seed_step(cfg.seed, state.step, self.dist.rank)
            if self.mixup is not None:
                batch.x, batch.target = self.mixup(batch.x, batch.y)
            if self.erasing is not None:
                batch.x = self.erasing(batch.x).clamp_(0, 1)
            logs = self.step(batch)
            for w in (window, totals):
                w.add(logs, len(batch) * self.dist.world)
            if state.step % cfg.train.log_every == 0:
                self._log_window("train", window, epoch)
                bar.show(loss=f"{logs['loss']:.3f}", lr=f"{self.optimizer.param_groups[0]['lr']:.2e}")
            if cfg.train.checkpoint_every_steps and state.step % cfg.train.checkpoint_every_steps == 0:
                self._save_checkpoint(epoch, i + 1)
        bar.close()
        self._end_epoch(epoch, totals)

    def step(self, batch) -> dict:
        """One optimizer step on `batch`: objective loss (under autocast), divergence stop, backward, clipping,
        optimizer and scheduler step, EMA; returns the objective's logs as floats."""
        cfg, state = self.cfg, self.state
        with autocast(self.device, cfg.train.precision):
            loss, logs = self.objective.loss(self.ddp, batch, state)
        if any_true(not bool(torch.isfinite(loss.detach())), self.device):
            self.metrics.log("diverged", epoch=state.epoch, step=state.step, loss=float(loss.detach()))
            raise diverged("loss", float(loss.detach()), state.epoch, state.step, (self.run_dir / STATE_FILE).exists(),
                           self.run_dir, "Lower optim.lr, set optim.clip_grad, or use train.precision=fp32.")
        optimizer_step(loss, self.optimizer, self.scaler, self.model, cfg.optim.clip_grad)
        state.step += 1
        self.scheduler.step_update(state.step)
        if self.ema is not None:
            self.ema.update(self.model, step=state.step)
        return {k: float(v) for k, v in logs.items()}

    def _log_window(self, kind: str, window: Window, epoch: int) -> dict:
        means = window.means(self.device)
        row = {"epoch": epoch + 1, "step": self.state.step, **means, "lr": self.optimizer.param_groups[0]["lr"],
               "img_per_s": window.images / window.seconds(), "seconds": window.seconds()}
        self.metrics.log(kind, **row)
        window.reset()
        return row

    def _end_epoch(self, epoch: int, totals: dict) -> None:
        cfg = self.cfg
        row = self._log_window("epoch", totals, epoch) if totals.n else {}
        last = epoch + 1 == cfg.train.epochs
        if (cfg.train.eval_every and (epoch + 1) % cfg.train.eval_every == 0) or last:
            evals = self._evaluate()
            self.metrics.log("eval", epoch=epoch + 1, step=self.state.step, **evals)
            row.update(evals)
            name, higher = self.selection
            score = evals[name] if higher else -evals[name]  # self.best holds the score, sign flipped for losses
            if cfg.train.keep_best and score > self.best and self.dist.main:
                self.best = score
                save_weights(self.model, self.run_dir / "best.safetensors", self.model.spec, cfg.to_yaml(),
                             step=self.state.step, epoch=epoch + 1)
        self._save_checkpoint(epoch + 1, 0)
        if self.dist.main:
            parts = [f"epoch {epoch + 1}/{cfg.train.epochs}"]
            parts += [f"{k} {v:.4g}" for k, v in row.items() if k in ("loss", "acc", "test_top1", "ema_top1", "img_per_s", self.selection[0])]
            print("  ".join(parts), flush=True)

    def _evaluate(self) -> dict:
        ctx = EvalContext(cfg=self.cfg, data=self.eval_set, device=self.device, dist=self.dist,
                          batch_size=self.cfg.data.eval_batch_size)
        self.model.eval()
        out = {"test_top1": clean(self.model, ctx)["top1"]}
        if self.ema is not None:
            out["ema_top1"] = clean(self.ema.module, ctx)["top1"]
        metric = self.objective.validation_metric(self.model, ctx.loader())  # every rank runs it: it gathers
        if metric is not None:  # the objective's own selection criterion
            out[metric.name] = metric.value
            self.selection = (metric.name, metric.higher_is_better)
        self.model.train()
        return out


def train(cfg: Config, run_dir: str | Path, resume: bool = False, progress: bool = True) -> Path:
    return Trainer(cfg, run_dir, resume=resume, progress=progress).fit()
