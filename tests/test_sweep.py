"""`vitrobust sweep`: grid expansion, de-duplication, validation before training, and a tiny sweep end to end."""

from __future__ import annotations

import json

import pytest
import yaml
from helpers_train import TINY

from vitrobust.config import ConfigError
from vitrobust.results import read_results
from vitrobust.sweep import SweepSpec, expand, load_sweep, plan, run_name, sweep


def test_expand_is_the_pooled_cartesian_product_without_repeats():
    spec = SweepSpec(config="quickstart/baseline",
                     grids=[{"a.x": [1, 2], "a.y": ["u", "v"]}, {"a.x": [1]}, {"a.x": [1], "a.y": ["u"]}],
                     runs=[{"a.x": 3}])
    combos = expand(spec)
    assert combos == [{"a.x": 1, "a.y": "u"}, {"a.x": 1, "a.y": "v"}, {"a.x": 2, "a.y": "u"},
                      {"a.x": 2, "a.y": "v"}, {"a.x": 1}, {"a.x": 3}]


def test_run_names_are_file_safe_and_distinct():
    assert run_name({}) == "base"
    assert run_name({"optim.lr": 0.001, "augment.randaugment": None}) == "lr=0.001_randaugment=null"
    assert run_name({"model.kwargs": {"depth": 12}}) == "kwargs=_depth_12_"


def test_plan_trains_one_run_per_distinct_configuration(tmp_path):
    spec = SweepSpec(config="quickstart/baseline", grids=[{"optim.lr": [0.003, 0.001]}, {"optim.weight_decay": [0.05]}])
    runs = plan(spec, "quickstart/baseline", tmp_path)
    # weight_decay=0.05 is the base config's value and lr=0.003 too: that run is not repeated
    assert [r.name for r, _ in runs] == ["lr=0.003", "lr=0.001"]
    assert runs[1][1] == ["optim.lr=0.001", "name=lr=0.001"]


def test_a_bad_key_in_any_run_fails_before_anything_trains(tmp_path):
    spec = SweepSpec(config="quickstart/baseline", grids=[{"optim.lr": [0.1]}, {"optim.lrr": [0.1]}])
    with pytest.raises(ConfigError, match=r"sweep run 'lrr=0.1'.*optim.lr"):
        plan(spec, "quickstart/baseline", tmp_path)
    assert not any(tmp_path.iterdir())


def test_shipped_grids_validate():
    for name, n in (("scale_up", 6), ("light_recipe_ablation", 20)):
        spec, base = load_sweep(name)
        assert len(plan(spec, base, "unused", ["data.root=/nowhere"])) == n


def test_unknown_grid_and_unknown_grid_key_are_clear_errors(tmp_path):
    with pytest.raises(ConfigError, match="not found.*scale_up"):
        load_sweep(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"config": "quickstart/baseline", "grid": {"optim.lr": [1]}}))
    with pytest.raises(ConfigError, match="grid.*valid keys"):
        load_sweep(bad)


def test_tiny_sweep_end_to_end(tmp_path, one_thread):
    grid = tmp_path / "grid.yaml"
    grid.write_text(yaml.safe_dump({
        "name": "tiny", "config": "quickstart/baseline", "suite": "clean",
        "set": [*TINY, "train.epochs=1", "evaluate.subset=64"],
        "runs": [{"name": "narrow", "model.kwargs": {"embed_dim": 32, "depth": 1, "num_heads": 2}},
                 {"name": "wide", "model.kwargs": {"embed_dim": 64, "depth": 1, "num_heads": 2}}],
    }))
    out = tmp_path / "out"
    report = sweep(grid, out, progress=False)
    assert report == out / "report.html"
    params = {}
    for name in ("narrow", "wide"):
        res = read_results(out / name / "results.json")
        assert 0.0 <= res["clean"]["top1"] <= 1.0 and res["clean"]["n"] == 64
        params[name] = (res["meta"]["params"], res["meta"]["flops"])
    assert params["narrow"][0] < params["wide"][0] and params["narrow"][1] < params["wide"][1]
    assert (out / "figures" / "robustness_vs_cost.png").is_file()
    assert [r["name"] for r in json.loads((out / "sweep.json").read_text())["runs"]] == ["narrow", "wide"]
    # a second call finds every run trained and evaluated: nothing is redone
    mtime = (out / "wide" / "results.json").stat().st_mtime
    sweep(grid, out, progress=False)
    assert (out / "wide" / "results.json").stat().st_mtime == mtime


@pytest.mark.slow
def test_sweep_launches_each_run_with_torchrun(tmp_path):
    grid = tmp_path / "grid.yaml"
    grid.write_text(yaml.safe_dump({
        "name": "ddp", "config": "quickstart/baseline", "suite": "clean", "launcher": "torchrun", "nproc_per_node": 2,
        "set": [*TINY, "train.epochs=1", "evaluate.subset=64", "model.kwargs={embed_dim: 32, depth: 1, num_heads: 2}"],
        "runs": [{"name": "two_ranks"}],
    }))
    out = tmp_path / "out"
    sweep(grid, out, progress=False)
    res = read_results(out / "two_ranks" / "results.json")
    assert res["clean"]["n"] == 64 and (out / "two_ranks" / "model.safetensors").is_file()
    start = json.loads((out / "two_ranks" / "metrics.jsonl").read_text().splitlines()[0])
    assert start["kind"] == "start" and start["world"] == 2  # trained on two ranks
    assert (out / "report.html").is_file()
