"""Subsets are balanced, seeded, class-stratified samples (ImageSet.subset, docs/architecture.md): every subset
key draws the same number of images per class, the sample is a function of (positions, labels, seed) alone,
samples nest, results entries record their sample, and entries of the old prefix rule are marked."""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers_shifts import WNIDS, Oracle, context, score, tree
from helpers_train import untrained_run
from PIL import Image

from vitrobust.config import load_config
from vitrobust.data import BatchLoader, ImageSet, load_split
from vitrobust.data.corruption_files import load_cifar_c
from vitrobust.data.corruptions import cache_key
from vitrobust.data.shard_writer import write_shards
from vitrobust.evaluate import evaluate
from vitrobust.evaluate.core import (
    PER_IMAGE,
    EvalContext,
    images_digest,
    missing_benchmarks,
    per_image,
    record_sample,
    run_suite,
)
from vitrobust.explain import explain_run
from vitrobust.models import build_model
from vitrobust.report.runs import Run
from vitrobust.report.tables import leaderboard
from vitrobust.train import Trainer

pytestmark = pytest.mark.usefixtures("one_thread")

CLASSES, PER_CLASS, SIZE = 10, 40, 32
TINY_VIT = {"name": "vit_pico_patch8_32", "num_classes": CLASSES, "in_chans": 1, "img_size": SIZE, "patch_size": None,
            "mean": [0.25], "std": [0.5], "drop_rate": 0.0, "drop_path_rate": 0.0,
            "kwargs": {"embed_dim": 32, "depth": 1, "num_heads": 2}}


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """train/ and val/: 10 sorted class folders c0..c9 of 40 grey 32x32 PNGs each (noise around a class
    brightness, so threshold masks are not empty). Prefixes of this order hold the first classes only."""
    root = tmp_path_factory.mktemp("subsets") / "folders"
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for c in range(CLASSES):
            folder = root / split / f"c{c}"
            folder.mkdir(parents=True)
            for k in range(PER_CLASS):
                arr = np.clip(40 + 20 * c + rng.normal(0, 20, (SIZE, SIZE)), 0, 255).astype(np.uint8)
                Image.fromarray(arr, "L").save(folder / f"{k:02d}.png")
    return root


def cfg_for(root, *overrides):
    return load_config(None, ["device=cpu", "data.name=imagefolder", f"data.root={root}", f"data.img_size={SIZE}",
                              "data.in_chans=1", "data.eval_batch_size=100", *overrides])


def counts(data: ImageSet) -> list[int]:
    return [Counter(data.labels.tolist())[c] for c in range(data.num_classes)]


def per_class(entry: dict) -> list[int]:
    sample = entry["sample"]
    assert sample["rule"] == "balanced" and sample["seed"] == 0 and sample["n"] == sum(sample["class_counts"].values())
    return list(sample["class_counts"].values())


def tiny_vit() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(dict(TINY_VIT)).eval()


def toy(sizes: list[int]) -> ImageSet:
    """Classes of the given sizes, one after the other; pixel value = position."""
    labels = torch.cat([torch.full((k,), c) for c, k in enumerate(sizes)])
    images = torch.arange(len(labels), dtype=torch.uint8).view(-1, 1, 1, 1)
    return ImageSet(labels=labels, classes=[f"k{c}" for c in range(len(sizes))], img_size=1, in_chans=1,
                    mean=(0.5,), std=(0.5,), images=images, name="toy")


# --- the rule ------------------------------------------------------------------------------------


def test_unequal_classes_by_hand():
    data = toy([5, 2, 1])
    assert counts(data.subset(6)) == [3, 2, 1]  # rounds: one of each, one of the two left, one of class 0
    assert counts(data.subset(3)) == [1, 1, 1]
    assert counts(data.subset(7)) == [4, 2, 1]
    assert sorted(counts(data.subset(2))) == [0, 1, 1]
    assert data.subset(8) is data and data.subset(None) is data
    sub = data.subset(6)
    assert [int(sub.sample(i)) for i in range(6)] == sub.positions.tolist()  # the images at the positions
    assert sub.sample_info() == {"rule": "balanced", "seed": 0, "n": 6, "class_counts": {"k0": 3, "k1": 2, "k2": 1}}
    assert data.sample_info() == {"rule": "all", "n": 8, "class_counts": {"k0": 5, "k1": 2, "k2": 1}}


def test_deterministic_nested_and_seeded():
    data = toy([12, 9, 7, 3])
    big, small = data.subset(20), data.subset(8)
    assert torch.equal(data.subset(20).positions, big.positions)  # the same call, the same images
    # pinned: blake2b ranks, not torch's or Python's generators, so every machine and version draws these
    assert big.positions.tolist() == [29, 18, 24, 3, 23, 12, 30, 7, 14, 9, 25, 28, 11, 20, 26, 8, 16, 22, 5, 27]
    assert torch.equal(big.subset(8).positions, small.positions)  # nested: a sample of a sample is its prefix
    assert torch.equal(big.positions[:8], small.positions)
    assert torch.equal(big.subset(8).labels, small.labels) and torch.equal(big.subset(8).images, small.images)
    other = data.subset(20, seed=1)
    assert other.positions.tolist() != big.positions.tolist()
    for sample in (big, other):  # 3 of class 3 (all), 5 rounds of the rest, the 6th round for 2 classes
        assert counts(sample)[3] == 3 and sorted(counts(sample)[:3]) == [5, 6, 6]
    assert other.sample_info()["seed"] == 1
    shuffled = data.select(torch.randperm(len(data), generator=torch.Generator().manual_seed(0)))
    assert sorted(shuffled.subset(20).positions.tolist()) == sorted(big.positions.tolist())  # order-free


def test_digest_names_the_images():
    data = toy([12, 9, 7, 3])
    prefix, sample = data.select(range(10)), data.subset(10)
    assert images_digest(prefix) == images_digest(data, 10)  # the first n of the split: the digest they had
    assert images_digest(sample) != images_digest(data, 10)  # a balanced sample is other images
    assert images_digest(sample) == images_digest(data.subset(20), 10)  # same images, same digest
    assert images_digest(sample) != images_digest(data.subset(10, seed=3))
    key = cache_key(sample, 10, "fog", 1, 0, (32, 32))
    assert key != cache_key(prefix, 10, "fog", 1, 0, (32, 32))  # a corrupted set cached by the old rule is not reused


def test_parts_measured_on_different_sets_record_their_own_samples():
    x, y = toy([4, 4]).subset(4), toy([3, 3, 3]).subset(3)  # as SI-Score's factors
    entry = {"factors": {"x": {}, "y": {}}, PER_IMAGE: {"factors.x.top1": per_image(x, torch.ones(4, dtype=torch.bool)),
                                                         "factors.y.top1": per_image(y, torch.ones(3, dtype=torch.bool))}}
    record_sample(entry)
    assert entry["factors"]["x"]["sample"]["class_counts"] == {"k0": 2, "k1": 2}
    assert entry["factors"]["y"]["sample"]["class_counts"] == {"k0": 1, "k1": 1, "k2": 1}
    assert entry["sample"] == {"rule": "balanced", "seed": 0, "n": 7, "class_counts": {"k0": 3, "k1": 3, "k2": 1}}


def test_published_corrupted_files_are_read_at_the_sample_positions(tmp_path):
    clean = toy([6, 6, 6])
    severities = [np.full((18, 4, 4, 3), 20 * s, dtype=np.uint8) + np.arange(18, dtype=np.uint8)[:, None, None, None]
                  for s in range(5)]  # image k of severity s + 1: value 20 s + k
    np.save(tmp_path / "fog.npy", np.concatenate(severities))
    np.save(tmp_path / "labels.npy", np.tile(clean.labels.numpy(), 5).astype(np.uint8))
    sample = clean.subset(9)
    corrupted = load_cifar_c(str(tmp_path), "fog", 2, 9, sample)
    assert corrupted.images[:, 0, 0, 0].tolist() == [20 + p for p in sample.positions.tolist()]
    assert torch.equal(corrupted.labels, sample.labels)


# --- every subset key ----------------------------------------------------------------------------


def test_data_subsets_and_the_trainers_eval_set(folders, tmp_path):
    cfg = cfg_for(folders, "data.test_subset=300", "data.train_subset=200", "train.eval_subset=100")
    test, train = load_split(cfg.data, "test"), load_split(cfg.data, "train")
    assert counts(test) == [30] * 10 and counts(train) == [20] * 10  # the old prefix: 7.5 classes, 5 classes
    trainer = Trainer(cfg, tmp_path / "run", progress=False)
    assert counts(trainer.eval_set) == [10] * 10
    assert torch.equal(trainer.eval_set.positions, test.positions[:100])  # nested in the test subset
    other = load_split(cfg_for(folders, "data.test_subset=300", "data.subset_seed=5").data, "test")
    assert counts(other) == [30] * 10 and other.positions.tolist() != test.positions.tolist()
    reseeded = load_split(cfg_for(folders, "data.test_subset=300", "seed=7").data, "test")
    assert torch.equal(reseeded.positions, test.positions)  # the run's seed does not move the sample


def test_every_benchmark_records_its_balanced_sample(folders, tmp_path):
    cfg = cfg_for(folders, "data.test_subset=300", "evaluate.subset=200", "data.masks.source=threshold",
                  "evaluate.attack.subset=50", "evaluate.attack.steps=2", "evaluate.attack.check_n=8",
                  "evaluate.attack.version=custom", "evaluate.attack.attacks=[apgd-ce]", "evaluate.attack.grid=0",
                  "evaluate.attack.eps=0.03", "evaluate.attack.square_queries=0", "evaluate.attack.eps_list=[0,0.03]",
                  "evaluate.corruptions.subset=30", "evaluate.corruptions.names=[fog]",
                  "evaluate.corruptions.severities=[1]", "evaluate.relevance.subset=40", "evaluate.relevance.grid=0",
                  "evaluate.background.subset=60")
    out = evaluate(tiny_vit(), "clean,pgd,autoattack,eps_sweep,corruptions,relevance,background", cfg=cfg,
                   device="cpu")
    assert per_class(out["clean"]) == [20] * 10  # evaluate.subset within data.test_subset
    for name in ("pgd", "autoattack", "eps_sweep"):
        assert per_class(out[name]) == [5] * 10, name
    assert per_class(out["corruptions"]) == [3] * 10
    assert per_class(out["relevance"]) == [4] * 10
    assert per_class(out["background"]) == [6] * 10
    assert out["clean"]["sample"]["class_counts"] == {f"c{c}": 20 for c in range(10)}  # by class name
    whole = evaluate(tiny_vit(), "clean", cfg=cfg_for(folders), device="cpu")["clean"]
    assert whole["sample"] == {"rule": "all", "n": 400, "class_counts": {f"c{c}": 40 for c in range(10)}}


def test_shift_sets_are_sampled_per_class(tmp_path):
    root = tree(tmp_path / "sk" / "sketch", {WNIDS[c]: [c] * 4 for c in range(10)}).parent
    entry = score(Oracle(), context("evaluate.shifts.subset=20", imagenet_sketch=root), "imagenet_sketch")
    assert (entry["n"], entry["classes"], entry["top1"]) == (20, 10, 1.0)
    assert per_class(entry) == [2] * 10


def test_explain_draws_a_balanced_sample(folders, tmp_path):
    overrides = ["data.name=imagefolder", f"data.root={folders}", f"data.img_size={SIZE}", "data.in_chans=1",
                 "data.test_subset=null"]
    run = untrained_run(tmp_path / "run", dict(TINY_VIT), *overrides)
    explain_run(run, 20, tmp_path / "out", overrides)
    saved = torch.load(tmp_path / "out" / "relevance_maps.pt", weights_only=True)
    assert Counter(saved["labels"].tolist()) == {c: 2 for c in range(10)}
    test = load_split(cfg_for(folders).data, "test")
    assert torch.equal(test.labels[saved["index"]], saved["labels"])  # index: positions in the test split


@pytest.mark.parametrize("workers", [0, 2])
def test_streamed_training_subset_is_the_in_memory_sample_and_resumes(folders, tmp_path, workers):
    shards = tmp_path / "shards"
    write_shards(str(folders), shards, shard_size=50)  # train: 400 images in 8 shards, in a seeded order
    cfg = {"name": "webdataset", "root": str(shards), "img_size": SIZE, "crop_pct": 1.0, "in_chans": 1,
           "train_subset": 100}
    memory = load_split(load_config(None, [f"data.{k}={v}" for k, v in {**cfg, "in_memory": True}.items()]).data,
                        "train")
    streamed = load_split(load_config(None, [f"data.{k}={v}" for k, v in {**cfg, "in_memory": False}.items()]).data,
                          "train")
    assert streamed.stream is not None and memory.stream is None
    assert torch.equal(streamed.positions, memory.positions) and counts(streamed) == [10] * 10
    loader = BatchLoader(streamed, 10, torch.device("cpu"), train=True, seed=1, num_workers=workers)
    batches = list(loader)
    assert sorted(i for b in batches for i in b.index.tolist()) == list(range(100))
    for b in batches:  # index i is the sample's image i: the same pixels and label as in memory
        assert torch.equal(b.y, memory.labels[b.index])
        assert torch.equal((b.x * 255).round().to(torch.uint8), memory.images[b.index])
    full = [b.index.tolist() for b in batches]
    for skip in (1, 4):
        loader.set_epoch(0, skip)
        assert [b.index.tolist() for b in loader] == full[skip:]


# --- results of the old rule ---------------------------------------------------------------------


def old_results(tmp_path) -> Path:
    run = tmp_path / "old"
    run.mkdir()
    (run / "model.safetensors").write_bytes(b"weights")
    results = {"meta": {"model": "vit"}, "clean": {"top1": 0.5, "n": 300},
               "background": {"skipped": "no masks", "n": 0},
               "variants": {"clean@n=100": {"top1": 0.4, "n": 100}}}
    (run / "results.json").write_text(json.dumps(results))
    return run


def test_old_prefix_entries_are_marked_noted_and_measured_again(tmp_path):
    run_dir = old_results(tmp_path)
    os.utime(run_dir / "model.safetensors", (1, 1))
    run = Run("old", run_dir / "results.json", json.loads((run_dir / "results.json").read_text()))
    assert run.results["clean"]["sample"] == {"rule": "prefix", "n": 300}
    assert run.results["variants"]["clean@n=100"]["sample"] == {"rule": "prefix", "n": 100}
    assert "sample" not in run.results["background"] and "sample" not in run.results["meta"]
    notes = leaderboard([run]).notes()
    assert "old / clean: measured on the first 300 images (old rule); not comparable with balanced samples" in notes
    assert missing_benchmarks(run_dir, "clean") == ["clean"]  # the quickstart measures it again
    fresh = {**json.loads((run_dir / "results.json").read_text()),
             "clean": {"top1": 0.5, "n": 300, "sample": {"rule": "balanced", "seed": 0, "n": 300}}}
    (run_dir / "results.json").write_text(json.dumps(fresh))
    assert missing_benchmarks(run_dir, "clean") == []
    assert not any("old rule" in note for note in leaderboard([run_dir]).notes())


def test_run_suite_records_sample_on_a_given_context(folders):
    cfg = cfg_for(folders)
    data = load_split(cfg.data, "test").subset(50)
    entry = run_suite(tiny_vit(), "clean", EvalContext(cfg=cfg, data=data, device=torch.device("cpu")))["clean"]
    assert per_class(entry) == [5] * 10
