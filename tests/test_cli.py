"""The command line end to end (subprocesses): train -> evaluate -> report, quickstart, load_model,
and the user-error paths (exit code 2, one `error:` message, no traceback)."""

from __future__ import annotations

import base64
import json
import re
import shutil

import pytest
import torch
import yaml
from helpers_train import TEST_SUBSET, TINY, explain, run_cmd, set_args, vitrobust_cmd
from pydantic import BaseModel

import vitrobust
from vitrobust.config import Config, control_mismatches, load_config
from vitrobust.data import load_split
from vitrobust.report.tables import UNITS, format_interval

TINY_1 = [*TINY, "train.epochs=1", "train.log_every=4"]
# quickstart runs the `quick` suite, which may hold adversarial benchmarks: make them tiny too
TINY_ATTACK = ["evaluate.attack.subset=16", "evaluate.attack.version=custom", "evaluate.attack.attacks=[apgd-ce]",
               "evaluate.attack.check_n=16", "evaluate.attack.square_queries=0", "evaluate.attack.grid=0",
               "evaluate.attack.steps=2"]
TINY_CORRUPTIONS = ["evaluate.corruptions.subset=16", "evaluate.corruptions.names=[gaussian_noise,contrast]",
                    "evaluate.corruptions.severities=[1,5]", "evaluate.relevance.subset=16",
                    "evaluate.background.subset=16"]


def in_schema(override: str) -> bool:
    """Whether the dotted key of `key=value` is a field of the config schema."""
    model = Config
    for part in override.split("=", 1)[0].split("."):
        if not (isinstance(model, type) and issubclass(model, BaseModel)) or part not in model.model_fields:
            return False
        model = model.model_fields[part].annotation
    return True


def vitrobust_run(*args, cwd, timeout: float = 300):
    return run_cmd([*vitrobust_cmd(), *args], cwd=cwd, timeout=timeout)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """`vitrobust train` then `vitrobust evaluate --suite clean` on a tiny subset."""
    root = tmp_path_factory.mktemp("cli")
    run = root / "run"
    proc = vitrobust_run("train", "quickstart/baseline", *set_args(TINY_1), "--out", run, "--no-progress", cwd=root)
    assert proc.returncode == 0, explain(proc)
    assert f"run directory: {run}" in proc.stdout
    proc = vitrobust_run("evaluate", run, "--suite", "clean", cwd=root)
    assert proc.returncode == 0, explain(proc)
    assert "results:" in proc.stdout
    return run


@pytest.mark.slow
def test_train_writes_a_run_directory(run):
    for name in ("config.yaml", "model.safetensors", "trainer_state.pt", "metrics.jsonl"):
        assert (run / name).is_file(), name
    cfg = load_config(run / "config.yaml")
    assert cfg.name == "baseline" and cfg.data.test_subset == TEST_SUBSET and cfg.train.epochs == 1


def test_evaluate_writes_results_json(run):
    results = json.loads((run / "results.json").read_text())
    assert 0.0 <= results["clean"]["top1"] <= 1.0
    assert results["clean"]["n"] == TEST_SUBSET
    assert results["meta"]["model"] == "vit_pico_patch8_32"
    assert results["meta"]["weights"].endswith("model.safetensors")


def test_load_model_reproduces_results_json(run):
    model = vitrobust.load_model(run)
    assert isinstance(model, torch.nn.Module) and not model.training
    data = load_split(load_config(run / "config.yaml").data, "test")
    assert len(data) == TEST_SUBSET
    with torch.no_grad():
        preds = model(data.images.float() / 255).argmax(-1)  # [0,1] images in, logits out
    top1 = (preds == data.labels).float().mean().item()
    assert top1 == pytest.approx(json.loads((run / "results.json").read_text())["clean"]["top1"], abs=1e-6)


@pytest.mark.slow
def test_report_writes_html_and_markdown(run):
    proc = vitrobust_run("report", run, cwd=run.parent)
    assert proc.returncode == 0, explain(proc)
    page = (run / "report.html").read_text()
    assert "<table" in page and "clean top1 %" in page
    clean = json.loads((run / "results.json").read_text())["clean"]
    top1, (lo, hi) = clean["top1"], clean["ci95"]["top1"]
    shown = format_interval(top1, lo, hi, UNITS["%"][2])  # the number and its 95% interval
    assert f"<td>{shown}</td>" in page
    images = re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", page)
    assert images, "no embedded PNG"
    assert base64.b64decode(images[0])[:8] == b"\x89PNG\r\n\x1a\n"
    md = (run / "report.md").read_text()
    assert "| run |" in md and f"| {shown} |" in md


@pytest.mark.slow
def test_quickstart(tmp_path):
    out = tmp_path / "qs"
    overrides = [*TINY_1, *filter(in_schema, TINY_ATTACK), *TINY_CORRUPTIONS]
    proc = vitrobust_run("quickstart", "--out", out, *set_args(overrides), "--no-progress", cwd=tmp_path)
    assert proc.returncode == 0, explain(proc)
    results = json.loads((out / "baseline" / "results.json").read_text())
    assert results["clean"]["n"] == TEST_SUBSET and 0 <= results["clean"]["top1"] <= 1
    # every stage ran: the tokenizer reports its reconstructions, every model the quick suite
    tokenizer = json.loads((out / "tokenizer" / "results.json").read_text())["tokenizer"]
    assert tokenizer["psnr"] > 0 and (out / "tokenizer" / "figures" / tokenizer["figures"][0]).is_file()
    models = ["baseline", "adversarial", "drvit", "dat", "relevance"]
    for name in models:
        res = json.loads((out / name / "results.json").read_text())
        assert {"clean", "autoattack", "corruptions", "relevance"} <= res.keys(), name
        assert ("eps_sweep" in res) == (name in ("baseline", "adversarial")), name
        assert res["corruptions"]["reference"] == "baseline" and res["relevance"]["n"] == 16, name
    assert json.loads((out / "baseline" / "results.json").read_text())["corruptions"]["mce"] == 100
    assert json.loads((out / "drvit" / "results.json").read_text())["autoattack"]["gradient"] == "straight-through"
    for name in ("textured", "textured_relevance"):  # background reliance on class-correlated textures
        res = json.loads((out / name / "results.json").read_text())
        assert res["meta"]["dataset"] == "fashion_mnist_textured" and res["background"]["n"] == 16, name
        assert res["background"]["bg_gap"] == pytest.approx(res["background"]["mixed_same"] - res["background"]["mixed_rand"])
    html = (out / "report.html").read_text()
    assert "data:image/png;base64," in html and "reconstructions" in html
    # each method beside its matched control: same start, data order and steps, only the objective changed
    for method, control in (("adversarial", "control"), ("drvit", "control"), ("dat", "control_dat"),
                            ("relevance", "control_relevance"), ("textured_relevance", "control_textured_relevance")):
        cfg = yaml.safe_load((out / method / "config.yaml").read_text())
        ctl = yaml.safe_load((out / control / "config.yaml").read_text())
        assert cfg["compare"]["control"] == str(out / control) and ctl["objective"]["name"] == "standard", method
        assert control_mismatches(cfg, ctl) == [], method
    assert "Methods against their matched controls" in html and "min. detectable" in html
    # the robust model leaves PyTorch: the ONNX file that ships is measured on onnxruntime, beside PyTorch
    shipped = json.loads((out / "deploy" / "adversarial.results.json").read_text())
    assert shipped["meta"]["runtime"]["precision"] == "fp32" and {"clean", "square"} <= shipped.keys()
    assert shipped["clean"]["n"] == TEST_SUBSET and shipped["square"]["queries"] == 500
    assert "square" in json.loads((out / "adversarial" / "results.json").read_text())
    assert "Deployment: the files that ship" in html and "Deployment: the files that ship" in proc.stdout
    assert "Each method against its matched control" in proc.stdout
    # the summary table: a header and a row per run with its clean accuracy
    lines = proc.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("run ") and "clean top1 %" in line)
    row = next(line for line in lines[header + 1 :] if line.startswith("baseline"))
    assert f"{100 * results['clean']['top1']:.2f}" in row.split()
    assert all(any(line.startswith(name) for line in lines[header + 1 :]) for name in [*models, "textured_relevance"])
    assert f"report: {out / 'report.html'}" in proc.stdout


# --- user errors: exit 2 and one `error:` message -------------------------------------------------


def assert_user_error(proc, *needles: str) -> None:
    assert proc.returncode == 2, explain(proc)
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout, explain(proc)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines and lines[0].startswith("error: "), explain(proc)
    # one message: any further lines continue it (indented), none is a second error or a warning
    assert all(line.startswith((" ", "\t")) for line in lines[1:]), explain(proc)
    for needle in needles:
        assert needle in proc.stderr, (needle, explain(proc))


@pytest.mark.parametrize("override, needles", [
    ("optim.lrr=1", ["optim.lrr", "'optim.lr'"]),
    ("data.root=/nonexistent", ["/nonexistent", "Fashion-MNIST"]),
    ("model.name=vit_tinny", ["vit_tinny"]),
], ids=["config-typo", "missing-dataset", "unknown-model"])
@pytest.mark.slow
def test_train_user_errors(tmp_path, override, needles):
    proc = vitrobust_run("train", "quickstart/baseline", *set_args([*TINY_1, override]), "--out", tmp_path / "run",
                         "--no-progress", cwd=tmp_path)
    assert_user_error(proc, *needles)
    assert not (tmp_path / "run" / "model.safetensors").exists()


@pytest.mark.slow
def test_evaluate_corrupt_weights_is_a_user_error(run, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(run, broken)
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])  # truncated, as by a full disk
    proc = vitrobust_run("evaluate", broken, "--suite", "clean", "--out", tmp_path / "r.json", cwd=tmp_path)
    assert_user_error(proc, str(weights), "corrupt")
    assert not (tmp_path / "r.json").exists()


@pytest.mark.slow
def test_train_into_existing_run_without_resume_is_a_user_error(run):
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    proc = vitrobust_run("train", "quickstart/baseline", *set_args([*TINY_1, "optim.lr=1e-4"]), "--out", run,
                         "--no-progress", cwd=run.parent)
    assert_user_error(proc, str(run), "--resume")
    after = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    assert after == before
