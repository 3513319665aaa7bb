"""A run as an ONNX file that any runtime runs: [0,1] float NCHW images in (normalisation inside the
graph, as in PyTorch), logits out, dynamic batch; optionally int8 by onnxruntime's static quantisation.

The file is checked on the run's test images before it is kept: fp32 logits within 1e-4 of PyTorch
and the same top-1 on every image; int8 top-1 agreeing with fp32 on >= 99%. A failed check is an
error and leaves no file. A model card (JSON and Markdown) is written beside it (export/card.py).
"""

from __future__ import annotations

import logging
import os
import statistics
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from vitrobust.config import config_for_run
from vitrobust.data import BatchLoader, load_split
from vitrobust.data.base import ImageSet
from vitrobust.errors import CheckpointError, UserError
from vitrobust.explain.relevance import LogitsAndRollout, UnsupportedModel
from vitrobust.export.card import write_card
from vitrobust.models import load_model
from vitrobust.models.classifier import ImageClassifier
from vitrobust.models.runtime import ort_session as session

OPSET = 18
MAX_DIFF = 1e-4  # fp32 file vs PyTorch: largest logit difference
MIN_INT8_AGREEMENT = 0.99  # int8 file vs fp32 file: share of images with the same top-1
BATCH = 64
INT8_OPS = ("MatMul", "Gemm", "Conv")


def _needs_runtime():
    try:
        import onnxruntime  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as err:
        raise UserError(f"ONNX export needs the deploy extra ({err.name} is missing): pip install 'vitrobust[deploy]' "
                        f"(scripts/setup.sh installs it)") from None


def _sample(model: ImageClassifier, overrides: list[str], split: str, n: int) -> ImageSet:
    """A balanced sample of n images of the run's dataset (its config, then --set overrides)."""
    cfg = config_for_run(getattr(model, "run_config", ""), overrides)
    return load_split(cfg.data, split).subset(n, cfg.data.subset_seed)


def _batches(data: ImageSet, model: ImageClassifier) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(images, labels) batches as float32 [0,1] NCHW arrays."""
    for batch in BatchLoader(data, BATCH, torch.device("cpu"), train=False, img_size=model.input_shape[-1]):
        yield batch.x.numpy().astype(np.float32), batch.y.numpy()


def to_onnx(model: ImageClassifier, path: Path, maps: str | None = None) -> None:
    """The model as ONNX at `path`: input `images` ([0,1], dynamic batch), output `logits`, opset OPSET; with
    maps='rollout' also `rollout`, the attention-rollout map at patch resolution (explain/relevance.py)."""
    x = torch.rand(2, *model.input_shape)
    batch = torch.export.Dim("batch", min=1, max=65536)
    try:
        graph, outputs = (LogitsAndRollout(model), ["logits", "rollout"]) if maps == "rollout" else (model, ["logits"])
    except UnsupportedModel as err:
        raise CheckpointError(f"--maps rollout: {err}") from None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(graph, (x,), dynamo=True, input_names=["images"], output_names=outputs,
                                        dynamic_shapes={"x": {0: batch}}, opset_version=OPSET, verbose=False)
        program.save(str(path))
    except Exception as err:  # torch's exporter names the op or module it could not take
        lines = [line for line in str(err).splitlines() if line.strip()]
        raise CheckpointError(f"{model.spec['name']} cannot be exported to ONNX: {lines[0] if lines else type(err).__name__}"
                              ) from None


def check_fp32(model: ImageClassifier, path: Path, batches, maps: str | None = None) -> dict:
    """Logits of the file vs PyTorch on the check images: max abs difference, top-1 agreement; with maps,
    the largest difference of the rollout maps too."""
    runner, diff, same, n, map_diff = session(path), 0.0, 0, 0, 0.0
    reference = LogitsAndRollout(model) if maps == "rollout" else None
    for x, _ in batches:
        got = runner.run(None, {"images": x})
        with torch.no_grad():
            want = [t.numpy() for t in reference(torch.from_numpy(x))] if reference else [model(torch.from_numpy(x)).numpy()]
        diff = max(diff, float(np.abs(got[0] - want[0]).max()))
        if reference is not None:
            map_diff = max(map_diff, float(np.abs(got[1] - want[1]).max()))
        same += int((got[0].argmax(1) == want[0].argmax(1)).sum())
        n += len(x)
    out = {"images": n, "max_abs_logit_diff": diff, "top1_agreement": same / max(n, 1)}
    return {**out, "max_abs_rollout_diff": map_diff} if reference is not None else out


def latency_ms(model: ImageClassifier, files: dict[str, Path], calls: int = 30) -> dict:
    """Median batch-1 latency in ms of PyTorch eager and of each file on onnxruntime, in this process with
    its thread settings (a quick figure for the card; benchmarks/bench_deploy.py measures properly)."""
    x = torch.rand(1, *model.input_shape)
    runs = {"pytorch": lambda: model(x)}
    for name, path in files.items():
        runner, feed = session(path), {"images": x.numpy()}
        runs[name] = lambda r=runner, f=feed: r.run(["logits"], f)
    out = {}
    with torch.inference_mode():
        for name, fn in runs.items():
            for _ in range(5):
                fn()
            times = []
            for _ in range(calls):
                t0 = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t0)
            out[name] = round(1000 * statistics.median(times), 3)
    out["threads"] = torch.get_num_threads()
    return out


def check_int8(fp32: Path, int8: Path, batches) -> dict:
    a, b = session(fp32), session(int8)
    same = n = 0
    for x, _ in batches:
        same += int((a.run(["logits"], {"images": x})[0].argmax(1) == b.run(["logits"], {"images": x})[0].argmax(1)).sum())
        n += len(x)
    return {"images": n, "top1_agreement_with_fp32": same / max(n, 1)}


def quantize_int8(fp32: Path, out: Path, calibration) -> None:
    """Post-training static quantisation (QDQ, per-channel int8 weights, uint8 activations) of the matrix
    products with onnxruntime, calibrated on training images."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = ({"images": x} for x, _ in calibration)

        def get_next(self):
            return next(self.batches, None)

    prepared = out.with_name(out.name + ".pre.onnx")
    quiet = logging.getLogger()  # the quantiser logs per-tensor notes on the root logger
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
        # the matrix products carry the compute; norms and softmax stay fp32 (their int8 error costs accuracy)
        quantize_static(str(prepared), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        weight_type=QuantType.QInt8, activation_type=QuantType.QUInt8,
                        op_types_to_quantize=list(INT8_OPS))
    finally:
        quiet.setLevel(level)
        prepared.unlink(missing_ok=True)


def export_onnx(source: str | Path, out: str | Path, *, ema: bool = False, quantize: str | None = None,
                maps: str | None = None, check: int = 1000, calibration: int = 512, overrides: list[str] | None = None,
                overwrite: bool = False) -> dict:
    """Write `out` (.onnx; with quantize='int8' also OUT.int8.onnx) and its card; returns the card."""
    _needs_runtime()
    out = Path(out)
    int8 = out.with_name(out.stem + ".int8.onnx") if quantize == "int8" else None
    targets = [p for p in (out, int8) if p is not None]
    if not overwrite and any(p.exists() for p in targets):
        raise CheckpointError(f"{', '.join(str(p) for p in targets if p.exists())} exists: choose another --out, "
                              f"or add --overwrite")
    model = load_model(source, ema=ema).float().eval()
    overrides = list(overrides or [])
    test = _sample(model, overrides, "test", check)  # before anything is written: data errors come first
    check_set = list(_batches(test, model))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = {p: p.with_name(f".{p.name}.tmp") for p in targets}
    try:
        to_onnx(model, tmp[out], maps)
        figures = {"fp32": check_fp32(model, tmp[out], check_set, maps)}
        f = figures["fp32"]
        if f["max_abs_logit_diff"] > MAX_DIFF or f["top1_agreement"] < 1.0 or f.get("max_abs_rollout_diff", 0) > MAX_DIFF:
            raise CheckpointError(f"the ONNX file does not match PyTorch on {f['images']} test images: max logit "
                                  f"difference {f['max_abs_logit_diff']:.2e} (limit {MAX_DIFF:g}), top-1 agreement "
                                  f"{100 * f['top1_agreement']:.2f}%, rollout difference {f.get('max_abs_rollout_diff', 0):.2e}; "
                                  f"nothing was written")
        if int8 is not None:
            quantize_int8(tmp[out], tmp[int8], _batches(_sample(model, overrides, "train", calibration), model))
            figures["int8"] = check_int8(tmp[out], tmp[int8], check_set)
            agree = figures["int8"]["top1_agreement_with_fp32"]
            if agree < MIN_INT8_AGREEMENT:
                raise CheckpointError(f"the int8 file agrees with fp32 on {100 * agree:.1f}% of {figures['int8']['images']} "
                                      f"test images (at least {100 * MIN_INT8_AGREEMENT:g}% needed): calibrate on more "
                                      f"images (--calibration) or ship the fp32 file; nothing was written")
        figures["latency_ms_batch1"] = latency_ms(model, {"fp32": tmp[out], **({"int8": tmp[int8]} if int8 else {})})
        for p in targets:
            os.replace(tmp[p], p)
    finally:
        for p in tmp.values():
            p.unlink(missing_ok=True)
    return write_card(model, source, out, int8, figures, opset=OPSET, calibration=calibration if int8 else None,
                      classes=list(test.classes), maps=maps)


__all__ = ["MAX_DIFF", "MIN_INT8_AGREEMENT", "OPSET", "export_onnx", "quantize_int8", "session", "to_onnx"]
