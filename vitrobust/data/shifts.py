"""Distribution-shift sets with ImageNet labels, read lazily from the folders the datasets ship as.

Each loader returns ImageSets whose `info` says how a 1000-class prediction is scored:
- `columns`: only these ImageNet logits count (ImageNet-A/-R); the label is a position in the list;
- `prediction_map`: ImageNet class -> the set's label, -1 where no label matches (ObjectNet);
- neither: labels are ImageNet class indices.
A tree may hold any subset of a set's classes (labels stay the canonical ones); a folder name the set
does not have is an error that names it.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from vitrobust.data.base import ImageSet
from vitrobust.data.imagenet import (
    IMAGENET_CLASSES,
    Preprocess,
    check_names,
    class_folders,
    image_set,
    imagenet_wnids,
    interleave,
    labelled_folders,
    resource,
    split_folder,
)
from vitrobust.errors import DatasetError
from vitrobust.shift_sets import OBJECTNET_MAPPING

OBJECTNET_CLASSES = 313
OBJECTNET_BORDER = 2  # ObjectNet images carry a 1-px red frame; the protocol crops 2 px
# a factor's folder as the dataset page names it, or as the published zip files unpack
SI_SCORE_FACTORS = {
    "location": ("location", "location20_area02_min0pc", "object_location"),
    "rotation": ("rotation", "object_rotation"),
    "size": ("size", "area", "object_size"),
}

WNID_NAMES = "ImageNet wnids (n01440764, ...)"


def load_imagenet_v2(root: str | Path, preprocess: Preprocess, what: str = "imagenet_v2") -> ImageSet:
    """Folders 0..999 are class indices: sorting their names as strings would mislabel 990 of them."""
    base = Path(root).expanduser()
    folders = class_folders(base, what)
    check_names(list(folders), [str(i) for i in range(IMAGENET_CLASSES)], what, base, "class indices 0..999")
    groups = [
        [(path, int(name)) for path in files]
        for name, files in sorted(folders.items(), key=lambda kv: int(kv[0]))
    ]
    return image_set(interleave(groups), imagenet_wnids(), preprocess, "imagenet_v2", {"root": str(base)})


def _two_hundred(root: str | Path, preprocess: Preprocess, what: str, name: str) -> ImageSet:
    wnids = resource("imagenet_benchmarks.json")[f"{name}_wnids"]
    base = Path(root).expanduser()
    samples = labelled_folders(base, wnids, what, f"among the 200 {name.replace('_', '-')} wnids")
    index = {wnid: i for i, wnid in enumerate(imagenet_wnids())}
    return image_set(
        samples, wnids, preprocess, name, {"root": str(base), "columns": [index[w] for w in wnids]}
    )


def load_imagenet_a(root: str | Path, preprocess: Preprocess, what: str = "imagenet_a") -> ImageSet:
    return _two_hundred(root, preprocess, what, "imagenet_a")


def load_imagenet_r(root: str | Path, preprocess: Preprocess, what: str = "imagenet_r") -> ImageSet:
    return _two_hundred(root, preprocess, what, "imagenet_r")


def load_imagenet_sketch(root: str | Path, preprocess: Preprocess, what: str = "imagenet_sketch") -> ImageSet:
    folder = split_folder(Path(root).expanduser(), "sketch")
    samples = labelled_folders(folder, imagenet_wnids(), what, WNID_NAMES)
    return image_set(samples, imagenet_wnids(), preprocess, "imagenet_sketch", {"root": str(folder)})


def load_stylized_imagenet(
    root: str | Path, preprocess: Preprocess, what: str = "stylized_imagenet"
) -> ImageSet:
    """Images are stylised at 224 px already: no resize or crop (crop_pct 1 is the identity there)."""
    folder = split_folder(Path(root).expanduser(), "val")
    samples = labelled_folders(folder, imagenet_wnids(), what, WNID_NAMES)
    return image_set(
        samples,
        imagenet_wnids(),
        dataclasses.replace(preprocess, crop_pct=1.0),
        "stylized_imagenet",
        {"root": str(folder)},
    )


def objectnet_classes(base: Path, images: Path, folders: list[str], what: str) -> list[str]:
    """The 313 ObjectNet folder names in sorted order (ObjectNet's class indices are these positions)."""
    for mapping in (base / "mappings" / OBJECTNET_MAPPING, images.parent / "mappings" / OBJECTNET_MAPPING):
        if mapping.is_file():
            try:
                classes = sorted(json.loads(mapping.read_text()))
            except (json.JSONDecodeError, TypeError) as err:
                raise DatasetError(
                    f"{what}: {mapping} is not ObjectNet's folder -> label table ({err})"
                ) from None
            if len(classes) != OBJECTNET_CLASSES:
                raise DatasetError(
                    f"{what}: {mapping} names {len(classes)} folders, ObjectNet has {OBJECTNET_CLASSES}"
                )
            check_names(folders, classes, what, images, f"ObjectNet folders listed in {mapping}")
            return classes
    if len(folders) != OBJECTNET_CLASSES:
        raise DatasetError(
            f"{what}: {images} holds {len(folders)} class folders and no mappings/{OBJECTNET_MAPPING} "
            f"was found beside it; ObjectNet's class indices are positions among all {OBJECTNET_CLASSES} "
            f"sorted folders, so keep ObjectNet's mappings/ folder next to images/ (or all "
            f"{OBJECTNET_CLASSES} class folders)"
        )
    return sorted(folders)


def load_objectnet(root: str | Path, preprocess: Preprocess, what: str = "objectnet") -> ImageSet:
    """The images of the 113 classes that overlap ImageNet (the rest are skipped, counted in info)."""
    base = Path(root).expanduser()
    images = base / "images" if (base / "images").is_dir() else base
    folders = class_folders(images, what)
    classes = objectnet_classes(base, images, list(folders), what)
    prediction_map = [-1] * IMAGENET_CLASSES
    for imagenet_index, objectnet_index in resource("imagenet_benchmarks.json")[
        "objectnet_from_imagenet"
    ].items():
        prediction_map[int(imagenet_index)] = objectnet_index
    mapped, index = set(prediction_map) - {-1}, {name: i for i, name in enumerate(classes)}
    groups = [
        [(path, index[name]) for path in files] for name, files in folders.items() if index[name] in mapped
    ]
    skipped = sum(len(files) for name, files in folders.items() if index[name] not in mapped)
    samples = interleave(groups)
    if not samples:
        raise DatasetError(
            f"{what}: no images under {images} belong to the {len(mapped)} ObjectNet classes "
            f"that overlap ImageNet"
        )
    info = {"root": str(images), "prediction_map": prediction_map, "skipped_unmapped": skipped}
    return image_set(
        samples, classes, dataclasses.replace(preprocess, border=OBJECTNET_BORDER), "objectnet", info
    )


def load_si_score(root: str | Path, preprocess: Preprocess, what: str = "si_score") -> dict[str, ImageSet]:
    """One set per factor found (location, rotation, size); class folders are Open Images label names."""
    base = Path(root).expanduser()
    table = resource("si_score.json")["si_score_to_imagenet"]
    out = {}
    for factor, names in SI_SCORE_FACTORS.items():
        folder = next((base / name for name in names if (base / name).is_dir()), None)
        if folder is None:
            continue
        folders = class_folders(folder, f"{what} {factor}")
        check_names(list(folders), table, f"{what} {factor}", folder, "SI-Score class names")
        groups = [[(path, table[name]) for path in files] for name, files in folders.items()]
        out[factor] = image_set(
            interleave(groups), imagenet_wnids(), preprocess, f"si_score_{factor}", {"root": str(folder)}
        )
    if not out:
        expected = "; ".join(f"{factor}: {' or '.join(names)}" for factor, names in SI_SCORE_FACTORS.items())
        raise DatasetError(f"{what}: no SI-Score factor folder under {base} ({expected})")
    return out
