"""Training throughput (images/s) of the quickstart model on Fashion-MNIST, fp32 vs bf16 (CPU autocast).

Each precision is timed through the real `Trainer._step` and through a raw loop (forward,
cross-entropy, backward, AdamW) on a copy of the same model and the same batches, so the
trainer's overhead shows as the ratio trainer/raw. All four cases run interleaved in one run.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
from common import measure, print_table, write_result

from vitrobust.config import load_config
from vitrobust.train.trainer import Trainer, autocast

CONFIG = "quickstart/baseline"
PRECISIONS = ("fp32", "bf16")


def make_trainer(run_dir: Path, precision: str = "fp32", batch_size: int = 128, model: str | None = None,
                 extra: list[str] | None = None) -> Trainer:
    overrides = ["device=cpu", f"train.precision={precision}", f"data.batch_size={batch_size}", *(extra or [])]
    if model:
        overrides.append(f"model.name={model}")
    return Trainer(load_config(CONFIG, overrides), run_dir, progress=False)


def take_batches(trainer: Trainer, n: int) -> list:
    trainer.loader.set_epoch(0)
    return list(itertools.islice(trainer.loader, n))


def _cycle(batches: list):
    it = itertools.cycle(batches)
    return lambda: next(it)


def trainer_step(trainer: Trainer, batches: list):
    """One call = one `Trainer._step` on the next batch."""
    nxt = _cycle(batches)
    return lambda: trainer._step(nxt())


def raw_step(trainer: Trainer, batches: list):
    """One call = plain forward/backward/AdamW on a copy of the trainer's model (same weights)."""
    model = copy.deepcopy(trainer.model).train()
    o, precision, device = trainer.cfg.optim, trainer.cfg.train.precision, trainer.device
    opt = torch.optim.AdamW(model.parameters(), lr=o.lr, betas=o.betas, weight_decay=o.weight_decay)
    nxt = _cycle(batches)

    def step():
        b = nxt()
        with autocast(device, precision):
            loss = F.cross_entropy(model(b.x).float(), b.y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=8, help="timed steps per case (after warm-up)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per case first")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--model", default=None, help="model name (default: the quickstart model)")
    p.add_argument("--out", default=None, help="JSON path (default: benchmarks/results/train_step.json)")
    args = p.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        trainers = {prec: make_trainer(Path(tmp) / prec, prec, args.batch_size, args.model) for prec in PRECISIONS}
        batches = take_batches(trainers["fp32"], args.steps + args.warmup)
        cases = {}
        for prec, trainer in trainers.items():
            cases[f"trainer {prec}"] = trainer_step(trainer, batches)
            cases[f"raw {prec}"] = raw_step(trainer, batches)
        timings = measure(cases, warmup=args.warmup, repeats=args.steps)
        model_name = trainers["fp32"].cfg.model.name

    bs = len(batches[0])
    ips = {name: bs / t["median_s"] for name, t in timings.items()}
    rows = [[prec, ips[f"trainer {prec}"], ips[f"raw {prec}"], ips[f"trainer {prec}"] / ips[f"raw {prec}"]]
            for prec in PRECISIONS]
    bf16_vs_fp32 = {k: ips[f"{k} bf16"] / ips[f"{k} fp32"] for k in ("trainer", "raw")}
    rows.append(["bf16/fp32", bf16_vs_fp32["trainer"], bf16_vs_fp32["raw"], ""])
    print_table(["precision", "trainer img/s", "raw img/s", "trainer/raw"], rows,
                title=f"train step: {model_name}, Fashion-MNIST, batch {bs}, median of {args.steps} steps (CPU)")

    result = {
        "config": CONFIG, "model": model_name, "batch_size": bs, "steps": args.steps, "warmup": args.warmup,
        "img_per_s": ips, "trainer_over_raw": {prec: row[3] for prec, row in zip(PRECISIONS, rows)},
        "bf16_over_fp32": bf16_vs_fp32, "timings": timings,
    }
    print(f"\nwrote {write_result('train_step', result, args.out)}")


if __name__ == "__main__":
    main()
