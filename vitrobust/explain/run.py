"""`vitrobust explain RUN`: relevance maps of a balanced sample of a run's test images, as overlay PNGs and a .pt file."""

from __future__ import annotations

from pathlib import Path

import torch

from vitrobust.checkpoint import save_state
from vitrobust.config import config_for_run
from vitrobust.data import BatchLoader, load_split
from vitrobust.distributed import resolve_device
from vitrobust.errors import InputError
from vitrobust.explain.relevance import METHODS, attention_modules, explain
from vitrobust.models import load_model

PER_FIGURE = 32  # images per PNG: larger grids become unreadable
MAPS_FILE = "relevance_maps.pt"


def explain_run(path: str | Path, n: int = 8, out: str | Path | None = None, overrides: list[str] | None = None,
                method: str | None = None, target: str | None = None) -> dict:
    """Relevance maps of a balanced sample of `n` test images of a run (or weights file; data.subset_seed):
    overlay PNG(s) and the maps.

    method / target default to the run's evaluate.relevance settings (--set evaluate.relevance.* works too).
    Writes to `out` (default RUN_DIR/explain): relevance.png (relevance_1.png, ... beyond 32 images) and
    relevance_maps.pt, a dict of tensors (maps B x H x W, tokens, labels, predictions, targets, index: each
    image's position in the test split) and
    the method and target names; read it back with torch.load(path, weights_only=True).
    """
    from vitrobust.figures.relevance import relevance_grid  # matplotlib, only when drawing

    if n < 1:
        raise InputError(f"--n must be at least 1, got {n}")
    path = Path(path)
    model = load_model(path)
    cfg = config_for_run(model.run_config, overrides)
    rel = cfg.evaluate.relevance
    method, target = method or rel.method, target or rel.target
    if method not in METHODS or target not in ("label", "prediction"):
        raise InputError(f"method must be one of {', '.join(METHODS)} and target label or prediction, "
                         f"got {method!r} and {target!r}")
    attention_modules(model)  # UnsupportedModel before any data is read
    device = resolve_device(cfg.device)
    model.to(device)
    data = load_split(cfg.data, "test").subset(n, cfg.data.subset_seed)
    out = Path(out) if out else (path if path.is_dir() else path.parent) / "explain"
    keys = ("x", "maps", "tokens", "mask", "labels", "predictions", "targets", "index")
    parts: dict[str, list] = {k: [] for k in keys}
    for batch in BatchLoader(data, min(n, 64), device, train=False, img_size=cfg.data.img_size):
        expl = explain(model, batch.x, batch.y if target == "label" else None, method=method)
        mask = batch.extras.get("mask")
        for key, value in zip(keys, (batch.x, expl.maps, expl.tokens, mask, batch.y, expl.logits.argmax(-1),
                                     expl.target, data.source_positions[batch.index.cpu()])):
            if value is not None:
                parts[key].append(value.cpu())
    got = {k: torch.cat(v) for k, v in parts.items() if v}
    out.mkdir(parents=True, exist_ok=True)
    figures = []
    for i, start in enumerate(range(0, len(got["x"]), PER_FIGURE)):
        part = slice(start, start + PER_FIGURE)
        name = "relevance.png" if len(got["x"]) <= PER_FIGURE else f"relevance_{i + 1}.png"
        title = f"{method} relevance of the {target}" if method == "chefer" else "attention rollout"
        figures.append(relevance_grid(got["x"][part], got["maps"][part], out / name,
                                      masks=got["mask"][part] if "mask" in got else None, labels=got["labels"][part],
                                      preds=got["predictions"][part], targets=got["targets"][part],
                                      classes=data.classes, title=f"{model.spec['name']}: {title}"))
    saved = {k: v for k, v in got.items() if k != "x"}
    maps_path = out / MAPS_FILE
    save_state({**saved, "method": method, "target": target}, maps_path)
    return {"figures": figures, "maps": maps_path, "n": len(got["x"])}


__all__ = ["MAPS_FILE", "explain_run"]
