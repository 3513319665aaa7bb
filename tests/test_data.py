"""Datasets, the batch loader (sharding, determinism) and batched augmentation."""

from __future__ import annotations

import gzip
import random
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from vitrobust.config import AugmentConfig, DataConfig
from vitrobust.data import DATASETS, BatchLoader, DatasetError, ImageSet, load_split
from vitrobust.data import fashion_mnist as fm
from vitrobust.data.augment import BatchAugment, randaugment_transform
from vitrobust.data.fashion_mnist import load_fashion_mnist, read_idx
from vitrobust.data.folders import decode, load_image_folder

CPU = torch.device("cpu")


def make_set(n: int, chans: int = 1, size: int = 4, num_classes: int = 5) -> ImageSet:
    """In-memory set where every pixel of image i is i (so a batch reveals its indices)."""
    images = (torch.arange(n, dtype=torch.int64) % 256).to(torch.uint8).view(n, 1, 1, 1).expand(n, chans, size, size)
    labels = torch.arange(n) % num_classes
    return ImageSet(labels=labels, classes=[str(i) for i in range(num_classes)], img_size=size, in_chans=chans,
                    mean=(0.5,) * chans, std=(0.5,) * chans, images=images.contiguous(), name="synthetic")


def random_set(n: int, chans: int, size: int, seed: int = 0) -> ImageSet:
    gen = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, chans, size, size), generator=gen, dtype=torch.uint8)
    return ImageSet(labels=torch.arange(n) % 3, classes=["a", "b", "c"], img_size=size, in_chans=chans,
                    mean=(0.5,) * chans, std=(0.5,) * chans, images=images, name="random")


def batches(loader: BatchLoader, epoch: int = 0, skip: int = 0):
    loader.set_epoch(epoch, skip)
    return list(loader)


# --- IDX / Fashion-MNIST -----------------------------------------------------------------------


def test_read_idx_exact_values(tiny_idx_root, tiny_idx_arrays):
    for split, (img_name, lbl_name) in {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
                                        "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}.items():
        images = read_idx(tiny_idx_root / img_name)
        labels = read_idx(tiny_idx_root / lbl_name)
        want_images, want_labels = tiny_idx_arrays[split]
        assert images.dtype == np.uint8 and labels.dtype == np.uint8
        np.testing.assert_array_equal(images, want_images)
        np.testing.assert_array_equal(labels, want_labels)
    # spot-check the generator formula by hand: train image 3, row 2, col 1 = 3*7 + 2*3 + 1*5 + 1 = 33
    assert read_idx(tiny_idx_root / "train-images-idx3-ubyte.gz")[3, 2, 1] == 33
    assert read_idx(tiny_idx_root / "t10k-labels-idx1-ubyte.gz")[:5].tolist() == [0, 3, 6, 9, 2]


def test_read_idx_uncompressed(tmp_path, write_idx):
    arr = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    path = write_idx(tmp_path / "plain-idx3-ubyte", arr)
    assert path.read_bytes()[:8] == bytes([0, 0, 8, 3, 0, 0, 0, 2])
    np.testing.assert_array_equal(read_idx(path), arr)


@pytest.mark.parametrize(
    ("name", "content", "match"),
    [
        ("bad-magic", bytes([0, 0, 0x0D, 1, 0, 0, 0, 2, 1, 2]), "not a uint8 IDX"),
        ("empty", b"", "not a uint8 IDX"),
        ("short", b"\x00\x00", "not a uint8 IDX"),
        ("truncated", bytes([0, 0, 8, 2, 0, 0, 0, 3, 0, 0, 0, 4]) + bytes(7), r"truncated.*\[3, 4\].*12 bytes.*holds 7"),
        ("too-long", bytes([0, 0, 8, 1, 0, 0, 0, 3]) + bytes(5), "truncated"),
        ("header-cut", bytes([0, 0, 8, 3, 0, 0]), "truncated"),
    ],
)
def test_read_idx_corrupt_raw(tmp_path, name, content, match):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(DatasetError, match=match) as info:
        read_idx(path)
    assert str(path) in str(info.value)


def test_read_idx_truncated_gzip(tiny_idx_root):
    path = tiny_idx_root / "train-images-idx3-ubyte.gz"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DatasetError, match="corrupt") as info:
        read_idx(path)
    assert str(path) in str(info.value)


def test_read_idx_gz_that_is_not_gzip(tmp_path):
    path = tmp_path / "fake-idx1-ubyte.gz"
    path.write_bytes(b"this is not gzip data at all")
    with pytest.raises(DatasetError, match="cannot read"):
        read_idx(path)


def test_read_idx_gzip_with_truncated_payload(tmp_path):
    path = tmp_path / "cut-idx3-ubyte.gz"
    header = bytes([0, 0, 8, 3, 0, 0, 0, 10, 0, 0, 0, 28, 0, 0, 0, 28])
    path.write_bytes(gzip.compress(header + bytes(28 * 28 * 3)))
    with pytest.raises(DatasetError, match=r"truncated.*\[10, 28, 28\]"):
        read_idx(path)


def test_load_fashion_mnist_pads_with_zeros(tiny_idx_root, tiny_idx_arrays):
    for split, n in (("train", 64), ("test", 32)):
        data = load_fashion_mnist(split, root=str(tiny_idx_root))
        images, labels = tiny_idx_arrays[split]
        assert data.images.shape == (n, 1, 32, 32)
        assert data.images.dtype == torch.uint8
        assert (data.img_size, data.in_chans, data.num_classes, len(data)) == (32, 1, 10, n)
        x = data.images[:, 0]
        # the 2-pixel border is black, the centre is the original image
        assert x[:, :2].eq(0).all() and x[:, 30:].eq(0).all()
        assert x[:, :, :2].eq(0).all() and x[:, :, 30:].eq(0).all()
        assert torch.equal(x[:, 2:30, 2:30], torch.from_numpy(images))
        assert data.labels.dtype == torch.int64
        assert data.labels.tolist() == labels.astype(int).tolist()
        assert data.classes[0] == "t-shirt/top" and data.classes[9] == "ankle boot"


def test_load_fashion_mnist_uncompressed_files(tmp_path, tiny_idx_root, tiny_idx_arrays):
    plain = tmp_path / "plain"
    plain.mkdir()
    for gz in tiny_idx_root.iterdir():
        (plain / gz.stem).write_bytes(gzip.decompress(gz.read_bytes()))
    data = load_fashion_mnist("test", root=str(plain))
    assert torch.equal(data.images[:, 0, 2:30, 2:30], torch.from_numpy(tiny_idx_arrays["test"][0]))


def test_load_fashion_mnist_label_count_mismatch(tiny_idx_root, write_idx):
    write_idx(tiny_idx_root / "t10k-labels-idx1-ubyte.gz", np.zeros(31, dtype=np.uint8))
    with pytest.raises(DatasetError, match="labels"):
        load_fashion_mnist("test", root=str(tiny_idx_root))


def test_missing_root_explains_how_to_install(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(DatasetError) as info:
        load_fashion_mnist("train", root=str(missing))
    msg = str(info.value)
    assert str(missing) in msg
    assert "apt-get install dataset-fashion-mnist" in msg
    assert "data.download" in msg
    assert isinstance(info.value, FileNotFoundError)


def test_default_roots_missing_and_cache_found(tmp_path, monkeypatch, tiny_idx_root):
    monkeypatch.setattr(fm, "SYSTEM_ROOT", tmp_path / "system")
    monkeypatch.setenv("VITROBUST_CACHE", str(tmp_path / "cache"))
    with pytest.raises(DatasetError) as info:
        load_fashion_mnist("train")
    msg = str(info.value)
    assert str(tmp_path / "system") in msg and str(tmp_path / "cache" / "fashion-mnist") in msg
    assert "apt-get install dataset-fashion-mnist" in msg and "data.download" in msg
    # the four files in the cache folder are found without data.root
    shutil.copytree(tiny_idx_root, tmp_path / "cache" / "fashion-mnist")
    data = load_fashion_mnist("test")
    assert len(data) == 32
    assert data.info["root"] == str(tmp_path / "cache" / "fashion-mnist")


def test_partial_root_is_not_accepted(tiny_idx_root):
    (tiny_idx_root / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DatasetError, match="not found"):
        load_fashion_mnist("train", root=str(tiny_idx_root))


# --- ImageSet / load_split --------------------------------------------------------------------


def test_subset_is_a_balanced_sample_that_keeps_images_and_positions():
    data = make_set(10)  # labels 0..4 twice
    sub = data.subset(5)
    assert len(sub) == 5 and sorted(sub.labels.tolist()) == [0, 1, 2, 3, 4]  # one per class, not the first 5
    assert torch.equal(sub.images, data.images[sub.positions])  # the images at the recorded positions
    assert [int(sub.sample(i)[0, 0, 0]) for i in range(5)] == sub.positions.tolist()
    assert (sub.classes, sub.img_size, sub.mean) == (data.classes, data.img_size, data.mean)
    assert data.subset(None) is data
    assert data.subset(10) is data and data.subset(99) is data


def test_subset_of_lazy_set_keeps_reader():
    base = make_set(6)
    lazy = ImageSet(labels=base.labels, classes=base.classes, img_size=4, in_chans=1, mean=(0.5,), std=(0.5,),
                    read=lambda i: base.images[i])
    sub = lazy.subset(3)
    assert sub.images is None and len(sub) == 3
    assert torch.equal(sub.sample(2), base.images[int(sub.positions[2])])


def test_load_split_subsets_and_cache(tiny_idx_root, tiny_idx_arrays):
    cfg = DataConfig(name="fashion_mnist", root=str(tiny_idx_root), train_subset=10, test_subset=5)
    train, test = load_split(cfg, "train"), load_split(cfg, "test")
    assert (len(train), len(test)) == (10, 5)
    picked = train.positions.numpy()
    assert torch.equal(train.images[:, 0, 2:30, 2:30], torch.from_numpy(tiny_idx_arrays["train"][0][picked]))
    assert test.labels.tolist() == tiny_idx_arrays["test"][1][test.positions.numpy()].tolist()
    full = load_split(DataConfig(name="fashion_mnist", root=str(tiny_idx_root)), "train")
    assert len(full) == 64
    assert load_split(DataConfig(name="fashion_mnist", root=str(tiny_idx_root)), "train") is full  # decoded once
    assert torch.equal(train.images, full.images[train.positions])


def test_load_split_unknown_name_suggests():
    with pytest.raises(DatasetError, match=r"unknown dataset 'fashion_mnst'; did you mean 'fashion_mnist'"):
        load_split(DataConfig(name="fashion_mnst"), "train")
    with pytest.raises(DatasetError, match="cifar10"):
        load_split(DataConfig(name="cifar1O"), "train")
    assert {"fashion_mnist", "cifar10", "cifar100", "imagefolder"} <= set(DATASETS)


# --- image folders ----------------------------------------------------------------------------


def test_image_folder_labels_follow_sorted_classes(image_folder):
    data = load_image_folder("train", root=str(image_folder.root), img_size=16)
    assert data.classes == ["apple", "mango", "zebra"]
    assert data.labels.tolist() == [0] * 4 + [1] * 4 + [2] * 4 == image_folder.labels("train")
    assert data.images.shape == (12, 3, 16, 16) and data.images.dtype == torch.uint8
    assert (data.img_size, data.in_chans, data.num_classes) == (16, 3, 3)
    assert data.info["root"] == str(image_folder.root / "train")


def test_image_folder_decode_is_centre_crop(image_folder):
    # img_size 30 on 40x30 train images: no resize (crop_pct 1), crop columns 5..34
    data = load_image_folder("train", root=str(image_folder.root), img_size=30)
    for k, (path, _, arr) in enumerate(image_folder.files["train"]):
        want = torch.from_numpy(arr[:, 5:35]).permute(2, 0, 1)
        assert torch.equal(data.images[k], want), path


def test_image_folder_eval_split_falls_back_to_val_and_resizes(image_folder):
    data = load_image_folder("test", root=str(image_folder.root), img_size=30)
    assert data.info["root"] == str(image_folder.root / "val")
    assert data.labels.tolist() == [0, 0, 1, 1, 2, 2]
    # crop_pct 0.875: shorter side -> round(30 / 0.875) = 34, 40x30 -> 45x34, centre crop at (7, 2)
    path, _, _ = image_folder.files["val"][3]
    with Image.open(path) as img:
        ref = np.asarray(img.convert("RGB").resize((45, 34), Image.BICUBIC).crop((7, 2, 37, 32)))
    assert torch.equal(data.images[3], torch.from_numpy(ref.copy()).permute(2, 0, 1))


def test_decode_grayscale_and_size(image_folder):
    path, _, arr = image_folder.files["train"][0]
    gray = decode(path, 12, 1.0, 1)
    assert gray.shape == (1, 12, 12) and gray.dtype == torch.uint8
    rgb = decode(path, 12, 1.0, 3)
    assert rgb.shape == (3, 12, 12)
    data = load_image_folder("train", root=str(image_folder.root), img_size=30, in_chans=1)
    assert data.images.shape == (12, 1, 30, 30) and data.mean == (0.5,)
    with Image.open(path) as img:
        want = np.asarray(img.convert("L"))[:, 5:35]
    assert torch.equal(data.images[0, 0], torch.from_numpy(want.copy()))


def test_decode_broken_image(tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(DatasetError, match="cannot decode"):
        decode(bad, 8, 1.0, 3)


def test_image_folder_errors(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        load_image_folder("train", root=str(tmp_path / "missing"))
    (tmp_path / "empty" / "train" / "cls").mkdir(parents=True)
    with pytest.raises(DatasetError, match="no images"):
        load_image_folder("train", root=str(tmp_path / "empty"))
    with pytest.raises(DatasetError, match="data.root"):
        load_image_folder("train", root=None)


@pytest.mark.parametrize("train", [False, True])
def test_image_folder_in_memory_and_lazy_identical(image_folder, train):
    eager = load_image_folder("train", root=str(image_folder.root), img_size=16, in_memory=True)
    lazy = load_image_folder("train", root=str(image_folder.root), img_size=16, in_memory=False)
    assert lazy.images is None and lazy.read is not None
    aug = AugmentConfig(crop="rrc", hflip=True) if train else None
    out = []
    for data in (eager, lazy):
        loader = BatchLoader(data, 4, CPU, train=train, augment=aug, seed=3)
        out.append(batches(loader, epoch=1))
    assert len(out[0]) == len(out[1]) == 3
    for a, b in zip(*out):
        assert torch.equal(a.index, b.index)
        assert torch.equal(a.y, b.y)
        assert torch.equal(a.x, b.x)
    if not train:
        assert torch.equal(torch.cat([b.x for b in out[0]]), eager.images.float() / 255)


def test_load_split_imagefolder(image_folder):
    cfg = DataConfig(name="imagefolder", root=str(image_folder.root), img_size=8, in_memory=False, test_subset=4)
    test = load_split(cfg, "test")
    assert len(test) == 4 and sorted(test.labels.tolist().count(c) for c in range(3)) == [1, 1, 2]  # balanced
    assert test.sample(0).shape == (3, 8, 8)


# --- BatchLoader: training order --------------------------------------------------------------


def test_train_epoch_is_permutation_of_full_batches():
    data = make_set(64)
    loader = BatchLoader(data, 16, CPU, train=True, seed=0)
    assert len(loader) == 4
    got = batches(loader)
    assert [len(b) for b in got] == [16] * 4
    idx = torch.cat([b.index for b in got])
    assert sorted(idx.tolist()) == list(range(64))
    assert not torch.equal(idx, torch.arange(64))  # shuffled
    for b in got:
        # pixel value of image i is i, labels are i % 5
        assert torch.equal(b.x[:, 0, 0, 0] * 255, b.index.float())
        assert torch.equal(b.y, b.index % 5)
        assert b.x.dtype == torch.float32 and b.x.shape[1:] == (1, 4, 4)
        assert b.target is None


def test_train_drops_partial_batch():
    loader = BatchLoader(make_set(70), 16, CPU, train=True, seed=1)
    assert len(loader) == 4
    idx = torch.cat([b.index for b in batches(loader)])
    assert len(idx) == 64 and len(set(idx.tolist())) == 64 and int(idx.max()) < 70


def test_train_order_deterministic_and_changes_with_epoch_and_seed():
    data = make_set(64)

    def order(seed, epoch):
        return torch.cat([b.index for b in batches(BatchLoader(data, 16, CPU, train=True, seed=seed), epoch)])

    assert torch.equal(order(0, 0), order(0, 0))
    assert torch.equal(order(5, 3), order(5, 3))
    assert not torch.equal(order(0, 0), order(0, 1))
    assert not torch.equal(order(0, 1), order(0, 2))
    assert not torch.equal(order(0, 0), order(1, 0))


@pytest.mark.parametrize("world", [2, 4])
def test_train_ranks_split_the_global_batch(world):
    data = make_set(70)
    whole = batches(BatchLoader(data, 16, CPU, train=True, seed=2, world=1), epoch=3)
    shards = [batches(BatchLoader(data, 16, CPU, train=True, seed=2, rank=r, world=world), epoch=3)
              for r in range(world)]
    assert all(len(s) == len(whole) == 4 for s in shards)
    for step, full in enumerate(whole):
        parts = [s[step] for s in shards]
        assert all(len(p) == 16 // world for p in parts)
        ids = [set(p.index.tolist()) for p in parts]
        assert all(ids[i].isdisjoint(ids[j]) for i in range(world) for j in range(i + 1, world))
        assert torch.equal(torch.cat([p.index for p in parts]), full.index)
        assert torch.equal(torch.cat([p.x for p in parts]), full.x)


def test_train_skip_batches_resumes_mid_epoch():
    loader = BatchLoader(make_set(64), 8, CPU, train=True, seed=4)
    full = batches(loader, epoch=2)
    resumed = batches(loader, epoch=2, skip=5)
    assert len(resumed) == 3
    for a, b in zip(full[5:], resumed):
        assert torch.equal(a.index, b.index)


def test_train_batch_size_must_divide_by_world():
    with pytest.raises(ValueError, match="divisible"):
        BatchLoader(make_set(8), 6, CPU, train=True, world=4)


# --- BatchLoader: evaluation order ------------------------------------------------------------


def test_eval_in_order_with_last_partial_batch():
    data = make_set(70)
    loader = BatchLoader(data, 16, CPU, train=False, augment=AugmentConfig(crop="rrc", hflip=True))
    got = batches(loader)
    assert len(loader) == len(got) == 5
    assert [len(b) for b in got] == [16, 16, 16, 16, 6]
    assert torch.equal(torch.cat([b.index for b in got]), torch.arange(70))
    # evaluation never augments
    assert torch.equal(torch.cat([b.x for b in got]), data.images.float() / 255)


@pytest.mark.parametrize("world", [2, 3])
def test_eval_ranks_cover_every_sample_once(world):
    data = make_set(70)
    seen = []
    for rank in range(world):
        loader = BatchLoader(data, 16, CPU, train=False, rank=rank, world=world)
        got = batches(loader)
        assert len(loader) == len(got)
        for b in got:
            assert torch.equal(b.x[:, 0, 0, 0] * 255, b.index.float())
        seen += torch.cat([b.index for b in got]).tolist() if got else []
    assert sorted(seen) == list(range(70))


def test_loader_resizes_to_img_size():
    data = random_set(4, 3, 8)
    got = batches(BatchLoader(data, 4, CPU, train=False, img_size=16))
    assert got[0].x.shape == (4, 3, 16, 16)
    assert got[0].x.min() >= 0 and got[0].x.max() <= 1


# --- batched augmentation ---------------------------------------------------------------------

AUG_CONFIGS = {
    "rrc": AugmentConfig(crop="rrc"),
    "pad": AugmentConfig(crop="pad", crop_padding=3),
    "hflip": AugmentConfig(hflip=True),
    "jitter": AugmentConfig(color_jitter=0.8),
    "all": AugmentConfig(crop="rrc", crop_scale=(0.3, 1.0), hflip=True, color_jitter=0.5),
    "pad+flip+jitter": AugmentConfig(crop="pad", hflip=True, color_jitter=0.4),
}


@pytest.mark.parametrize("chans", [1, 3])
@pytest.mark.parametrize("name", list(AUG_CONFIGS))
def test_augment_range_shape_and_batch_independence(name, chans):
    aug = BatchAugment(AUG_CONFIGS[name], num_samples=8, seed=11)
    aug.set_epoch(2)
    x = torch.rand(8, chans, 12, 12, generator=torch.Generator().manual_seed(0))
    x_before = x.clone()
    full = aug(x, torch.arange(8))
    assert torch.equal(x, x_before)  # the input is not modified
    assert full.shape == x.shape
    assert full.min() >= 0 and full.max() <= 1
    assert not torch.equal(full, x)  # something happened
    halves = torch.cat([aug(x[:4], torch.arange(4)), aug(x[4:], torch.arange(4, 8))])
    assert torch.equal(full, halves)
    perm = torch.tensor([5, 2, 7, 0])
    assert torch.equal(aug(x[perm], perm), full[perm])


def test_augment_params_deterministic_per_seed_and_epoch():
    cfg = AUG_CONFIGS["all"]
    x = torch.rand(6, 3, 8, 8, generator=torch.Generator().manual_seed(1))

    def run(seed, epoch):
        aug = BatchAugment(cfg, 6, seed)
        aug.set_epoch(epoch)
        return aug(x, torch.arange(6))

    assert torch.equal(run(1, 0), run(1, 0))
    assert not torch.equal(run(1, 0), run(1, 1))
    assert not torch.equal(run(1, 0), run(2, 0))


def test_augment_inactive_is_identity():
    aug = BatchAugment(AugmentConfig(), 4, 0)
    aug.set_epoch(0)
    assert not aug.active and aug.params is None
    x = torch.rand(4, 1, 5, 5)
    assert aug(x, torch.arange(4)) is x


def shift_reference(img: torch.Tensor, dx: int, dy: int) -> torch.Tensor:
    """out[y, x] = img[y + dy, x + dx], zero where that falls outside."""
    out = torch.zeros_like(img)
    h, w = img.shape[-2:]
    ys, xs = slice(max(0, -dy), min(h, h - dy)), slice(max(0, -dx), min(w, w - dx))
    src_y, src_x = slice(ys.start + dy, ys.stop + dy), slice(xs.start + dx, xs.stop + dx)
    out[..., ys, xs] = img[..., src_y, src_x]
    return out


def test_shift_reference_by_hand():
    img = torch.arange(9.0).view(1, 3, 3)
    assert shift_reference(img, 1, 0).tolist() == [[[1, 2, 0], [4, 5, 0], [7, 8, 0]]]
    assert shift_reference(img, 0, -1).tolist() == [[[0, 0, 0], [0, 1, 2], [3, 4, 5]]]


@pytest.mark.parametrize("size", [(10, 10), (8, 12)])
def test_pad_crop_is_exact_integer_translation(size):
    p, n = 3, 24
    aug = BatchAugment(AugmentConfig(crop="pad", crop_padding=p), n, seed=5)
    aug.set_epoch(0)
    h, w = size
    x = torch.rand(n, 2, h, w, generator=torch.Generator().manual_seed(2)) * 0.9 + 0.05
    out = aug(x, torch.arange(n))
    shifts = set()
    for i in range(n):
        dx = int(np.floor(float(aug.params[i, 2]) * (2 * p + 1) - p))
        dy = int(np.floor(float(aug.params[i, 3]) * (2 * p + 1) - p))
        assert -p <= dx <= p and -p <= dy <= p
        shifts.add((dx, dy))
        torch.testing.assert_close(out[i], shift_reference(x[i], dx, dy), atol=1e-5, rtol=0)
    assert len(shifts) > 3  # the shifts do vary


def test_hflip_gives_flipped_or_original():
    n = 16
    aug = BatchAugment(AugmentConfig(hflip=True), n, seed=7)
    aug.set_epoch(0)
    x = torch.rand(n, 3, 6, 9, generator=torch.Generator().manual_seed(3))
    out = aug(x, torch.arange(n))
    flipped = 0
    for i in range(n):
        if aug.params[i, 7] < 0.5:
            torch.testing.assert_close(out[i], x[i].flip(-1), atol=1e-6, rtol=0)
            flipped += 1
        else:
            torch.testing.assert_close(out[i], x[i], atol=1e-6, rtol=0)
    assert 0 < flipped < n


def test_loader_augmentation_independent_of_world_size():
    data = random_set(32, 3, 8)
    cfg = AugmentConfig(crop="rrc", hflip=True, color_jitter=0.3)
    whole = batches(BatchLoader(data, 8, CPU, train=True, augment=cfg, seed=9), epoch=1)
    ranks = [batches(BatchLoader(data, 8, CPU, train=True, augment=cfg, seed=9, rank=r, world=2), epoch=1)
             for r in range(2)]
    for step, full in enumerate(whole):
        assert torch.equal(torch.cat([ranks[0][step].x, ranks[1][step].x]), full.x)
    plain = torch.cat([b.x for b in whole])
    raw = data.images[torch.cat([b.index for b in whole])].float() / 255
    assert not torch.equal(plain, raw) and plain.min() >= 0 and plain.max() <= 1


@pytest.mark.parametrize("chans", [1, 3])
def test_randaugment_path(chans):
    random.seed(0)
    np.random.seed(0)
    data = random_set(16, chans, 32, seed=chans)
    cfg = AugmentConfig(randaugment="rand-m9-mstd0.5")
    loader = BatchLoader(data, 8, CPU, train=True, augment=cfg, seed=0)
    assert loader.batch_augment is not None and not loader.batch_augment.active
    got = batches(loader)
    assert len(got) == 2
    changed = 0
    for b in got:
        assert b.x.shape == (8, chans, 32, 32) and b.x.dtype == torch.float32
        assert b.x.min() >= 0 and b.x.max() <= 1
        scaled = b.x * 255
        torch.testing.assert_close(scaled, scaled.round(), atol=1e-3, rtol=0)  # uint8-derived
        assert torch.equal(b.y, data.labels[b.index])
        raw = data.images[b.index].float() / 255
        changed += int((b.x != raw).flatten(1).any(1).sum())
    assert changed > 0


@pytest.mark.parametrize("chans", [1, 3])
def test_randaugment_transform_uint8_chw(chans):
    random.seed(1)
    np.random.seed(1)
    apply = randaugment_transform("rand-m9-n3-mstd0.5", chans, 16)
    img = torch.randint(0, 256, (chans, 16, 16), generator=torch.Generator().manual_seed(4), dtype=torch.uint8)
    for _ in range(10):
        out = apply(img)
        assert out.dtype == torch.uint8 and out.shape == (chans, 16, 16)


def test_randaugment_with_fashion_mnist(tiny_idx_root):
    random.seed(2)
    np.random.seed(2)
    data = load_fashion_mnist("train", root=str(tiny_idx_root)).subset(8)
    cfg = AugmentConfig(randaugment="rand-m9-mstd0.5", crop="pad")
    got = batches(BatchLoader(data, 8, CPU, train=True, augment=cfg, seed=1))
    assert got[0].x.shape == (8, 1, 32, 32)
    assert got[0].x.min() >= 0 and got[0].x.max() <= 1
