"""A stored result is never lost to a later evaluation that measured less: skips never replace results,
other settings are kept beside the stored result, recorded overrides are repeated (evaluate/merge.py)."""

from __future__ import annotations

import json

import pytest
from helpers_train import untrained_run

from vitrobust.cli import main
from vitrobust.evaluate import evaluate_path
from vitrobust.evaluate.merge import VARIANTS, differences, is_skip, merge_overrides, place

pytestmark = pytest.mark.usefixtures("one_thread")

CLEAN = {"top1": 0.9, "n": 10000, "data": {"name": "fashion_mnist"}}
SKIP = {"foreground_share": None, "n": 0, "skipped": "no foreground masks"}


def test_a_skip_never_replaces_a_measured_result():
    stored = {"relevance": {"foreground_share": 0.438, "n": 500}}
    placed = place(stored, "relevance", SKIP)
    assert placed.updates == {} and "stored result (n=500) is kept" in placed.note
    assert place({}, "relevance", SKIP).updates == {"relevance": SKIP}  # nothing stored: the skip says why
    assert place({"relevance": SKIP}, "relevance", {"foreground_share": 0.5, "n": 9}).updates["relevance"]["n"] == 9
    assert is_skip(SKIP) and not is_skip(CLEAN)


def test_other_settings_are_kept_beside_the_stored_result_unless_overwritten():
    stored = {"clean": CLEAN, VARIANTS: {"pgd@eps=0.2": {"n": 3}}}
    small = {"top1": 0.8, "n": 50, "data": {"name": "fashion_mnist"}}
    placed = place(stored, "clean", small)
    assert placed.updates == {VARIANTS: {"pgd@eps=0.2": {"n": 3}, "clean@n=50": small}}
    assert "'clean@n=50'" in placed.note and "--overwrite" in placed.note
    forced = place(stored, "clean", small, overwrite=True)
    assert forced.updates == {"clean": small} and "n=10000" in forced.note
    same = {"top1": 0.91, "n": 10000, "data": {"name": "fashion_mnist"}}
    assert place(stored, "clean", same).updates == {"clean": same} and place(stored, "clean", same).note is None


def test_differences_name_each_changed_setting_and_ignore_unrecorded_ones():
    a = {"eps": 0.1, "norm": "Linf", "n": 100, "seed": 0, "robust_top1": 0.4}
    b = {"eps": 0.2, "norm": "Linf", "n": 100, "robust_top1": 0.1, "resize": {"size": 32}}
    assert differences(a, b) == ["eps=0.2"]
    assert differences(a, {**a, "data": {"name": "x", "options": {"c": 1}}}) == []  # an older entry: no data


def test_merge_overrides_keeps_one_value_per_key_the_last_given():
    assert merge_overrides(["a=1", "b=2"], ["a=3", "c=4"]) == ["b=2", "a=3", "c=4"]
    assert merge_overrides([], None) == []


@pytest.fixture
def run_dir(tmp_path, tiny_spec):
    """A vitrobust run without training: the quickstart config on Fashion-MNIST, a tiny random ViT."""
    return untrained_run(tmp_path / "run", tiny_spec, "data.test_subset=40")


def stored(run) -> dict:
    return json.loads((run / "results.json").read_text())


def test_a_smaller_rerun_keeps_the_full_result_and_overwrite_replaces_it(run_dir):
    evaluate_path(run_dir, "clean")
    assert stored(run_dir)["clean"]["n"] == 40
    lines = []
    evaluate_path(run_dir, "clean", ["evaluate.subset=8"], progress=lines.append)
    results = stored(run_dir)
    assert results["clean"]["n"] == 40 and results[VARIANTS]["clean@n=8"]["n"] == 8
    assert any("both kept" in line for line in lines)
    evaluate_path(run_dir, "clean", ["evaluate.subset=8"], overwrite=True)
    assert stored(run_dir)["clean"]["n"] == 8


def test_recorded_overrides_are_repeated_and_a_skip_keeps_the_stored_result(run_dir, capsys):
    masks = ["data.masks.source=threshold", "evaluate.relevance.subset=8"]
    evaluate_path(run_dir, "relevance", masks)
    first = stored(run_dir)["relevance"]
    assert first["n"] > 0 and first["data"]["masks"] == "threshold"
    assert first["overrides"] == masks
    lines = []
    evaluate_path(run_dir, "relevance", progress=lines.append)  # a plain re-run: the masks come back
    assert "repeating the settings" in lines[0] and "data.masks.source=threshold" in lines[0]
    again = stored(run_dir)["relevance"]
    assert again["n"] == first["n"] and again["foreground_share"] == pytest.approx(first["foreground_share"])
    # masks switched off on purpose: relevance cannot measure, the stored result stays, exit code 1
    code = main(["evaluate", str(run_dir), "--suite", "relevance", "--set", "data.masks.source=none"])
    out = capsys.readouterr().out
    assert code == 1 and "nothing was measured" in out and "is kept" in out
    assert stored(run_dir)["relevance"] == again
