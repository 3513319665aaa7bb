"""Fashion-MNIST on real textures: background reliance that can be measured on a laptop.

Each 32-px garment (read by the fashion_mnist loader) is pasted, by its mask, onto a 32 x 32 crop of
one of ten grayscale textures that scikit-image ships inside its package (no download). Texture k
belongs to class k. In training a sample gets its class's own texture with probability
`correlation` (else one of the other nine, uniformly); at test time with `test_correlation`, whose
default 0.1 = 1/10 makes the texture independent of the class. A model that takes the texture
shortcut does well in training and loses accuracy at test time and under the background
benchmark's mixed-rand swaps. The garment mask is the exact mask used for pasting, so the split
carries its own masks (data.masks.source is not needed). One channel: the textures differ in
structure and brightness, which grayscale keeps; colour would only add a second shortcut.

data.options: correlation (0.9), test_correlation (0.1), seed (0). Everything is a function of the
Fashion-MNIST files and these options: the same options give the same images in every process.

The background benchmark's BG-gap needs class-typical backgrounds in the evaluation set (on the
independent default test split another image of the same class has a random texture, so mixed-same
equals mixed-rand by construction): evaluate it with --set data.options.test_correlation=1.0.
"""

from __future__ import annotations

import functools
from numbers import Integral, Real

import numpy as np
import torch
from numpy.lib.stride_tricks import sliding_window_view
from PIL import Image
from scipy import ndimage

from vitrobust.data.base import ImageSet
from vitrobust.data.fashion_mnist import load_fashion_mnist
from vitrobust.errors import ConfigError

TEXTURES = ("brick", "grass", "gravel", "moon", "coins", "page", "text", "checkerboard", "chelsea", "cell")
TEXTURE_SCALE = 2  # halve the textures so a 32-px crop holds several bricks, blades or pebbles
GARMENT_LEVEL = 10  # garment = pixels above this; lower levels are mostly stray specks around the garment
HOLE_PIXELS = 8
SIZE = 32
DEFAULTS = {"correlation": 0.9, "test_correlation": 0.1, "seed": 0}
SPLIT_STREAM = {"train": 0, "test": 1}
# Statistics of the training images with the default options.
MEAN, STD = (0.5173,), (0.2518,)


@functools.cache
def load_textures() -> tuple[np.ndarray, ...]:
    """The ten textures as uint8 H x W arrays (grayscale, halved)."""
    import skimage.data

    out = []
    for name in TEXTURES:
        img = Image.fromarray(np.asarray(getattr(skimage.data, name)(), dtype=np.uint8))
        out.append(np.asarray(img.convert("L").reduce(TEXTURE_SCALE)))
    return tuple(out)


def garment_masks(images: np.ndarray) -> np.ndarray:
    """bool N x H x W: pixels above GARMENT_LEVEL plus the small holes they enclose.

    A hole of at most HOLE_PIXELS pixels is a dark spot of the garment; a larger enclosed region (inside
    a bag's handle, between sandal straps) is background and gets the texture.
    """
    fg = images > GARMENT_LEVEL
    in_plane = np.zeros((3, 3, 3), dtype=bool)
    in_plane[1] = ndimage.generate_binary_structure(2, 1)  # label each image on its own
    background, n = ndimage.label(~fg, structure=in_plane)
    small = np.bincount(background.ravel(), minlength=n + 1) <= HOLE_PIXELS
    border = np.concatenate([background[:, 0], background[:, -1], background[:, :, 0], background[:, :, -1]],
                            axis=None)
    small[np.unique(border)] = False  # regions that reach the image border are outside, whatever their size
    small[0] = True  # label 0 = garment pixels
    return small[background]


def assign_textures(labels: np.ndarray, correlation: float, seed: int, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(texture id per sample, crop offset (row, col) per sample in that texture)."""
    k = len(TEXTURES)
    rng = np.random.default_rng([seed, SPLIT_STREAM[split]])
    u = rng.random((len(labels), 4))  # one draw per sample and purpose, whatever the correlation
    labels = np.asarray(labels, dtype=np.int64)
    other = (labels + 1 + np.floor(u[:, 1] * (k - 1)).astype(np.int64)) % k
    texture = np.where(u[:, 0] < correlation, labels, other)
    room = np.array([t.shape for t in load_textures()])[texture] - SIZE + 1
    offsets = np.floor(u[:, 2:] * room).astype(np.int64)
    return texture, offsets


def compose(garments: np.ndarray, masks: np.ndarray, texture: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """uint8 N x 32 x 32: each texture crop with the garment pasted over it where the mask is set."""
    out = np.empty_like(garments)
    for t, tex in enumerate(load_textures()):
        idx = np.flatnonzero(texture == t)
        out[idx] = sliding_window_view(tex, (SIZE, SIZE))[offsets[idx, 0], offsets[idx, 1]]
    np.copyto(out, garments, where=masks)
    return out


def parse_options(options: dict | None) -> dict:
    opts = dict(DEFAULTS)
    for key, value in (options or {}).items():
        if key not in DEFAULTS:
            raise ConfigError(f"data.options.{key}: unknown option of fashion_mnist_textured; "
                              f"valid: {', '.join(DEFAULTS)}")
        if key == "seed" and not (isinstance(value, Integral) and not isinstance(value, bool)):
            raise ConfigError(f"data.options.seed must be an integer, got {value!r}")
        if key != "seed" and not (isinstance(value, Real) and not isinstance(value, bool) and 0 <= value <= 1):
            raise ConfigError(f"data.options.{key} must be a probability in [0, 1], got {value!r}")
        opts[key] = value
    return opts


def load_fashion_mnist_textured(split: str, root: str | None = None, download: bool = False,
                                options: dict | None = None) -> ImageSet:
    opts = parse_options(options)
    base = load_fashion_mnist(split, root=root, download=download)
    garments = base.images[:, 0].numpy()
    masks = garment_masks(garments)
    correlation = opts["correlation"] if split == "train" else opts["test_correlation"]
    texture, offsets = assign_textures(base.labels.numpy(), correlation, opts["seed"], split)
    images = compose(garments, masks, texture, offsets)
    return ImageSet(
        labels=base.labels, classes=base.classes, img_size=SIZE, in_chans=1, mean=MEAN, std=STD,
        images=torch.from_numpy(images).unsqueeze(1), masks=torch.from_numpy(masks).unsqueeze(1).to(torch.uint8) * 255,
        name="fashion_mnist_textured",
        info={**base.info, "mask_source": "dataset", "textures": list(TEXTURES), "correlation": correlation,
              "seed": opts["seed"]},
    )


__all__ = ["TEXTURES", "assign_textures", "compose", "garment_masks", "load_fashion_mnist_textured", "load_textures"]
