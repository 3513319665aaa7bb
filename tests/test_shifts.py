"""ImageNet and distribution-shift loaders and benchmarks, on tiny folder trees with known labels.

Every test image is one flat colour that encodes its ImageNet class; `Oracle` decodes that colour and
scores 100% exactly when labels, logit masks and class mappings are right (tests/helpers_shifts.py
holds the trees, the Oracle and the evaluation context).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from helpers_shifts import INDEX, LISTS, SIZE, WNIDS, Oracle, context, objectnet_tree, score, tree, write
from PIL import Image
from torchvision import transforms as T

from vitrobust.config import ConfigError, DataConfig, load_config
from vitrobust.data import DatasetError, load_split
from vitrobust.data import imagenet as imagenet_module
from vitrobust.data.imagenet import Preprocess, load_imagenet_5k, resource
from vitrobust.data.shifts import (
    load_imagenet_a,
    load_imagenet_r,
    load_imagenet_v2,
    load_objectnet,
    load_stylized_imagenet,
)
from vitrobust.errors import InputError
from vitrobust.evaluate import BENCHMARKS, SUITES
from vitrobust.evaluate.shifts import SHIFT_BENCHMARKS, predict_labels

# --- resources and preprocessing ---------------------------------------------------------------


def test_shipped_lists_have_the_published_sizes():
    assert len(WNIDS) == 1000 and WNIDS == sorted(WNIDS) and WNIDS[0] == "n01440764"
    for key in ("imagenet_a_wnids", "imagenet_r_wnids"):
        assert len(LISTS[key]) == 200 and LISTS[key] == sorted(LISTS[key]) and set(LISTS[key]) <= set(WNIDS)
    listed = LISTS["robustbench_imagenet_val_5000"]
    assert len(listed) == len(set(listed)) == 5000 and {p.split("/")[0] for p in listed} <= set(WNIDS)
    objectnet = LISTS["objectnet_from_imagenet"]
    assert len(set(objectnet.values())) == 113 and max(objectnet.values()) < 313
    si = resource("si_score.json")["si_score_to_imagenet"]
    assert si["koala"] == 105 and si["toilet paper"] == 999 and all(0 <= v < 1000 for v in si.values())


@pytest.mark.parametrize("size", [(53, 41), (37, 50)])
@pytest.mark.parametrize(
    ("crop_pct", "interpolation"), [(0.875, "bilinear"), (0.875, "bicubic"), (1.0, "bilinear")]
)
def test_preprocess_equals_torchvision_resize_centercrop(tmp_path, size, crop_pct, interpolation):
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    img.save(tmp_path / "x.png")
    mode = T.InterpolationMode.BILINEAR if interpolation == "bilinear" else T.InterpolationMode.BICUBIC
    reference = T.Compose(
        [T.Resize(math.floor(SIZE / crop_pct), interpolation=mode), T.CenterCrop(SIZE), T.PILToTensor()]
    )
    assert torch.equal(Preprocess(SIZE, crop_pct, interpolation)(tmp_path / "x.png"), reference(img))
    # ObjectNet: 2 px off every side first, then the same pipeline
    cropped = img.crop((2, 2, size[0] - 2, size[1] - 2))
    assert torch.equal(
        Preprocess(SIZE, crop_pct, interpolation, border=2)(tmp_path / "x.png"), reference(cropped)
    )


def test_no_resize_leaves_224_style_images_untouched(tmp_path):
    """Stylized-ImageNet / ImageNet-C protocol: an image already at the model's size is used as is."""
    arr = np.random.default_rng(1).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
    (tmp_path / "styl" / "val" / WNIDS[3]).mkdir(parents=True)
    Image.fromarray(arr).save(tmp_path / "styl" / "val" / WNIDS[3] / "0.png")
    data = load_stylized_imagenet(tmp_path / "styl", Preprocess(SIZE, 0.875))
    assert torch.equal(data.read(0), torch.from_numpy(arr).permute(2, 0, 1))


# --- the datasets ------------------------------------------------------------------------------


def test_imagenet_v2_folder_names_are_class_indices(tmp_path):
    # string order would be 0, 1, 10, 100, 2, 999: folder "2" would get label 4
    root = tree(tmp_path / "v2", {str(c): [c, c] for c in (0, 1, 2, 10, 100, 999)})
    data = load_imagenet_v2(root, Preprocess(SIZE))
    assert [int(f.split("/")[-2]) for f in data.read.files] == data.labels.tolist()
    assert sorted(set(data.labels.tolist())) == [0, 1, 2, 10, 100, 999]
    assert data.labels[:6].tolist() == [0, 1, 2, 10, 100, 999]  # classes interleaved: first n spans them
    ctx = context(imagenet_v2=root)
    result = score(Oracle(), ctx, "imagenet_v2")
    assert (result["top1"], result["n"], result["classes"]) == (1.0, 12, 6)
    assert score(Oracle(shift=1), ctx, "imagenet_v2")["top1"] == 0.0
    tree(root, {"0999": [999]})
    with pytest.raises(DatasetError, match="0999"):
        load_imagenet_v2(root, Preprocess(SIZE))


@pytest.mark.parametrize("name", ["imagenet_a", "imagenet_r"])
def test_imagenet_a_r_score_only_their_200_logits(tmp_path, name):
    wnids = LISTS[f"{name}_wnids"]
    chosen = [wnids[0], wnids[117], wnids[199]]
    root = tree(tmp_path / name, {w: [INDEX[w], INDEX[w]] for w in chosen})
    ctx = context(**{name: root})
    assert WNIDS[0] not in wnids
    # the top logit is on class 0, outside the set: only the 200-class mask leaves the true class on top
    assert score(Oracle(decoy=0), ctx, name)["top1"] == 1.0
    assert score(Oracle(shift=1), ctx, name)["top1"] < 1.0
    load = load_imagenet_a if name == "imagenet_a" else load_imagenet_r
    preds, labels = predict_labels(Oracle().eval(), ctx, load(root, Preprocess(SIZE)))
    assert sorted(set(labels.tolist())) == [0, 117, 199] and torch.equal(preds, labels)
    outside = next(w for w in WNIDS if w not in wnids)
    tree(root, {outside: [INDEX[outside]]})
    with pytest.raises(DatasetError, match=outside):
        score(Oracle(), ctx, name)


def test_wnid_sets_val_sketch_stylized_with_partial_trees(tmp_path):
    classes = {WNIDS[1]: [1, 1], WNIDS[500]: [500, 500], WNIDS[999]: [999, 999]}
    roots = {
        "imagenet": tree(tmp_path / "in" / "val", classes).parent,
        "imagenet_sketch": tree(tmp_path / "sk" / "sketch", classes).parent,
        "stylized_imagenet": tree(tmp_path / "st" / "val", classes).parent,
    }
    ctx = context(**roots)
    for name in ("imagenet_val", "imagenet_sketch", "stylized_imagenet"):
        result = score(Oracle(), ctx, name)
        assert (result["top1"], result["n"], result["classes"]) == (1.0, 6, 3)
        assert score(Oracle(shift=1), ctx, name)["top1"] == 0.0
    # subset: a balanced sample, one image of each class
    assert score(Oracle(), context("evaluate.shifts.subset=3", **roots), "imagenet_sketch")["classes"] == 3
    tree(roots["imagenet_sketch"] / "sketch", {"n99999999": [0]})
    with pytest.raises(DatasetError, match="n99999999"):
        score(Oracle(), ctx, "imagenet_sketch")


def test_imagenet_dataset_by_name_keeps_canonical_labels(tmp_path):
    root = tmp_path / "imagenet"
    tree(root / "train", {WNIDS[7]: [7], WNIDS[998]: [998, 998]})
    tree(root / "val", {WNIDS[998]: [998], WNIDS[999]: [999]})
    train = load_split(DataConfig(name="imagenet", root=str(root), img_size=SIZE), "train")
    val = load_split(DataConfig(name="imagenet", root=str(root), img_size=SIZE, in_memory=False), "test")
    assert train.num_classes == val.num_classes == 1000
    assert sorted(train.labels.tolist()) == [7, 998, 998] and val.labels.tolist() == [998, 999]
    assert train.images.shape == (3, 3, SIZE, SIZE) and val.images is None  # in_memory honoured
    assert train.read.preprocess.crop_pct == 1.0 and val.read.preprocess.crop_pct == 0.875


def test_imagenet_5k_follows_robustbench_list(tmp_path, monkeypatch):
    listed = LISTS["robustbench_imagenet_val_5000"][:5]  # the real first entries, a short list for speed
    monkeypatch.setattr(
        imagenet_module, "resource", lambda name: {**LISTS, "robustbench_imagenet_val_5000": listed}
    )
    val = tmp_path / "imagenet" / "val"
    for rel in listed:
        write(val / rel, INDEX[rel.split("/")[0]])
    tree(val, {WNIDS[0]: [0]})  # not listed: ignored
    data = load_imagenet_5k(tmp_path / "imagenet", Preprocess(SIZE))
    assert [f[len(str(val)) + 1 :] for f in data.read.files] == listed
    assert data.labels.tolist() == [INDEX[rel.split("/")[0]] for rel in listed]
    by_name = load_split(
        DataConfig(
            name="imagenet_5k", root=str(tmp_path / "imagenet"), img_size=SIZE, in_memory=False, test_subset=3
        ),
        "test",
    )
    assert len(by_name) == 3 and by_name.labels.tolist() == data.labels[by_name.positions].tolist()
    ctx = context("data.name=imagenet_5k", f"data.root={tmp_path / 'imagenet'}")  # ImageNet from data.root
    assert score(Oracle(), ctx, "imagenet_5k")["top1"] == 1.0
    (val / listed[2]).unlink()
    with pytest.raises(DatasetError, match="1 of RobustBench's 5,000 val images are missing"):
        load_imagenet_5k(val, Preprocess(SIZE))


def test_objectnet_maps_predictions_and_skips_unmapped_classes(tmp_path):
    objectnet_tree(tmp_path / "objectnet-1.0")
    ctx = context(objectnet=tmp_path / "objectnet-1.0")
    result = score(Oracle(), ctx, "objectnet")
    assert (result["top1"], result["n"], result["classes"], result["skipped_unmapped"]) == (1.0, 3, 2, 3)
    always_409 = score(Oracle(constant=409), ctx, "objectnet")["top1"]
    assert always_409 == pytest.approx(2 / 3)  # 409 and 530 both map to ObjectNet class 1
    assert score(Oracle(shift=1), ctx, "objectnet")["top1"] == 0.0  # 531, 410, 415 map to nothing: wrong
    data = load_objectnet(tmp_path / "objectnet-1.0" / "images", Preprocess(SIZE))  # images/ given directly
    assert data.read.preprocess.border == 2 and sorted(data.labels.tolist()) == [1, 1, 2]


def test_objectnet_needs_the_class_list(tmp_path):
    objectnet_tree(tmp_path / "partial", with_mapping=False)
    with pytest.raises(DatasetError, match="313"):
        load_objectnet(tmp_path / "partial", Preprocess(SIZE))
    root = objectnet_tree(tmp_path / "full").parent
    tree(root / "images", {"not_a_class": [1]})
    with pytest.raises(DatasetError, match="not_a_class"):
        load_objectnet(root, Preprocess(SIZE))


def test_si_score_reports_each_factor(tmp_path):
    root = tmp_path / "si"
    tree(root / "location20_area02_min0pc", {"koala": [105, 105], "zebra": [340]})  # names as unzipped
    tree(root / "rotation", {"pitcher (container)": [725]})
    ctx = context(si_score=root)
    result = score(Oracle(), ctx, "si_score")
    location = result["factors"]["location"]
    assert (location["top1"], location["n"], location["classes"]) == (1.0, 3, 2)
    assert result["factors"]["rotation"]["n"] == 1
    assert (result["top1"], result["n"], result["missing_factors"]) == (1.0, 4, ["size"])
    assert score(Oracle(constant=105), ctx, "si_score")["top1"] == 0.5  # the two koalas
    tree(root / "area", {"unicorn": [1]})
    with pytest.raises(DatasetError, match="unicorn"):
        score(Oracle(), ctx, "si_score")


# --- errors, suites, config --------------------------------------------------------------------


def test_missing_root_says_which_key_to_set(tmp_path):
    ctx = context()
    with pytest.raises(
        DatasetError,
        match=r"imagenet_a: no folder given; add --set evaluate.shifts.roots"
        r".imagenet_a=/path \(expected: .*200",
    ):
        BENCHMARKS["imagenet_a"].check(ctx)
    with pytest.raises(DatasetError, match="objectnet: evaluate.shifts.roots.objectnet=.* is not a folder"):
        score(Oracle(), context(objectnet=tmp_path / "nowhere"), "objectnet")
    with pytest.raises(DatasetError, match="imagenet_val: no folder given.*roots.imagenet="):
        BENCHMARKS["imagenet_val"].check(ctx)  # data.name is fashion_mnist: data.root is not ImageNet
    with pytest.raises(ConfigError, match="did you mean 'imagenet_sketch'"):
        load_config(None, ["evaluate.shifts.roots.imagenet_skech=/x"])


def test_model_must_output_imagenet_logits(tmp_path):
    ctx = context(imagenet_v2=tree(tmp_path / "v2", {"3": [3]}))
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * SIZE * SIZE, 10)).eval()
    with pytest.raises(InputError, match="must output 1000 logits, it outputs 10"):
        predict_labels(model, ctx, load_imagenet_v2(tmp_path / "v2", Preprocess(SIZE)))


def test_suites_and_shipped_config():
    imagenet = SUITES["imagenet"]  # cheap, likely-to-fail sets first; corruptions (minutes), AutoAttack (hours) last
    assert imagenet == ["imagenet_5k", "imagenet_val", "imagenet_v2", "imagenet_a", "imagenet_r", "imagenet_sketch",
                        "stylized_imagenet", "objectnet", "corruptions", "autoattack"]
    assert not set(SUITES["quick"]) & (set(SHIFT_BENCHMARKS) | {"imagenet_5k", "imagenet_val"})
    assert set(SUITES["shifts"]) == set(SHIFT_BENCHMARKS)
    assert all(
        callable(BENCHMARKS[name].check) for name in [*SHIFT_BENCHMARKS, "imagenet_5k", "imagenet_val"]
    )
    cfg = load_config("eval/imagenet", ["evaluate.shifts.roots.imagenet_a=/data/imagenet-a"])
    attack = cfg.evaluate.attack
    assert (attack.norm, attack.eps, attack.version, attack.subset) == ("Linf", 4 / 255, "standard", 5000)
    assert cfg.data.name == "imagenet_5k" and cfg.evaluate.corruptions.source == "imagenet-c"
    roots = cfg.evaluate.shifts.roots
    assert roots.pop("imagenet_a") == "/data/imagenet-a" and set(roots.values()) == {None}
    assert set(roots) | {"imagenet_a"} == {"imagenet", *SHIFT_BENCHMARKS}
