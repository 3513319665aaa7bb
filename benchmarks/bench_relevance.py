"""Relevance maps per second (one autograd.grad call vs the reference's one call per block) and the cost
of a RobustViT fine-tuning step relative to a standard step.

Maps: the same model and images through three implementations, interleaved in one `measure` call:
- `single call`: vitrobust.explain (every block's attention gradient from ONE autograd.grad call; the
  CLS row of R carried from the last block down);
- `per-block calls`: the same, but one autograd.grad call per block;
- `reference`: the reference's algorithm (one call per block and the full N x N matrix R).
The script asserts that all three give the same maps (up to float rounding) before it times them.

Step: `Trainer.step` of the quickstart config with threshold masks, objective standard vs relevance,
same batches, interleaved; the ratio is the relevance median over the standard median. A relevance step
is one forward, one autograd.grad through the network down to the first block's attention, and a
backward through both, so its target is <= 3x a standard step.
"""

from __future__ import annotations

import tempfile

import torch
from common import (
    make_trainers,
    measure,
    model_spec,
    parser,
    print_table,
    report,
    take_batches,
    trainer_steps,
)

from vitrobust.explain.relevance import explain, reference_relevance
from vitrobust.models import build_model

MASKS = ["data.masks.source=threshold"]
STEP_TARGET = 3.0


def map_cases(model, x: torch.Tensor) -> dict:
    return {
        "single call": lambda: explain(model, x).maps,
        "per-block calls": lambda: explain(model, x, per_block_grads=True).maps,
        "reference": lambda: reference_relevance(model, x),
    }


def main() -> None:
    p = parser(__doc__, "relevance", model="vit_tiny_patch4_32", repeats=5, warmup=1, threads=None,
               helps={"model": "model for the maps (default: 12 blocks, 65 tokens)", "repeats": "timed rounds"})
    p.add_argument("--map-batch", type=int, default=64, help="images per relevance call")
    p.add_argument("--step-batch", type=int, default=128, help="training batch size")
    args = p.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        trainers = make_trainers(tmp, {name: [*MASKS, f"objective.name={name}"] for name in ("standard", "relevance")},
                                 "fp32", args.step_batch)
        batches = take_batches(trainers["relevance"], args.repeats + args.warmup)
        spec = model_spec(args.model, trainers["standard"].train_set)
        model = build_model(spec).eval()
        x = batches[0].x[: args.map_batch]
        if len(x) < args.map_batch:
            x = torch.cat([b.x for b in batches])[: args.map_batch]
        cases = map_cases(model, x)
        maps = {name: fn() for name, fn in cases.items()}
        diffs = {name: float((m - maps["reference"]).abs().max()) for name, m in maps.items()}
        for name, m in maps.items():
            assert torch.allclose(m, maps["reference"], atol=1e-5), f"{name} differs from the reference: {diffs[name]}"
        assert torch.allclose(maps["single call"], maps["per-block calls"], atol=1e-6)
        map_times = measure(cases, warmup=args.warmup, repeats=args.repeats)
        step_times = measure(trainer_steps(trainers, batches), warmup=args.warmup, repeats=args.repeats)
        step_model = trainers["standard"].cfg.model.name

    n = len(x)
    ref = map_times["reference"]["median_s"]
    rows = [[name, f"{n / t['median_s']:.0f}", f"{ref / t['median_s']:.2f}", f"{diffs[name]:.1e}"]
            for name, t in map_times.items()]
    print_table(["relevance maps", "maps/s", "x reference", "max |diff|"], rows,
                title=f"{args.model}, batch {n}, median of {args.repeats} interleaved rounds "
                      f"(CPU, {torch.get_num_threads()} threads)")
    ratio = step_times["relevance"]["median_s"] / step_times["standard"]["median_s"]
    rows = [[name, f"{t['median_s']:.3f}", f"{args.step_batch / t['median_s']:.0f}"] for name, t in step_times.items()]
    print()
    print_table(["objective", "s/step", "img/s"], rows,
                title=f"training step: {step_model}, Fashion-MNIST + threshold masks, batch {args.step_batch}")
    print(f"relevance / standard step: {ratio:.2f} (target <= {STEP_TARGET})")

    result = {
        "map_model": args.model, "map_batch": n, "maps_per_s": {k: n / t["median_s"] for k, t in map_times.items()},
        "speedup_vs_reference": {k: ref / t["median_s"] for k, t in map_times.items()},
        "max_abs_diff_vs_reference": diffs, "map_timings": map_times,
        "step_model": step_model, "step_batch": args.step_batch, "step_timings": step_times,
        "relevance_step_ratio": ratio, "step_target": STEP_TARGET, "repeats": args.repeats,
    }
    report("relevance", result, args.out)


if __name__ == "__main__":
    main()
