"""Does decoding keep up with training? JPEG decoding of a class-folder dataset at 224 px, per worker,
against the training throughput of ViT-S/16 at 224 px, measured in the same run.

- decode: images/s of one worker reading a lazy `imagefolder` split (the FolderReader a DataLoader
  worker runs: open, convert, resize the shorter side, centre crop), on generated JPEGs of ImageNet's
  typical size (500 x 375, quality 90);
- decode from shards: the same JPEGs written by `vitrobust data shard` and streamed by one worker the
  way `data.name=webdataset` trains (tar read, shuffle buffer, decode, batches of --batch-size);
- train: images/s of one optimizer step of `vit_small_patch16_224` (timm, AdamW, fp32 or bf16 autocast)
  on a batch of 224-px images on this device.

The ratio train/decode is the number of decoding workers (data.num_workers) training needs so that
loading never waits; the run prints it. On this CPU the step is slow, so one worker suffices; on a GPU
the same per-worker decode rate tells how many workers a node needs.
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

import numpy as np
import timm
import torch
from common import img_per_s, measure, parser, print_table, report, update
from PIL import Image

from vitrobust.data.folders import load_image_folder
from vitrobust.data.shard_writer import write_shards
from vitrobust.data.shards import load_webdataset

SIZE, WIDTH, HEIGHT, QUALITY = 224, 500, 375, 90


def write_jpegs(root: Path, n: int, classes: int = 4) -> None:
    """n smooth random JPEGs (low-frequency noise, so they compress like photos), in class folders."""
    rng = np.random.default_rng(0)
    for i in range(n):
        coarse = rng.integers(0, 256, size=(HEIGHT // 25 + 1, WIDTH // 25 + 1, 3), dtype=np.uint8)
        img = Image.fromarray(coarse).resize((WIDTH, HEIGHT), Image.BICUBIC)
        folder = root / "train" / f"class{i % classes}"
        folder.mkdir(parents=True, exist_ok=True)
        img.save(folder / f"{i:05d}.jpg", quality=QUALITY)


def main() -> None:
    p = parser(__doc__, "decode", repeats=3, warmup=1, batch_size=32, device="cpu",
               helps={"batch_size": "training batch size of the ViT-S/16 step"})
    p.add_argument("--images", type=int, default=64, help="JPEGs decoded per timed call")
    p.add_argument("--precision", choices=["fp32", "bf16"], default="bf16", help="autocast of the training step")
    args = p.parse_args()
    device = torch.device(args.device)

    with tempfile.TemporaryDirectory() as tmp:
        write_jpegs(Path(tmp), args.images)
        data = load_image_folder("train", root=tmp, img_size=SIZE, in_memory=False)

        def decode():
            for i in range(len(data)):
                data.read(i)

        write_shards(tmp, Path(tmp) / "shards", shard_size=max(1, args.images // 2))
        sharded = load_webdataset("train", root=str(Path(tmp) / "shards"), img_size=SIZE, in_memory=False)
        share = min(args.batch_size, args.images // 2)
        streamed = args.images // share * share

        def stream():
            for _ in sharded.stream.batches(epoch=0, skip=0, seed=0, rank=0, world=1, num_workers=0, share=share):
                pass

        model = timm.create_model("vit_small_patch16_224", num_classes=1000).to(device).train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        x = torch.rand(args.batch_size, 3, SIZE, SIZE, device=device)
        y = torch.randint(0, 1000, (args.batch_size,), device=device)
        dtype = torch.bfloat16 if args.precision == "bf16" else torch.float32

        def step():
            with torch.autocast(device.type, dtype=dtype, enabled=args.precision == "bf16"):
                loss = torch.nn.functional.cross_entropy(model(x), y)
            update(opt, loss)

        timings = measure({"decode (1 worker)": decode, "decode from shards (1 worker)": stream,
                           f"train step ViT-S/16 {args.precision}": step}, warmup=args.warmup, repeats=args.repeats)
    ips = img_per_s(timings, {"decode (1 worker)": args.images, "decode from shards (1 worker)": streamed,
                              f"train step ViT-S/16 {args.precision}": args.batch_size})
    decode_rate, train_rate = ips["decode (1 worker)"], ips[f"train step ViT-S/16 {args.precision}"]
    workers = max(1, math.ceil(train_rate / decode_rate))
    print_table(["case", "img/s"], [[k, v] for k, v in ips.items()],
                title=f"JPEG {WIDTH}x{HEIGHT} -> {SIZE} px decode vs ViT-S/16 training ({device}), "
                      f"median of {args.repeats}")
    print(f"\ntrain / decode = {train_rate / decode_rate:.2f}: data.num_workers >= {workers} keeps training fed")
    report("decode", {"img_per_s": ips, "train_over_decode": train_rate / decode_rate, "workers_needed": workers,
                      "images": args.images, "batch_size": args.batch_size, "precision": args.precision,
                      "device": str(device), "timings": timings}, args.out)


if __name__ == "__main__":
    main()
