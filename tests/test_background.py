"""The background benchmark (ImageNet-9 protocol): background removal, seeded pairing, and outcomes of
models that look only at the background or only at the foreground."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from torch import nn

from vitrobust.config import Config
from vitrobust.data import ImageSet
from vitrobust.evaluate import SUITES, evaluate
from vitrobust.evaluate.background import pair_backgrounds, remove_foreground, variant

BACKGROUND = (20, 60, 100, 140)  # grey level of class k's background
FOREGROUND = (180, 200, 220, 240)  # grey level of class k's square


def scene_set(per_class: int = 6, size: int = 16) -> ImageSet:
    """Class k: a plain background of BACKGROUND[k] with a square of FOREGROUND[k] (sides 3..6, at
    positions that vary per image, never touching the border); masks = the squares. Classes interleaved
    in a shuffled order."""
    n = 4 * per_class
    labels = torch.arange(n) % 4
    labels = labels[torch.randperm(n, generator=torch.Generator().manual_seed(0))]
    images = torch.empty(n, 1, size, size, dtype=torch.uint8)
    masks = torch.zeros(n, 1, size, size, dtype=torch.uint8)
    for i, y in enumerate(labels.tolist()):
        side, top, left = 3 + i % 4, 2 + i % 5, 3 + (i * 3) % 6
        images[i] = BACKGROUND[y]
        images[i, :, top : top + side, left : left + side] = FOREGROUND[y]
        masks[i, :, top : top + side, left : left + side] = 255
    return ImageSet(labels=labels, classes=["w", "x", "y", "z"], img_size=size, in_chans=1, mean=(0.5,), std=(0.5,),
                    images=images, masks=masks, name="scenes", info={"mask_source": "dataset"})


class Nearest(nn.Module):
    """Predicts the class whose reference grey level is nearest to one statistic of the image."""

    def __init__(self, levels, statistic):
        super().__init__()
        self.register_buffer("levels", torch.tensor(levels, dtype=torch.float32))
        self.statistic = statistic
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        value = self.statistic(x) * 255
        return -(value[:, None] - self.levels[None]).abs()


def background_model():
    return Nearest(BACKGROUND, lambda x: x[:, 0, 0, 0]).eval()  # the top-left pixel is always background


def foreground_model():
    return Nearest(FOREGROUND, lambda x: x.flatten(1).amax(1)).eval()  # the brightest pixel is the square


def run(model, data, seed=0, tmp_path=None):
    cfg = Config()
    cfg.evaluate.background.seed = seed
    out = evaluate(model, "background", cfg=cfg, data=data, device="cpu", batch_size=7, out_dir=tmp_path)
    return out["background"]


def test_remove_foreground_tiles_the_box_with_the_widest_band():
    image = (torch.arange(4)[:, None] * 10 + torch.arange(6)[None]).to(torch.uint8)[None]  # pixel = 10 r + c
    fg = torch.zeros(4, 6, dtype=torch.bool)
    fg[1, 1] = fg[2, 3] = True  # box rows 1..2, cols 1..3
    # bands: left 1 x 4 = 4 px, right 2 x 4 = 8, top 1 x 6 = 6, bottom 1 x 6 = 6: the right band (cols 4, 5)
    # tiled from column 0: column c takes band column c % 2 -> box columns 1, 2, 3 show columns 5, 4, 5
    out = remove_foreground(image, fg)
    want = image.clone()
    for r in (1, 2):
        want[0, r, 1:4] = torch.tensor([10 * r + 5, 10 * r + 4, 10 * r + 5])
    assert torch.equal(out, want)
    assert torch.equal(remove_foreground(image, torch.zeros(4, 6, dtype=torch.bool)), image)


def test_remove_foreground_without_a_band_uses_the_background_mean():
    image = torch.tensor([[[10, 10, 10], [10, 70, 10], [10, 10, 10]], [[0, 0, 0], [0, 30, 0], [0, 0, 0]]],
                         dtype=torch.uint8)
    ring = torch.ones(3, 3, dtype=torch.bool)
    ring[1, 1] = False  # the box is the whole image; the only background pixel is the centre
    assert torch.equal(remove_foreground(image, ring), torch.tensor([70, 30], dtype=torch.uint8)[:, None, None]
                       .expand(2, 3, 3))
    assert remove_foreground(image, torch.ones(3, 3, dtype=torch.bool)).eq(0).all()


def test_pairing_is_seeded_and_same_class():
    labels = torch.tensor([0, 1, 0, 2, 1, 0, 3, 1, 2, 0])  # class 3 has one image
    same, rand = pair_backgrounds(labels, seed=0)
    assert torch.equal(labels[same], labels)
    alone = labels == 3
    assert (same[~alone] != torch.arange(10)[~alone]).all() and same[alone].tolist() == [6]
    again = pair_backgrounds(labels, seed=0)
    assert torch.equal(again[0], same) and torch.equal(again[1], rand)
    other = pair_backgrounds(labels, seed=1)
    assert not (torch.equal(other[0], same) and torch.equal(other[1], rand))
    # mixed-rand: the donor's class is uniform over the classes present (not over images)
    many = torch.tensor([0] * 700 + [1] * 100 + [2] * 100 + [3] * 100)
    _, rand = pair_backgrounds(many, seed=3)
    share = torch.bincount(many[rand], minlength=4).float() / len(many)
    assert (share - 0.25).abs().max() < 0.05


@pytest.mark.parametrize("lazy", [False, True])
def test_variants_are_exact_composites(lazy):
    data = scene_set()
    same, rand = pair_backgrounds(data.labels, 0)
    if lazy:
        images, masks = data.images, data.masks
        data = replace(data, images=None, masks=None, read=lambda i: images[i], read_mask=lambda i: masks[i])
    fg = torch.stack([data.mask(i) for i in range(len(data))]) > 0
    x = torch.stack([data.sample(i) for i in range(len(data))])
    only = variant(data, "only_fg")
    mixed = variant(data, "mixed_rand", rand)
    for i in range(len(data)):
        assert torch.equal(only.sample(i), torch.where(fg[i], x[i], 0))
        # a plain background stays plain after its square is removed: the donor's class level
        want = torch.where(fg[i], x[i], torch.tensor(BACKGROUND[int(data.labels[rand[i]])], dtype=torch.uint8))
        assert torch.equal(mixed.sample(i), want)


def test_background_model_outcomes(tmp_path):
    data = scene_set()
    result = run(background_model(), data, seed=2, tmp_path=tmp_path)
    _, rand = pair_backgrounds(data.labels, 2)
    chance = (data.labels[rand] == data.labels).float().mean().item()
    assert result["original"] == 1.0 and result["mixed_same"] == 1.0
    assert result["mixed_rand"] == pytest.approx(chance) and chance < 0.5
    # on black the top-left pixel is 0, nearest to class 0's level: right only for class-0 images
    assert result["only_fg"] == pytest.approx((data.labels == 0).float().mean().item())
    assert result["bg_gap"] == pytest.approx(result["mixed_same"] - result["mixed_rand"]) and result["bg_gap"] > 0.5
    assert (result["n"], result["seed"], result["figures"]) == (24, 2, ["background_examples.png"])
    assert (tmp_path / "background_examples.png").stat().st_size > 1000


def test_foreground_model_is_unaffected():
    result = run(foreground_model(), scene_set())
    assert [result[k] for k in ("original", "only_fg", "mixed_same", "mixed_rand", "bg_gap")] == [1, 1, 1, 1, 0]
    assert result["figures"] == []  # no out_dir: no figure


def test_subset_and_missing_masks():
    cfg = Config()
    cfg.evaluate.background.subset = 10
    out = evaluate(background_model(), "background", cfg=cfg, data=scene_set(), device="cpu")["background"]
    assert out["n"] == 10
    plain = replace(scene_set(), masks=None)
    out = evaluate(background_model(), "background", cfg=cfg, data=plain, device="cpu")["background"]
    assert out["n"] == 0 and out["bg_gap"] is None and "data.masks.source" in out["skipped"]
    assert "background" in SUITES["quick"] and SUITES["background"] == ["background"]
