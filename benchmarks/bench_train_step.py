"""Training throughput (images/s) of the quickstart model on Fashion-MNIST, fp32 vs bf16 (CPU autocast).

Each precision is timed through the real `Trainer.step` and through a raw loop (forward,
cross-entropy, backward, AdamW) on a copy of the same model and the same batches, so the
trainer's overhead shows as the ratio trainer/raw. All four cases run interleaved in one run.
"""

from __future__ import annotations

import copy
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
from common import (
    CONFIG,
    cycle,
    img_per_s,
    make_trainer,
    measure,
    parser,
    print_table,
    report,
    take_batches,
    trainer_step,
    update,
)

from vitrobust.train import Trainer
from vitrobust.train.loop import autocast

PRECISIONS = ("fp32", "bf16")


def raw_step(trainer: Trainer, batches: list):
    """One call = plain forward/backward/AdamW on a copy of the trainer's model (same weights)."""
    model = copy.deepcopy(trainer.model).train()
    o, precision, device = trainer.cfg.optim, trainer.cfg.train.precision, trainer.device
    opt = torch.optim.AdamW(model.parameters(), lr=o.lr, betas=o.betas, weight_decay=o.weight_decay)
    nxt = cycle(batches)

    def step():
        b = nxt()
        with autocast(device, precision):
            loss = F.cross_entropy(model(b.x).float(), b.y)
        update(opt, loss)

    return step


def main() -> None:
    p = parser(__doc__, "train_step", steps=8, warmup=2, batch_size=128, model=None,
               helps={"steps": "timed steps per case (after warm-up)", "warmup": "untimed steps per case first"})
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
    ips = img_per_s(timings, bs)
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
    report("train_step", result, args.out)


if __name__ == "__main__":
    main()
