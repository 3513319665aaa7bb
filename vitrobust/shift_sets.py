"""The ImageNet evaluation and distribution-shift sets, named once: which benchmark reads which folder
(`evaluate.shifts.roots.<root>`), how reports label it, which layout its folder must have, and which
suites hold it. The config checks root keys against this table, data/shifts.py reads the folders,
evaluate/shifts.py registers one benchmark per row and reports label the results with it.
"""

from __future__ import annotations

from dataclasses import dataclass

OBJECTNET_MAPPING = "folder_to_objectnet_label.json"


@dataclass(frozen=True)
class ShiftSet:
    benchmark: str  # benchmark name = its results.json entry
    root: str  # key of evaluate.shifts.roots that gives its folder
    label: str  # display name in reports
    layout: str  # the folder layout the loader expects (quoted in errors)
    suites: tuple[str, ...]


_IMAGENET = "ImageNet val in wnid class folders: ROOT/val/n01440764/*.JPEG (or ROOT = that val folder)"

SHIFT_SETS: tuple[ShiftSet, ...] = (
    ShiftSet("imagenet_5k", "imagenet", "ImageNet 5k", _IMAGENET, ("imagenet",)),
    ShiftSet("imagenet_val", "imagenet", "ImageNet val", _IMAGENET, ("imagenet",)),
    ShiftSet("imagenet_v2", "imagenet_v2", "ImageNet-V2", "ROOT/0 ... ROOT/999, the folder name being the class "
             "index (as in imagenetv2-matched-frequency-format-val)", ("imagenet", "shifts")),
    ShiftSet("imagenet_a", "imagenet_a", "ImageNet-A", "ROOT/<wnid>/*.jpg for ImageNet-A's 200 classes (the "
             "unpacked imagenet-a folder)", ("imagenet", "shifts")),
    ShiftSet("imagenet_r", "imagenet_r", "ImageNet-R", "ROOT/<wnid>/*.jpg for ImageNet-R's 200 classes (the "
             "unpacked imagenet-r folder)", ("imagenet", "shifts")),
    ShiftSet("imagenet_sketch", "imagenet_sketch", "ImageNet-Sketch", "ROOT/sketch/<wnid>/*.JPEG (or ROOT = that "
             "sketch folder)", ("imagenet", "shifts")),
    ShiftSet("stylized_imagenet", "stylized_imagenet", "Stylized-ImageNet", "ROOT/val/<wnid>/* with 224x224 images "
             "(or ROOT = that val folder)", ("imagenet", "shifts")),
    ShiftSet("objectnet", "objectnet", "ObjectNet", "objectnet-1.0: ROOT/images/<class folder>/*.png and "
             f"ROOT/mappings/{OBJECTNET_MAPPING}", ("imagenet", "shifts")),
    ShiftSet("si_score", "si_score", "SI-Score", "ROOT/{location,rotation,size}/<class name>/*.jpg (the folders as "
             "unzipped, location20_area02_min0pc and area, are found too)", ("shifts",)),
)
BY_BENCHMARK = {s.benchmark: s for s in SHIFT_SETS}
ROOT_KEYS: tuple[str, ...] = tuple(dict.fromkeys(s.root for s in SHIFT_SETS))
LAYOUTS = {s.root: s.layout for s in SHIFT_SETS}
LABELS = {s.benchmark: s.label for s in SHIFT_SETS}
SHIFT_BENCHMARKS: tuple[str, ...] = tuple(s.benchmark for s in SHIFT_SETS if "shifts" in s.suites)
IMAGENET_DATA = ("imagenet", "imagenet_5k", "imagefolder")  # data.name values whose data.root may be ImageNet

__all__ = ["BY_BENCHMARK", "IMAGENET_DATA", "LABELS", "LAYOUTS", "ROOT_KEYS", "SHIFT_BENCHMARKS", "SHIFT_SETS",
           "ShiftSet"]
