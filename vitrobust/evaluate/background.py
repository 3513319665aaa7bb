"""The backgrounds-challenge protocol (Xiao et al. 2020, "Noise or Signal: The Role of Image Backgrounds
in Object Recognition", ImageNet-9) on any evaluation set with foreground masks.

Variants of each image, named as in ImageNet-9:
  original    the image as it is
  only_fg     the foreground on black (every background pixel 0)
  mixed_same  the foreground pasted, where it is, on the background of another image of the SAME class
  mixed_rand  the same on the background of an image of a random class (class uniform, then image)
  bg_gap      mixed_same - mixed_rand: what the right-class background is worth once the object is there
A background is its image with the foreground removed. The paper covers the object's bounding box
with tiles cut from the image beside the box (its Only-BG-T), so no silhouette of the removed object
survives to give its class away; we do the same: the box is tiled, from the image's top-left corner,
with the widest band between the box and the image border (left/right bands span the full height,
top/bottom bands the full width). When the box touches all four borders there is no band and the box
is filled with the mean colour of its background pixels (black without any). Pairs are drawn once
from evaluate.background.seed, so every rank and every run builds the same images.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vitrobust.data import ImageSet
from vitrobust.evaluate.core import PER_IMAGE, EvalContext, per_image, predict, register_benchmark

EXAMPLES = 8  # images drawn in background_examples.png
VARIANTS = ("original", "only_fg", "mixed_same", "mixed_rand")
NO_MASKS = ("no foreground masks: set data.masks.source (threshold, folder or callable) or use a dataset with "
            "its own masks (fashion_mnist_textured)")


def remove_foreground(image: torch.Tensor, fg: torch.Tensor) -> torch.Tensor:
    """uint8 C x H x W background of `image` (bool H x W foreground `fg`): bounding box tiled, see above."""
    rows, cols = fg.any(dim=1).nonzero()[:, 0], fg.any(dim=0).nonzero()[:, 0]
    if len(rows) == 0:
        return image.clone()
    y0, y1, x0, x1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    _, h, w = image.shape
    bands = {"left": x0 * h, "right": (w - x1) * h, "top": y0 * w, "bottom": (h - y1) * w}
    side = max(bands, key=bands.get)
    out = image.clone()
    if bands[side] == 0:
        rest = image[:, ~fg]
        fill = rest.float().mean(dim=1).round().to(image.dtype) if rest.shape[1] else torch.zeros_like(image[:, 0, 0])
        out[:, y0:y1, x0:x1] = fill[:, None, None]
        return out
    tile = {"left": image[:, :, :x0], "right": image[:, :, x1:], "top": image[:, :y0], "bottom": image[:, y1:]}[side]
    th, tw = tile.shape[1:]
    tiled = tile.repeat(1, -(-h // th), -(-w // tw))[:, :h, :w]
    out[:, y0:y1, x0:x1] = tiled[:, y0:y1, x0:x1]
    return out


def pair_backgrounds(labels: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(same, rand): for image i, the index of its mixed-same donor (another image of its class; itself
    only when it is alone in its class) and of its mixed-rand donor (a uniformly drawn class present in
    the set, then a uniformly drawn image of it)."""
    gen = torch.Generator().manual_seed(seed)
    n = len(labels)
    same = torch.empty(n, dtype=torch.long)
    classes = labels.unique()  # sorted: a fixed order of draws
    members = [(labels == c).nonzero()[:, 0] for c in classes]
    for idx in members:
        m = len(idx)
        shift = torch.randint(1, m, (m,), generator=gen) if m > 1 else torch.zeros(1, dtype=torch.long)
        same[idx] = idx[(torch.arange(m) + shift) % m]
    rand_class = torch.randint(len(classes), (n,), generator=gen)
    u = torch.rand(n, generator=gen)
    rand = torch.empty(n, dtype=torch.long)
    for k, idx in enumerate(members):
        sel = rand_class == k
        rand[sel] = idx[(u[sel] * len(idx)).long().clamp(max=len(idx) - 1)]
    return same, rand


@dataclass(frozen=True)
class Composite:
    """`read(i)` of a variant set: image i, changed per `kind`, at the data's stored size (uint8)."""

    data: ImageSet
    kind: str
    donors: tuple[int, ...] = ()

    def __call__(self, i: int) -> torch.Tensor:
        image, fg = self.data.sample(i), self.data.mask(i)[0] >= 128
        if self.kind == "only_fg":
            return image * fg
        j = self.donors[i]
        return torch.where(fg, image, remove_foreground(self.data.sample(j), self.data.mask(j)[0] >= 128))


def variant(data: ImageSet, kind: str, donors: torch.Tensor | None = None) -> ImageSet:
    """The whole set as one variant; built in memory when the images are, else read per sample."""
    read = Composite(data, kind, tuple(donors.tolist()) if donors is not None else ())
    images = None
    if data.images is not None:
        fg = torch.stack([data.mask(i) for i in range(len(data))]) >= 128
        if kind == "only_fg":
            images = data.images * fg
        else:
            backgrounds = torch.stack([remove_foreground(data.images[j], fg[j, 0]) for j in range(len(data))])
            images = torch.where(fg, data.images, backgrounds[donors])
    return ImageSet(labels=data.labels, classes=data.classes, img_size=data.img_size, in_chans=data.in_chans,
                    mean=data.mean, std=data.std, images=images, read=read, name=f"{data.name}:{kind}",
                    info=data.info)


def _draw(ctx: EvalContext, sets: dict[str, ImageSet], preds: dict[str, torch.Tensor], labels: torch.Tensor) -> list[str]:
    if ctx.out_dir is None or not ctx.dist.main:
        return []
    from vitrobust.figures.background import background_examples

    k = min(EXAMPLES, len(labels))
    variants = {kind: torch.stack([data.sample(c) for c in range(k)]) for kind, data in sets.items()}
    path = background_examples(variants, {kind: p[:k].tolist() for kind, p in preds.items()}, labels[:k].tolist(),
                               ctx.out_dir / "background_examples.png", classes=ctx.data.classes)
    return [path.name]


@register_benchmark("background", suites=("background", "quick"))
def background(model: torch.nn.Module, ctx: EvalContext) -> dict:
    b = ctx.cfg.evaluate.background
    data = ctx.data.subset(b.subset, ctx.cfg.data.subset_seed)
    if not data.has_masks:  # the quick suite runs on any data: say why there is no number
        return {**dict.fromkeys(VARIANTS), "bg_gap": None, "n": 0, "seed": b.seed, "skipped": NO_MASKS, "figures": []}
    same, rand = pair_backgrounds(data.labels, b.seed)
    sets = {"original": data, "only_fg": variant(data, "only_fg"), "mixed_same": variant(data, "mixed_same", same),
            "mixed_rand": variant(data, "mixed_rand", rand)}
    preds, top1, flags = {}, {}, {}
    for kind, images in sets.items():
        preds[kind], labels = predict(model, ctx, images)
        flags[kind] = per_image(data, preds[kind] == labels)
        top1[kind] = flags[kind][0].float().mean().item()
    gap = flags["mixed_same"][0].float() - flags["mixed_rand"][0].float()  # per image: -1, 0 or 1
    return {**top1, "bg_gap": top1["mixed_same"] - top1["mixed_rand"], "n": len(data), "seed": b.seed,
            "figures": _draw(ctx, sets, preds, data.labels), PER_IMAGE: {**flags, "bg_gap": per_image(data, gap)}}


__all__ = ["Composite", "background", "pair_backgrounds", "remove_foreground", "variant"]
