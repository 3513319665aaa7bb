"""Evaluation throughput of the ImageNet / shift benchmarks against a bare inference loop, same model.

Builds synthetic folder trees in a temporary directory, shaped like the real sets:
- imagenet_val: JPEGs of ImageNet's typical 500x375, resized to 256 and centre-cropped to 224;
- imagenet_a: the same JPEGs under ImageNet-A wnids (adds the 200-logit mask);
- stylized_imagenet: 224x224 JPEGs (no resize);
- objectnet: 640x480 PNGs with a red frame (2-px border crop, then resize/crop; prediction mapping).
Then times, interleaved (common.measure), on the same n images per set:
- `bare`: `model(x).argmax(-1)` under no_grad over float batches already on the device: no file, no
  decoding, no scoring;
- each benchmark as `vitrobust evaluate` runs it (BENCHMARKS[name](model, ctx)): list the folders,
  decode with PIL in data.num_workers worker processes, batch, predict, score;
- `loader only (imagenet_val)`: the BatchLoader of imagenet_val without the model, i.e. the data side alone.
Ratio = benchmark img/s / bare img/s (target >= 0.9: data handling must not dominate). Also printed:
the ratio decoding in series with the model would give, 1 / (1 + bare img/s / loader img/s); workers
beat it only where spare cores exist (a GPU run), on a busy CPU they compete with the model.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np
import torch
from common import img_per_s, measure, parser, print_table, report
from PIL import Image

from vitrobust.config import load_config
from vitrobust.data import BatchLoader, ImageSet
from vitrobust.data.imagenet import Preprocess, imagenet_wnids, load_imagenet_val, resource
from vitrobust.evaluate import BENCHMARKS
from vitrobust.evaluate.core import EvalContext
from vitrobust.models import build_model

TARGET = 0.9
SETS = ("imagenet_val", "imagenet_a", "stylized_imagenet", "objectnet")


def photo(rng: np.random.Generator, size: tuple[int, int], frame: bool = False) -> Image.Image:
    """Smooth random structure plus grain: decodes like a photo, unlike pure noise."""
    w, h = size
    coarse = Image.fromarray(rng.integers(0, 256, (h // 8, w // 8, 3), dtype=np.uint8)).resize(
        size, Image.BICUBIC
    )
    arr = np.asarray(coarse, dtype=np.int16) + rng.integers(-12, 13, (h, w, 3))
    arr = arr.clip(0, 255).astype(np.uint8)
    if frame:
        arr[0, :], arr[-1, :], arr[:, 0], arr[:, -1] = (255, 0, 0), (255, 0, 0), (255, 0, 0), (255, 0, 0)
    return Image.fromarray(arr)


def build_trees(root: Path, n: int, classes: int = 8) -> dict[str, Path]:
    rng = np.random.default_rng(0)
    wnids = imagenet_wnids()
    a_wnids = resource("imagenet_benchmarks.json")["imagenet_a_wnids"]
    mapped = sorted(set(resource("imagenet_benchmarks.json")["objectnet_from_imagenet"].values()))
    objectnet_names = [f"class_{i:03d}" for i in range(313)]
    layout = {
        "imagenet_val": (root / "imagenet" / "val", wnids[::125][:classes], (500, 375), "JPEG"),
        "imagenet_a": (root / "imagenet-a", a_wnids[::25][:classes], (500, 375), "JPEG"),
        "stylized_imagenet": (root / "stylized" / "val", wnids[::125][:classes], (224, 224), "JPEG"),
        "objectnet": (
            root / "objectnet-1.0" / "images",
            [objectnet_names[i] for i in mapped[:classes]],
            (640, 480),
            "PNG",
        ),
    }
    for name, (folder, names, size, fmt) in layout.items():
        for k in range(n):
            path = folder / names[k % len(names)] / f"{k}.{fmt.lower()}"
            path.parent.mkdir(parents=True, exist_ok=True)
            photo(rng, size, frame=name == "objectnet").save(
                path, fmt, **({"quality": 90} if fmt == "JPEG" else {})
            )
    (root / "objectnet-1.0" / "mappings").mkdir()
    (root / "objectnet-1.0" / "mappings" / "folder_to_objectnet_label.json").write_text(
        json.dumps({name: name for name in objectnet_names})
    )
    return {
        "imagenet": root / "imagenet",
        "imagenet_a": root / "imagenet-a",
        "stylized_imagenet": root / "stylized",
        "objectnet": root / "objectnet-1.0",
    }


def main() -> None:
    p = parser(__doc__, "eval_throughput", model="deit_tiny_patch16_224", batch_size=64, threads=None,
               device="cuda" if torch.cuda.is_available() else "cpu", repeats=3, warmup=1,
               helps={"model": "timm model name (1000 classes, random init)"})
    p.add_argument("--images", type=int, default=128, help="images per set and per timed call")
    p.add_argument("--workers", type=int, default=os.cpu_count(), help="data.num_workers (default: all CPUs)")
    args = p.parse_args()
    device = torch.device(args.device)
    spec = {
        "name": args.model,
        "num_classes": 1000,
        "in_chans": 3,
        "img_size": 224,
        "patch_size": None,
        "mean": [0.485, 0.456, 0.406],
        "std": [0.229, 0.224, 0.225],
    }
    model = build_model(spec).to(device).eval()

    with tempfile.TemporaryDirectory() as tmp:
        roots = build_trees(Path(tmp), args.images)
        cfg = load_config(
            None,
            [f"evaluate.shifts.roots.{k}={v}" for k, v in roots.items()]
            + [f"data.num_workers={args.workers}"],
        )
        val = load_imagenet_val(roots["imagenet"], Preprocess(224))
        dummy = ImageSet(
            labels=val.labels[:1],
            classes=val.classes,
            img_size=224,
            in_chans=3,
            mean=val.mean,
            std=val.std,
            images=torch.zeros(1, 3, 224, 224, dtype=torch.uint8),
        )
        ctx = EvalContext(cfg=cfg, data=dummy, device=device, batch_size=args.batch_size)
        xs = [
            torch.stack([val.read(i) for i in range(s, min(s + args.batch_size, len(val)))])
            .to(device)
            .float()
            / 255
            for s in range(0, len(val), args.batch_size)
        ]

        def sync():
            if device.type == "cuda":
                torch.cuda.synchronize()

        def bare():
            with torch.no_grad():
                out = [model(x).argmax(-1) for x in xs]
            sync()
            return out

        def loader_only():
            for _ in BatchLoader(val, args.batch_size, device, train=False, num_workers=args.workers):
                pass
            sync()

        cases = {
            "bare": bare,
            **{name: (lambda name=name: BENCHMARKS[name](model, ctx)) for name in SETS},
            "loader only (imagenet_val)": loader_only,
        }
        timings = measure(cases, warmup=args.warmup, repeats=args.repeats)

    ips = img_per_s(timings, args.images)
    ratios = {name: ips[name] / ips["bare"] for name in SETS}
    serial = 1 / (1 + ips["bare"] / ips["loader only (imagenet_val)"])
    title = (
        f"evaluation throughput: {args.model}, {args.images} images per set, batch {args.batch_size}, "
        f"{args.workers} workers, {args.device}, median of {args.repeats} rounds"
    )
    print_table(
        ["case", "img/s", "/ bare", "target", "ok"],
        [
            [
                name,
                v,
                ratios.get(name, ""),
                f">= {TARGET}" if name in ratios else "",
                ("yes" if ratios[name] >= TARGET else "NO") if name in ratios else "",
            ]
            for name, v in ips.items()
        ],
        title=title,
    )
    print(f"imagenet_val ratio if decoding ran in series with the model: {serial:.3f}")
    result = {
        "model": args.model,
        "images": args.images,
        "batch_size": args.batch_size,
        "workers": args.workers,
        "device": args.device,
        "repeats": args.repeats,
        "img_per_s": ips,
        "ratios": ratios,
        "serial_ratio_imagenet_val": serial,
        "target": TARGET,
        "meets_target": {k: v >= TARGET for k, v in ratios.items()},
        "timings": timings,
    }
    report("eval_throughput", result, args.out)


if __name__ == "__main__":
    main()
