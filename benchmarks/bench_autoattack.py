"""AutoAttack: vitrobust's adapter against the authors' code called directly, side by side.

Same model, same images, same eps, same seed:
- `authors`: `pyautoattack.AutoAttack(...).run_standard_evaluation(x, y, batch_size=B)`, as the
  authors' README shows (B = --batch-size, default: all images in one batch);
- `adapter`: `vitrobust.attacks.autoattack.run_autoattack(..., batch_size=B)` (one chunk when
  B >= n, so it must give the very same per-sample results), including its per-attack bookkeeping;
- `adapter chunked`: the adapter with chunks of --chunk images and a progress file (resumable mode).
  Each chunk is one call of the authors' code, so its numbers may differ slightly from one batch.

The model is a small ViT (vit_pico_patch8_32 at width 64, depth 2) trained for one epoch on
Fashion-MNIST inside the script, by default with 1-step PGD adversarial training at --eps so that
robust accuracy is not zero and every attack of the standard version has work to do; or any
vitrobust run directory / weights file given with --model-path.

With --engines it compares the two AutoAttack engines instead (`authors` and `fast`, both through
`run_autoattack(..., engine=...)` on the same model and images, one chunk): wall time ratio fast/authors,
robust accuracy of each, the fraction of images with the same verdict and the images robust for one
engine only, for each --settings NORM:EPS. The model is --model-path, or with --vit-small a ViT-S/16
at 64 px trained briefly inside the script (--vit-train-images standard steps, then as many with
PGD-1 at Linf 0.1); results accumulate in benchmarks/results/autoattack_engines.json, one entry per
(model, setting, n, version). --authors-seed S also runs the authors' engine with seed S, whose agreement
with their seed 0 is the floor that chance (other random starts) sets for any engine.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time

import torch
import torch.nn.functional as F
from common import (
    fashion_mnist,
    measure,
    merge_entries,
    model_spec,
    parser,
    print_table,
    update,
    write_result,
)
from pyautoattack import AutoAttack

from vitrobust.attacks import fast_engine, pgd_attack
from vitrobust.attacks.autoattack import run_autoattack
from vitrobust.data import BatchLoader
from vitrobust.models import build_model
from vitrobust.models.io import load_model

# the model trained when no --model-path is given (classes, channels, mean and std come from the data)
MODEL = {"patch_size": None, "drop_rate": 0.0, "drop_path_rate": 0.0, "kwargs": {"embed_dim": 64, "depth": 2, "num_heads": 2}}


def train_model(eps: float, adversarial: bool, train_images: int, seed: int = 0) -> tuple[torch.nn.Module, float]:
    """One epoch of AdamW (lr 2e-3, batch 128) on the first `train_images` training images."""
    data = fashion_mnist("train", train_images)
    spec = model_spec("vit_pico_patch8_32", data, **MODEL)
    torch.manual_seed(seed)
    model = build_model(spec)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.05)
    t0 = time.perf_counter()
    for batch in BatchLoader(data, 128, torch.device("cpu"), train=True, seed=seed):
        x = batch.x
        if adversarial:  # "fast" adversarial training: one PGD step of 1.25 eps from a random start
            model.eval()
            x = pgd_attack(model, x, batch.y, eps=eps, steps=1, step_size=1.25 * eps)
            model.train()
        update(opt, F.cross_entropy(model(x), batch.y))
    return model.eval(), time.perf_counter() - t0


def train_vit_small(train_images: int, eps: float = 0.1, seed: int = 0) -> tuple[torch.nn.Module, float]:
    """ViT-S/16 at 64 px from scratch: one pass of AdamW on `train_images` images, then one with PGD-1 at Linf eps."""
    data = fashion_mnist("train", train_images)
    spec = model_spec("vit_small_patch16_224", data, img_size=64, drop_rate=0.0, drop_path_rate=0.0)
    torch.manual_seed(seed)
    model = build_model(spec)
    opt = torch.optim.AdamW(model.parameters(), lr=5e-4, weight_decay=0.05)
    t0 = time.perf_counter()
    for adversarial in (False, True):
        for batch in BatchLoader(data, 64, torch.device("cpu"), train=True, seed=seed, img_size=64):
            x = batch.x
            if adversarial:
                model.eval()
                x = pgd_attack(model, x, batch.y, eps=eps, steps=1, step_size=1.25 * eps)
                model.train()
            update(opt, F.cross_entropy(model(x), batch.y))
    return model.eval(), time.perf_counter() - t0


def _authors_seed_entry(res: dict, a: torch.Tensor, seed: int | None) -> dict:
    """With --authors-seed: the authors' engine under another seed against seed 0, as the fast engine is."""
    if seed is None:
        return {}
    b = res["authors, seed"].flags("robust")
    return {"authors_seed": seed, "robust_top1_authors_seed": res["authors, seed"].robust_top1,
            "same_verdict_authors_seeds": (a == b).float().mean().item(),
            "robust_only_authors_seed": int((b & ~a).sum()), "robust_only_authors_seed0": int((a & ~b).sum())}


@contextlib.contextmanager
def attack_seconds(store: dict):
    """Within: the seconds of each attack the fast engine runs (its _run_rows / _run_authors calls) add up
    in store[attack]."""
    saved = {name: getattr(fast_engine, name) for name in ("_run_rows", "_run_authors")}

    def timed(run):
        def call(attack, *args, **kwargs):
            t0 = time.perf_counter()
            try:
                return run(attack, *args, **kwargs)
            finally:
                store[attack] = store.get(attack, 0.0) + time.perf_counter() - t0
        return call
    for name, run in saved.items():
        setattr(fast_engine, name, timed(run))
    try:
        yield store
    finally:
        for name, run in saved.items():
            setattr(fast_engine, name, run)


def compare_engines(model, model_name: str, x: torch.Tensor, y: torch.Tensor, args) -> None:
    """Both engines on the same images for each NORM:EPS setting; table + entries in autoattack_engines.json."""
    settings = args.settings or [f"{args.norm}:{args.eps}"]
    rows, entries = [], []
    for setting in settings:
        norm, eps = setting.split(":")
        kw = dict(norm=norm, eps=float(eps), version=args.version, attacks=args.attacks, batch_size=len(x))
        res, seconds, per_attack = {}, {}, {}
        for engine in ("authors", "fast"):
            t0 = time.perf_counter()
            with attack_seconds(per_attack) if engine == "fast" else contextlib.nullcontext():
                res[engine] = run_autoattack(model, x, y, engine=engine, **kw)
            seconds[engine] = time.perf_counter() - t0
        if args.authors_seed is not None:  # the authors' engine against itself: the chance floor of the agreement
            t0 = time.perf_counter()
            res["authors, seed"] = run_autoattack(model, x, y, engine="authors", seed=args.authors_seed, **kw)
            seconds["authors, seed"] = time.perf_counter() - t0
        a, f = res["authors"].flags("robust"), res["fast"].flags("robust")
        entry = {"model": model_name, "norm": norm, "eps": float(eps), "n": len(x), "version": args.version,
                 "clean_top1": res["authors"].clean_top1, "seconds": seconds,
                 "time_ratio": seconds["fast"] / seconds["authors"], "fast_seconds_per_attack": per_attack,
                 # the authors' own Square, in fp32 on the points still robust: its share of the authors' time
                 # is a floor on the time ratio of any engine that runs Square unchanged
                 "square_share": per_attack.get("square", 0.0) / seconds["authors"],
                 "robust_top1": {k: r.robust_top1 for k, r in res.items()},
                 "robust_after": {k: r.robust_after() for k, r in res.items()},
                 "same_verdict": (a == f).float().mean().item(),
                 "robust_only_fast": int((f & ~a).sum()), "robust_only_authors": int((a & ~f).sum()),
                 "precision": os.environ.get("VITROBUST_AA_PRECISION") or "fp32", "threads": torch.get_num_threads(),
                 **_authors_seed_entry(res, a, args.authors_seed),
                 "time": time.strftime("%Y-%m-%dT%H:%M:%S"), "loadavg_1m": round(os.getloadavg()[0], 2)}
        entries.append(entry)
        rows.append([f"{model_name} {norm} {eps}", len(x), f"{100 * entry['clean_top1']:.1f}",
                     f"{seconds['authors']:.1f}", f"{seconds['fast']:.1f}", entry["time_ratio"],
                     f"{100 * a.float().mean():.1f}", f"{100 * f.float().mean():.1f}",
                     f"{100 * entry['same_verdict']:.1f}", entry["robust_only_fast"], entry["robust_only_authors"]])
    print_table(["model / setting", "n", "clean %", "authors s", "fast s", "fast/authors", "robust authors %",
                 "robust fast %", "same verdict %", "robust only fast", "robust only authors"], rows,
                title=f"AutoAttack {args.version}: fast engine vs authors' engine ({torch.get_num_threads()} thread(s), CPU)")
    for e in entries:
        print(f"{e['model']} {e['norm']} {e['eps']}: the fast engine's seconds per attack "
              + ", ".join(f"{k} {v:.1f}" for k, v in e["fast_seconds_per_attack"].items())
              + f"; Square alone (the authors' code, fp32) takes {e['square_share']:.2f} of the authors' time")
        if "authors_seed" in e:
            print(f"{e['model']} {e['norm']} {e['eps']}: the authors' engine with seed {e['authors_seed']} against seed 0: "
                  f"same verdict {100 * e['same_verdict_authors_seeds']:.1f}%, robust "
                  f"{100 * e['robust_top1_authors_seed']:.1f}% against {100 * e['robust_top1']['authors']:.1f}%")
    out = merge_entries("autoattack_engines", entries, lambda e: (e["model"], e["norm"], e["eps"], e["n"], e["version"]),
                        args.out)  # other models' entries stay
    print(f"-> {out}")


def main() -> None:
    p = parser(__doc__, "autoattack", repeats=1, batch_size=None, threads=1,
               helps={"batch_size": "default: n (one batch, one chunk)",
                      "threads": "torch threads (1 is fastest for this small model)"})
    p.add_argument("--n", type=int, default=200, help="first n Fashion-MNIST test images")
    p.add_argument("--eps", type=float, default=0.1)
    p.add_argument("--norm", default="Linf", choices=["Linf", "L2"])
    p.add_argument("--version", default="standard", choices=["standard", "plus", "rand", "custom"])
    p.add_argument("--attacks", nargs="*", default=None, help="version=custom: e.g. apgd-ce apgd-t")
    p.add_argument("--chunk", type=int, default=50, help="chunk size of the resumable case (0: skip that case)")
    p.add_argument("--model-path", default=None, help="a vitrobust run dir or weights file (default: train one)")
    p.add_argument("--standard-training", action="store_true", help="train without adversarial examples")
    p.add_argument("--train-images", type=int, default=60000)
    p.add_argument("--engines", action="store_true", help="compare the authors' and the fast engine")
    p.add_argument("--settings", nargs="*", default=None, help="--engines: NORM:EPS pairs (default: --norm:--eps)")
    p.add_argument("--vit-small", action="store_true", help="--engines: ViT-S/16 at 64 px trained briefly here")
    p.add_argument("--vit-train-images", type=int, default=2000)
    p.add_argument("--label", default=None, help="--engines: the model's name in the results")
    p.add_argument("--authors-seed", type=int, default=None,
                   help="--engines: also run the authors' engine with this seed, for their own seed-to-seed agreement")
    p.add_argument("--precision", default=None, help="--engines: the fast engine's precision (fp32: the default, auto, bf16, fp16)")
    args = p.parse_args()
    if args.precision:
        os.environ["VITROBUST_AA_PRECISION"] = args.precision

    train_s = None
    if args.vit_small:
        model, train_s = train_vit_small(args.vit_train_images)
        model_name = f"vit_small_patch16 @64px, {args.vit_train_images} standard + {args.vit_train_images} PGD-1 images"
        print(f"trained {model_name} in {train_s:.0f} s")
    elif args.model_path:
        model = load_model(args.model_path).eval()
        model_name = args.model_path
    else:
        model, train_s = train_model(args.eps, not args.standard_training, args.train_images)
        model_name = f"vit_pico_patch8_32 (width 64, depth 2), 1 epoch {'standard' if args.standard_training else 'PGD-1 adversarial'} training"
    test = fashion_mnist("test", args.n)
    x = next(iter(BatchLoader(test, args.n, torch.device("cpu"), train=False, img_size=model.input_shape[-1]
                              if hasattr(model, "input_shape") else None))).x
    y = test.labels[: args.n].long()
    if args.engines:
        compare_engines(model, args.label or model_name, x, y, args)
        return
    batch_size = args.batch_size or args.n
    common_kw = dict(norm=args.norm, eps=args.eps, version=args.version, attacks=args.attacks)

    outcome: dict[str, dict] = {}

    def authors():
        aa = AutoAttack(model, seed=0, device="cpu", **common_kw)
        aa.verbose = False
        _, y_adv = aa.run_standard_evaluation(x, y, batch_size=batch_size)
        outcome["authors"] = {"robust": (y_adv == y).tolist(), "after": None}

    def adapter():
        res = run_autoattack(model, x, y, batch_size=batch_size, **common_kw)
        outcome["adapter"] = {"robust": res.flags("robust").tolist(), "after": res.robust_after(),
                              "clean": res.clean_top1}

    def chunked():
        with tempfile.TemporaryDirectory() as tmp:
            res = run_autoattack(model, x, y, batch_size=args.chunk, progress=tmp, **common_kw)
        outcome["adapter chunked"] = {"robust": res.flags("robust").tolist(), "after": res.robust_after()}

    cases = {"authors": authors, "adapter": adapter}
    if args.chunk:
        cases["adapter chunked"] = chunked
    timing = measure(cases, warmup=0, repeats=args.repeats)

    clean = outcome["adapter"]["clean"]
    rows, payload = [], {}
    for name, t in timing.items():
        robust = outcome[name]["robust"]
        same = robust == outcome["authors"]["robust"]
        acc = sum(robust) / len(robust)
        rows.append([name, f"{t['median_s']:.1f}", t["median_s"] / timing["authors"]["median_s"], f"{100 * acc:.1f}",
                     "yes" if same else f"no ({sum(a != b for a, b in zip(robust, outcome['authors']['robust']))} differ)"])
        payload[name] = {"seconds": t, "robust_top1": acc, "same_per_sample_as_authors": same,
                         "robust_after": outcome[name]["after"]}
    title = (f"AutoAttack {args.version} {args.norm} eps={args.eps}, {args.n} Fashion-MNIST test images, "
             f"batch {batch_size}, clean top-1 {100 * clean:.1f}% ({args.threads} thread(s), CPU)")
    print_table(["case", "wall s", "vs authors", "robust top1 %", "same per-sample"], rows, title=title)
    after = outcome["adapter"]["after"]
    if after:
        print("robust top-1 after each attack (adapter): " + ", ".join(f"{k} {100 * v:.1f}%" for k, v in after.items()))
    path = write_result("autoattack", {"model": model_name, "train_s": train_s, "n": args.n, "eps": args.eps,
                                       "norm": args.norm, "version": args.version, "batch_size": batch_size,
                                       "chunk": args.chunk, "clean_top1": clean, "cases": payload}, args.out)
    if train_s is not None:
        print(f"model: {model_name}, trained in {train_s:.0f} s")
    print(f"-> {path}")


if __name__ == "__main__":
    main()
