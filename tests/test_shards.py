"""Tar shards: `vitrobust data shard` writes them (restartably), `data.name: webdataset` reads them
(data/shards.py) and training streams them by rank and worker, resumable mid-epoch (data/stream.py)."""

from __future__ import annotations

import io
import json
import os
import tarfile

import numpy as np
import pytest
import torch
from helpers_train import explain, run_cmd, tensors, torch_flags_restored, train_run, vitrobust_cmd
from PIL import Image
from webdataset import TarWriter

from vitrobust.config import ConfigError, DataConfig, load_config
from vitrobust.data import BatchLoader, load_split
from vitrobust.data.shard_writer import write_shards
from vitrobust.data.stream import Shard, ShardStream, balance, resume_point
from vitrobust.errors import DatasetError
from vitrobust.evaluate import evaluate_path
from vitrobust.objectives.standard import Standard
from vitrobust.results import read_metrics
from vitrobust.train import Trainer

pytestmark = pytest.mark.usefixtures("one_thread")
CPU = torch.device("cpu")
COLOURS = {"blue": (40, 60, 200), "green": (50, 190, 60), "red": (210, 50, 40)}


def colour_folder(root, counts=(("train", 16), ("val", 5)), size=(30, 24), seed=0):
    """root/{train,val}/<colour>/<k>.png: noisy images of a class colour (a model can learn them)."""
    rng = np.random.default_rng(seed)
    for split, n in counts:
        for name, rgb in COLOURS.items():
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for k in range(n):
                arr = np.clip(np.array(rgb) + rng.normal(0, 60, (size[1], size[0], 3)), 0, 255).astype(np.uint8)
                Image.fromarray(arr).save(folder / f"{k}.png")
    return root


@pytest.fixture
def folder(tmp_path):
    return colour_folder(tmp_path / "folder")


@pytest.fixture
def shards(folder, tmp_path):
    out = tmp_path / "shards"
    write_shards(str(folder), out, shard_size=6)  # train: 48 images in 8 shards; test: 15 in 3
    return out


def data_cfg(root, **kw) -> DataConfig:
    return DataConfig(**{"name": "webdataset", "root": str(root), "img_size": 16, "crop_pct": 1.0, **kw})


def epoch(loader: BatchLoader, e: int, skip: int = 0) -> list[list[int]]:
    loader.set_epoch(e, skip)
    return [b.index.tolist() for b in loader]


# --- writing ---------------------------------------------------------------------------------


def test_shard_writer_index_and_restart(folder, tmp_path):
    out = tmp_path / "out"
    index, written = write_shards(str(folder), out, shard_size=6)
    assert written == {"train": 8, "test": 3}
    assert index["classes"] == sorted(COLOURS)
    train = index["splits"]["train"]
    assert train["pattern"] == "train-{000000..000007}.tar" and train["total"] == 48
    assert [s["count"] for s in train["shards"]] == [6] * 8
    assert [s["count"] for s in index["splits"]["test"]["shards"]] == [6, 6, 3]
    # the training split is written in a shuffled order: its first shard mixes the classes
    assert len(set(train["shards"][0]["labels"])) > 1
    assert sorted(y for s in train["shards"] for y in s["labels"]) == [0] * 16 + [1] * 16 + [2] * 16
    # the test split keeps the folder's order
    assert [y for s in index["splits"]["test"]["shards"] for y in s["labels"]] == [0] * 5 + [1] * 5 + [2] * 5

    mtimes = {p.name: p.stat().st_mtime_ns for p in out.glob("*.tar")}
    (out / "train-000003.tar").unlink()  # as if the run was killed before this shard was renamed
    _, written = write_shards(str(folder), out, shard_size=6)
    assert written == {"train": 1, "test": 0}
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.tar") if p.name != "train-000003.tar"} == \
        {k: v for k, v in mtimes.items() if k != "train-000003.tar"}
    assert json.loads((out / "index.json").read_text()) == index

    with pytest.raises(DatasetError, match="shard_size=6.*not shard_size=5"):
        write_shards(str(folder), out, shard_size=5)


def test_shard_writer_names_or_skips_an_unreadable_image(folder, tmp_path):
    (folder / "train" / "red" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(DatasetError, match="broken.png.*--skip-bad"):
        write_shards(str(folder), tmp_path / "a", shard_size=10)
    index, _ = write_shards(str(folder), tmp_path / "b", shard_size=10, skip_bad=True)
    assert index["splits"]["train"]["skipped_bad"] == 1 and index["splits"]["train"]["total"] == 48

    # a truncated image passes the header check; reading the shard names its member
    (folder / "train" / "red" / "broken.png").unlink()
    whole = (folder / "val" / "red" / "0.png").read_bytes()
    (folder / "val" / "red" / "0.png").write_bytes(whole[: len(whole) // 2])
    write_shards(str(folder), tmp_path / "c", shard_size=10)
    with pytest.raises(DatasetError, match=r"test-000001.tar:000000010.png.*vitrobust data shard --skip-bad"):
        load_split(data_cfg(tmp_path / "c"), "test")


def test_cli_writes_shards_with_a_progress_line_and_skips_finished_ones(folder, tmp_path):
    out = tmp_path / "cli"
    proc = run_cmd([*vitrobust_cmd(), "data", "shard", folder, out, "--shard-size", "20"], cwd=tmp_path)
    assert proc.returncode == 0, explain(proc)
    assert "train: 48 samples in 3 shards train-{000000..000002}.tar (3 written, 0 already finished)" in proc.stdout
    assert sorted(p.name for p in out.iterdir()) == ["index.json", "test-000000.tar", "train-000000.tar",
                                                     "train-000001.tar", "train-000002.tar"]
    again = run_cmd([*vitrobust_cmd(), "data", "shard", folder, out, "--shard-size", "20"], cwd=tmp_path)
    assert again.returncode == 0 and "(0 written, 3 already finished)" in again.stdout, explain(again)


def test_a_registered_dataset_becomes_png_shards_with_the_same_pixels(tmp_path, tiny_idx_root):
    out = tmp_path / "fm"
    write_shards("fashion_mnist", out, shard_size=64, root=str(tiny_idx_root))
    original = load_split(DataConfig(name="fashion_mnist", root=str(tiny_idx_root)), "test")
    sharded = load_split(DataConfig(name="webdataset", root=str(out), img_size=32, in_chans=1, crop_pct=1.0), "test")
    assert sharded.classes == original.classes
    assert (sharded.mean, sharded.std) == (original.mean, original.std)  # the model normalises the same way
    assert torch.equal(sharded.images, original.images) and torch.equal(sharded.labels, original.labels)


# --- reading ---------------------------------------------------------------------------------


def test_test_split_equals_the_image_folder(folder, shards):
    sharded = load_split(data_cfg(shards, in_memory=False), "test")
    plain = load_split(DataConfig(name="imagefolder", root=str(folder), img_size=16, crop_pct=1.0), "test")
    assert sharded.images is None and sharded.stream is not None  # read per sample from the tars
    assert torch.equal(torch.stack([sharded.sample(i) for i in range(len(sharded))]), plain.images)
    assert torch.equal(sharded.labels, plain.labels) and sharded.classes == plain.classes
    assert sharded.info["resize"] == {"size": 16, "crop_pct": 1.0, "interpolation": "bicubic", "in_chans": 3}


def test_options_are_used_or_refused(shards):
    with pytest.raises(ConfigError, match=r"data.options.shuffle_bufer .*shuffle_buffer"):
        load_split(data_cfg(shards, options={"shuffle_bufer": 10}), "train")
    with pytest.raises(ConfigError, match="data.skip_bad does not apply"):
        load_split(data_cfg(shards, skip_bad=True), "train")
    picked = load_split(data_cfg(shards, options={"train": "train-{000002..000004}.tar"}, in_memory=False), "train")
    assert len(picked) == 18 and [os.path.basename(s.path) for s in picked.stream.shards] == \
        ["train-000002.tar", "train-000003.tar", "train-000004.tar"]
    with pytest.raises(DatasetError, match="train-000008.tar .from the pattern"):
        load_split(data_cfg(shards, options={"train": "train-{000007..000009}.tar"}), "train")


def write_tar(path, samples):
    with TarWriter(str(path), encoder=False) as tar:
        for sample in samples:
            tar.write(sample)


def png_bytes(rgb, size=8):
    buf = io.BytesIO()
    Image.fromarray(np.full((size, size, 3), rgb, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def test_foreign_shards_labels_from_cls_or_a_class_map(tmp_path):
    """Shards another tool wrote (no index.json): labels from .cls, or from the key's class folder."""
    root = tmp_path / "foreign"
    root.mkdir()
    write_tar(root / "train-0.tar", [{"__key__": f"s{i}", "png": png_bytes((i * 20, 0, 0)), "cls": str(i % 2).encode()}
                                     for i in range(5)])
    data = load_split(data_cfg(root), "train")
    assert data.labels.tolist() == [0, 1, 0, 1, 0] and data.classes == ["0", "1"]
    assert data.images[3, 0, 0, 0].item() == 60

    named = tmp_path / "named"
    named.mkdir()
    write_tar(named / "part-0.tar", [{"__key__": f"{c}/img{i}", "jpg": png_bytes((9, 9, 9))}
                                     for i, c in enumerate(["dog", "cat", "dog"])])
    opts = {"train": "part-{0..0}.tar"}
    with pytest.raises(DatasetError, match="no .cls member.*class_map"):
        load_split(data_cfg(named, options=opts), "train")
    (tmp_path / "classes.json").write_text(json.dumps(["cat", "dog"]))
    data = load_split(data_cfg(named, options={**opts, "class_map": str(tmp_path / "classes.json")}), "train")
    assert data.labels.tolist() == [1, 0, 1] and data.classes == ["cat", "dog"]

    with tarfile.open(tmp_path / "gz.tar.gz", "w:gz") as tar:
        tar.add(named / "part-0.tar", arcname="x.png")
    with pytest.raises(DatasetError, match="uncompressed tar"):
        load_split(data_cfg(tmp_path, options={"train": "gz.tar.gz"}), "train")


def test_an_interrupted_shard_folder_is_named(folder, tmp_path):
    out = tmp_path / "partial"
    write_shards(str(folder), out, shard_size=6)
    index = json.loads((out / "index.json").read_text())
    index["splits"]["train"]["shards"].pop()
    (out / "index.json").write_text(json.dumps(index))
    with pytest.raises(DatasetError, match="7 of the 8 train shards.*again"):
        load_split(data_cfg(out), "train")


# --- streaming -------------------------------------------------------------------------------


def test_balance_and_resume_point_by_hand():
    shards = [Shard(f"s{i}", start, count) for i, (start, count) in enumerate([(0, 5), (5, 3), (8, 3), (11, 1)])]
    assert [[s.path for s in g] for g in balance(shards, 2)] == [["s0", "s3"], ["s1", "s2"]]
    # workers with 3, 1, 2 batches: order w0 w1 w2 w0 w2 w0
    assert resume_point([3, 1, 2], 0) == ([0, 0, 0], 0)
    assert resume_point([3, 1, 2], 2) == ([1, 1, 0], 2)
    assert resume_point([3, 1, 2], 3) == ([1, 1, 1], 0)
    assert resume_point([3, 1, 2], 4) == ([2, 1, 1], 2)
    assert resume_point([3, 1, 2], 5) == ([2, 1, 2], 0)
    stream = ShardStream(tuple(shards), None, 10)
    assert stream.steps(world=2, workers=1, share=2) == 3  # ranks: 6 samples (3 batches), 6 samples (3 batches)
    sub = stream.select([9, 0, 4, 11])  # yields index i for split position positions[i]
    assert [(s.path, s.count, s.picks) for s in sub.shards] == [
        ("s0", 2, ((0, 1), (4, 2))), ("s2", 1, ((1, 0),)), ("s3", 1, ((0, 3),))]
    assert [(s.path, s.picks) for s in sub.select([4, 9]).shards] == [("s0", ((4, 0),)), ("s2", ((1, 1),))]


@pytest.mark.parametrize("workers", [0, 2])
def test_an_epoch_streams_every_sample_once_in_a_seeded_order(shards, workers):
    data = load_split(data_cfg(shards, in_memory=False), "train")
    loader = BatchLoader(data, 8, CPU, train=True, seed=3, num_workers=workers)
    first = epoch(loader, 0)
    assert len(first) == len(loader) == 6 and all(len(b) == 8 for b in first)
    assert sorted(i for b in first for i in b) == list(range(48))
    assert epoch(loader, 0) == first  # seeded
    assert epoch(loader, 1) != first  # a new order every epoch
    batch = next(iter(loader))
    assert torch.equal(batch.y, data.labels[batch.index])
    assert batch.x.shape == (8, 3, 16, 16) and 0 <= batch.x.min() and batch.x.max() <= 1


@pytest.mark.parametrize("workers", [0, 2])
def test_a_resumed_epoch_yields_the_samples_not_yet_seen(shards, workers):
    data = load_split(data_cfg(shards, in_memory=False, options={"shuffle_buffer": 7}), "train")
    loader = BatchLoader(data, 4, CPU, train=True, seed=0, num_workers=workers)
    full = epoch(loader, 2)
    for skip in (1, 5, len(full) - 1):
        rest = epoch(loader, 2, skip)
        assert rest == full[skip:]  # the same batches in the same order
        seen = {i for b in full[:skip] for i in b}
        assert not seen & {i for b in rest for i in b}


def test_stream_refusals(shards):
    data = load_split(data_cfg(shards, in_memory=False), "train")
    with pytest.raises(ConfigError, match="8 shard.*for 9 ranks"):
        BatchLoader(data, 9, CPU, train=True, rank=0, world=9)
    with pytest.raises(ConfigError, match="fewer than"):
        BatchLoader(data, 64, CPU, train=True)
    sub = data.subset(20)  # data.train_subset: a balanced sample of the split, streamed
    loader = BatchLoader(sub, 4, CPU, train=True)
    assert sorted(i for b in epoch(loader, 0) for i in b) == list(range(20))


# --- training and evaluation ---------------------------------------------------------------


def training_config(root, *overrides):
    return load_config("quickstart/baseline", [
        "device=cpu", "data.name=webdataset", f"data.root={root}", "data.img_size=32", "data.in_memory=false",
        "data.batch_size=8", "data.eval_batch_size=16", "train.epochs=2", "train.eval_subset=15",
        "train.log_every=2", "model.drop_rate=0.0", "model.drop_path_rate=0.0", *overrides])


def test_folder_and_shards_give_the_same_accuracy_for_the_same_model(folder, shards, tmp_path):
    run = tmp_path / "run"
    train_run(training_config(shards, "optim.lr=5e-3"), run)
    start = next(r for r in read_metrics(run) if r["kind"] == "start")
    assert (start["steps_per_epoch"], start["train_samples"]) == (6, 48)
    sharded = json.loads(evaluate_path(run, "clean", out=tmp_path / "a")[1].read_text())["clean"]
    plain = json.loads(evaluate_path(run, "clean", ["data.name=imagefolder", f"data.root={folder}"],
                                     out=tmp_path / "b")[1].read_text())["clean"]
    assert sharded["n"] == plain["n"] == 15
    assert sharded["top1"] == plain["top1"] > 0.5  # learnt from the stream (chance: 1/3)
    rule = {"img_size": 32, "crop_pct": 1.0, "interpolation": "bicubic", "in_chans": 3}  # how images were read
    assert sharded["data"] == {"name": "webdataset", **rule} and plain["data"] == {"name": "imagefolder", **rule}


class Killed(Exception):
    pass


@pytest.mark.slow
def test_training_killed_mid_epoch_resumes_bit_exactly(shards, tmp_path, monkeypatch):
    cfg = training_config(shards, "data.num_workers=2", "train.checkpoint_every_steps=4")
    train_run(cfg, tmp_path / "reference")
    original = Standard.loss

    def loss(self, model, batch, state):
        if state.step == 9:  # epoch 2 (6 steps per epoch), after its checkpoint at step 8
            raise Killed()
        return original(self, model, batch, state)

    monkeypatch.setattr(Standard, "loss", loss)
    with pytest.raises(Killed):
        train_run(cfg, tmp_path / "run")
    monkeypatch.undo()
    with torch_flags_restored():
        trainer = Trainer(cfg, tmp_path / "run", resume=True, progress=False)
        assert (trainer.start_epoch, trainer.start_batch) == (1, 2)
        trainer.fit()
    assert all(torch.equal(a, b) for a, b in zip(tensors(tmp_path / "run" / "model.safetensors").values(),
                                                  tensors(tmp_path / "reference" / "model.safetensors").values()))


RANKS_SCRIPT = """
import json, sys
import torch
from vitrobust.config import DataConfig
from vitrobust.data import BatchLoader, load_split
from vitrobust.distributed import all_gather_objects, setup_distributed, shutdown

dist = setup_distributed("cpu")
workers = int(sys.argv[2])
data = load_split(DataConfig(name="webdataset", root=sys.argv[1], img_size=16, in_memory=False), "train")
loader = BatchLoader(data, 8, dist.device, train=True, seed=0, rank=dist.rank, world=dist.world, num_workers=workers)
seen = []
for epoch in range(2):
    loader.set_epoch(epoch)
    seen.append([b.index.tolist() for b in loader])
parts = all_gather_objects((dist.world, len(loader), seen))
if dist.rank == 0:
    print("RESULT " + json.dumps(parts))
shutdown()
"""


@pytest.mark.slow
@pytest.mark.parametrize("workers", [0, 2])
def test_two_ranks_under_torchrun_see_disjoint_samples_whose_union_is_the_set(shards, tmp_path, workers):
    from helpers_train import TORCHRUN

    script = tmp_path / "ranks.py"
    script.write_text(RANKS_SCRIPT)
    proc = run_cmd([TORCHRUN, "--standalone", "--nproc_per_node", "2", script, shards, str(workers)], cwd=tmp_path)
    assert proc.returncode == 0, explain(proc)
    parts = json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("RESULT "))[7:])
    assert [p[0] for p in parts] == [2, 2] and [p[1] for p in parts] == [6, 6]  # 24 samples per rank, 4 per batch
    for epoch in range(2):
        rank0, rank1 = ({i for b in p[2][epoch] for i in b} for p in parts)
        assert all(len(b) == 4 for p in parts for b in p[2][epoch])
        assert not rank0 & rank1 and rank0 | rank1 == set(range(48))
    assert parts[0][2][0] != parts[0][2][1]  # each epoch in a new order
