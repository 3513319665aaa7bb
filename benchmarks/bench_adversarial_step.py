"""Cost of an adversarial training step relative to a standard step on the same model and batches.

Every case is a real `Trainer.step` (objective loss, backward, clipping, AdamW) of the quickstart
config with `objective.name` switched; all cases run interleaved in one `measure` call and the
ratios are medians over rounds. A pgd_at step with K attack steps is K forward + input-backward
passes plus one training step, so its target is 1 + 0.8*K (an attack pass may cost at most 80% of
a training step: no weight gradients, no optimizer).
"""

from __future__ import annotations

import tempfile

import torch
from common import (
    CONFIG,
    make_trainers,
    measure,
    parser,
    print_table,
    ratios_to,
    report,
    take_batches,
    trainer_steps,
)

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
    p = parser(__doc__, "adversarial_step", steps=5, warmup=1, batch_size=128, model=None, threads=None,
               helps={"steps": "timed rounds (one step of every case per round)"})
    args = p.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        trainers = make_trainers(tmp, {name: extra for name, (extra, _) in CASES.items()}, "fp32", args.batch_size,
                                 args.model)
        batches = take_batches(trainers["standard"], args.steps + args.warmup)
        timings = measure(trainer_steps(trainers, batches), warmup=args.warmup, repeats=args.steps)
        model_name = trainers["standard"].cfg.model.name
        objectives = {name: t.cfg.objective for name, t in trainers.items()}

    ratios = ratios_to(timings, "standard")
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
        "config": CONFIG, "model": model_name, "batch_size": bs, "steps": args.steps,
        "warmup": args.warmup, "objectives": objectives, "ratio_to_standard": ratios,
        "target": {name: target(k) for name, (_, k) in CASES.items() if k is not None}, "timings": timings,
    }
    report("adversarial_step", result, args.out)


if __name__ == "__main__":
    main()
