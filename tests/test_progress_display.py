"""Long work shows a bar on a terminal and a plain line now and then in a log file, never a flood of
carriage returns (train/loop.EpochProgress, used by both trainers)."""

from __future__ import annotations

import pytest
from helpers_train import STEPS_PER_EPOCH, tiny_config

import vitrobust.train.loop as loop
from vitrobust.train import train

pytestmark = pytest.mark.usefixtures("one_thread")


def test_a_log_file_gets_lines_not_bars(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(loop, "LINE_EVERY_S", 0.0)  # a line after every step
    train(tiny_config("train.epochs=1"), tmp_path / "run", progress=True)
    out, err = capsys.readouterr()  # not a terminal
    assert "\r" not in out + err and "it/s" not in err
    steps = [line for line in out.splitlines() if line.startswith("epoch 1/1 step ")]
    assert [line.split()[3] for line in steps] == [f"{k}/{STEPS_PER_EPOCH}" for k in range(1, STEPS_PER_EPOCH + 1)]
    assert "loss" in steps[-1]


def test_a_terminal_gets_a_bar(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(loop.sys.stderr, "isatty", lambda: True)
    train(tiny_config("train.epochs=1"), tmp_path / "run", progress=True)
    out, err = capsys.readouterr()
    assert "it/s" in err and "\r" in err and not [line for line in out.splitlines() if " step " in line]
