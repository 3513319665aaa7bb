"""Cost of a DAT training step relative to a standard step on the same model and batches.

A DAT step is two training forwards (x and Q(x_adv)) with one backward through both, one attack pass
(forward + backward to the input only) and two tokenizer round trips (Q(x) and Q(x1)). Ideal:
2 standard steps + 1 attack pass + 2 round trips; target: (DAT - 2 round trips) <= 2.8 standard steps.
The round trip is timed on its own so the ratio can be read without it: its cost depends only on the
tokenizer's layout, not on its weights, so a randomly initialised one of the chosen preset is used
unless --tokenizer names a trained one.

Cases, interleaved in one `measure` call (common.py): `standard` and `dat` are real `Trainer.step`
calls of the quickstart config (objective switched); `dat, Q = identity` is the same DAT step with the
tokenizer swapped for the identity, which measures the step without its round trips directly (the
difference dat - 2 x round trip is noisy when Q dominates); `Q round trip` is the DAT objective's own
`quantize` on the same batch; `attack pass` is the objective's `attack` (one step, no random start).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
from common import (
    CONFIG,
    cycle,
    make_trainers,
    measure,
    parser,
    print_table,
    ratios_to,
    report,
    take_batches,
    trainer_steps,
)

from vitrobust.models.tokenizer_io import save_tokenizer
from vitrobust.models.vqgan import build_tokenizer

TARGET = 2.8  # standard steps, round trips excluded


class IdentityTokenizer(torch.nn.Module):
    def reconstruct(self, x01: torch.Tensor) -> torch.Tensor:
        return x01.clone()


def main() -> None:
    p = parser(__doc__, "dat_step", steps=5, warmup=1, batch_size=128, model=None, threads=None,
               helps={"steps": "timed rounds (one call of every case per round)"})
    p.add_argument("--tokenizer", default=None, help="tokenizer run dir/file (default: a random one of the preset)")
    p.add_argument("--tokenizer-preset", default="vq_f4_32px", help="layout of the random tokenizer")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    args = p.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        tok = args.tokenizer
        if tok is None:
            torch.manual_seed(0)
            tok = str(save_tokenizer(build_tokenizer(args.tokenizer_preset), Path(tmp) / "tok.safetensors"))
        dat_cfg = ["objective.name=dat", f"objective.tokenizer={tok}"]
        trainers = make_trainers(tmp, {"standard": [], "dat": dat_cfg, "dat, Q = identity": dat_cfg},
                                 args.precision, args.batch_size, args.model)
        standard, dat = trainers["standard"], trainers["dat"]
        trainers["dat, Q = identity"].objective.tokenizer = IdentityTokenizer()
        batches = take_batches(standard, args.steps + args.warmup)
        objective, model = dat.objective, dat.model
        nxt = cycle(batches)

        def round_trip():
            objective.quantize(nxt().x)

        nxt_attack = cycle(batches)

        def attack_pass():
            b = nxt_attack()
            objective.attack(model, b.x, b.x, b)

        cases = {**trainer_steps(trainers, batches), "Q round trip": round_trip, "attack pass": attack_pass}
        timings = measure(cases, warmup=args.warmup, repeats=args.steps)
        model_name = standard.cfg.model.name
        params = dat.cfg.objective

    ratio = ratios_to(timings, "standard")
    without_q = ratio["dat"] - 2 * ratio["Q round trip"]
    ideal = 2 + ratio["attack pass"]
    rows = [[name, f"{timings[name]['median_s']:.3f}", f"{ratio[name]:.2f}"] for name in cases]
    rows += [["dat - 2 round trips", "", f"{without_q:.2f}"], ["ideal: 2 steps + attack pass", "", f"{ideal:.2f}"]]
    bs = len(batches[0])
    print_table(["case", "s/call", "x standard"], rows,
                title=f"DAT step cost: {model_name}, tokenizer {Path(tok).name if args.tokenizer else args.tokenizer_preset}, "
                      f"batch {bs}, {args.precision}, median of {args.steps} interleaved rounds "
                      f"(CPU, {torch.get_num_threads()} threads)")
    direct = ratio["dat, Q = identity"]
    print(f"\ntarget: DAT step without its round trips <= {TARGET} standard steps: {direct:.2f} measured with Q = "
          f"identity ({'yes' if direct <= TARGET else 'no'}), {without_q:.2f} as dat - 2 round trips")

    result = {
        "config": CONFIG, "model": model_name, "batch_size": bs, "precision": args.precision,
        "tokenizer": args.tokenizer or f"random {args.tokenizer_preset}", "steps": args.steps,
        "warmup": args.warmup, "objective": params, "ratio_to_standard": ratio,
        "dat_without_round_trips": {"q_identity": direct, "dat_minus_2q": without_q}, "ideal": ideal, "target": TARGET, "timings": timings,
    }
    report("dat_step", result, args.out)


if __name__ == "__main__":
    main()
