"""Shared helpers for the training, CLI and distributed tests (real Fashion-MNIST, tiny subsets).

Every run here is small enough to finish in a few seconds on a 2-core CPU: 256 training images,
batch 32 (8 steps per epoch), 128 test images, per-epoch evaluation on 64 of them.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from vitrobust.config import Config, load_config
from vitrobust.train import train

BIN = Path(sys.executable).parent
TORCHRUN = BIN / "torchrun"

TRAIN_SUBSET, TEST_SUBSET, BATCH, EVAL_SUBSET = 256, 128, 32, 64
STEPS_PER_EPOCH = TRAIN_SUBSET // BATCH

# fp32 on the CPU, no augmentation, no dropout (the shipped quickstart config has none of either).
TINY = [
    "device=cpu",
    f"data.train_subset={TRAIN_SUBSET}",
    f"data.test_subset={TEST_SUBSET}",
    f"data.batch_size={BATCH}",
    f"train.eval_subset={EVAL_SUBSET}",
    "train.epochs=2",
    "train.log_every=1",
]


def tiny_config(*overrides: str) -> Config:
    return load_config("quickstart/baseline", [*TINY, *overrides])


def untrained_run(run: Path, spec: dict, *overrides: str) -> Path:
    """A run directory without training: `tiny_config(*overrides)` and a random model built from `spec`."""
    from vitrobust.checkpoint import save_weights
    from vitrobust.models import build_model

    model = build_model(spec)
    save_weights(model, Path(run) / "model.safetensors", model.spec, tiny_config(*overrides).to_yaml())
    return Path(run)


def set_args(overrides: list[str]) -> list[str]:
    """['a=1', 'b=2'] -> ['--set', 'a=1', '--set', 'b=2']"""
    return [arg for item in overrides for arg in ("--set", item)]


def vitrobust_cmd() -> list[str]:
    """The installed `vitrobust` console script of this environment (python -m vitrobust if absent)."""
    script = BIN / "vitrobust"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "vitrobust"]


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="", PYTHONUNBUFFERED="1")
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    return env


def run_cmd(args: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in args], cwd=cwd, env=child_env(), capture_output=True, text=True,
                          timeout=timeout)


def explain(proc: subprocess.CompletedProcess) -> str:
    return f"exit {proc.returncode}\n--- stdout ---\n{proc.stdout[-4000:]}\n--- stderr ---\n{proc.stderr[-4000:]}"


def tensors(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


def assert_same_tensors(a: dict, b: dict, *, exact: bool = False, atol: float = 1e-6, rtol: float = 0.0) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].dtype == b[key].dtype, key
        if exact:
            assert torch.equal(a[key], b[key]), f"{key} differs (max |diff| {(a[key] - b[key]).abs().max()})"
        else:
            assert torch.allclose(a[key], b[key], atol=atol, rtol=rtol), \
                f"{key} differs (max |diff| {(a[key].double() - b[key].double()).abs().max():.3g})"


def assert_tensors_differ(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    assert any(not torch.equal(a[k], b[k]) for k in a), "expected different weights"


@contextlib.contextmanager
def torch_flags_restored():
    """One intra-op thread while training here (tiny models on a shared CPU run far faster without
    thread contention); the Trainer also switches on torch.use_deterministic_algorithms on the CPU,
    process-wide. Both are put back so tests in other files see torch as they left it."""
    enabled, warn_only = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(enabled, warn_only=warn_only)


def train_run(cfg: Config, run_dir: Path, resume: bool = False) -> Path:
    """vitrobust.train.train in this process, without progress bars."""
    with torch_flags_restored():
        return train(cfg, run_dir, resume=resume, progress=False)
