"""Data-loading and evaluation throughput, set against the quickstart model in the same run.

- loading: images/s of iterating `BatchLoader` over Fashion-MNIST train (train mode), without
  augmentation and with crop=pad + hflip, and the fraction of a training step that loading a
  batch costs (step time per image / load time per image; target: small, < 0.05);
- evaluation: images/s of `vitrobust.evaluate.core.clean` vs a bare `torch.no_grad()` loop over
  pre-made float tensors, same model, images and batch size (ratio clean/bare; target >= 0.9).

All cases run interleaved (see common.measure), so the ratios hold on a busy machine.
"""

from __future__ import annotations

import copy
import itertools
import tempfile
from pathlib import Path

import torch
from common import (
    fashion_mnist,
    img_per_s,
    make_trainer,
    measure,
    parser,
    print_table,
    report,
    take_batches,
    trainer_step,
)

from vitrobust.data import BatchLoader
from vitrobust.evaluate.core import EvalContext, clean

AUGMENT = ["augment.crop=pad", "augment.hflip=true"]
LOAD_TARGET, EVAL_TARGET = 0.05, 0.9


def loader_pass(trainer, augment: bool, batches: int):
    """One call = `batches` batches of a train-mode BatchLoader (as the Trainer builds it)."""
    cfg = trainer.cfg.model_copy(deep=True)
    if augment:
        cfg.augment.crop, cfg.augment.hflip = "pad", True
    loader = BatchLoader(trainer.train_set, cfg.data.batch_size, trainer.device, train=True,
                         img_size=cfg.data.img_size, augment=cfg.augment, seed=cfg.seed)
    loader.set_epoch(0)  # required before iterating with augmentation (see README)

    def run():
        for _ in itertools.islice(loader, batches):
            pass

    return run


def eval_cases(trainer, n_images: int, batch_size: int):
    """`clean(model, ctx)` and a bare no_grad loop over the same first n test images."""
    model = copy.deepcopy(trainer.model).eval()
    data = fashion_mnist("test", n_images, trainer.cfg.data)
    ctx = EvalContext(cfg=trainer.cfg, data=data, device=trainer.device, batch_size=batch_size)
    xs = (data.images.float() / 255).split(batch_size)

    def bare():
        with torch.no_grad():
            return [model(x).argmax(-1) for x in xs]

    return {"eval clean()": lambda: clean(model, ctx), "eval bare no_grad": bare}, len(data)


def main() -> None:
    p = parser(__doc__, "data", repeats=6, warmup=1, batch_size=128, model=None,
               helps={"batch_size": "training batch size"})
    p.add_argument("--load-batches", type=int, default=25, help="loader batches per timed call")
    p.add_argument("--eval-images", type=int, default=1000, help="test images per evaluation call")
    p.add_argument("--eval-batch-size", type=int, default=None, help="default: the config's (1000)")
    args = p.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        trainer = make_trainer(Path(tmp), "fp32", args.batch_size, args.model)
        ebs = args.eval_batch_size or trainer.cfg.data.eval_batch_size
        evals, n_eval = eval_cases(trainer, args.eval_images, ebs)
        cases = {
            "load plain": loader_pass(trainer, False, args.load_batches),
            "load crop=pad+hflip": loader_pass(trainer, True, args.load_batches),
            "train step fp32": trainer_step(trainer, take_batches(trainer, 4)),
            **evals,
        }
        timings = measure(cases, warmup=args.warmup, repeats=args.repeats)
        model_name = trainer.cfg.model.name

    bs = args.batch_size
    images = {"load plain": bs * args.load_batches, "load crop=pad+hflip": bs * args.load_batches,
              "train step fp32": bs, "eval clean()": n_eval, "eval bare no_grad": n_eval}
    ips = img_per_s(timings, images)
    step = ips["train step fp32"]
    ratios = {
        "load plain / step": step / ips["load plain"],
        "load crop=pad+hflip / step": step / ips["load crop=pad+hflip"],
        "eval clean / bare": ips["eval clean()"] / ips["eval bare no_grad"],
    }
    title = (f"data + eval: {model_name}, Fashion-MNIST, train batch {bs}, eval batch {ebs}, "
             f"median of {args.repeats} rounds (CPU)")
    print_table(["case", "img/s"], [[name, v] for name, v in ips.items()], title=title)
    print()
    targets = {"load plain / step": f"< {LOAD_TARGET}", "load crop=pad+hflip / step": f"< {LOAD_TARGET}",
               "eval clean / bare": f">= {EVAL_TARGET}"}
    ok = {k: (v < LOAD_TARGET) if k.startswith("load") else (v >= EVAL_TARGET) for k, v in ratios.items()}
    print_table(["ratio", "value", "target", "ok"], [[k, v, targets[k], "yes" if ok[k] else "NO"]
                                                    for k, v in ratios.items()])

    result = {
        "model": model_name, "batch_size": bs, "eval_batch_size": ebs, "load_batches": args.load_batches,
        "eval_images": n_eval, "repeats": args.repeats, "warmup": args.warmup, "img_per_s": ips,
        "ratios": ratios, "targets": targets, "meets_target": ok, "timings": timings,
    }
    report("data", result, args.out)


if __name__ == "__main__":
    main()
