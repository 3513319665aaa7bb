"""A user's own class folders: evaluation reads images at the scale training did, every data.* setting
is used or refused, and the folders users really have load (mixed sizes and modes, nested folders) or
fail naming what is wrong (vitrobust/data/folders.py, data/__init__.loader_kwargs)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from vitrobust.checkpoint import save_weights
from vitrobust.config import ConfigError, DataConfig, load_config
from vitrobust.data import load_split
from vitrobust.data.folders import load_image_folder
from vitrobust.errors import DatasetError
from vitrobust.evaluate import evaluate_path
from vitrobust.models import build_model

pytestmark = pytest.mark.usefixtures("one_thread")


def save(path, arr, mode=None, fmt=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr, mode).save(path, fmt)
    return path


def stripes(w: int, h: int) -> np.ndarray:
    """Vertical stripes whose period shows the scale an image was read at."""
    x = (np.arange(w) // 4 % 2 * 255).astype(np.uint8)
    return np.repeat(np.tile(x, (h, 1))[:, :, None], 3, axis=2)


@pytest.fixture
def tree(tmp_path):
    """train/{a,b,c} and val/{a,b,c}: 48x32 images; val/a/shared.png is train/a/0.png."""
    root = tmp_path / "data"
    for split, count in (("train", 2), ("val", 1)):
        for name in "abc":
            for k in range(count):
                save(root / split / name / f"{k}.png", np.roll(stripes(48, 32), 3 * k + ord(name), axis=1))
    shutil.copy(root / "train" / "a" / "0.png", root / "val" / "a" / "shared.png")
    return root


def cfg_for(root, *overrides):
    return load_config("quickstart/baseline", ["data.name=imagefolder", f"data.root={root}", "data.img_size=16",
                                               "device=cpu", *overrides])


def shared_pair(cfg):
    """The shared image as training and as evaluation read it."""
    train, test = load_split(cfg.data, "train"), load_split(cfg.data, "test")
    i = next(i for i in range(len(test)) if str(test.read.files[i]).endswith("shared.png"))
    return train.sample(0), test.sample(i)


def test_evaluation_reads_images_at_the_scale_training_did(tree):
    plain = cfg_for(tree)  # the quickstart trains on whole images (augment.crop none)
    assert plain.data.crop_pct == 1.0 and "crop_pct: 1.0" in plain.to_yaml()
    seen_in_training, seen_in_test = shared_pair(plain)
    assert torch.equal(seen_in_training, seen_in_test)
    rrc = cfg_for(tree, "augment.crop=rrc")  # random-resized crops: the ImageNet rule at test time
    assert rrc.data.crop_pct == 0.875
    seen_in_training, seen_in_test = shared_pair(rrc)
    assert not torch.equal(seen_in_training, seen_in_test)
    fixed = cfg_for(tree, "data.crop_pct=0.5")  # given: kept
    assert fixed.data.crop_pct == 0.5 and load_split(fixed.data, "test").info["resize"]["crop_pct"] == 0.5


def test_every_data_setting_is_used_or_refused(tree):
    with pytest.raises(ConfigError, match=r"data\.options does not apply to the dataset 'imagefolder'.*data\.in_chans"):
        load_split(DataConfig(name="imagefolder", root=str(tree), options={"colour": "blue"}), "train")
    with pytest.raises(ConfigError, match=r"data\.crop_pct does not apply to the dataset 'fashion_mnist'"):
        load_split(DataConfig(crop_pct=0.9), "test")
    with pytest.raises(ConfigError, match=r"data\.in_chans does not apply"):
        load_split(DataConfig(name="fashion_mnist", in_chans=3), "test")
    with pytest.raises(ConfigError, match=r"data\.options\.hue: unknown option of fashion_mnist_textured; valid: "):
        load_split(DataConfig(name="fashion_mnist_textured", options={"hue": 1}), "test")
    gray = load_split(DataConfig(name="imagefolder", root=str(tree), img_size=8, in_chans=1), "train")
    assert gray.images.shape[1:] == (1, 8, 8) and gray.info["resize"]["in_chans"] == 1


def test_images_of_every_size_and_mode_load(tmp_path):
    root = tmp_path / "modes"
    const = lambda v, c=3: np.full((20, 30, c), v, dtype=np.uint8)  # noqa: E731
    save(root / "train" / "gray" / "l.png", np.full((20, 30), 77, dtype=np.uint8), "L")
    save(root / "train" / "gray" / "deep" / "nested" / "l16.png", np.full((40, 25), 128 * 257, dtype=np.uint16))
    save(root / "train" / "rgba" / "a.png", np.dstack([const(10), np.zeros((20, 30, 1), np.uint8)]), "RGBA")
    save(root / "train" / "rgba" / "cmyk.jpg", const(0, 4), "CMYK", "JPEG")
    Image.fromarray(const(200)).convert("P", palette=Image.Palette.ADAPTIVE, colors=4).save(root / "train" / "rgba" / "p.png")
    save(root / "train" / "rgba" / "big.png", const(99)[:, :, :3].repeat(5, axis=0).repeat(5, axis=1))
    data = load_image_folder("train", root=str(root), img_size=12)
    assert data.classes == ["gray", "rgba"] and data.images.shape == (6, 3, 12, 12)
    by_file = {p.name: data.images[i] for i, p in enumerate(data.read.files)}
    assert (by_file["l.png"] == 77).all() and (by_file["l16.png"] == 128).all()  # 16 bits scaled, not clipped
    assert (by_file["a.png"] == 10).all() and (by_file["p.png"] == 200).all() and (by_file["big.png"] == 99).all()
    assert by_file["cmyk.jpg"].float().mean() > 200  # no ink: white
    gray = load_image_folder("train", root=str(root), img_size=12, in_chans=1)
    assert gray.images.shape == (6, 1, 12, 12)


def test_folders_that_cannot_work_fail_naming_the_problem(tree, tmp_path):
    (tree / "train" / "d").mkdir()
    with pytest.raises(DatasetError, match=r"class folder .*train/d holds no images"):
        load_image_folder("train", root=str(tree))
    (tree / "train" / "d").rmdir()
    save(tree / "val" / "zebra" / "0.png", stripes(48, 32))
    with pytest.raises(DatasetError, match=r"class folders the training folder lacks \(zebra\)"):
        load_image_folder("test", root=str(tree))
    shutil.rmtree(tree / "val" / "zebra")
    shutil.rmtree(tree / "val" / "b")  # a test folder may lack classes: labels still follow training's
    test = load_image_folder("test", root=str(tree), img_size=8)
    assert test.classes == ["a", "b", "c"] and sorted(set(test.labels.tolist())) == [0, 2]


def test_an_unreadable_image_is_named_or_skipped(tree):
    bad = tree / "train" / "b" / "broken.png"
    bad.write_bytes((tree / "train" / "b" / "0.png").read_bytes()[:60])  # a truncated PNG
    with pytest.raises(DatasetError, match=r"cannot decode image .*broken\.png.*data\.skip_bad=true"):
        load_image_folder("train", root=str(tree), img_size=8)
    with pytest.warns(UserWarning, match=r"skipped 1 unreadable image"):
        data = load_image_folder("train", root=str(tree), img_size=8, skip_bad=True)
    assert len(data) == 6 and data.info["skipped_bad"] == 1
    assert all(p.name != "broken.png" for p in data.read.files)


def test_in_memory_auto_follows_the_memory_budget(tree):
    small = load_image_folder("train", root=str(tree), img_size=8, in_memory="auto")
    assert small.images is not None
    lazy = load_image_folder("train", root=str(tree), img_size=8, in_memory="auto", memory_budget_gb=1e-9)
    assert lazy.images is None and torch.equal(lazy.read(3), small.images[3])
    with pytest.raises(DatasetError, match=r"more than data\.memory_budget_gb.*data\.in_memory=auto"):
        load_image_folder("train", root=str(tree), img_size=8, in_memory=True, memory_budget_gb=1e-9)
    assert DataConfig().in_memory == "auto"


def test_results_record_how_the_images_were_read(tree, tmp_path):
    cfg = cfg_for(tree)
    spec = {"name": "vit_pico_patch8_32", "num_classes": 3, "in_chans": 3, "img_size": 16, "patch_size": 8,
            "mean": [0.5] * 3, "std": [0.5] * 3, "kwargs": {"embed_dim": 32, "depth": 1, "num_heads": 2}}
    model = build_model(spec)
    run = tmp_path / "run"
    save_weights(model, run / "model.safetensors", model.spec, cfg.to_yaml())
    _, path = evaluate_path(run, "clean")
    entry = json.loads(path.read_text())["clean"]
    assert entry["n"] == 4 and entry["data"] == {"name": "imagefolder", "img_size": 16, "crop_pct": 1.0,
                                                 "interpolation": "bicubic", "in_chans": 3}
