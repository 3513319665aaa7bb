"""The `relevance` benchmark: do the model's relevance maps lie on the object?

Per image with a non-empty foreground mask S and a relevance map r in [0,1] (vitrobust.explain):
- foreground share: sum(r * S) / sum(r), the share of relevance on the object (an all-zero map, which
  min-max normalisation gives a constant map, counts as uniform: the object's share of the area);
- pointing game: the most relevant pixel (first in raster order on ties) lies on the object; exact
  pixel, no tolerance radius;
- IoU of the thresholded map (r >= evaluate.relevance.iou_threshold) with S.
Each is averaged over the images; images whose mask is empty are left out and counted. The entry also
lists an overlay figure of the first `grid` images.

Settings: evaluate.relevance (method chefer|rollout, target label|prediction, subset, iou_threshold,
grid). Masks come from data.masks. Without masks (data.masks.source none) or on a model that has no
token-to-token attention (XCiT), the entry says why it was skipped instead of failing the suite
(`quick` holds this benchmark); masks requested but missing from a batch are an error.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from vitrobust.distributed import all_gather_objects
from vitrobust.errors import InputError
from vitrobust.evaluate.core import COST_MINUTES, PER_IMAGE, EvalContext, per_image, register_benchmark
from vitrobust.explain.relevance import UnsupportedModel, attention_modules, explain

BATCH = 64  # images per relevance batch: every block's attention map and its gradient are held at once
NO_MASKS = ("no foreground masks (data.masks.source is none): relevance maps drawn, mask metrics skipped; "
            "set data.masks.source (threshold, folder or callable) to measure them")


def foreground_share(maps: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """sum(r*S)/sum(r) per image; an all-zero map counts as uniform (the object's share of the area)."""
    r, s = maps.flatten(1).float(), masks.flatten(1).float()
    total = r.sum(1)
    return torch.where(total > 0, (r * s).sum(1) / total.clamp_min(1e-12), s.mean(1))


def pointing_game(maps: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Whether each map's maximum (first in raster order) lies on the object."""
    top = maps.flatten(1).argmax(1, keepdim=True)
    return masks.flatten(1).bool().gather(1, top)[:, 0]


def mask_iou(maps: torch.Tensor, masks: torch.Tensor, threshold: float) -> torch.Tensor:
    """IoU of (r >= threshold) with S per image (1 where both are empty)."""
    pred, s = maps.flatten(1) >= threshold, masks.flatten(1).bool()
    inter, union = (pred & s).sum(1).float(), (pred | s).sum(1).float()
    return torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(union))


def _skipped(rel, reason: str, figures: list[str] | None = None) -> dict:
    return {"foreground_share": None, "pointing_game": None, "iou": None, "method": rel.method, "target": rel.target,
            "n": 0, "skipped": reason, "figures": figures or []}


def _draw(ctx: EvalContext, shown: dict | None, rel) -> list[str]:
    if not shown or ctx.out_dir is None or not ctx.dist.main:
        return []
    from vitrobust.figures.relevance import relevance_grid

    what = "the label" if rel.target == "label" else "the prediction"
    title = f"{rel.method} relevance of {what}" if rel.method == "chefer" else "attention rollout"
    path = relevance_grid(shown["x"], shown["maps"], ctx.out_dir / f"relevance_{rel.method}.png", masks=shown["mask"],
                          labels=shown["y"], preds=shown["pred"], targets=shown["target"],
                          classes=ctx.data.classes, title=title)
    return [path.name]


@register_benchmark("relevance", suites=("relevance", "quick"), cost=COST_MINUTES, gradients=True)
def relevance(model: torch.nn.Module, ctx: EvalContext) -> dict:
    rel = ctx.cfg.evaluate.relevance
    try:
        attention_modules(model)
    except UnsupportedModel as err:
        return _skipped(rel, str(err))
    data = ctx.data.subset(rel.subset, ctx.cfg.data.subset_seed)
    has_masks = bool(getattr(data, "has_masks", False))
    if ctx.cfg.data.masks.source != "none" and not has_masks:
        raise InputError(f"data.masks.source={ctx.cfg.data.masks.source} but the evaluation images carry no masks: "
                         f"check data.masks (root, threshold, callable)")
    if not has_masks:  # maps for the figure only
        data = data.subset(max(rel.grid, 1), ctx.cfg.data.subset_seed)
    loader = replace(ctx, batch_size=min(ctx.batch_size, BATCH)).loader(data)
    parts, shown = [], None
    for batch in loader:
        mask = batch.extras.get("mask")
        if has_masks and mask is None:
            raise InputError("the evaluation batches carry no foreground masks: set data.masks.source")
        expl = explain(model, batch.x, batch.y if rel.target == "label" else None, method=rel.method)
        if rel.grid and int(batch.index[0]) == 0:
            k = min(rel.grid, len(batch))
            shown = {"x": batch.x[:k], "maps": expl.maps[:k], "mask": None if mask is None else mask[:k],
                     "y": batch.y[:k], "pred": expl.logits[:k].argmax(-1), "target": expl.target[:k]}
        if mask is not None:
            mask = mask[:, 0]
            parts.append((batch.index, mask.flatten(1).any(1).cpu(), foreground_share(expl.maps, mask).cpu(),
                          pointing_game(expl.maps, mask).cpu(), mask_iou(expl.maps, mask, rel.iou_threshold).cpu()))
    figures = _draw(ctx, shown, rel)
    if not has_masks:
        return _skipped(rel, NO_MASKS, figures)
    local = [torch.cat([p[i] for p in parts]) if parts else torch.empty(0) for i in range(5)]
    gathered = all_gather_objects(local)
    index, valid, share, hit, iou = (torch.cat([g[i] for g in gathered]) for i in range(5))
    valid = valid.bool()
    n = int(valid.sum())

    def mean(values: torch.Tensor) -> float | None:
        return float(values[valid].float().mean()) if n else None

    order = torch.argsort(index)
    kept = order[valid[order]]  # images with a non-empty mask, in dataset order
    scores = {"foreground_share": share[kept].float(), "pointing_game": hit[kept].bool(), "iou": iou[kept].float()}
    return {"foreground_share": mean(share), "pointing_game": mean(hit), "iou": mean(iou), "method": rel.method,
            "target": rel.target, "n": n, "n_empty_masks": int(len(index)) - n, "iou_threshold": rel.iou_threshold,
            "figures": figures, PER_IMAGE: {k: per_image(data, v, part="nonempty") for k, v in scores.items()}}
