"""Checkpoints: safetensors round trip, corrupt/foreign/unsafe files, atomic writes, init_from."""

from __future__ import annotations

import json
import os
import struct
import warnings
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file

from vitrobust.checkpoint import (
    FORMAT,
    CheckpointError,
    atomic_write_bytes,
    atomic_write_text,
    load_state,
    read_weights,
    save_state,
    save_weights,
)
from vitrobust.models import build_model
from vitrobust.models.io import init_from, load_model, weights_file


class WritesMarker:
    """Unpickling this runs exec(), which creates a marker file: what a malicious checkpoint does."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('pwned')",))


def fresh_model(spec: dict, seed: int = 0):
    torch.manual_seed(seed)
    return build_model(spec)


def inputs(spec: dict, n: int = 2) -> torch.Tensor:
    return torch.rand(n, spec["in_chans"], spec["img_size"], spec["img_size"],
                      generator=torch.Generator().manual_seed(42))


def list_dir(path: Path) -> list[str]:
    return sorted(p.name for p in path.iterdir())


# --- weights round trip ----------------------------------------------------------------------


def test_save_load_round_trip(tmp_path, tiny_spec):
    model = fresh_model(tiny_spec).train()
    path = tmp_path / "run" / "model.safetensors"
    save_weights(model, path, model.spec, config_yaml="name: test\n", epoch=3)
    assert list_dir(path.parent) == ["model.safetensors"]
    loaded = load_model(path)
    assert not loaded.training
    assert all(not m.training for m in loaded.modules())
    assert loaded.spec == model.spec
    assert loaded.run_config == "name: test\n"
    x = inputs(tiny_spec)
    with torch.no_grad():
        assert torch.equal(loaded(x), model.eval()(x))
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    # the file alone carries the format, spec and extra metadata
    tensors, meta = read_weights(path)
    assert meta["format"] == FORMAT
    assert json.loads(meta["spec"]) == model.spec
    assert json.loads(meta["epoch"]) == 3
    assert set(tensors) == set(model.state_dict())


def test_load_model_from_run_dir_and_ema(tmp_path, tiny_spec):
    model = fresh_model(tiny_spec, seed=1)
    ema = fresh_model(tiny_spec, seed=2)
    save_weights(model, tmp_path / "model.safetensors", model.spec)
    x = inputs(tiny_spec)
    with torch.no_grad():
        assert torch.equal(load_model(tmp_path)(x), model.eval()(x))
    with pytest.raises(CheckpointError, match=r"no ema\.safetensors.*ema_decay"):
        load_model(tmp_path, ema=True)
    save_weights(ema, tmp_path / "ema.safetensors", ema.spec)
    with torch.no_grad():
        assert torch.equal(load_model(tmp_path, ema=True)(x), ema.eval()(x))


def test_missing_paths(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_model(tmp_path / "nope.safetensors")
    with pytest.raises(CheckpointError, match=r"no model\.safetensors"):
        weights_file(tmp_path)
    with pytest.raises(CheckpointError, match="does not exist"):
        read_weights(tmp_path / "nope.safetensors")


def corruptions(data: bytes) -> dict[str, bytes]:
    (header_len,) = struct.unpack("<Q", data[:8])
    header = data[8 : 8 + header_len]
    return {
        "empty": b"",
        "four-bytes": data[:4],
        "header-only-half": data[: 8 + header_len // 2],
        "truncated-data": data[: len(data) - 100],
        "half": data[: len(data) // 2],
        "garbage": b"\x13\x37" * 64,
        "huge-header-length": struct.pack("<Q", 1 << 40) + data[8:],
        "broken-json": data[:8] + header.replace(b"{", b"[", 1) + data[8 + header_len :],
    }


@pytest.mark.parametrize(
    "kind",
    ["empty", "four-bytes", "header-only-half", "truncated-data", "half", "garbage", "huge-header-length",
     "broken-json"],
)
def test_corrupt_weights_give_checkpoint_error(tmp_path, tiny_spec, kind):
    good = tmp_path / "good.safetensors"
    model = fresh_model(tiny_spec)
    save_weights(model, good, model.spec)
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(corruptions(good.read_bytes())[kind])
    with pytest.raises(CheckpointError) as info:
        load_model(bad)
    assert str(bad) in str(info.value)
    with pytest.raises(CheckpointError):
        init_from(fresh_model(tiny_spec), bad)


@pytest.mark.parametrize("spec_text", ['{"name": "vit_pico_pat', '{"name": "vit_pico_patch8_32"}', "[1, 2]"],
                         ids=["cut-json", "missing-keys", "not-a-mapping"])
def test_garbled_spec_metadata_gives_checkpoint_error(tmp_path, tiny_spec, spec_text):
    """A vitrobust file whose spec metadata is damaged is a corrupt checkpoint, not a JSON/Key/TypeError."""
    model = fresh_model(tiny_spec)
    tensors = {k: v.contiguous() for k, v in model.state_dict().items()}
    path = tmp_path / "garbled.safetensors"
    save_file(tensors, str(path), metadata={"format": FORMAT, "spec": spec_text, "config": ""})
    with pytest.raises(CheckpointError) as info:
        load_model(path)
    assert str(path) in str(info.value)


def test_foreign_safetensors_mentions_model_init(tmp_path):
    net = timm.create_model("vit_pico_patch8_32", depth=1, embed_dim=32, num_heads=2)
    path = tmp_path / "foreign.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))
    with pytest.raises(CheckpointError) as info:
        load_model(path)
    msg = str(info.value)
    assert "not a vitrobust checkpoint" in msg
    assert f"model.init={path}" in msg


@pytest.mark.parametrize("change", ["depth", "num_classes"])
def test_weights_not_matching_spec(tmp_path, tiny_spec, change):
    model = fresh_model(tiny_spec)
    path = tmp_path / "mismatch.safetensors"
    if change == "depth":  # a spec that claims 2 blocks for 1-block weights: missing tensors
        other = dict(tiny_spec, kwargs={**tiny_spec["kwargs"], "depth": 2})
    else:  # a spec that claims 5 classes for a 10-class head: tensors of the wrong shape
        other = dict(tiny_spec, num_classes=5)
    save_weights(model, path, other)
    with pytest.raises(CheckpointError, match="does not match its model spec"):
        load_model(path)


# --- trainer state ---------------------------------------------------------------------------


def test_state_round_trip(tmp_path):
    state = {"epoch": 3, "step": 120, "model": {"w": torch.arange(6.0).view(2, 3)}, "name": "run",
             "history": [0.5, 0.25], "best": None, "flags": (True, False)}
    path = tmp_path / "state.pt"
    save_state(state, path)
    loaded = load_state(path)
    assert loaded["epoch"] == 3 and loaded["step"] == 120 and loaded["name"] == "run"
    assert loaded["history"] == [0.5, 0.25] and loaded["best"] is None and loaded["flags"] == (True, False)
    assert torch.equal(loaded["model"]["w"], state["model"]["w"])
    assert list_dir(tmp_path) == ["state.pt"]


def test_load_state_refuses_code_execution(tmp_path):
    marker = tmp_path / "marker"
    path = tmp_path / "evil.pt"
    torch.save({"epoch": 1, "payload": WritesMarker(marker)}, path)
    assert not marker.exists()
    with pytest.raises(CheckpointError, match="pickled objects"):
        load_state(path)
    assert not marker.exists()
    # init_from reads non-safetensors files through load_state: just as safe
    with pytest.raises(CheckpointError):
        init_from(build_model({"name": "vit_pico_patch8_32", "num_classes": 2, "in_chans": 1, "img_size": 32,
                               "kwargs": {"embed_dim": 32, "depth": 1, "num_heads": 2}}), path)
    assert not marker.exists()
    # control: the payload is live, an unsafe load does run it
    torch.load(path, weights_only=False)
    assert marker.read_text() == "pwned"


@pytest.mark.parametrize("kind", ["truncated", "garbage", "empty"])
def test_load_state_corrupt(tmp_path, kind):
    path = tmp_path / "state.pt"
    save_state({"epoch": 1, "w": torch.ones(100)}, path)
    data = path.read_bytes()
    path.write_bytes({"truncated": data[: len(data) // 2], "garbage": b"not a torch file" * 4, "empty": b""}[kind])
    with pytest.raises(CheckpointError, match="Delete it"):
        load_state(path)


# --- atomic writes ---------------------------------------------------------------------------


def test_atomic_write_creates_folders_and_leaves_no_temp(tmp_path):
    target = tmp_path / "a" / "b" / "file.bin"
    atomic_write_bytes(target, b"first")
    assert target.read_bytes() == b"first"
    atomic_write_bytes(target, b"second, longer")
    assert target.read_bytes() == b"second, longer"
    atomic_write_text(target.with_name("note.txt"), "héllo")
    assert target.with_name("note.txt").read_text() == "héllo"
    assert list_dir(target.parent) == ["file.bin", "note.txt"]


@pytest.mark.parametrize("error", [OSError("disk full"), KeyboardInterrupt()])
def test_atomic_write_failure_keeps_old_target(tmp_path, monkeypatch, error):
    target = tmp_path / "weights.bin"
    target.write_bytes(b"old complete content")

    def failing_fsync(fd):
        raise error

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(type(error)):
        atomic_write_bytes(target, b"new content that never lands")
    assert target.read_bytes() == b"old complete content"
    assert list_dir(tmp_path) == ["weights.bin"]


def test_atomic_write_failure_mid_write_leaves_no_partial_target(tmp_path, monkeypatch):
    target = tmp_path / "new.bin"
    real_fdopen = os.fdopen

    class HalfWriter:
        def __init__(self, fh):
            self.fh = fh

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.fh.close()
            return False

        def write(self, data):
            self.fh.write(data[: len(data) // 2])
            self.fh.flush()
            raise OSError("no space left on device")

        def __getattr__(self, name):
            return getattr(self.fh, name)

    monkeypatch.setattr(os, "fdopen", lambda fd, mode: HalfWriter(real_fdopen(fd, mode)))
    with pytest.raises(OSError, match="no space"):
        atomic_write_bytes(target, b"x" * 1000)
    assert not target.exists()
    assert list_dir(tmp_path) == []


def test_save_weights_failure_keeps_previous_checkpoint(tmp_path, monkeypatch, tiny_spec):
    path = tmp_path / "model.safetensors"
    first = fresh_model(tiny_spec, seed=0)
    save_weights(first, path, first.spec)
    before = path.read_bytes()

    def failing_replace(src, dst):
        raise OSError("rename failed")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="rename failed"):
        save_weights(fresh_model(tiny_spec, seed=1), path, first.spec)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert list_dir(tmp_path) == ["model.safetensors"]
    x = inputs(tiny_spec)
    with torch.no_grad():
        assert torch.equal(load_model(path)(x), first.eval()(x))


# --- init_from -------------------------------------------------------------------------------


def test_init_from_skips_head_of_other_size(tmp_path, tiny_spec):
    source = fresh_model(tiny_spec, seed=0)  # 10 classes
    save_weights(source, tmp_path / "model.safetensors", source.spec)
    target_spec = dict(tiny_spec, num_classes=3, mean=[0.7], std=[0.9])
    target = fresh_model(target_spec, seed=1)
    head_before = {k: v.clone() for k, v in target.state_dict().items() if k.startswith("net.head.")}
    with pytest.warns(UserWarning, match=r"model\.init: skipped 2 tensors.*net\.head\.bias"):
        info = init_from(target, tmp_path)
    assert info["skipped"] == ["net.head.bias", "net.head.weight"]
    src, dst = source.state_dict(), target.state_dict()
    shared = [k for k in src if k.startswith("net.") and not k.startswith("net.head.")]
    assert info["loaded"] == len(shared)
    for key in shared:
        assert torch.equal(dst[key], src[key]), key
    for key, value in head_before.items():
        assert torch.equal(dst[key], value), key
    # the target keeps its own normalisation
    assert dst["normalize.mean"].flatten().tolist() == pytest.approx([0.7])
    assert dst["normalize.std"].flatten().tolist() == pytest.approx([0.9])


def test_init_from_same_shape_loads_everything_without_warning(tmp_path, tiny_spec):
    source = fresh_model(tiny_spec, seed=0)
    path = tmp_path / "src.safetensors"
    save_weights(source, path, source.spec)
    target = fresh_model(tiny_spec, seed=5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        info = init_from(target, path)
    assert info["skipped"] == []
    x = inputs(tiny_spec)
    with torch.no_grad():
        assert torch.equal(target.eval()(x), source.eval()(x))


@pytest.mark.parametrize("fmt", ["pth", "safetensors", "pth-nested"])
def test_init_from_plain_timm_weights(tmp_path, tiny_spec, fmt):
    torch.manual_seed(3)
    net = timm.create_model("vit_pico_patch8_32", in_chans=1, num_classes=10, **tiny_spec["kwargs"])
    state = {k: v.contiguous() for k, v in net.state_dict().items()}
    if fmt == "safetensors":
        path = tmp_path / "timm.safetensors"
        save_file(state, str(path))
    else:
        path = tmp_path / "timm.pth"
        torch.save({"state_dict": state, "epoch": 7} if fmt == "pth-nested" else state, path)
    target = fresh_model(tiny_spec, seed=9)
    info = init_from(target, path)
    assert info["skipped"] == [] and info["loaded"] == len(state)
    for key, value in state.items():
        assert torch.equal(target.net.state_dict()[key], value), key


def test_init_from_unrelated_weights(tmp_path, tiny_spec):
    path = tmp_path / "other.safetensors"
    save_file({"encoder.weight": torch.ones(3, 3)}, str(path))
    with pytest.raises(CheckpointError, match="no known checkpoint layout.*first keys: encoder.weight"):
        init_from(fresh_model(tiny_spec), path)
    save_file({"blocks.0.foo.weight": torch.ones(3, 3)}, str(path))  # timm-looking keys this model lacks
    with pytest.raises(CheckpointError, match="shares no tensor"):
        init_from(fresh_model(tiny_spec), path)
