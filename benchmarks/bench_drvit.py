"""Dr.ViT's cost over the plain ViT of the same size: forward (and training step) time, FLOPs, parameters.

The fusion model (`drvit_<size>`), the discrete-only model (`drvit_discrete_<size>`) and the plain ViT
(`vit_<size>` for the 32-px sizes, timm's `vit_<size>` at 224) are timed interleaved in one run, so
the ratios hold on a busy machine. FLOPs come from PyTorch's flop counter (a multiply-add counts 2)
and split the cost into tokenizer encoder and transformer. The tokenizer is the registry's default
layout (random weights: its cost does not depend on them).
"""

from __future__ import annotations

import warnings

import timm
import torch
import torch.nn.functional as F
from common import img_per_s, measure, parser, print_table, report, update
from torch.utils.flop_counter import FlopCounterMode

import vitrobust  # noqa: F401  (registers the Dr.ViTs and small ViTs in timm)
from vitrobust.models.drvit import SIZES


def flops_per_image(model: torch.nn.Module, x: torch.Tensor) -> int:
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x[:1])
    return int(counter.get_total_flops())


def forward(model, x):
    def run():
        with torch.no_grad():
            model(x)
    return run


def train_step(model, x, y):
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

    def run():
        update(opt, F.cross_entropy(model(x), y))
    return run


def main() -> None:
    p = parser(__doc__, "drvit_<size>", batch_size=128, steps=6, warmup=2, no_train=False, device="cpu",
               helps={"steps": "timed calls per case", "no_train": "time the forward pass only"})
    p.add_argument("--size", default="pico_patch8_32", choices=sorted(SIZES), help="model size (default: quickstart's)")
    p.add_argument("--in-chans", type=int, default=1, help="1 for Fashion-MNIST (default), 3 for RGB")
    args = p.parse_args()

    img = SIZES[args.size][0]
    device = torch.device(args.device)
    names = {"vit": f"vit_{args.size}", "drvit": f"drvit_{args.size}", "drvit_discrete": f"drvit_discrete_{args.size}"}
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the random-tokenizer warning: expected here
        models = {k: timm.create_model(n, in_chans=args.in_chans).to(device).eval() for k, n in names.items()}
    x = torch.rand(args.batch_size, args.in_chans, img, img, device=device)
    y = torch.randint(0, models["vit"].num_classes, (args.batch_size,), device=device)

    tokenizer = models["drvit"].tokenizer
    flops = {k: flops_per_image(m, x) for k, m in models.items()}
    flops["tokenizer"] = flops_per_image(tokenizer.encode, x)
    params = {k: {"trainable": sum(q.numel() for q in m.parameters() if q.requires_grad),
                  "total": sum(q.numel() for q in m.parameters())} for k, m in models.items()}

    cases = {f"forward {k}": forward(m, x) for k, m in models.items()}
    cases["forward tokenizer"] = forward(tokenizer.encode, x)
    if not args.no_train:
        for k, m in models.items():
            cases[f"train {k}"] = train_step(m.train(), x, y)
    timings = measure(cases, warmup=args.warmup, repeats=args.steps)

    def ratio(kind: str, k: str) -> float:
        return timings[f"{kind} {k}"]["median_s"] / timings[f"{kind} vit"]["median_s"]

    rows = []
    for k in (*models, "tokenizer"):
        row = [names.get(k, "tokenizer.encode"), params.get(k, {}).get("trainable", ""), flops[k] / 1e9,
               flops[k] / flops["vit"], args.batch_size / timings[f"forward {k}"]["median_s"], ratio("forward", k)]
        if not args.no_train:
            row += [ratio("train", k) if k in models else ""]
        rows.append(row)
    header = ["model", "trainable params", "GFLOPs/img", "FLOPs/ViT", "fwd img/s", "fwd time/ViT"]
    print_table(header + ([] if args.no_train else ["train time/ViT"]), rows,
                title=f"Dr.ViT vs ViT, {args.size}, {args.in_chans}x{img}x{img}, batch {args.batch_size}, "
                      f"median of {args.steps} ({device.type}, tokenizer f={tokenizer.downsample} "
                      f"{tokenizer.n_embed}x{tokenizer.embed_dim})")

    result = {
        "size": args.size, "models": names, "batch_size": args.batch_size, "in_chans": args.in_chans,
        "steps": args.steps, "warmup": args.warmup, "device": str(device), "tokenizer_arch": tokenizer.arch,
        "flops_per_image": flops, "params": params,
        "img_per_s": img_per_s(timings, args.batch_size),
        "forward_time_over_vit": {k: ratio("forward", k) for k in (*models, "tokenizer")},
        "train_time_over_vit": {} if args.no_train else {k: ratio("train", k) for k in models},
        "flops_over_vit": {k: flops[k] / flops["vit"] for k in flops},
        "timings": timings,
    }
    report(f"drvit_{args.size}", result, args.out)


if __name__ == "__main__":
    main()
