"""Tiny ImageNet-label folder trees for the ImageNet and distribution-shift benchmarks, and a model that
reads their labels back (used by test_shifts.py and test_registries.py).

Every image is one flat colour that encodes its ImageNet class (`colour`). `Oracle` decodes that colour
and puts its top logit on the class, so it scores 100% exactly when labels, logit masks and class
mappings are right; `Oracle(shift=1)` predicts the next class and must not. Trees hold only a few
classes: the loaders accept any subset of a set's classes and keep the canonical labels.

`shift_trees(base, monkeypatch)` writes one tiny tree for every root key of the shift-set table
(`vitrobust.shift_sets.ROOT_KEYS`), in the layout that key's loader expects; a new root key needs a
builder in `ROOT_TREES`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from PIL import Image

from vitrobust.config import load_config
from vitrobust.data import ImageSet
from vitrobust.data import imagenet as imagenet_module
from vitrobust.data.imagenet import imagenet_wnids, resource
from vitrobust.evaluate import run_suite
from vitrobust.evaluate.core import EvalContext
from vitrobust.shift_sets import LAYOUTS, OBJECTNET_MAPPING, ROOT_KEYS

SIZE = 16
LISTS = resource("imagenet_benchmarks.json")
WNIDS = imagenet_wnids()
INDEX = {wnid: i for i, wnid in enumerate(WNIDS)}
SI_SCORE = resource("si_score.json")["si_score_to_imagenet"]
ROBUSTBENCH_5K = "robustbench_imagenet_val_5000"


def colour(c: int) -> tuple[int, int, int]:
    """ImageNet class c as 16 levels per channel: a flat colour that survives resizing."""
    return 16 * (c % 16) + 8, 16 * ((c // 16) % 16) + 8, 16 * (c // 256) + 8


def write(path, c: int, size=(40, 30)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour(c)).save(path)


def tree(root, folders: dict[str, list[int]]):
    """root/<folder>/<k>.png, one flat image per class index listed."""
    for folder, classes in folders.items():
        for k, c in enumerate(classes):
            write(root / folder / f"{k}.png", c)
    return root


class Oracle(torch.nn.Module):
    """Reads the class from the colour; `shift` predicts class + shift; `decoy` gets an even larger logit."""

    input_shape = (3, SIZE, SIZE)

    def __init__(self, shift: int = 0, decoy: int | None = None, constant: int | None = None):
        super().__init__()
        self.shift, self.decoy, self.constant = shift, decoy, constant
        self.register_buffer("anchor", torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        levels = ((x.mean((2, 3)) * 255 - 8) / 16).round().clamp(0, 15).long()
        cls = (levels[:, 0] + 16 * levels[:, 1] + 256 * levels[:, 2] + self.shift) % 1000
        if self.constant is not None:
            cls = torch.full_like(cls, self.constant)
        logits = torch.zeros(len(x), 1000)
        logits[torch.arange(len(x)), cls] = 1.0
        if self.decoy is not None:
            logits[:, self.decoy] = 2.0
        return logits


def context(*overrides: str, **roots) -> EvalContext:
    """An EvalContext whose config names the given shift roots (evaluate.shifts.roots.<key>=<folder>)."""
    cfg = load_config(None, [f"evaluate.shifts.roots.{k}={v}" for k, v in roots.items()] + list(overrides))
    dummy = ImageSet(
        labels=torch.zeros(1, dtype=torch.long),
        classes=["x"],
        img_size=SIZE,
        in_chans=3,
        mean=(0.5,) * 3,
        std=(0.5,) * 3,
        images=torch.zeros(1, 3, SIZE, SIZE, dtype=torch.uint8),
    )
    return EvalContext(cfg=cfg, data=dummy, device=torch.device("cpu"), batch_size=4)


def score(model, ctx, name: str) -> dict:
    return run_suite(model.eval(), name, ctx)[name]


def objectnet_tree(root, with_mapping: bool = True):
    """313 ObjectNet folder names thing_000..thing_312 (sorted = index order); images in three of them."""
    names = [f"thing_{i:03d}" for i in range(313)]
    if with_mapping:
        (root / "mappings").mkdir(parents=True)
        (root / "mappings" / OBJECTNET_MAPPING).write_text(json.dumps({n: n.upper() for n in names}))
    # ObjectNet class 1 <- ImageNet 409 and 530; class 2 <- ImageNet 414; class 0 overlaps no ImageNet class
    return tree(root / "images", {"thing_001": [530, 409], "thing_002": [414], "thing_000": [5, 6, 7]})


# --- one tiny tree per root key --------------------------------------------------------------------


def short_robustbench_list(monkeypatch: pytest.MonkeyPatch, n: int = 5) -> list[str]:
    """Make the ImageNet loaders read only the first n entries of RobustBench's 5,000-image list (the
    real entries, so the 5k benchmark needs only n files); returns those entries."""
    listed = LISTS[ROBUSTBENCH_5K][:n]
    real = imagenet_module.resource

    def short(name: str) -> dict:
        table = real(name)
        return {**table, ROBUSTBENCH_5K: listed} if ROBUSTBENCH_5K in table else table

    monkeypatch.setattr(imagenet_module, "resource", short)
    return listed


def imagenet_root(root: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """ROOT/val/<wnid>/...: the (shortened) RobustBench list, plus one class the list does not hold."""
    val = root / "val"
    for rel in short_robustbench_list(monkeypatch):
        write(val / rel, INDEX[rel.split("/")[0]])
    tree(val, {WNIDS[999]: [999, 999]})
    return root


def imagenet_v2_root(root: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    return tree(root, {str(c): [c, c] for c in (0, 2, 10, 999)})  # folder names are class indices


def two_hundred_root(key: str) -> Callable[[Path, pytest.MonkeyPatch], Path]:
    """ImageNet-A / -R: wnid folders among the set's 200 classes."""

    def build(root: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
        wnids = LISTS[f"{key}_wnids"]
        return tree(root, {w: [INDEX[w], INDEX[w]] for w in (wnids[0], wnids[117], wnids[199])})

    return build


def wnid_root(subfolder: str) -> Callable[[Path, pytest.MonkeyPatch], Path]:
    """ROOT/<subfolder>/<wnid>/... (ImageNet-Sketch: sketch, Stylized-ImageNet: val)."""

    def build(root: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
        tree(root / subfolder, {WNIDS[1]: [1, 1], WNIDS[500]: [500], WNIDS[999]: [999]})
        return root

    return build


def objectnet_root(root: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    objectnet_tree(root)
    return root


def si_score_root(root: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """All three factors, class folders named as SI-Score names them."""
    names = {"location": ["koala", "zebra"], "rotation": ["pitcher (container)"], "size": ["koala", "toilet paper"]}
    for factor, classes in names.items():
        tree(root / factor, {name: [SI_SCORE[name], SI_SCORE[name]] for name in classes})
    return root


ROOT_TREES: dict[str, Callable[[Path, pytest.MonkeyPatch], Path]] = {
    "imagenet": imagenet_root,
    "imagenet_v2": imagenet_v2_root,
    "imagenet_a": two_hundred_root("imagenet_a"),
    "imagenet_r": two_hundred_root("imagenet_r"),
    "imagenet_sketch": wnid_root("sketch"),
    "stylized_imagenet": wnid_root("val"),
    "objectnet": objectnet_root,
    "si_score": si_score_root,
}


def shift_tree(key: str, base: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The tiny tree of one root key, written under base/<key>."""
    if key not in ROOT_TREES:
        raise KeyError(f"no tiny tree for the shift root {key!r}: add a builder to ROOT_TREES in "
                       f"tests/helpers_shifts.py (layout: {LAYOUTS.get(key, '?')})")
    return ROOT_TREES[key](Path(base) / key, monkeypatch)


def shift_trees(base: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """root key -> a tiny tree in its layout, for every key in vitrobust.shift_sets.ROOT_KEYS."""
    return {key: shift_tree(key, base, monkeypatch) for key in ROOT_KEYS}
