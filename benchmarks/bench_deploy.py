"""Deployment speed of an image classifier: PyTorch eager against onnxruntime fp32 and int8, on the CPU.

Each model is a timm classifier with random weights, built by `vitrobust.models.build_model` so that the
normalisation is inside it ([0,1] float NCHW images in, logits out), at the input size of timm's
`pretrained_cfg` (32 px for `vit_pico_patch8_32`, 224 px for DeiT and XCiT, 256 px for MobileViT). It is
written to ONNX by the repository's own `vitrobust.export.onnx_file.to_onnx` (fp32, dynamic batch) and
`quantize_int8` (static QDQ int8 of MatMul/Gemm/Conv, calibrated on a few batches of uniform random
images: speed does not depend on calibration quality), in a temporary directory. The cases, per model:

- `eager`: `model(x)` under `torch.inference_mode()`, `torch.set_num_threads(t)`;
- `ort fp32`: the fp32 file in an onnxruntime CPU session;
- `ort fp32 opt`: the fp32 file after `onnxruntime.transformers.optimizer.optimize_model(model_type="vit",
  num_heads=0, hidden_size=0)` (auto-detection), for the ViT/DeiT/XCiT models only. Its logits must match
  the fp32 file's within 1e-4 on a random batch; where the optimizer raises or the logits differ, the
  reason is recorded as a string instead of timings;
- `ort int8`: the int8 file.

Every onnxruntime session gets `intra_op_num_threads = t`, `inter_op_num_threads = 1`, sequential
execution and `graph_optimization_level = ORT_ENABLE_ALL` (onnxruntime's default, set explicitly; the
JSON records the default read from a fresh SessionOptions). For each thread count t (default 1 and 2),
the cases of one model take turns in blocks, so that background load falls on all of them alike while
one runtime's threads (still spinning, or descheduled) do not land in the other's timed calls: calling
them alternately, call by call, slowed eager 2-thread batch-1 calls of vit_pico from 6.6 to 33 ms and
onnxruntime's from 0.6 to 9.8 ms on this busy 2-core machine.

- batch-1 latency: `--warmup` untimed calls per case, then `--repeats` timed calls per case in blocks of
  `--block`, each later block after LEAD untimed calls; median and p90 in ms;
- batch-`--batch-size` throughput (images/s, from the median call): `--batch-repeats` timed calls per
  case at 224/256 px (default 1: a batch of 64 takes seconds there), `--batch-repeats-32` at 32 px, in
  blocks of BATCH_BLOCK, each block after one untimed call.

Ratios: onnxruntime median latency / eager median latency, per model and thread count. The targets
(fp32 <= 0.6x eager, int8 <= 0.4x eager) are benchmark targets, not tests: the table says whether each
is met. Also recorded: the sizes in bytes of the fp32, int8 and optimized files, each file's largest
logit difference from eager on 8 random images (and there the int8 file's top-1 agreement with fp32: with
random weights the logits are nearly tied, so it is a sanity number only), what the transformer
optimizer fused, and ExecuTorch: "not installed" when `importlib.util.find_spec("executorch")` finds
nothing (it is never installed here).
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import logging
import os
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort
import timm
import torch
from common import parser, print_table, report

from vitrobust.export.onnx_file import quantize_int8, to_onnx
from vitrobust.models import build_model

MODELS = ("vit_pico_patch8_32", "deit_tiny_patch16_224", "xcit_nano_12_p16_224", "mobilevit_xxs",
          "mobilevit_xs", "mobilevit_s")
QUICK_MODELS = ("vit_pico_patch8_32", "mobilevit_xxs")
TRANSFORMERS = ("vit_", "deit_", "xcit_")  # name prefixes the transformer graph optimizer is tried on
TARGETS = {"ort fp32": 0.6, "ort int8": 0.4}  # median latency / eager median latency, at most
MAX_OPT_DIFF = 1e-4  # optimized file vs fp32 file: largest logit difference
LEAD = 2  # untimed batch-1 calls before each later latency block of a case
BATCH_BLOCK = 2  # timed batch calls of a case in a row (each block after one untimed call)
MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def build(name: str):
    """The vitrobust classifier of timm model `name` at its pretrained_cfg input size and class count."""
    torch.manual_seed(0)  # the same random weights in every run
    cfg = timm.create_model(name).pretrained_cfg
    size, classes = cfg["input_size"][-1], cfg.get("num_classes", 1000)
    spec = {"name": name, "num_classes": classes, "in_chans": 3, "img_size": size, "patch_size": None,
            "mean": MEAN, "std": STD, "drop_rate": 0.0, "drop_path_rate": 0.0, "kwargs": {}}
    return build_model(spec).eval()


def ort_session(path: Path, threads: int) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def logits(path: Path, x: np.ndarray) -> np.ndarray:
    return ort_session(path, 1).run(["logits"], {"images": x})[0]


def optimize(fp32: Path, out: Path, x: np.ndarray, want: np.ndarray) -> dict:
    """onnxruntime's transformer optimizer on the fp32 file, checked against `want` (the fp32 file's logits
    on x): {"ok": True, "fused": ..., ...} or {"ok": False, "reason": ...}."""
    from onnxruntime.transformers.optimizer import optimize_model

    quiet = [logging.getLogger(n) for n in ("onnxruntime.transformers", "fusion", "onnx_model", "")]
    levels = [q.level for q in quiet]
    for q in quiet:
        q.setLevel(logging.ERROR)
    printed = io.StringIO()  # its shape inference prints its failures; they go in the result instead
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(printed):
            warnings.simplefilter("ignore")
            opt = optimize_model(str(fp32), model_type="vit", num_heads=0, hidden_size=0)
            opt.save_model_to_file(str(out))
            fused = {k: v for k, v in opt.get_fused_operator_statistics().items() if v}
        diff = float(np.abs(logits(out, x) - want).max())
    except Exception as err:  # the optimizer's own errors vary; record what it said
        return {"ok": False, "reason": f"optimize_model raised {type(err).__name__}: {err}".splitlines()[0],
                "printed": printed.getvalue().splitlines()}
    finally:
        for q, level in zip(quiet, levels):
            q.setLevel(level)
    notes = {"fused": fused, "attention_fused": any("Attention" in k for k in fused),
             "printed": printed.getvalue().splitlines()}
    if diff > MAX_OPT_DIFF:
        reason = f"logits differ from the fp32 file by {diff:.2e} (limit {MAX_OPT_DIFF:g})"
        return {"ok": False, "reason": reason, **notes}
    return {"ok": True, "max_abs_logit_diff_vs_fp32": diff, **notes}


def timed(cases: dict[str, Callable[[], object]], repeats: int, block: int, warmup: int,
          lead: int) -> dict[str, list[float]]:
    """Seconds of `repeats` timed calls of each case. The cases take turns in blocks of `block` timed calls;
    a case's first block starts with `warmup` untimed calls, its later blocks with `lead` untimed calls."""
    times: dict[str, list[float]] = {name: [] for name in cases}
    while any(len(t) < repeats for t in times.values()):
        for name, fn in cases.items():
            for _ in range(lead if times[name] else warmup):
                fn()
            for _ in range(min(block, repeats - len(times[name]))):
                t0 = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t0)
    return times


def latency_stats(times: list[float]) -> dict:
    ms = [1000 * t for t in times]
    return {"median_ms": statistics.median(ms), "p90_ms": float(np.percentile(ms, 90)), "min_ms": min(ms),
            "max_ms": max(ms), "repeats": len(ms)}


def eager(model: torch.nn.Module, x: torch.Tensor) -> Callable[[], object]:
    def run():
        with torch.inference_mode():
            return model(x)
    return run


def onnx(sess: ort.InferenceSession, x: np.ndarray) -> Callable[[], object]:
    return lambda: sess.run(["logits"], {"images": x})


def cases(model: torch.nn.Module, sessions: dict[str, ort.InferenceSession],
          x: np.ndarray) -> dict[str, Callable[[], object]]:
    """The timed cases on input x: eager first, then each onnxruntime session."""
    return {"eager": eager(model, torch.from_numpy(x)), **{b: onnx(s, x) for b, s in sessions.items()}}


def bench_model(name: str, args, tmp: Path) -> dict:
    model = build(name)
    size = model.input_shape[-1]
    rng = np.random.default_rng(0)
    x1 = rng.random((1, *model.input_shape), dtype=np.float32)
    xb = rng.random((args.batch_size, *model.input_shape), dtype=np.float32)
    check = rng.random((8, *model.input_shape), dtype=np.float32)
    with torch.inference_mode():
        want = model(torch.from_numpy(check)).numpy()

    paths = {"ort fp32": tmp / f"{name}.onnx", "ort int8": tmp / f"{name}.int8.onnx",
             "ort fp32 opt": tmp / f"{name}.opt.onnx"}
    t0 = time.perf_counter()
    to_onnx(model, paths["ort fp32"])
    export_s = time.perf_counter() - t0
    n = args.calibration_batch
    calibration = [(rng.random((n, *model.input_shape), dtype=np.float32), np.zeros(n, dtype=np.int64))
                   for _ in range(args.calibration_batches)]
    t0 = time.perf_counter()
    quantize_int8(paths["ort fp32"], paths["ort int8"], calibration)
    quantize_s = time.perf_counter() - t0
    fp32_logits = logits(paths["ort fp32"], check)
    int8_logits = logits(paths["ort int8"], check)
    if name.startswith(TRANSFORMERS):
        opt = optimize(paths["ort fp32"], paths["ort fp32 opt"], check, fp32_logits)
    else:
        opt = {"ok": False, "reason": "not tried: not a ViT/DeiT/XCiT graph"}
    backends = ["ort fp32", *(["ort fp32 opt"] if opt["ok"] else []), "ort int8"]

    entry = {
        "model": name, "input_size": list(model.input_shape), "num_classes": int(want.shape[1]),
        "export_s": export_s, "quantize_s": quantize_s,
        "file_bytes": {k: paths[k].stat().st_size for k in paths if paths[k].exists()},
        "max_abs_logit_diff_vs_eager": {"ort fp32": float(np.abs(fp32_logits - want).max()),
                                        "ort int8": float(np.abs(int8_logits - want).max())},
        "int8_top1_agreement_with_fp32": float((int8_logits.argmax(1) == fp32_logits.argmax(1)).mean()),
        "transformer_optimizer": opt, "threads": {},
    }
    batch_repeats = args.batch_repeats_32 if size <= 64 else args.batch_repeats
    for t in args.thread_counts:
        torch.set_num_threads(t)
        sessions = {b: ort_session(paths[b], t) for b in backends}
        lat = {k: latency_stats(v) for k, v in
               timed(cases(model, sessions, x1), args.repeats, args.block, args.warmup, LEAD).items()}
        thr = timed(cases(model, sessions, xb), batch_repeats, BATCH_BLOCK, 1, 1)
        ips = {k: args.batch_size / statistics.median(v) for k, v in thr.items()}
        ratios = {b: lat[b]["median_ms"] / lat["eager"]["median_ms"] for b in backends}
        entry["threads"][str(t)] = {
            "latency_ms": lat, "batch_s": thr, "img_per_s": ips, "latency_ratio_to_eager": ratios,
            "batch_time_ratio_to_eager": {b: ips["eager"] / ips[b] for b in backends},
            "meets_target": {b: ratios[b] <= TARGETS[b] for b in TARGETS},
        }
        del sessions
        print(f"{name}, {t} thread(s): " + ", ".join(f"{b} {r:.2f}x" for b, r in ratios.items()), flush=True)
    entry["loadavg_1m"] = round(os.getloadavg()[0], 2)
    return entry


def optimizer_note(opt: dict) -> str:
    if not opt["ok"]:
        return opt["reason"]
    return "ok, fused " + (", ".join(f"{k} {v}" for k, v in opt["fused"].items()) or "nothing")


def print_tables(entries: list[dict], args) -> None:
    rows = []
    for e in entries:
        for t, r in e["threads"].items():
            for case, lat in r["latency_ms"].items():
                ratio, target = r["latency_ratio_to_eager"].get(case), TARGETS.get(case)
                rows.append([e["model"], t, case, f"{lat['median_ms']:.2f}", f"{lat['p90_ms']:.2f}",
                             r["img_per_s"][case], "" if ratio is None else f"{ratio:.2f}",
                             f"<= {target}" if target else "",
                             ("yes" if ratio <= target else "NO") if target else ""])
    print_table(["model", "threads", "case", "b1 median ms", "b1 p90 ms", f"b{args.batch_size} img/s",
                 "lat / eager", "target", "met"], rows,
                title=f"\ndeploy: batch-1 latency ({args.repeats} calls), batch-{args.batch_size} throughput")
    sizes = [[e["model"], f"{e['file_bytes']['ort fp32']:,}", f"{e['file_bytes']['ort int8']:,}",
              e["file_bytes"]["ort int8"] / e["file_bytes"]["ort fp32"], e["int8_top1_agreement_with_fp32"],
              optimizer_note(e["transformer_optimizer"])] for e in entries]
    print_table(["model", "fp32 bytes", "int8 bytes", "int8/fp32", "int8 top-1 = fp32",
                 "transformer optimizer"], sizes, title="\nfiles (top-1 agreement on 8 random images)")


def main() -> None:
    p = parser(__doc__, "deploy", repeats=20, warmup=5, batch_size=64,
               helps={"repeats": "timed batch-1 calls per case (latency)",
                      "warmup": "untimed batch-1 calls per case first",
                      "batch_size": "batch size of the throughput cases"})
    p.add_argument("--models", default=None, help=f"comma-separated timm names (default: {','.join(MODELS)})")
    p.add_argument("--thread-counts", default="1,2", help="comma-separated thread counts (default: 1,2)")
    p.add_argument("--block", type=int, default=10, help="timed batch-1 calls of a case in a row")
    p.add_argument("--batch-repeats", type=int, default=1,
                   help="timed batch calls per case, 224/256-px models")
    p.add_argument("--batch-repeats-32", type=int, default=6, help="timed batch calls per case, 32-px models")
    p.add_argument("--calibration-batches", type=int, default=4, help="random calibration batches for int8")
    p.add_argument("--calibration-batch", type=int, default=8, help="images per calibration batch")
    p.add_argument("--quick", action="store_true",
                   help=f"{','.join(QUICK_MODELS)} only (unless --models), 10 latency calls, 1-2 batch calls")
    args = p.parse_args()
    if args.quick:
        args.repeats, args.warmup, args.batch_repeats, args.batch_repeats_32 = 10, 2, 1, 2
    names = args.models.split(",") if args.models else list(QUICK_MODELS if args.quick else MODELS)
    args.thread_counts = [int(t) for t in args.thread_counts.split(",")]
    executorch = "installed (not measured)" if importlib.util.find_spec("executorch") else "not installed"

    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        entries = [bench_model(name, args, Path(tmp)) for name in names]
    wall_s = time.perf_counter() - started

    print_tables(entries, args)
    print(f"\nExecuTorch: {executorch}; wall time {wall_s:.0f} s")
    default_level = str(ort.SessionOptions().graph_optimization_level)
    result = {
        "models": names, "thread_counts": args.thread_counts, "batch_size": args.batch_size,
        "repeats": args.repeats, "warmup": args.warmup, "block": args.block, "lead": LEAD,
        "batch_repeats": args.batch_repeats, "batch_repeats_32": args.batch_repeats_32,
        "batch_block": BATCH_BLOCK, "quick": args.quick, "targets": TARGETS,
        "onnxruntime": ort.__version__, "timm": timm.__version__,
        "session_options": {"graph_optimization_level": "ORT_ENABLE_ALL", "inter_op_num_threads": 1,
                            "execution_mode": "ORT_SEQUENTIAL", "intra_op_num_threads": "the thread count",
                            "default_graph_optimization_level": default_level},
        "executorch": executorch, "wall_s": wall_s, "entries": entries,
    }
    report("deploy", result, args.out)


if __name__ == "__main__":
    main()
