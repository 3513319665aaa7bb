"""The model card beside an exported file (FILE.card.json and FILE.card.md): what goes in and out, the
classes, the resize rule, the source run and its measured numbers with intervals, the equivalence
figures of the export, the file's size and checksum, opset and runtime versions."""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
from pathlib import Path

from vitrobust.checkpoint import atomic_write_text
from vitrobust.models import count_flops, count_params
from vitrobust.models.classifier import ImageClassifier
from vitrobust.results import read_results


def _file(path: Path) -> dict:
    return {"file": path.name, "bytes": path.stat().st_size, "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}


def _patch(model: ImageClassifier) -> int:
    return model.net.patch_embed.patch_size[0]


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def measured(source: str | Path) -> list[dict]:
    """Each headline number of the run's results.json that has a 95% interval (top-level keys of an entry)."""
    path = Path(source) / "results.json" if Path(source).is_dir() else Path(source).with_name("results.json")
    if not path.is_file():
        return []
    rows = []
    for name, entry in read_results(path).items():
        if name == "meta" or not isinstance(entry, dict):
            continue
        for key, ci in (entry.get("ci95") or {}).items():
            if "." not in key and isinstance(entry.get(key), (int, float)):
                rows.append({"benchmark": name, "metric": key, "value": entry[key], "ci95": ci, "n": entry.get("n")})
    return rows


def write_card(model: ImageClassifier, source: str | Path, out: Path, int8: Path | None, figures: dict, *,
               opset: int, calibration: int | None, classes: list[str] | None = None, maps: str | None = None) -> dict:
    cfg = model.net.pretrained_cfg
    c, h, w = model.input_shape
    card = {
        "model": model.spec["name"], "source": str(source),
        "spec": model.spec, "config": getattr(model, "run_config", ""),
        "params": count_params(model), "flops": count_flops(model),
        "input": {"name": "images", "shape": ["N", c, h, w], "dtype": "float32", "range": [0.0, 1.0],
                  "normalisation": "inside the graph" if model.spec.get("mean") else "none",
                  "mean": model.spec.get("mean"), "std": model.spec.get("std")},
        "output": {"name": "logits", "shape": ["N", model.num_classes]},
        "maps": ({"name": "rollout", "shape": ["N", h // _patch(model), w // _patch(model)],
                  "what": "attention rollout of the CLS token over the patches, min-max normalised per image"}
                 if maps == "rollout" else None),
        "classes": classes,
        "resize": {"size": h, "crop_pct": cfg.get("crop_pct"), "interpolation": cfg.get("interpolation"),
                   "rule": "shorter side to size / crop_pct, centre crop, then [0,1] floats"},
        "files": {"fp32": _file(out), **({"int8": _file(int8)} if int8 else {})},
        "equivalence": figures,
        "quantization": ({"method": "onnxruntime static, QDQ, per-channel int8 weights, uint8 activations; MatMul, Gemm, Conv",
                          "calibration_images": calibration, "calibration_split": "train"} if int8 else None),
        "results": measured(source),
        "opset": opset,
        "versions": {p: _version(p) for p in ("vitrobust", "torch", "onnx", "onnxscript", "onnxruntime")},
    }
    base = out.with_suffix("")
    atomic_write_text(base.with_name(base.name + ".card.json"), json.dumps(card, indent=2))
    atomic_write_text(base.with_name(base.name + ".card.md"), markdown(card))
    return card


def markdown(card: dict) -> str:
    i, r, eq = card["input"], card["resize"], card["equivalence"]
    lines = [f"# {card['model']} (ONNX, opset {card['opset']})", "",
             f"- source: `{card['source']}`",
             f"- input `{i['name']}`: {' x '.join(map(str, i['shape']))} float32 in [0, 1]; normalisation "
             f"{i['normalisation']}" + (f" (mean {i['mean']}, std {i['std']})" if i["mean"] else ""),
             f"- output `{card['output']['name']}`: N x {card['output']['shape'][1]} logits",
             *([f"- output `{card['maps']['name']}`: {' x '.join(map(str, card['maps']['shape']))}, {card['maps']['what']}"]
               if card.get("maps") else []),
             f"- resize: {r['rule']}; size {r['size']}, crop_pct {r['crop_pct']}, {r['interpolation']}"]
    if card["classes"]:
        lines.append(f"- classes: {', '.join(card['classes'])}")
    lines += ["", "| file | bytes | sha256 |", "|---|---|---|"]
    lines += [f"| {f['file']} | {f['bytes']} | `{f['sha256'][:16]}...` |" for f in card["files"].values()]
    fp = eq["fp32"]
    lines += ["", f"Equivalence on {fp['images']} test images: fp32 vs PyTorch max logit difference "
                  f"{fp['max_abs_logit_diff']:.2e}, top-1 agreement {100 * fp['top1_agreement']:.2f}%."]
    if "int8" in eq:
        lines.append(f"int8 vs fp32 top-1 agreement {100 * eq['int8']['top1_agreement_with_fp32']:.2f}% "
                     f"({card['quantization']['calibration_images']} calibration images from the training split).")
    lat = eq.get("latency_ms_batch1")
    if lat:
        lines.append("Batch-1 latency (median ms, " + str(lat["threads"]) + " threads, at export): " + ", ".join(
            f"{k} {v}" for k, v in lat.items() if k != "threads") + ".")
    if card["results"]:
        lines += ["", "Measured on the PyTorch model (95% intervals):", "", "| benchmark | metric | value | 95% CI | n |",
                  "|---|---|---|---|---|"]
        lines += [f"| {x['benchmark']} | {x['metric']} | {x['value']:.4f} | [{x['ci95'][0]:.4f}, {x['ci95'][1]:.4f}] "
                  f"| {x['n']} |" for x in card["results"]]
    lines += ["", "Versions: " + ", ".join(f"{k} {v}" for k, v in card["versions"].items() if v)]
    return "\n".join(lines) + "\n"


__all__ = ["markdown", "measured", "write_card"]
