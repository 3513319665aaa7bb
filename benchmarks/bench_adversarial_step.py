"""Cost of an adversarial training step relative to a standard step on the same model and batches.

Every case is a real `Trainer._step` (objective loss, backward, clipping, AdamW) of the quickstart
config with `objective.name` switched; all cases run interleaved in one `measure` call and the
ratios are medians over rounds. A pgd_at step with K attack steps is K forward + input-backward
passes plus one training step, so its target is 1 + 0.8*K (an attack pass may cost at most 80% of
a training step: no weight gradients, no optimizer).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from bench_train_step import make_trainer, take_batches, trainer_step
from common import measure, print_table, write_result

# case -> (objective overrides, attack steps K for the 1 + 0.8*K target, or None)
CASES = {
    "standard": ([], None),
    "pgd_at K=1": (["objective.name=pgd_at", "objective.steps=1"], 1),
    "pgd_at K=10": (["objective.name=pgd_at", "objective.steps=10"], 10),
    "trades K=10": (["objective.name=trades", "objective.steps=10"], None),
    "fgsm_rs": (["objective.name=fgsm_rs"], None),
}


def target(k: int | None) -> float | None:
    return None if k is None else 1 + 0.8 * k


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=5, help="timed rounds (one step of every case per round)")
    p.add_argument("--warmup", type=int, default=1, help="untimed rounds first")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--model", default=None, help="model name (default: the quickstart model)")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's own)")
    p.add_argument("--out", default=None, help="JSON path (default: benchmarks/results/adversarial_step.json)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        trainers = {name: make_trainer(Path(tmp) / f"run{i}", "fp32", args.batch_size, args.model, extra)
                    for i, (name, (extra, _)) in enumerate(CASES.items())}
        batches = take_batches(trainers["standard"], args.steps + args.warmup)
        timings = measure({name: trainer_step(t, batches) for name, t in trainers.items()},
                          warmup=args.warmup, repeats=args.steps)
        model_name = trainers["standard"].cfg.model.name
        objectives = {name: t.cfg.objective for name, t in trainers.items()}

    base = timings["standard"]["median_s"]
    ratios = {name: t["median_s"] / base for name, t in timings.items()}
    rows = []
    for name, (_, k) in CASES.items():
        goal = target(k)
        ok = "" if goal is None else ("yes" if ratios[name] <= goal else "no")
        rows.append([name, f"{timings[name]['median_s']:.2f}", f"{ratios[name]:.2f}",
                     "" if goal is None else f"{goal:.1f}", ok])
    bs = len(batches[0])
    print_table(["objective", "s/step", "x standard", "target", "ok"], rows,
                title=f"adversarial step cost: {model_name}, Fashion-MNIST, batch {bs}, fp32, "
                      f"median of {args.steps} interleaved rounds (CPU, {torch.get_num_threads()} threads)")

    result = {
        "config": "quickstart/baseline", "model": model_name, "batch_size": bs, "steps": args.steps,
        "warmup": args.warmup, "objectives": objectives, "ratio_to_standard": ratios,
        "target": {name: target(k) for name, (_, k) in CASES.items() if k is not None}, "timings": timings,
    }
    print(f"\nwrote {write_result('adversarial_step', result, args.out)}")


if __name__ == "__main__":
    main()
