"""`vitrobust export RUN --format timm`: the folder timm reads, loaded the way a timm user loads it, in a
fresh process (vitrobust imported only to register its architectures; none for timm's own), gives the
run's logits; its pretrained cfg carries the run's normalisation and resize rule."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from helpers_train import child_env, explain, run_cmd, untrained_run, vitrobust_cmd
from timm.data import resolve_data_config

from vitrobust.errors import CheckpointError
from vitrobust.export import export_timm
from vitrobust.models import load_model
from vitrobust.models.timm_contract import resize_rule
from vitrobust.models.tokenizer_io import save_tokenizer
from vitrobust.models.vqgan import build_tokenizer

SPEC = {"name": "vit_pico_patch8_32", "num_classes": 10, "in_chans": 1, "img_size": 32, "patch_size": None,
        "mean": [0.25], "std": [0.5], "drop_rate": 0.0, "drop_path_rate": 0.0,
        "kwargs": {"embed_dim": 32, "depth": 1, "num_heads": 2}}

# run in a fresh interpreter: load each folder as a timm user would, print the logits of fixed images
LOADER = """
import json, sys, torch, timm
{imports}
from timm.data import resolve_data_config
out = {{}}
for folder in sys.argv[1:]:
    model = timm.create_model("local-dir:" + folder, pretrained=True).eval()
    data = resolve_data_config(model=model)
    x = torch.rand(3, *data["input_size"], generator=torch.Generator().manual_seed(0))
    mean, std = torch.tensor(data["mean"]).view(1, -1, 1, 1), torch.tensor(data["std"]).view(1, -1, 1, 1)
    with torch.no_grad():
        logits = model((x - mean) / std)
    out[folder] = {{"logits": logits.tolist(), "data": data, "vitrobust": "vitrobust" in sys.modules}}
print(json.dumps(out))
"""


def load_in_fresh_process(folders: list[Path], with_vitrobust: bool) -> dict:
    code = LOADER.format(imports="import vitrobust" if with_vitrobust else "")
    proc = subprocess.run([sys.executable, "-c", code, *map(str, folders)], capture_output=True, text=True,
                          env=child_env(), timeout=300)
    assert proc.returncode == 0, explain(proc)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run_logits(run: Path, n: int = 3) -> torch.Tensor:
    model = load_model(run)
    x = torch.rand(n, *model.input_shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return model(x)


def test_cli_export_of_a_run_and_of_a_drvit_load_back_in_timm_with_the_runs_logits(tmp_path):
    run = untrained_run(tmp_path / "vit", SPEC)
    proc = run_cmd([*vitrobust_cmd(), "export", str(run), "--format", "timm", "--out", str(tmp_path / "vit_timm")],
                   tmp_path)
    assert proc.returncode == 0, explain(proc)
    assert "timm.create_model('local-dir:" in proc.stdout
    config = json.loads((tmp_path / "vit_timm" / "config.json").read_text())
    assert config["architecture"] == "vit_pico_patch8_32" and config["num_classes"] == 10
    assert config["pretrained_cfg"]["mean"] == [0.25] and config["pretrained_cfg"]["input_size"] == [1, 32, 32]
    assert (tmp_path / "vit_timm" / "model.safetensors").is_file()

    tok = tmp_path / "tok.safetensors"
    save_tokenizer(build_tokenizer("vq_f4_32px"), tok)
    spec = {**SPEC, "name": "drvit_pico_patch8_32",
            "kwargs": {"embed_dim": 64, "depth": 1, "num_heads": 2, "tokenizer": str(tok)}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        drvit = untrained_run(tmp_path / "drvit", spec)
    export_timm(drvit, tmp_path / "drvit_timm")
    tok.unlink()  # the folder stands alone: the tokenizer's weights are in model.safetensors
    assert "tokenizer" not in json.loads((tmp_path / "drvit_timm" / "config.json").read_text())["model_args"]

    got = load_in_fresh_process([tmp_path / "vit_timm", tmp_path / "drvit_timm"], with_vitrobust=True)
    vit, dr = got[str(tmp_path / "vit_timm")], got[str(tmp_path / "drvit_timm")]
    assert vit["data"]["mean"] == [0.25] and vit["data"]["std"] == [0.5] and vit["data"]["crop_pct"] == 1.0
    assert torch.allclose(torch.tensor(vit["logits"]), run_logits(run), atol=1e-5)
    assert torch.allclose(torch.tensor(dr["logits"]), run_logits(drvit), atol=1e-5)


def test_a_timm_architecture_loads_with_timm_alone(tmp_path):
    spec = {**SPEC, "name": "deit_tiny_patch16_224", "in_chans": 3, "mean": [0.5, 0.4, 0.3], "std": [0.2] * 3,
            "patch_size": 8, "kwargs": {"embed_dim": 32, "depth": 1, "num_heads": 2}}
    run = untrained_run(tmp_path / "deit", spec)
    export_timm(run, tmp_path / "deit_timm")
    got = load_in_fresh_process([tmp_path / "deit_timm"], with_vitrobust=False)[str(tmp_path / "deit_timm")]
    assert not got["vitrobust"]
    assert got["data"]["input_size"] == [3, 32, 32] and got["data"]["mean"] == [0.5, 0.4, 0.3]
    assert torch.allclose(torch.tensor(got["logits"]), run_logits(run), atol=1e-5)


def test_the_network_carries_the_runs_preprocessing_and_the_wrapper_takes_pixels(tmp_path):
    model = load_model(untrained_run(tmp_path / "vit", SPEC))
    net_data = resolve_data_config(model=model.net)
    assert net_data["mean"] == (0.25,) and net_data["std"] == (0.5,) and net_data["input_size"] == (1, 32, 32)
    assert resolve_data_config(model=model)["mean"] == (0.0,)  # ImageClassifier normalises inside
    assert net_data["crop_pct"] == 1.0 and net_data["interpolation"] == "bilinear"  # Fashion-MNIST: no crop

    ruled = load_model(untrained_run(tmp_path / "ruled", SPEC, "data.crop_pct=0.9", "data.interpolation=bicubic"))
    data = resolve_data_config(model=ruled.net)  # the run's own evaluation resize rule
    assert data["crop_pct"] == 0.9 and data["interpolation"] == "bicubic"
    assert resize_rule({}, "data: {name: imagenet}") == {"crop_pct": 0.875, "interpolation": "bilinear"}


def test_a_folder_is_never_overwritten_and_a_failed_check_leaves_nothing(tmp_path, monkeypatch):
    run = untrained_run(tmp_path / "vit", SPEC)
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(CheckpointError, match="not empty"):
        export_timm(run, out)
    assert (out / "keep.txt").read_text() == "mine"

    import vitrobust.export.timm_folder as timm_folder

    real = timm_folder.timm.create_model
    monkeypatch.setattr(timm_folder.timm, "create_model", lambda name, **kw: real("vit_pico_patch8_32", in_chans=1,
                                                                                 embed_dim=32, depth=1, num_heads=2))
    with pytest.raises(CheckpointError, match="does not reproduce"):
        export_timm(run, tmp_path / "bad")
    assert not (tmp_path / "bad").exists() and not list(tmp_path.glob(".bad*"))
