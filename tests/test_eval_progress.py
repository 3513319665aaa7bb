"""Long evaluation passes save their predictions as they go and resume after an interruption
(evaluate/progress.py, core.predict with a key); AutoAttack's timed pieces are tested in test_autoattack.py."""

from __future__ import annotations

import os
import time

import pytest
import torch

from vitrobust.config import load_config
from vitrobust.data import ImageSet
from vitrobust.evaluate.core import EvalContext, predict
from vitrobust.evaluate.progress import clear, progress_dir

N, SIZE = 22, 8


class Counting(torch.nn.Module):
    """A fixed linear classifier that counts the images it sees and can be made to fail after k batches."""

    def __init__(self, fail_after: int | None = None):
        super().__init__()
        torch.manual_seed(0)
        self.fc = torch.nn.Linear(SIZE * SIZE, 5)
        self.seen, self.batches, self.fail_after = 0, 0, fail_after

    def forward(self, x):
        if self.fail_after is not None and self.batches == self.fail_after:
            raise KeyboardInterrupt("killed")
        self.batches += 1
        self.seen += len(x)
        return self.fc(x.flatten(1))


def context(tmp_path, seconds: float = 1e-9) -> EvalContext:
    images = torch.randint(0, 256, (N, 1, SIZE, SIZE), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    data = ImageSet(labels=torch.arange(N) % 5, classes=list("abcde"), img_size=SIZE, in_chans=1, mean=(0.5,),
                    std=(0.5,), images=images)
    cfg = load_config(None, [f"evaluate.checkpoint_seconds={seconds}"])
    return EvalContext(cfg=cfg, data=data, device=torch.device("cpu"), out_dir=tmp_path / "figures", batch_size=4)


@torch.no_grad()
def test_an_interrupted_pass_resumes_with_the_images_it_had_not_reached(tmp_path):
    ctx = context(tmp_path)
    reference, labels = predict(Counting().eval(), ctx)
    key = {"benchmark": "corruptions", "corruption": "contrast", "severity": 3}
    killed = Counting(fail_after=3).eval()  # 3 batches of 4 done and saved, then killed
    with pytest.raises(KeyboardInterrupt):
        predict(killed, ctx, key=key)
    assert len(list(progress_dir(ctx.out_dir).glob("predictions-*.pt"))) == 1
    again = Counting().eval()
    preds, got_labels = predict(again, ctx, key=key)
    assert again.seen == N - 12  # only what the killed pass had not reached
    assert torch.equal(preds, reference) and torch.equal(got_labels, labels)
    other = Counting().eval()
    predict(other, ctx, key={**key, "severity": 4})  # another pass never reads this pass's file
    assert other.seen == N
    changed = Counting().eval()
    with torch.no_grad():
        changed.fc.weight.add_(1.0)
    predict(changed, ctx, key=key)  # other weights: other predictions, nothing reused
    assert changed.seen == N
    clear(ctx.out_dir)
    assert not list(progress_dir(ctx.out_dir).glob("predictions-*.pt"))


@torch.no_grad()
def test_without_a_key_or_before_the_interval_nothing_is_written(tmp_path):
    ctx = context(tmp_path, seconds=3600)
    predict(Counting().eval(), ctx)
    predict(Counting().eval(), ctx, key={"benchmark": "x"})  # saved once at the end of the pass only
    files = list(progress_dir(ctx.out_dir).glob("predictions-*.pt"))
    assert len(files) == 1
    killed = Counting(fail_after=2).eval()
    with pytest.raises(KeyboardInterrupt):
        predict(killed, context(tmp_path / "b", seconds=3600), key={"benchmark": "x"})
    assert not (tmp_path / "b" / "figures" / "progress").exists()  # the interval had not passed: no file yet


def test_run_suite_deletes_a_benchmarks_saved_passes_once_its_result_is_stored(tmp_path, monkeypatch):
    from vitrobust.evaluate.core import BENCHMARKS, Benchmark, run_suite

    ctx = context(tmp_path)
    stored = {}

    def keyed(model, ctx):  # a benchmark whose pass saves its predictions as it goes
        preds, labels = predict(model, ctx, key={"benchmark": "keyed"})
        assert list(progress_dir(ctx.out_dir).glob("predictions-*.pt"))  # saved while running
        return {"top1": (preds == labels).float().mean().item(), "n": len(labels)}

    def on_result(name, entry):
        assert list(progress_dir(ctx.out_dir).glob("predictions-*.pt"))  # still there until stored
        stored[name] = entry

    def later(path):  # another rank's pass, begun after this benchmark ended
        path.touch()
        os.utime(path, (time.time() + 5, time.time() + 5))

    monkeypatch.setitem(BENCHMARKS._entries, "keyed", Benchmark("keyed", keyed))
    newer = progress_dir(ctx.out_dir) / "predictions-later.rank1.pt"
    newer.parent.mkdir(parents=True)
    results = run_suite(Counting().eval(), "keyed", ctx, on_result=lambda n, e: (on_result(n, e), later(newer)))
    assert stored["keyed"] is results["keyed"] and results["keyed"]["n"] == N
    assert [p.name for p in progress_dir(ctx.out_dir).glob("predictions-*.pt")] == [newer.name]  # begun since: kept
