"""The least time any AutoAttack engine can take on a model, from its cost per model pass: the floor under
the fast engine's time ratio (issue 13), in fp32 and in bf16.

A point that survives an attack received that attack's whole budget, whatever the engine, so with the
survivors of each attack (robust accuracy after it, `--from-entry`) the passes every engine must run are
known (version standard): APGD-CE, 1 restart of 1 + 100 passes with the gradient; APGD-T, 9 targets of
1 + 100; FAB-T, 9 targets of 1 + 99 (its last iteration only checks); Square, 5,000 forward passes. The
script times one forward and one forward + input-gradient pass per image at the batch each attack runs
(APGD: the points left; FAB-T: 9 rows per point; Square: the points left), as the fast engine runs its
passes (vitrobust.attacks.fast_engine.timed_pass), in fp32 and bf16, and multiplies. FAB-T's count leaves
out the forward passes it needs to check the points it pulls back towards the clean image, so its true
floor lies higher. On the CPU it also reports what a forward pass spends its time on (matrix products
against everything else, torch.profiler), the GFLOP/s of those products (torch.utils.flop_counter), and
the GFLOP/s of one large fp32 matrix product on the same threads: passes near that have nothing left to
win in fp32.
`--device cuda` times the passes on a GPU; the floor ratio divides by the entry's time of the authors'
engine, so take an entry measured on the same device.
"""

from __future__ import annotations

import json
import time

import torch
from common import RESULTS_DIR, merge_entries, print_table
from common import parser as bench_parser
from torch.utils.flop_counter import FlopCounterMode

from vitrobust.attacks.fast_engine import timed_pass
from vitrobust.models.io import load_model

# version standard: (attack, passes per point, pass kind, rows per point in a batch)
BUDGETS = [("apgd-ce", 1 + 100, "grad", 1), ("apgd-t", 9 * (1 + 100), "grad", 1),
           ("fab-t", 9 * (1 + 99), "grad", 9), ("square", 5000, "forward", 1)]
MATMULS = ("aten::addmm", "aten::mm", "aten::bmm", "aten::matmul", "aten::linear")


def matmul_peak(size: int = 2048, repeats: int = 3) -> float:
    """GFLOP/s of the best of `repeats` fp32 products of two size x size matrices (the CPU's practical peak)."""
    a, b, best = torch.rand(size, size), torch.rand(size, size), float("inf")
    a @ b
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * size**3 / best / 1e9


def forward_profile(model, shape, batch: int) -> dict:
    """Share of a forward pass's CPU time in matrix products, and their GFLOP/s (on the CPU)."""
    x = torch.rand(batch, *shape)
    with torch.no_grad():
        model(x)
        with FlopCounterMode(display=False) as counter:
            model(x)
        with torch.profiler.profile() as prof:
            for _ in range(3):
                model(x)
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    mm = sum(e.self_cpu_time_total for e in events if e.key in MATMULS)
    mm_flops = sum(n for op, n in counter.get_flop_counts()["Global"].items() if str(op).replace(".", "::", 1) in MATMULS)
    return {"batch": batch, "matmul_share": mm / total, "matmul_gflop_per_s": mm_flops / (mm / 3 / 1e6) / 1e9,
            "forward_gflop": counter.get_total_flops() / 1e9, "matmul_peak_gflop_per_s": matmul_peak()}


def main() -> None:
    p = bench_parser(__doc__, "attack_floor", threads=1, repeats=3, device="cpu")
    p.add_argument("--model-path", required=True, help="a vitrobust run dir or weights file")
    p.add_argument("--from-entry", required=True, metavar="MODEL",
                   help="the `model` of an entry in results/autoattack_engines.json (its survivors and times)")
    p.add_argument("--setting", default="Linf:0.1", help="that entry's NORM:EPS")
    p.add_argument("--n", type=int, default=500, help="that entry's number of images")
    args = p.parse_args()

    norm, eps = args.setting.split(":")
    entries = json.loads((RESULTS_DIR / "autoattack_engines.json").read_text())["entries"]
    match = [e for e in entries if e["model"] == args.from_entry and e["norm"] == norm
             and abs(e["eps"] - float(eps)) < 1e-9 and e["n"] == args.n and e["version"] == "standard"]
    if not match:
        raise SystemExit(f"no standard entry for {args.from_entry!r} at {args.setting}, n={args.n} in "
                         f"results/autoattack_engines.json; run bench_autoattack.py --engines first")
    entry = match[-1]
    model = load_model(args.model_path).eval().to(args.device)
    shape = tuple(model.input_shape)

    rows, floor = [], {"fp32": 0.0, "bf16": 0.0}
    for attack, passes, kind, per_point in BUDGETS:
        survivors = round(entry["robust_after"]["authors"][attack] * args.n)
        batch = max(survivors * per_point, 1)
        x = torch.rand(batch, *shape, device=args.device)
        cost = {name: timed_pass(model, x, dtype, args.repeats, grad=kind == "grad") / batch
                for name, dtype in (("fp32", None), ("bf16", torch.bfloat16))}
        seconds = {name: survivors * passes * c for name, c in cost.items()}
        for name in floor:
            floor[name] += seconds[name]
        rows.append({"attack": attack, "survivors": survivors, "passes_per_point": passes, "kind": kind,
                     "batch": batch, "ms_per_image": {k: 1e3 * v for k, v in cost.items()},
                     "floor_s": seconds, "fast_engine_s": entry.get("fast_seconds_per_attack", {}).get(attack)})
    authors = entry["seconds"]["authors"]
    profile = forward_profile(model, shape, rows[-1]["batch"]) if args.device == "cpu" else None
    payload = {"model": args.from_entry, "model_path": args.model_path, "setting": args.setting, "n": args.n,
               "attacks": rows, "floor_s": floor, "authors_s": authors, "fast_s": entry["seconds"]["fast"],
               "floor_ratio": {k: v / authors for k, v in floor.items()}, "forward_profile": profile}

    print_table(["attack", "survivors", "passes/pt", "batch", "ms/img fp32", "ms/img bf16", "floor s fp32",
                 "floor s bf16", "fast engine s"],
                [[r["attack"], r["survivors"], r["passes_per_point"], r["batch"], r["ms_per_image"]["fp32"],
                  r["ms_per_image"]["bf16"], r["floor_s"]["fp32"], r["floor_s"]["bf16"], r["fast_engine_s"]]
                 for r in rows], title=f"{args.from_entry} {args.setting}, n={args.n}")
    print(f"\nfloor: fp32 {floor['fp32']:.1f} s, bf16 {floor['bf16']:.1f} s; authors {authors:.1f} s, "
          f"fast {entry['seconds']['fast']:.1f} s -> floor ratio fp32 {floor['fp32'] / authors:.2f}, "
          f"bf16 {floor['bf16'] / authors:.2f}")
    if profile:
        print(f"forward at batch {profile['batch']}: {profile['matmul_share']:.0%} of CPU time in matrix products, "
              f"{profile['matmul_gflop_per_s']:.0f} GFLOP/s there ({profile['forward_gflop']:.2f} GFLOP per pass); "
              f"one 2048 x 2048 fp32 product: {profile['matmul_peak_gflop_per_s']:.0f} GFLOP/s")
    out = merge_entries("attack_floor", [payload], lambda e: (e["model"], e["setting"], e["n"]), args.out)
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
