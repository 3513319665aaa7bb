"""Tokenizer throughput (images/s): encode, reconstruct, and a training step, per layout.

`encode` is what Dr.ViT pays per forward, `reconstruct` what DAT pays per adversarial example,
`train step` (forward, losses, backward, Adam; EMA codebook) what `vitrobust tokenizer train`
pays per image. All cases run interleaved in one run. Published layouts are big on a CPU: ask
for them with --presets and a small --batch.
"""

from __future__ import annotations

import torch
from common import img_per_s, measure, parser, print_table, report

from vitrobust.config import TokenizerConfig, load_config
from vitrobust.models.vqgan import PRESETS, build_tokenizer
from vitrobust.tokenizer.model import TrainingTokenizer

SIZES = {"vq_f4_32px": 32, "vqgan_imagenet_f16_1024": 224, "vqgan_openimages_f8_16384": 224}


def cases_for(preset: str, batch: int, train: bool) -> dict:
    torch.manual_seed(0)
    tok = build_tokenizer(preset).eval()
    x = torch.rand(batch, tok.in_chans, SIZES[preset], SIZES[preset])
    out = {f"{preset} encode": lambda: tok.encode(x)}

    def reconstruct():
        with torch.no_grad():
            tok.reconstruct(x)

    out[f"{preset} reconstruct"] = reconstruct
    if train:
        shipped = load_config("quickstart/tokenizer").tokenizer
        trainee = build_tokenizer(preset).train()
        model = TrainingTokenizer(trainee, TokenizerConfig(**{**shipped.model_dump(), "kmeans_init": False}))
        opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], 1e-3)

        def step():
            loss, _ = model(x)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        out[f"{preset} train step"] = step
    return out


def main() -> None:
    p = parser(__doc__, "tokenizer", batch_size=64, repeats=5, warmup=1, no_train=False)
    p.add_argument("--presets", default="vq_f4_32px", help=f"comma-separated, from {', '.join(PRESETS)}")
    args = p.parse_args()

    presets = [name.strip() for name in args.presets.split(",") if name.strip()]
    cases = {}
    for preset in presets:
        cases.update(cases_for(preset, args.batch_size, train=not args.no_train))
    timings = measure(cases, warmup=args.warmup, repeats=args.repeats)
    ips = img_per_s(timings, args.batch_size)
    rows = [[name, SIZES[name.split()[0]], ips[name]] for name in cases]
    print_table(["case", "px", "img/s"], rows,
                title=f"tokenizer throughput, batch {args.batch_size}, median of {args.repeats}, "
                      f"{torch.get_num_threads()} threads")
    result = {"presets": presets, "batch": args.batch_size, "repeats": args.repeats, "img_per_s": ips, "timings": timings}
    report("tokenizer", result, args.out)


if __name__ == "__main__":
    main()
