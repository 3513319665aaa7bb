"""What every training loop here shares (the classifier trainer and the tokenizer trainer): per-step
seeding, autocast, the timm schedule, one optimizer step, the divergence stop, the resume note and
the progress display."""

from __future__ import annotations

import contextlib
import difflib
import random
import sys
import time
from collections.abc import Iterable, Iterator

import numpy as np
import torch
from timm.scheduler import CosineLRScheduler, StepLRScheduler
from tqdm import tqdm

from vitrobust.config import Config
from vitrobust.errors import UserError


class TrainingDiverged(UserError, RuntimeError):
    """The loss became NaN/inf; the last good checkpoint is left as it was."""


def seed_step(seed: int, step: int, rank: int) -> None:
    """Reseed every RNG per step: resumed runs draw exactly what an uninterrupted run would."""
    s = (seed * 1_000_003 + step * 997 + rank) % (2**31)
    torch.manual_seed(s)
    np.random.seed(s)
    random.seed(s)


def autocast(device: torch.device, precision: str):
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def build_scheduler(cfg: Config, optimizer, steps_per_epoch: int):
    s, total = cfg.schedule, cfg.train.epochs * steps_per_epoch
    warmup = int(s.warmup_epochs * steps_per_epoch)
    if s.name == "cosine":
        cooldown = int(s.cooldown_epochs * steps_per_epoch)
        # warm-up first, then the cosine from the peak lr down to min_lr, then cooldown at min_lr
        return CosineLRScheduler(optimizer, t_initial=max(1, total - cooldown - warmup), lr_min=s.min_lr,
                                 warmup_t=warmup, warmup_lr_init=s.warmup_lr, warmup_prefix=True,
                                 t_in_epochs=False, cycle_limit=1)
    rate = s.decay_rate if s.name == "step" else 1.0
    return StepLRScheduler(optimizer, decay_t=max(1, int(s.decay_epochs * steps_per_epoch)), decay_rate=rate,
                           warmup_t=warmup, warmup_lr_init=s.warmup_lr, t_in_epochs=False)


def config_diff(old: str, new: str) -> str:
    lines = difflib.unified_diff(old.splitlines(), new.splitlines(), "saved", "given", lineterm="", n=0)
    return "\n".join(list(lines)[2:12])


def optimizer_step(loss: torch.Tensor, optimizer, scaler, model: torch.nn.Module, clip_grad: float | None) -> None:
    """Backward (loss-scaled for fp16), clip the global gradient norm, step."""
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
    else:
        loss.backward()
    if clip_grad:
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip_grad)
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()


def diverged(what: str, loss: float, epoch: int, step: int, kept: bool, run_dir, hint: str) -> TrainingDiverged:
    """The error a non-finite loss stops training with; `kept`: a checkpoint exists in run_dir."""
    where = (f"The last good checkpoint in {run_dir} is intact; continue with --resume after the fix."
             if kept else "No checkpoint had been written yet.")
    return TrainingDiverged(f"{what} is {loss} at epoch {epoch + 1}, step {step}: training stopped. {where} {hint}")


LINE_EVERY_S = 60.0  # without a terminal: a progress line at most this often


class EpochProgress:
    """An epoch's progress: a tqdm bar on a terminal; in a log file, a plain line at most every
    LINE_EVERY_S seconds (no carriage-return floods). Iterate it like the loader; `show(**values)`
    sets what the bar's postfix and the lines say."""

    def __init__(self, loader: Iterable, total: int, desc: str, enabled: bool, start: int = 0):
        terminal = sys.stderr.isatty()
        self.bar = tqdm(loader, total=total, desc=desc, disable=not (enabled and terminal), leave=False,
                        dynamic_ncols=True)
        self.lines, self.desc, self.start, self.end = enabled and not terminal, desc, start, start + total
        self.values: dict[str, str] = {}
        self.last = time.monotonic()

    def __iter__(self) -> Iterator:
        for done, item in enumerate(self.bar, start=self.start + 1):
            yield item
            if self.lines and time.monotonic() - self.last >= LINE_EVERY_S:
                self.last = time.monotonic()
                print("  ".join([f"{self.desc} step {done}/{self.end}", *(f"{k} {v}" for k, v in self.values.items())]),
                      flush=True)

    def show(self, **values: str) -> None:
        self.values = values
        self.bar.set_postfix(**values)

    def close(self) -> None:
        self.bar.close()


__all__ = ["EpochProgress", "TrainingDiverged", "autocast", "build_scheduler", "config_diff", "diverged", "optimizer_step", "seed_step"]
