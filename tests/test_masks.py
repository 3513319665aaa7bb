"""Foreground masks (ImageNet-S files, threshold, callable), masks through the loader's augmentation,
the deterministic reference split, and the textured Fashion-MNIST."""

from __future__ import annotations

import socket
import sys
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

from vitrobust.config import AugmentConfig, ConfigError, DataConfig, MaskConfig
from vitrobust.data import BatchLoader, DatasetError, ImageSet, load_split
from vitrobust.data import textured as tx
from vitrobust.data.folders import decode
from vitrobust.data.imagenet import Preprocess
from vitrobust.data.masks import Geometry, attach_masks, decode_imagenet_s, threshold_masks
from vitrobust.data.splits import reference_split, split_classes

CPU = torch.device("cpu")


def rgb_ids(ids: np.ndarray) -> np.ndarray:
    """ImageNet-S encoding of class ids: R = id % 256, G = id // 256."""
    return np.stack([ids % 256, ids // 256, np.zeros_like(ids)], axis=-1).astype(np.uint8)


def square_set(n: int = 8, size: int = 16, value: int = 255) -> ImageSet:
    """Black images with one bright square each (sample i: side 3 + i % 4 at row i % 5 + 2, col 2 * (i % 4) + 1),
    and threshold masks: the square is the foreground."""
    images = torch.zeros(n, 1, size, size, dtype=torch.uint8)
    for i in range(n):
        side, top, left = 3 + i % 4, i % 5 + 2, 2 * (i % 4) + 1
        images[i, :, top : top + side, left : left + side] = value
    data = ImageSet(labels=torch.arange(n) % 3, classes=["a", "b", "c"], img_size=size, in_chans=1, mean=(0.5,),
                    std=(0.5,), images=images, name="squares")
    return attach_masks(data, MaskConfig(source="threshold", threshold=0.1), "train")


def lazy(data: ImageSet) -> ImageSet:
    """The same split read per sample (as for image folders that are not kept in memory)."""
    images, masks = data.images, data.masks
    return replace(data, images=None, masks=None, read=lambda i: images[i], read_mask=lambda i: masks[i])


def one_batch(data: ImageSet, **kwargs):
    return next(iter(BatchLoader(data, len(data), CPU, **kwargs)))


# --- decoding and sources ----------------------------------------------------------------------


def test_imagenet_s_png_decoding(tmp_path):
    ids = np.array([[0, 1000, 5, 300, 232]])  # 232 = the low byte of 1000: foreground only because G = 0
    path = tmp_path / "mask.png"
    Image.fromarray(rgb_ids(ids), "RGB").save(path)
    with Image.open(path) as img:
        arr = np.asarray(img)
    assert arr[0, 3].tolist() == [44, 1, 0]  # 300 = 1 * 256 + 44
    assert decode_imagenet_s(arr).tolist() == [[False, False, True, True, True]]
    # single-channel masks: the value is the id (0/255 binary masks work as they are)
    assert decode_imagenet_s(np.array([[0, 255, 1]], dtype=np.uint8)).tolist() == [[False, True, True]]


def test_threshold_masks_on_a_tiny_image():
    # threshold 0.1 -> 25.5 in uint8: 25 is background, 26 foreground; the max over channels decides
    img = torch.tensor([[[25, 26], [0, 0]], [[0, 0], [200, 0]], [[0, 0], [0, 25]]], dtype=torch.uint8)[None]
    m = threshold_masks(img, 0.1)
    assert m.dtype == torch.uint8 and m.shape == (1, 1, 2, 2)
    assert m[0, 0].tolist() == [[0, 255], [255, 0]]


USER_MODULE = '''
import torch

def centre(images):
    n, _, h, w = images.shape
    m = torch.zeros(n, 1, h, w, dtype=torch.bool)
    m[:, :, 1:-1, 1:-1] = True
    return m

def numpy_hw(images):
    return (images[:, 0] > 100).numpy()

def wrong_shape(images):
    return torch.zeros(2, 2, dtype=torch.bool)

def fractional(images):
    return torch.full((images.shape[0], 1, *images.shape[2:]), 0.5)

NOT_A_FUNCTION = 3
'''


@pytest.fixture
def user_masks(tmp_path, monkeypatch):
    name = "vitrobust_test_user_masks"
    (tmp_path / f"{name}.py").write_text(USER_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, name, raising=False)
    yield name
    sys.modules.pop(name, None)


def test_callable_masks_in_memory_and_lazy(user_masks):
    data = square_set(4, size=6)
    cfg = MaskConfig(source="callable", callable=f"{user_masks}:centre")
    want = torch.zeros(4, 1, 6, 6, dtype=torch.uint8)
    want[:, :, 1:-1, 1:-1] = 255
    eager = attach_masks(replace(data, masks=None, info={}), cfg, "train")
    assert torch.equal(eager.masks, want) and eager.info["mask_source"] == "callable"
    lazy_set = attach_masks(replace(lazy(data), read_mask=None), cfg, "train")
    assert lazy_set.masks is None and torch.equal(lazy_set.mask(2), want[2])
    # a function that returns a numpy N x H x W array is accepted too
    hw = attach_masks(data, MaskConfig(source="callable", callable=f"{user_masks}:numpy_hw"), "train")
    assert torch.equal(hw.masks, data.masks)


@pytest.mark.parametrize(("spec", "match"), [
    (None, r"set data.masks.callable"),
    ("no_colon_here", r"must look like 'package.module:function'"),
    ("module_that_does_not_exist_xyz:fn", r"cannot import module 'module_that_does_not_exist_xyz'"),
    ("{m}:missing", r"has no attribute 'missing'"),
    ("{m}:NOT_A_FUNCTION", r"'NOT_A_FUNCTION' is a int, not a function"),
])
def test_bad_callable_names_are_config_errors(user_masks, spec, match):
    spec = spec.format(m=user_masks) if spec else spec
    with pytest.raises(ConfigError, match=match):
        attach_masks(square_set(2), MaskConfig(source="callable", callable=spec), "train")


@pytest.mark.parametrize(("fn", "match"), [("wrong_shape", r"returned shape \(2, 2\).*\(2, 1, 16, 16\)"),
                                           ("fractional", "other than 0 and 1")])
def test_bad_callable_outputs(user_masks, fn, match):
    with pytest.raises(DatasetError, match=match):
        attach_masks(square_set(2), MaskConfig(source="callable", callable=f"{user_masks}:{fn}"), "train")


# --- masks through the loader ------------------------------------------------------------------


@pytest.mark.parametrize("make", [lambda d: d, lazy], ids=["in_memory", "lazy"])
def test_masks_follow_pad_crop_and_flip_exactly(make):
    base = square_set(8)
    data = make(base)
    aug = AugmentConfig(crop="pad", crop_padding=4, hflip=True)
    loader = BatchLoader(data, 8, CPU, train=True, augment=aug, seed=3)
    moved = 0
    for epoch in range(3):
        loader.set_epoch(epoch)
        for batch in loader:
            mask = batch.extras["mask"]
            assert mask.dtype == torch.bool and mask.shape == (8, 1, 16, 16) and mask.device == batch.x.device
            assert torch.equal(mask, batch.x > 0.5)  # the mask is the thresholded augmented image
            moved += int((mask != (base.masks[batch.index] > 0)).any())
    assert moved > 0  # the augmentation did move the squares


def test_masks_follow_random_resized_crop():
    data = square_set(8)
    aug = AugmentConfig(crop="rrc", crop_scale=(0.3, 1.0), hflip=True)
    loader = BatchLoader(data, 8, CPU, train=True, augment=aug, seed=1)
    batch = next(iter(loader))
    x, mask = batch.x, batch.extras["mask"]
    # away from the square's edges the bilinear image is exactly 0 or 1 and the nearest mask agrees
    assert mask[x == 1].all() and not mask[x == 0].any()
    assert (mask != (x >= 0.5)).float().mean() < 0.02


def test_masks_resize_nearest_stays_binary_and_bilinear_keeps_fractions():
    data = square_set(6)
    batch = one_batch(data, train=False, img_size=8)
    mask = batch.extras["mask"]
    assert mask.dtype == torch.bool and mask.shape == (6, 1, 8, 8) and "mask_soft" not in batch.extras
    # nearest-exact at half size samples source pixel 2i + 1
    assert torch.equal(mask, data.masks[:, :, 1::2, 1::2] > 0)
    soft = one_batch(replace(data, mask_resize="bilinear"), train=False, img_size=8).extras
    assert soft["mask_soft"].dtype == torch.float32
    frac = soft["mask_soft"][(soft["mask_soft"] > 0) & (soft["mask_soft"] < 1)]
    assert len(frac) > 0  # the reference's fractional boundary pixels
    assert torch.equal(soft["mask"], soft["mask_soft"] >= 0.5)


def test_eval_batches_carry_the_stored_masks_and_plain_sets_none():
    data = square_set(5)
    loader = BatchLoader(data, 2, CPU, train=False)
    got = torch.cat([b.extras["mask"] for b in loader])
    assert torch.equal(got, data.masks > 0)
    plain = replace(data, masks=None)
    assert all("mask" not in b.extras for b in BatchLoader(plain, 2, CPU, train=False))


def test_mixing_and_randaugment_with_requested_masks_are_errors():
    data = square_set(4)
    with pytest.raises(ConfigError, match=r"data.masks.source=threshold.*augment.randaugment='rand-m9'.*"
                                          r"augment.randaugment=null"):
        BatchLoader(data, 4, CPU, train=True, augment=AugmentConfig(randaugment="rand-m9"))
    with pytest.raises(ConfigError, match=r"augment.mixup=0.8 and augment.cutmix=1.0 blend two images"):
        BatchLoader(data, 4, CPU, train=True, augment=AugmentConfig(mixup=0.8, cutmix=1.0))
    # a dataset's own masks are dropped instead: a mixing recipe does not ask for them
    own = replace(data, info={"mask_source": "dataset"})
    batch = next(iter(BatchLoader(own, 4, CPU, train=True, augment=AugmentConfig(mixup=0.8))))
    assert "mask" not in batch.extras
    # evaluation loaders never augment, so they keep the masks
    assert "mask" in next(iter(BatchLoader(data, 4, CPU, train=False))).extras


# --- mask folders ------------------------------------------------------------------------------


def make_masked_tree(tmp_path):
    """imagefolder tree, 64x32 RGB images with a white box at x 24..47, y 8..23; ImageNet-S masks with id 300
    on the box and id 1000 (ignore) on its top 4 rows. Image train/b/1.png has no mask."""
    root, masks = tmp_path / "images", tmp_path / "masks"
    for split, names in (("train", {"a": 2, "b": 2}), ("val", {"a": 1, "b": 1})):
        for cls, count in names.items():
            for k in range(count):
                img = np.zeros((32, 64, 3), dtype=np.uint8)
                img[8:24, 24:48] = 255
                (root / split / cls).mkdir(parents=True, exist_ok=True)
                Image.fromarray(img).save(root / split / cls / f"{k}.png")
                if (split, cls, k) == ("train", "b", 1):
                    continue
                ids = np.zeros((32, 64), dtype=np.int64)
                ids[8:24, 24:48] = 300
                ids[8:12, 24:48] = 1000
                (masks / split / cls).mkdir(parents=True, exist_ok=True)
                Image.fromarray(rgb_ids(ids)).save(masks / split / cls / f"{k}.png")
    return root, masks


def test_folder_masks_geometry_missing_and_split_folders(tmp_path):
    root, masks = make_masked_tree(tmp_path)
    cfg = DataConfig(name="imagefolder", root=str(root), img_size=16,
                     masks=MaskConfig(source="folder", root=str(masks)))
    train = load_split(cfg, "train")
    assert len(train) == 3 and train.labels.tolist() == [0, 0, 1]  # train/b/1.png has no mask: dropped
    assert train.info["masks_missing"] == 1 and train.info["mask_source"] == "folder"
    # 64x32 -> 32x16 (scale 1/2), centre crop from x = 8; nearest takes source pixel 2i + 1:
    # foreground rows 12..23 -> 6..11, columns 24..47 -> 12..23 -> 4..15 after the crop
    want = torch.zeros(16, 16, dtype=torch.uint8)
    want[6:12, 4:16] = 255
    for i in range(3):
        assert torch.equal(train.masks[i, 0], want)
        assert train.images[i, :, 8, 10].min() > 200 and train.images[i, :, 1, 1].max() < 20  # aligned with the box
    test = load_split(cfg, "test")  # val/ masks come from masks/val
    assert len(test) == 2 and test.masks.shape == (2, 1, 16, 16) and test.masks.any()
    strict = cfg.model_copy(update={"masks": MaskConfig(source="folder", root=str(masks), missing="error")})
    with pytest.raises(DatasetError, match=r"1 of 4 images .* have no mask .*b/1.png.*data.masks.missing=drop"):
        load_split(strict, "train")
    with pytest.raises(DatasetError, match="no mask found"):
        load_split(cfg.model_copy(update={"masks": MaskConfig(source="folder", root=str(tmp_path))}), "train")
    with pytest.raises(ConfigError, match="needs a dataset read from image files"):
        attach_masks(square_set(2), MaskConfig(source="folder", root=str(masks)), "train")


@pytest.mark.parametrize("crop_pct", [1.0, 0.875])
def test_mask_geometry_matches_the_image_readers(tmp_path, crop_pct):
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)
    path = tmp_path / "img.png"
    Image.fromarray(arr).save(path)
    img = Image.fromarray(arr)
    ours = np.asarray(Geometry(16, crop_pct).resize_crop(img, Image.BICUBIC))
    assert np.array_equal(ours, decode(path, 16, crop_pct, 3).permute(1, 2, 0).numpy())
    ours_tv = np.asarray(Geometry(16, crop_pct, border=2, torchvision=True).resize_crop(img, Image.BILINEAR))
    theirs = Preprocess(16, crop_pct, "bilinear", border=2)(path).permute(1, 2, 0).numpy()
    assert np.array_equal(ours_tv, theirs)


# --- the reference split -----------------------------------------------------------------------


def class_set(counts: dict[str, int]) -> ImageSet:
    classes = list(counts)  # deliberately not sorted
    labels = torch.tensor([k for k, n in enumerate(counts.values()) for _ in range(n)])
    labels = labels[torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))]
    images = torch.arange(len(labels), dtype=torch.uint8).view(-1, 1, 1, 1).expand(-1, 1, 2, 2).contiguous()
    return ImageSet(labels=labels, classes=classes, img_size=2, in_chans=1, mean=(0.5,), std=(0.5,), images=images)


def test_reference_split_counts_disjoint_deterministic_and_seeded():
    counts = {f"c{k:02d}": 5 for k in (7, 3, 11, 0, 9, 1, 4, 10, 2, 8, 6, 5)}
    counts["c05"] = 2  # a small class contributes what it has
    data = class_set(counts)
    train = reference_split(data, "train", images_per_class=3, train_classes=8, val_images_per_class=1, seed=0)
    val = reference_split(data, "test", images_per_class=3, train_classes=8, val_images_per_class=1, seed=0)
    train_names = {data.classes[k] for k in train.labels.tolist()}
    val_names = {data.classes[k] for k in val.labels.tolist()}
    assert len(train_names) == 8 and len(val_names) == 4 and not train_names & val_names
    assert train_names | val_names == set(counts)
    per_class = {n: train.labels.tolist().count(data.classes.index(n)) for n in train_names}
    assert all(v == min(3, counts[n]) for n, v in per_class.items())
    assert len(val) == 4 and sorted(val.labels.tolist()) == sorted(set(val.labels.tolist()))
    # images are the first of their class in dataset order, kept in dataset order
    picked = train.images[:, 0, 0, 0].tolist()
    assert picked == sorted(picked)
    first3 = {n: [i for i, y in enumerate(data.labels.tolist()) if data.classes[y] == n][:3] for n in train_names}
    assert sorted(picked) == sorted(i for idx in first3.values() for i in idx)
    # deterministic, independent of the class list's order, and the seed matters
    again = reference_split(class_set(dict(reversed(list(counts.items())))), "train", 3, 8, 1, seed=0)
    assert {again.classes[k] for k in again.labels.tolist()} == train_names
    assert split_classes(list(counts), 8, 0) == split_classes(sorted(counts), 8, 0)
    assert split_classes(list(counts), 8, 1)[0] != split_classes(list(counts), 8, 0)[0]
    with pytest.raises(ConfigError, match="train_classes=12 leaves no class for validation"):
        reference_split(data, "train", train_classes=12)


def test_reference_split_through_load_split(tiny_idx_root):
    masks = MaskConfig(source="threshold", split="reference", train_classes=6, images_per_class=2,
                       val_images_per_class=1, split_seed=4)
    cfg = DataConfig(name="fashion_mnist", root=str(tiny_idx_root), masks=masks)
    train, test = load_split(cfg, "train"), load_split(cfg, "test")
    assert len(train) == 12 and len(test) == 4
    assert not set(train.labels.tolist()) & set(test.labels.tolist())
    assert train.masks.shape == (12, 1, 32, 32) and test.has_masks
    # both parts come from the training images (the tiny set's train pixels start at offset 1)
    full = load_split(DataConfig(name="fashion_mnist", root=str(tiny_idx_root)), "train")
    assert all(any(torch.equal(img, other) for other in full.images) for img in test.images)


def test_threshold_masks_on_fashion_mnist(tiny_idx_root):
    cfg = DataConfig(name="fashion_mnist", root=str(tiny_idx_root), test_subset=5,
                     masks=MaskConfig(source="threshold", threshold=0.5))
    data = load_split(cfg, "test")
    assert len(data) == 5 and torch.equal(data.masks > 0, data.images > 127)
    assert data.masks[:, :, :2].eq(0).all()  # the black padding is background


# --- textured Fashion-MNIST --------------------------------------------------------------------


N_TEXTURED = 1000


@pytest.fixture
def garment_root(tmp_path, write_idx):
    """IDX files of 'garments': a 16x12 rectangle of value 180 with a 2x2 dark hole (4 px: part of the
    garment) and a 4x4 dark hole (16 px: background), stray specks of value 8 outside; labels i % 10."""
    root = tmp_path / "garments"
    img = np.zeros((28, 28), dtype=np.uint8)
    img[6:22, 8:20] = 180
    img[8:10, 10:12] = 0
    img[14:18, 12:16] = 0
    img[1, 1] = img[26, 3] = 8
    for prefix in ("train", "t10k"):
        write_idx(root / f"{prefix}-images-idx3-ubyte.gz", np.repeat(img[None], N_TEXTURED, axis=0))
        write_idx(root / f"{prefix}-labels-idx1-ubyte.gz", (np.arange(N_TEXTURED) % 10).astype(np.uint8))
    return root


def contingency(labels: np.ndarray, texture: np.ndarray) -> np.ndarray:
    table = np.zeros((10, 10))
    np.add.at(table, (labels, texture), 1)
    return table


def chi_square_independence(table: np.ndarray) -> float:
    expected = table.sum(1, keepdims=True) * table.sum(0, keepdims=True) / table.sum()
    return float(((table - expected) ** 2 / expected).sum())


def test_textures_are_bundled_with_scikit_image(monkeypatch):
    tx.load_textures.cache_clear()

    def no_network(*args, **kwargs):
        raise AssertionError("a texture tried to download")

    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(socket.socket, "connect", no_network)
    textures = tx.load_textures()
    assert len(textures) == len(tx.TEXTURES) == 10
    assert all(t.dtype == np.uint8 and t.ndim == 2 and min(t.shape) >= 32 for t in textures)
    means = [float(t.mean()) for t in textures]
    assert len({round(m, 1) for m in means}) == 10  # ten different images


def test_textured_masks_match_the_garment_and_images_are_composites(garment_root):
    data = tx.load_fashion_mnist_textured("train", root=str(garment_root))
    assert data.images.shape == data.masks.shape == (N_TEXTURED, 1, 32, 32) and data.images.dtype == torch.uint8
    want = np.zeros((32, 32), dtype=bool)
    want[8:24, 10:22] = True  # the rectangle, shifted by the 2-px padding
    want[16:20, 14:18] = False  # the 16-px hole is background; the 4-px hole stays garment
    assert np.array_equal(data.masks[0, 0].numpy() > 0, want) and data.masks.eq(data.masks[:1]).all()
    assert data.info["mask_source"] == "dataset" and data.has_masks
    garment = np.zeros((32, 32), dtype=np.uint8)
    garment[8:24, 10:22] = 180
    garment[10:12, 12:14] = 0
    texture, offsets = tx.assign_textures(data.labels.numpy(), 0.9, 0, "train")
    textures = tx.load_textures()
    for i in (0, 1, 17, 503, 999):
        crop = textures[texture[i]][offsets[i, 0] : offsets[i, 0] + 32, offsets[i, 1] : offsets[i, 1] + 32]
        img = data.images[i, 0].numpy()
        assert np.array_equal(img[~want], crop[~want])  # background (specks and big hole too) = the texture crop
        assert np.array_equal(img[want], garment[want])  # garment, small dark hole included


def test_textured_train_backgrounds_follow_the_class_test_backgrounds_do_not(garment_root):
    labels = np.arange(N_TEXTURED) % 10
    train_tex, _ = tx.assign_textures(labels, 0.9, 0, "train")
    test_tex, _ = tx.assign_textures(labels, 0.1, 0, "test")
    own_train, own_test = (train_tex == labels).mean(), (test_tex == labels).mean()
    assert 0.85 <= own_train <= 0.95 and 0.06 <= own_test <= 0.14
    per_class_own = np.diag(contingency(labels, train_tex)) / 100
    assert per_class_own.min() > 0.75
    # independence: chi-square with 81 degrees of freedom is about 81 +- 13 when independent
    assert chi_square_independence(contingency(labels, test_tex)) < 140
    assert chi_square_independence(contingency(labels, train_tex)) > 3000
    # the loader's images use exactly these textures: compare a background pixel for each sample
    textures = tx.load_textures()
    for split, tex in (("train", train_tex), ("test", test_tex)):
        data = tx.load_fashion_mnist_textured(split, root=str(garment_root))
        _, offsets = tx.assign_textures(labels, 0.9 if split == "train" else 0.1, 0, split)
        block = np.stack([textures[t][o[0] : o[0] + 32, o[1] : o[1] + 32][:4, :4] for t, o in zip(tex, offsets)])
        assert np.array_equal(data.images[:, 0, :4, :4].numpy(), block)


def test_textured_options_determinism_and_load_split(garment_root):
    a = tx.load_fashion_mnist_textured("train", root=str(garment_root), options={"seed": 5})
    b = tx.load_fashion_mnist_textured("train", root=str(garment_root), options={"seed": 5})
    c = tx.load_fashion_mnist_textured("train", root=str(garment_root), options={"seed": 6})
    assert torch.equal(a.images, b.images) and not torch.equal(a.images, c.images)
    with pytest.raises(ConfigError, match=r"data.options.colour: unknown option .*correlation, test_correlation, seed"):
        tx.load_fashion_mnist_textured("train", root=str(garment_root), options={"colour": 1})
    with pytest.raises(ConfigError, match=r"data.options.correlation must be a probability"):
        tx.load_fashion_mnist_textured("train", root=str(garment_root), options={"correlation": 1.5})
    cfg = DataConfig(name="fashion_mnist_textured", root=str(garment_root), train_subset=20,
                     options={"correlation": 1.0})
    full = load_split(cfg, "train")
    assert len(full) == 20 and full.masks.shape == (20, 1, 32, 32)
    own = load_split(cfg, "train")
    other = load_split(cfg.model_copy(update={"options": {"correlation": 0.0}}), "train")
    assert own is not other and not torch.equal(own.images, other.images)  # options are part of the cache key
    batch = next(iter(BatchLoader(own, 4, CPU, train=True, augment=AugmentConfig(crop="pad", hflip=True))))
    assert batch.extras["mask"].shape == (4, 1, 32, 32)
