"""Ctrl-C: one line saying what was kept and how to go on, exit code 130, and the work kept
(vitrobust/cli.py main; the checkpoints and progress files it relies on are tested with their modules)."""

from __future__ import annotations

import signal
import subprocess
import time

import pytest
from helpers_train import TINY, child_env, set_args, vitrobust_cmd

import vitrobust.cli as cli
from vitrobust.train.trainer import STATE_FILE


def interrupt(*_args, **_kwargs):
    raise KeyboardInterrupt


@pytest.mark.parametrize("argv, fn, needles", [
    (["train", "quickstart/baseline", "--out", "{tmp}/run"], "cmd_train",
     ["{tmp}/run keeps its last checkpoint", "vitrobust train quickstart/baseline --out {tmp}/run --resume"]),
    (["tokenizer", "train", "quickstart/tokenizer", "--out", "{tmp}/tok"], "cmd_tokenizer",
     ["{tmp}/tok keeps its last checkpoint", "vitrobust tokenizer train quickstart/tokenizer --out {tmp}/tok --resume"]),
    (["evaluate", "{tmp}/run"], "cmd_evaluate", ["results.json keeps every benchmark that finished", "same command"]),
    (["quickstart", "--out", "{tmp}/qs"], "cmd_quickstart", ["finished runs and results are kept", "vitrobust quickstart"]),
    (["import", "x.pth", "--out", "{tmp}/x.safetensors"], "cmd_import", ["nothing was written"]),
    (["report", "{tmp}/run"], "cmd_report", ["run the same command again"]),
])
def test_ctrl_c_prints_one_line_and_exits_130(tmp_path, monkeypatch, capsys, argv, fn, needles):
    monkeypatch.setattr(cli, fn, interrupt)
    rc = cli.main([a.format(tmp=tmp_path) for a in argv])
    err = capsys.readouterr().err
    assert rc == cli.INTERRUPTED == 130
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("interrupted: ") and "Traceback" not in err
    for needle in needles:
        assert needle.format(tmp=tmp_path) in lines[0]


@pytest.mark.slow
def test_sigint_during_training_keeps_the_checkpoint_and_resume_finishes(tmp_path):
    run_dir = tmp_path / "run"
    overrides = [*TINY, "data.train_subset=64", "train.epochs=40", "train.checkpoint_every_steps=1"]
    cmd = [*vitrobust_cmd(), "train", "quickstart/baseline", "--out", str(run_dir), *set_args(overrides),
           "--no-progress"]
    # A job started in the background by a shell inherits SIGINT ignored (and Python then leaves it so):
    # give the child the default disposition, as a terminal's foreground process has.
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 240
    while not (run_dir / STATE_FILE).is_file() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "training ended before it could be interrupted"
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and [line for line in err.splitlines() if line.strip()][-1].startswith(
        "interrupted: ") and "--resume" in err
    assert (run_dir / STATE_FILE).is_file() and not list(run_dir.glob("*.tmp*"))
    resumed = subprocess.run([*cmd, "--resume"], cwd=tmp_path, env=child_env(), capture_output=True, text=True,
                             timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    assert (run_dir / "model.safetensors").is_file()
