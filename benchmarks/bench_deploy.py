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
all cases of one model are timed interleaved so that background load falls on them alike:

- batch-1 latency: `--warmup` untimed calls per case, then `--repeats` timed calls per case, run
  round-robin in blocks of `--block` calls per case, each block after one untimed call (so that the
  previous case's spinning threads do not land in the first timed call); median and p90 in ms;
- batch-`--batch-size` throughput (images/s): `common.measure` (round-robin, one call per case per
  round), 1 warm-up round, `--batch-repeats` timed rounds at 224/256 px, `--batch-repeats-32` at 32 px.

Ratios: onnxruntime median latency / eager median latency, per model and thread count. The targets
(fp32 <= 0.6x eager, int8 <= 0.4x eager) are benchmark targets, not tests: the table says whether each
is met. Also recorded: the sizes in bytes of the fp32, int8 and optimized files, each file's largest
logit difference from eager on a random batch, and ExecuTorch ("not installed" when the `executorch`
package is absent; it is never installed here).
"""

from __future__ import annotations

import importlib.util
import logging
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
from common import img_per_s, measure, parser, print_table, report

from vitrobust.export.onnx_file import quantize_int8, to_onnx
from vitrobust.models import build_model

MODELS = ("vit_pico_patch8_32", "deit_tiny_patch16_224", "xcit_nano_12_p16_224", "mobilevit_xxs",
          "mobilevit_xs", "mobilevit_s")
QUICK_MODELS = ("vit_pico_patch8_32", "mobilevit_xxs")
TRANSFORMERS = ("vit_", "deit_", "xcit_")  # name prefixes the transformer graph optimizer is tried on
TARGETS = {"ort fp32": 0.6, "ort int8": 0.4}  # median latency / eager median latency, at most
MAX_OPT_DIFF = 1e-4  # optimized file vs fp32 file: largest logit difference
MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def build(name: str):
    """The vitrobust classifier of timm model `name` at its pretrained_cfg input size and class count."""
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
    """The transformer optimizer on the fp32 file: {"ok": True, "fused": ...} or {"ok": False, "reason": ...}."""
    from onnxruntime.transformers.optimizer import optimize_model

    quiet = [logging.getLogger(n) for n in ("onnxruntime.transformers", "fusion", "onnx_model", "")]
    levels = [q.level for q in quiet]
    for q in quiet:
        q.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            opt = optimize_model(str(fp32), model_type="vit", num_heads=0, hidden_size=0)
            opt.save_model_to_file(str(out))
            fused = {k: v for k, v in opt.get_fused_operator_statistics().items() if v}
        diff = float(np.abs(logits(out, x) - want).max())
    except Exception as err:  # the optimizer's own errors vary; record what it said
        return {"ok": False, "reason": f"optimize_model raised {type(err).__name__}: {err}".splitlines()[0]}
    finally:
        for q, level in zip(quiet, levels):
            q.setLevel(level)
    if diff > MAX_OPT_DIFF:
        return {"ok": False, "reason": f"logits differ from the fp32 file by {diff:.2e} (limit {MAX_OPT_DIFF:g})",
                "fused": fused}
    return {"ok": True, "fused": fused, "max_abs_logit_diff_vs_fp32": diff}


def latency(cases: dict[str, Callable[[], object]], warmup: int, repeats: int, block: int) -> dict[str, dict]:
    """Milliseconds per call of each case: `warmup` untimed calls, then `repeats` timed calls, round-robin in
    blocks of `block` calls per case, each block led by one untimed call."""
    for fn in cases.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in cases}
    while any(len(t) < repeats for t in times.values()):
        for name, fn in cases.items():
            fn()
            for _ in range(min(block, repeats - len(times[name]))):
                t0 = time.perf_counter()
                fn()
                times[name].append(1000 * (time.perf_counter() - t0))
    return {name: {"median_ms": statistics.median(t), "p90_ms": float(np.percentile(t, 90)), "min_ms": min(t),
                   "max_ms": max(t), "repeats": len(t)} for name, t in times.items()}


def eager(model: torch.nn.Module, x: torch.Tensor) -> Callable[[], object]:
    def run():
        with torch.inference_mode():
            return model(x)
    return run


def onnx(sess: ort.InferenceSession, x: np.ndarray) -> Callable[[], object]:
    return lambda: sess.run(["logits"], {"images": x})


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
    calibration = [(rng.random((args.calibration_batch, *model.input_shape), dtype=np.float32),
                    np.zeros(args.calibration_batch, dtype=np.int64)) for _ in range(args.calibration_batches)]
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
        lat = latency({"eager": eager(model, torch.from_numpy(x1)), **{b: onnx(s, x1) for b, s in sessions.items()}},
                      args.warmup, args.repeats, args.block)
        thr = measure({"eager": eager(model, torch.from_numpy(xb)), **{b: onnx(s, xb) for b, s in sessions.items()}},
                      warmup=1, repeats=batch_repeats)
        ips = img_per_s(thr, args.batch_size)
        ratios = {b: lat[b]["median_ms"] / lat["eager"]["median_ms"] for b in backends}
        entry["threads"][str(t)] = {
            "latency_ms": lat, "batch_timings": thr, "img_per_s": ips, "latency_ratio_to_eager": ratios,
            "batch_time_ratio_to_eager": {b: ips["eager"] / ips[b] for b in backends},
            "meets_target": {b: ratios[b] <= TARGETS[b] for b in TARGETS},
        }
        del sessions
        print(f"{name}, {t} thread(s): " + ", ".join(f"{b} {r:.2f}x" for b, r in ratios.items()), flush=True)
    return entry


def main() -> None:
    p = parser(__doc__, "deploy", repeats=30, warmup=5, batch_size=64,
               helps={"repeats": "timed batch-1 calls per case (latency)",
                      "warmup": "untimed batch-1 calls per case first",
                      "batch_size": "batch size of the throughput cases"})
    p.add_argument("--models", default=None, help=f"comma-separated timm names (default: {','.join(MODELS)})")
    p.add_argument("--thread-counts", default="1,2", help="comma-separated thread counts (default: 1,2)")
    p.add_argument("--block", type=int, default=5, help="latency calls per case in a row")
    p.add_argument("--batch-repeats", type=int, default=3, help="timed batch rounds, 224/256-px models")
    p.add_argument("--batch-repeats-32", type=int, default=8, help="timed batch rounds, 32-px models")
    p.add_argument("--calibration-batches", type=int, default=4, help="random calibration batches for int8")
    p.add_argument("--calibration-batch", type=int, default=8, help="images per calibration batch")
    p.add_argument("--quick", action="store_true",
                   help=f"{','.join(QUICK_MODELS)} only (unless --models), 10 latency calls, 2 batch rounds")
    args = p.parse_args()
    if args.quick:
        args.repeats, args.warmup, args.batch_repeats, args.batch_repeats_32 = 10, 2, 2, 3
    names = args.models.split(",") if args.models else list(QUICK_MODELS if args.quick else MODELS)
    args.thread_counts = [int(t) for t in args.thread_counts.split(",")]
    executorch = "installed (not measured)" if importlib.util.find_spec("executorch") else "not installed"

    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        entries = [bench_model(name, args, Path(tmp)) for name in names]
    wall_s = time.perf_counter() - started

    rows = []
    for e in entries:
        for t, r in e["threads"].items():
            for case, lat in r["latency_ms"].items():
                ratio = r["latency_ratio_to_eager"].get(case)
                target = TARGETS.get(case)
                rows.append([e["model"], t, case, f"{lat['median_ms']:.2f}", f"{lat['p90_ms']:.2f}",
                             r["img_per_s"][case], f"{ratio:.2f}" if ratio else "",
                             f"<= {target}" if target else "",
                             ("yes" if ratio <= target else "NO") if target else ""])
    print_table(["model", "threads", "case", "b1 median ms", "b1 p90 ms", f"b{args.batch_size} img/s",
                 "lat / eager", "target", "met"], rows,
                title=f"\ndeploy: batch-1 latency over {args.repeats} calls, batch {args.batch_size} throughput")
    print_table(["model", "fp32 bytes", "int8 bytes", "int8/fp32", "int8 top-1 = fp32", "transformer optimizer"],
                [[e["model"], f"{e['file_bytes']['ort fp32']:,}", f"{e['file_bytes']['ort int8']:,}",
                  e["file_bytes"]["ort int8"] / e["file_bytes"]["ort fp32"], e["int8_top1_agreement_with_fp32"],
                  "ok: " + ", ".join(f"{k} {v}" for k, v in e["transformer_optimizer"]["fused"].items())
                  if e["transformer_optimizer"]["ok"] else e["transformer_optimizer"]["reason"]]
                 for e in entries], title="\nfiles")
    print(f"\nExecuTorch: {executorch}; wall time {wall_s:.0f} s")
    result = {
        "models": names, "thread_counts": args.thread_counts, "batch_size": args.batch_size,
        "repeats": args.repeats, "warmup": args.warmup, "block": args.block, "batch_repeats": args.batch_repeats,
        "batch_repeats_32": args.batch_repeats_32, "quick": args.quick, "targets": TARGETS,
        "onnxruntime": ort.__version__, "timm": timm.__version__,
        "session_options": {"graph_optimization_level": "ORT_ENABLE_ALL", "inter_op_num_threads": 1,
                            "execution_mode": "ORT_SEQUENTIAL", "intra_op_num_threads": "the thread count",
                            "default_graph_optimization_level": str(ort.SessionOptions().graph_optimization_level)},
        "executorch": executorch, "wall_s": wall_s, "entries": entries,
    }
    report("deploy", result, args.out)


if __name__ == "__main__":
    main()
