"""`vitrobust export RUN --format onnx [--quantize int8]`: a file checked against PyTorch on test images,
its model card, a fresh onnxruntime process without vitrobust runs it, and failures leave nothing."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from helpers_train import child_env, explain, run_cmd, tiny_config, train_run, vitrobust_cmd

import vitrobust.export.onnx_file as onnx_file
from vitrobust.errors import CheckpointError, DatasetError, InputError
from vitrobust.evaluate import evaluate_path
from vitrobust.explain.relevance import explain as relevance_maps
from vitrobust.explain.relevance import normalise
from vitrobust.export import export_onnx
from vitrobust.models import load_model
from vitrobust.results import read_results

# a fresh interpreter that cannot import vitrobust: runs the file with onnxruntime and numpy alone
RUNNER = """
import sys, importlib.abc
class NoVitrobust(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] == "vitrobust":
            raise ImportError("vitrobust is not installed here")
sys.meta_path.insert(0, NoVitrobust())
import numpy as np, onnxruntime as ort
x = np.load(sys.argv[2])
logits = ort.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"]).run(["logits"], {"images": x})[0]
np.save(sys.argv[3], logits)
print("torch" in sys.modules, "vitrobust" in sys.modules)
"""


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return train_run(tiny_config("train.epochs=3"), tmp_path_factory.mktemp("onnx") / "run")


def test_cli_writes_a_checked_file_and_its_card_that_onnxruntime_runs_without_vitrobust(run, tmp_path):
    out = tmp_path / "model.onnx"
    proc = run_cmd([*vitrobust_cmd(), "export", str(run), "--format", "onnx", "--out", str(out), "--check", "64"],
                   tmp_path)
    assert proc.returncode == 0, explain(proc)
    assert "checked on 64 test images" in proc.stdout
    card = json.loads((tmp_path / "model.card.json").read_text())
    assert card["input"]["shape"] == ["N", 1, 32, 32] and card["input"]["range"] == [0.0, 1.0]
    assert card["output"]["shape"] == ["N", 10] and len(card["classes"]) == 10
    assert card["files"]["fp32"]["sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()
    fp = card["equivalence"]["fp32"]
    assert fp["images"] == 64 and fp["max_abs_logit_diff"] <= 1e-4 and fp["top1_agreement"] == 1.0
    assert card["opset"] >= 17 and card["versions"]["onnxruntime"]
    assert "fp32 vs PyTorch" in (tmp_path / "model.card.md").read_text()

    x = torch.rand(5, 1, 32, 32, generator=torch.Generator().manual_seed(1))  # a batch size the export never saw
    np.save(tmp_path / "x.npy", x.numpy())
    proc = subprocess.run([sys.executable, "-c", RUNNER, str(out), str(tmp_path / "x.npy"), str(tmp_path / "y.npy")],
                          capture_output=True, text=True, env=child_env(), timeout=120)
    assert proc.returncode == 0, explain(proc)
    assert proc.stdout.split() == ["False", "False"]  # neither torch nor vitrobust was loaded
    with torch.no_grad():
        want = load_model(run)(x).numpy()
    assert np.abs(np.load(tmp_path / "y.npy") - want).max() <= 1e-4


def test_int8_file_is_calibrated_checked_and_on_the_card(run, tmp_path, monkeypatch):
    # a 3-epoch model on 128 test images: one changed top-1 is 0.8 points, so the gate is lowered here and
    # checked on its own below
    monkeypatch.setattr(onnx_file, "MIN_INT8_AGREEMENT", 0.9)
    card = export_onnx(run, tmp_path / "m.onnx", quantize="int8", check=128, calibration=64)
    int8 = tmp_path / "m.int8.onnx"
    assert int8.is_file() and card["files"]["int8"]["bytes"] == int8.stat().st_size
    assert card["quantization"]["calibration_images"] == 64
    figures = onnx_file.check_int8(tmp_path / "m.onnx", int8, onnx_file._batches(
        onnx_file._sample(load_model(run), [], "test", 128), load_model(run)))
    assert figures == card["equivalence"]["int8"] and figures["top1_agreement_with_fp32"] >= 0.9

    monkeypatch.setattr(onnx_file, "MIN_INT8_AGREEMENT", 1.01)  # a gate no file passes
    with pytest.raises(CheckpointError, match="nothing was written"):
        export_onnx(run, tmp_path / "refused.onnx", quantize="int8", check=32, calibration=16)
    assert not list(tmp_path.glob("refused*")) and not list(tmp_path.glob(".refused*"))


def test_failures_leave_no_file(run, tmp_path, monkeypatch):
    bogus = tmp_path / "bogus.safetensors"
    bogus.write_bytes(b"not a model")
    with pytest.raises(CheckpointError):
        export_onnx(bogus, tmp_path / "a.onnx")
    with pytest.raises(DatasetError):  # the check images cannot be read: stops before anything is written
        export_onnx(run, tmp_path / "b.onnx", overrides=["data.root=/nonexistent"])

    def unsupported(*args, **kwargs):
        raise RuntimeError("Unsupported: aten::weird_op is not supported by the ONNX exporter\nmore detail")

    monkeypatch.setattr(onnx_file.torch.onnx, "export", unsupported)
    with pytest.raises(CheckpointError, match="cannot be exported to ONNX: Unsupported: aten::weird_op"):
        export_onnx(run, tmp_path / "c.onnx", check=16)
    assert not list(tmp_path.glob("*.onnx")) and not list(tmp_path.glob(".*.tmp"))

    (tmp_path / "d.onnx").write_bytes(b"mine")
    with pytest.raises(CheckpointError, match="exists"):
        export_onnx(run, tmp_path / "d.onnx", check=16)
    assert (tmp_path / "d.onnx").read_bytes() == b"mine"


def test_the_exported_file_is_evaluated_on_its_runtime_like_a_run(run, tmp_path):
    out = tmp_path / "m.onnx"
    export_onnx(run, out, check=32)
    shipped, path = evaluate_path(out, "clean")
    assert path == tmp_path / "m.results.json"  # apart from the run's own results.json
    torch_side, torch_path = evaluate_path(run, "clean", out=tmp_path / "pytorch.json")
    assert shipped["clean"]["n"] == torch_side["clean"]["n"] == 128
    assert shipped["clean"]["top1"] == torch_side["clean"]["top1"]  # logits within 1e-6: the same top-1
    meta = read_results(path)["meta"]
    assert meta["runtime"]["runtime"] == "onnxruntime" and meta["runtime"]["precision"] == "fp32"
    assert meta["params"] == read_results(torch_path)["meta"]["params"]  # the card's figures of the PyTorch model

    with pytest.raises(InputError, match="m.onnx runs forward only, but autoattack needs input gradients"):
        evaluate_path(out, "autoattack")
    (tmp_path / "m.card.json").unlink()
    with pytest.raises(CheckpointError, match="no model card"):
        evaluate_path(out, "clean")


def test_black_box_square_runs_on_the_runtime_and_matches_the_pytorch_twin(run, tmp_path):
    out = tmp_path / "m.onnx"
    export_onnx(run, out, check=16)
    small = ["evaluate.attack.subset=12", "evaluate.attack.eps=0.02", "evaluate.attack.blackbox_queries=50"]
    shipped, _ = evaluate_path(out, "square", overrides=small)
    twin, _ = evaluate_path(run, "square", overrides=small, out=tmp_path / "pytorch.json")
    s, t = shipped["square"], twin["square"]
    assert s["n"] == 12 and s["queries"] == 50 and s["runtime"]["precision"] == "fp32"
    assert s["robust_top1"] <= s["clean_top1"]
    assert (s["clean_top1"], s["robust_top1"]) == (t["clean_top1"], t["robust_top1"])  # same seed, same logits


def test_rollout_maps_are_a_second_output_equal_to_explains_rollout(run, tmp_path):
    card = export_onnx(run, tmp_path / "m.onnx", maps="rollout", check=32)
    assert card["maps"]["name"] == "rollout" and card["maps"]["shape"] == ["N", 4, 4]
    assert card["equivalence"]["fp32"]["max_abs_rollout_diff"] <= 1e-4
    x = torch.rand(6, 1, 32, 32, generator=torch.Generator().manual_seed(2))
    logits, maps = onnx_file.session(tmp_path / "m.onnx").run(["logits", "rollout"], {"images": x.numpy()})
    model = load_model(run)
    want = relevance_maps(model, x, method="rollout")
    assert np.abs(maps - normalise(want.tokens.reshape(6, 4, 4)).numpy()).max() <= 1e-4
    assert maps.min() >= 0 and maps.max() <= 1 + 1e-6 and np.abs(logits - want.logits.numpy()).max() <= 1e-4
