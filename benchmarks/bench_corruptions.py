"""Corrupted-set generation throughput: images/s per corruption at 32 and 224 px, 0 vs N workers.

Each case is one `CorruptionPool.corrupt(name, severity)` call over a fixed set of random images
(`--n32` / `--n224` per call) at severity 3; pools are started once, outside the timing (their
start-up is timed separately). All cases run interleaved (common.measure), so the worker speed-up
ratios hold on a busy machine. Also reports the time one full 15 x 5 corrupted set of n images would
take at the measured rates.
"""

from __future__ import annotations

import time

import numpy as np
import torch
from common import img_per_s, measure, parser, print_table, report

from vitrobust.data.corruptions import COMMON, GROUPS, CorruptionPool, corruption_names


def main() -> None:
    p = parser(__doc__, "corruptions", repeats=3, warmup=1)
    p.add_argument("--names", default="all", help="corruptions: common, extra, all, or comma-separated names")
    p.add_argument("--sizes", default="32,224", help="image sizes in px")
    p.add_argument("--n32", type=int, default=64, help="images per call at sizes below 100 px")
    p.add_argument("--n224", type=int, default=8, help="images per call at larger sizes")
    p.add_argument("--workers", type=int, default=2, help="worker processes of the parallel case")
    p.add_argument("--severity", type=int, default=3)
    args = p.parse_args()

    names = corruption_names(args.names if args.names in GROUPS else args.names.split(","))
    sizes = [int(s) for s in args.sizes.split(",")]
    rng = np.random.default_rng(0)
    pools, cases, images, startup = [], {}, {}, {}
    for size in sizes:
        n = args.n32 if size < 100 else args.n224
        clean = torch.from_numpy(rng.integers(0, 256, (n, 3, size, size), dtype=np.uint8))
        for workers in (0, args.workers):
            t0 = time.perf_counter()
            pool = CorruptionPool(clean, workers=workers)
            startup[f"{size}px w{workers}"] = time.perf_counter() - t0
            pools.append(pool)
            for name in names:
                key = f"{size}px {name} w{workers}"
                cases[key] = lambda pool=pool, name=name: pool.corrupt(name, args.severity, seed=0)
                images[key] = n
    try:
        timings = measure(cases, warmup=args.warmup, repeats=args.repeats)
    finally:
        for pool in pools:
            pool.close()

    ips = img_per_s(timings, images)
    rows, per_size = [], {}
    for size in sizes:
        for name in names:
            serial, parallel = ips[f"{size}px {name} w0"], ips[f"{size}px {name} w{args.workers}"]
            rows.append([f"{size}px {name}", serial, parallel, parallel / serial])
        # a full set: every common corruption at 5 severities; seconds per image summed over corruptions
        common = [n for n in names if n in COMMON]
        per_size[size] = {
            f"w{w}": 5 * sum(1 / ips[f"{size}px {n} w{w}"] for n in common) for w in (0, args.workers)
        }
    title = (
        f"corrupted-set generation, severity {args.severity}, median of {args.repeats} interleaved rounds "
        f"(img/s; {args.workers} workers vs in-process)"
    )
    print_table(["case", "w0 img/s", f"w{args.workers} img/s", "speed-up"], rows, title=title)
    print()
    print_table(
        ["size", "s/image for all common x 5 (w0)", f"(w{args.workers})"],
        [[f"{s}px", v["w0"], v[f"w{args.workers}"]] for s, v in per_size.items()],
        title=f"one image through the {sum(n in COMMON for n in names)} common corruptions x 5 severities",
    )
    print("\npool start-up (s): " + ", ".join(f"{k} {v:.3f}" for k, v in startup.items()))
    result = {
        "names": names,
        "sizes": sizes,
        "n32": args.n32,
        "n224": args.n224,
        "workers": args.workers,
        "severity": args.severity,
        "repeats": args.repeats,
        "warmup": args.warmup,
        "img_per_s": ips,
        "seconds_per_image_full_set": {str(k): v for k, v in per_size.items()},
        "pool_startup_s": startup,
        "timings": timings,
    }
    report("corruptions", result, args.out)


if __name__ == "__main__":
    main()
