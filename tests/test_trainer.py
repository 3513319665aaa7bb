"""The training loop on real Fashion-MNIST (tiny subsets): determinism, resume, divergence,
run-directory safety, metrics, learning, precision/EMA/mixing, and the learning-rate schedule."""

from __future__ import annotations

import json
import math

import pytest
import torch
from helpers_train import (
    BATCH,
    EVAL_SUBSET,
    STEPS_PER_EPOCH,
    TEST_SUBSET,
    assert_same_tensors,
    assert_tensors_differ,
    tensors,
    tiny_config,
    torch_flags_restored,
    train_run,
)

from vitrobust.checkpoint import load_state
from vitrobust.config import load_config
from vitrobust.evaluate import evaluate_path
from vitrobust.models.io import load_model
from vitrobust.objectives.standard import Standard
from vitrobust.results import read_metrics
from vitrobust.train import Trainer, TrainingDiverged
from vitrobust.train.loop import build_scheduler
from vitrobust.train.trainer import STATE_FILE

EPOCHS = 2
TOTAL_STEPS = EPOCHS * STEPS_PER_EPOCH


class Killed(Exception):
    """Stands in for the process being killed at a chosen point."""


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted 2-epoch run (8 steps per epoch): its directory and weights."""
    run = tmp_path_factory.mktemp("reference") / "run"
    cfg = tiny_config()
    train_run(cfg, run)
    return {"cfg": cfg, "run": run, "weights": tensors(run / "model.safetensors")}


def kill_at_step(monkeypatch, step: int) -> None:
    """Make the objective raise Killed when it is asked for the loss of optimizer step `step` + 1."""
    original = Standard.loss

    def loss(self, model, batch, state):
        if state.step == step:
            raise Killed(f"killed before step {step + 1}")
        return original(self, model, batch, state)

    monkeypatch.setattr(Standard, "loss", loss)


# --- (1) determinism ------------------------------------------------------------------------


def test_same_seed_gives_bit_identical_weights(reference, tmp_path):
    train_run(tiny_config(), tmp_path / "again")
    assert_same_tensors(tensors(tmp_path / "again" / "model.safetensors"), reference["weights"], exact=True)


def test_another_seed_gives_other_weights(reference, tmp_path):
    train_run(tiny_config("seed=1"), tmp_path / "seed1")
    assert_tensors_differ(tensors(tmp_path / "seed1" / "model.safetensors"), reference["weights"])


# --- (2) resume ------------------------------------------------------------------------------


def test_resume_after_epoch_boundary_matches_uninterrupted_run(reference, tmp_path, monkeypatch):
    run, cfg = tmp_path / "run", tiny_config()
    original = Trainer._train_epoch

    def train_epoch(self, epoch, start_batch):
        if epoch == 1:
            raise Killed("killed after the first epoch's checkpoint")
        return original(self, epoch, start_batch)

    monkeypatch.setattr(Trainer, "_train_epoch", train_epoch)
    with pytest.raises(Killed):
        train_run(cfg, run)
    monkeypatch.undo()

    state = load_state(run / STATE_FILE)
    assert (state["epoch"], state["batch"], state["step"]) == (1, 0, STEPS_PER_EPOCH)
    assert_tensors_differ(tensors(run / "model.safetensors"), reference["weights"])  # only half trained

    train_run(cfg, run, resume=True)
    assert load_state(run / STATE_FILE)["step"] == TOTAL_STEPS
    assert_same_tensors(tensors(run / "model.safetensors"), reference["weights"], atol=1e-6)


@pytest.mark.parametrize("kill_step", [7, 13], ids=["epoch1", "epoch2"])
def test_mid_epoch_resume_matches_uninterrupted_run(reference, tmp_path, monkeypatch, kill_step):
    run, cfg = tmp_path / "run", tiny_config("train.checkpoint_every_steps=3")
    kill_at_step(monkeypatch, kill_step)
    with pytest.raises(Killed):
        train_run(cfg, run)
    monkeypatch.undo()

    last = kill_step - kill_step % 3  # the last multiple of checkpoint_every_steps
    state = load_state(run / STATE_FILE)
    assert state["step"] == last
    assert (state["epoch"], state["batch"]) == divmod(last, STEPS_PER_EPOCH)

    with torch_flags_restored():
        trainer = Trainer(cfg, run, resume=True, progress=False)
        assert (trainer.start_epoch, trainer.start_batch) == divmod(last, STEPS_PER_EPOCH)
        assert trainer.state.step == last
        trainer.fit()
    assert load_state(run / STATE_FILE)["step"] == TOTAL_STEPS
    assert_same_tensors(tensors(run / "model.safetensors"), reference["weights"], atol=1e-6)


def test_resume_of_finished_run_changes_nothing(reference, tmp_path):
    run = tmp_path / "run"
    train_run(tiny_config("train.epochs=1"), run)
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    train_run(tiny_config("train.epochs=1"), run, resume=True)
    after = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    assert after == before


# --- (3) divergence ---------------------------------------------------------------------------


def test_nan_loss_raises_and_leaves_last_checkpoint_intact(reference, tmp_path, monkeypatch):
    run, cfg = tmp_path / "run", tiny_config("train.checkpoint_every_steps=2")
    bad_step = 5  # the 6th step; the last checkpoint was written after step 4
    snapshot = {}
    original = Standard.loss

    def loss(self, model, batch, state):
        value, logs = original(self, model, batch, state)
        if state.step == bad_step:
            snapshot.update({name: (run / name).read_bytes() for name in ("model.safetensors", STATE_FILE)})
            return value * float("nan"), logs
        return value, logs

    monkeypatch.setattr(Standard, "loss", loss)
    with pytest.raises(TrainingDiverged) as info:
        train_run(cfg, run)
    monkeypatch.undo()

    message = str(info.value)
    assert "last good checkpoint" in message and str(run) in message
    assert "nan" in message.lower()
    assert snapshot, "the NaN step was never reached"
    for name, data in snapshot.items():
        assert (run / name).read_bytes() == data, f"{name} changed after the divergence"
    assert load_state(run / STATE_FILE)["step"] == 4
    last = read_metrics(run)[-1]
    assert last["kind"] == "diverged" and last["step"] == bad_step

    # the message says: continue with --resume; that reproduces the uninterrupted run
    train_run(cfg, run, resume=True)
    assert_same_tensors(tensors(run / "model.safetensors"), reference["weights"], atol=1e-6)


def test_exploding_learning_rate_raises_training_diverged(tmp_path):
    run = tmp_path / "run"
    cfg = tiny_config("optim.lr=1e30", "optim.clip_grad=null", "schedule.warmup_epochs=0", "train.epochs=1")
    with pytest.raises(TrainingDiverged, match="optim.lr"):
        train_run(cfg, run)
    assert read_metrics(run)[-1]["kind"] == "diverged"


# --- (4) run directory safety -------------------------------------------------------------------


def test_existing_run_directory_without_resume_raises(reference, tmp_path):
    run = reference["run"]
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    with torch_flags_restored():
        with pytest.raises(FileExistsError, match="--resume"):
            Trainer(tiny_config("optim.lr=1e-4"), run, progress=False)
        with pytest.raises(FileExistsError):
            train_run(tiny_config(), run)
    after = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    assert after == before


# --- (5) metrics and the saved config ----------------------------------------------------------


def test_metrics_jsonl_rows(reference):
    rows = read_metrics(reference["run"])
    kinds = [r["kind"] for r in rows]
    assert kinds[0] == "start" and kinds.count("start") == 1
    train_rows = [r for r in rows if r["kind"] == "train"]
    epoch_rows = [r for r in rows if r["kind"] == "epoch"]
    eval_rows = [r for r in rows if r["kind"] == "eval"]
    assert [r["step"] for r in train_rows] == list(range(1, TOTAL_STEPS + 1))  # log_every=1
    assert [(r["epoch"], r["step"]) for r in epoch_rows] == [(1, STEPS_PER_EPOCH), (2, TOTAL_STEPS)]
    assert [r["epoch"] for r in eval_rows] == [1, 2]
    for row in train_rows + epoch_rows:
        for key in ("loss", "acc", "lr", "img_per_s"):
            assert isinstance(row[key], (int, float)) and math.isfinite(row[key]), (key, row)
        assert row["loss"] > 0 and 0 <= row["acc"] <= 1 and row["lr"] > 0 and row["img_per_s"] > 0
    for row in eval_rows:
        assert 0 <= row["test_top1"] <= 1
        assert row["test_top1"] * EVAL_SUBSET == pytest.approx(round(row["test_top1"] * EVAL_SUBSET), abs=1e-3)
    # an epoch row averages that epoch's per-step rows
    first = [r for r in train_rows if r["epoch"] == 1]
    assert epoch_rows[0]["loss"] == pytest.approx(sum(r["loss"] for r in first) / len(first), rel=1e-9)
    assert epoch_rows[0]["acc"] == pytest.approx(sum(r["acc"] for r in first) / len(first), rel=1e-9)


def test_config_yaml_round_trips(reference):
    saved = load_config(reference["run"] / "config.yaml")
    assert saved == reference["cfg"]
    assert saved.to_yaml() == (reference["run"] / "config.yaml").read_text()


# --- (6) it learns --------------------------------------------------------------------------------


@pytest.mark.slow
def test_training_learns_fashion_mnist(tmp_path):
    run = tmp_path / "run"
    cfg = tiny_config("data.train_subset=1024", "data.test_subset=500", "train.eval_subset=500",
                      "train.eval_every=0", "train.log_every=8")
    train_run(cfg, run)
    rows = read_metrics(run)
    top1 = [r for r in rows if r["kind"] == "eval"][-1]["test_top1"]
    assert top1 > 0.35, f"test accuracy {top1:.3f} after 2 epochs on 1024 images (chance is 0.10)"
    train_rows = [r for r in rows if r["kind"] == "train"]
    assert train_rows[-1]["loss"] < train_rows[0]["loss"]
    # the independent evaluation path agrees with the trainer's own evaluation
    results, _ = evaluate_path(run, "clean")
    assert results["clean"]["n"] == 500 and results["clean"]["top1"] == pytest.approx(top1, abs=1e-6)


# --- (7) bf16, EMA, mixup/cutmix, label smoothing ---------------------------------------------------


@pytest.mark.slow
def test_bf16_ema_mixup_cutmix_label_smoothing(tmp_path, monkeypatch):
    run = tmp_path / "run"
    cfg = tiny_config("train.precision=bf16", "train.ema_decay=0.9", "augment.mixup=0.8", "augment.cutmix=1.0",
                      "objective.label_smoothing=0.1", "train.epochs=1")
    seen = []
    original = Standard.loss

    def loss(self, model, batch, state):
        seen.append({"target": None if batch.target is None else batch.target.detach().cpu(),
                     "autocast": torch.is_autocast_enabled("cpu"), "dtype": torch.get_autocast_dtype("cpu"),
                     "smoothing": self.params.label_smoothing})
        return original(self, model, batch, state)

    monkeypatch.setattr(Standard, "loss", loss)
    train_run(cfg, run)

    assert len(seen) == STEPS_PER_EPOCH
    for s in seen:
        assert s["autocast"] and s["dtype"] == torch.bfloat16
        assert s["smoothing"] == 0.1
        target = s["target"]
        assert target is not None and target.shape == (BATCH, 10)
        assert torch.allclose(target.sum(-1), torch.ones(BATCH), atol=1e-5)
    # mixed targets: some rows hold two classes with fractional weights
    assert any(((t["target"] > 0) & (t["target"] < 1)).any() for t in seen)

    assert (run / "ema.safetensors").is_file()
    model, ema = tensors(run / "model.safetensors"), tensors(run / "ema.safetensors")
    assert all(v.dtype == torch.float32 for k, v in model.items() if v.is_floating_point())
    assert_tensors_differ(model, ema)
    for v in list(model.values()) + list(ema.values()):
        assert torch.isfinite(v).all()
    eval_row = [r for r in read_metrics(run) if r["kind"] == "eval"][-1]
    assert 0 <= eval_row["test_top1"] <= 1 and 0 <= eval_row["ema_top1"] <= 1
    assert not load_model(run, ema=True).training

    results, _ = evaluate_path(run, "clean", overrides=["evaluate.use_ema=true"])
    assert results["clean"]["n"] == TEST_SUBSET
    meta = json.loads((run / "results.json").read_text())["meta"]
    assert meta["weights"].endswith("ema.safetensors")


# --- (8) learning-rate schedule ----------------------------------------------------------------------

BASE_LR, WARMUP_LR, MIN_LR = 3e-3, 1e-6, 1e-5  # quickstart/baseline: lr 3e-3, warmup 0.5 epochs, min 1e-5


def cosine_with_warmup(t: int, warmup: int, end: int) -> float:
    """Linear warm-up to the peak lr, then a cosine from the peak that reaches min_lr at step `end`."""
    if t < warmup:
        return WARMUP_LR + t * (BASE_LR - WARMUP_LR) / warmup
    if t >= end:
        return MIN_LR
    return MIN_LR + 0.5 * (BASE_LR - MIN_LR) * (1 + math.cos(math.pi * (t - warmup) / (end - warmup)))


def test_logged_lr_follows_warmup_and_cosine(reference):
    warmup = STEPS_PER_EPOCH // 2
    logged = {r["step"]: r["lr"] for r in read_metrics(reference["run"]) if r["kind"] == "train"}
    # the lr a row shows is the one the scheduler set after that step (used by the next step)
    assert logged[1] == pytest.approx(WARMUP_LR + (BASE_LR - WARMUP_LR) / 4, rel=1e-9)  # 7.5075e-4
    assert logged[2] == pytest.approx(0.0015005, rel=1e-9)
    assert logged[warmup] == pytest.approx(BASE_LR, rel=1e-9)  # the peak is reached right after warm-up
    half = warmup + (TOTAL_STEPS - warmup) // 2
    assert logged[half] == pytest.approx(MIN_LR + 0.5 * (BASE_LR - MIN_LR), rel=1e-9)  # halfway through the cosine
    assert logged[TOTAL_STEPS] == pytest.approx(MIN_LR, rel=1e-9)
    for step, lr in logged.items():
        assert lr == pytest.approx(cosine_with_warmup(step, warmup, TOTAL_STEPS), rel=1e-9), step


def _lrs(cfg, steps_per_epoch: int, steps: range) -> list[float]:
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=cfg.optim.lr)
    sched = build_scheduler(cfg, opt, steps_per_epoch)
    out = []
    for t in steps:
        sched.step_update(t)
        out.append(opt.param_groups[0]["lr"])
    return out


def test_build_scheduler_cosine_cooldown_step_and_constant():
    spe = 10
    cfg = tiny_config("train.epochs=4", "schedule.warmup_epochs=1", "schedule.cooldown_epochs=1")
    lrs = _lrs(cfg, spe, range(41))
    for t, lr in enumerate(lrs):
        assert lr == pytest.approx(cosine_with_warmup(t, 10, 30), rel=1e-9), t
    assert lrs[30:] == [pytest.approx(MIN_LR)] * 11  # cool-down at min_lr

    cfg = tiny_config("train.epochs=4", "schedule.name=step", "schedule.warmup_epochs=0",
                      "schedule.decay_epochs=1", "schedule.decay_rate=0.5")
    lrs = _lrs(cfg, spe, range(0, 40, 5))
    assert lrs == [pytest.approx(BASE_LR * 0.5 ** (t // 10), rel=1e-9) for t in range(0, 40, 5)]

    cfg = tiny_config("train.epochs=4", "schedule.name=constant", "schedule.warmup_epochs=0.5")
    lrs = _lrs(cfg, spe, range(0, 40))
    assert lrs[:5] == [pytest.approx(WARMUP_LR + t * (BASE_LR - WARMUP_LR) / 5, rel=1e-9) for t in range(5)]
    assert lrs[5:] == [pytest.approx(BASE_LR, rel=1e-12)] * 35
