"""results.json and metrics.jsonl under concurrent writers: several processes writing at once lose no
entry and tear no line; a lock held too long is a clear error (vitrobust/results.py)."""

from __future__ import annotations

import json
import multiprocessing as mp

import pytest
from helpers_results import append_rows, entry_name, entry_value, payload, write_entries

from vitrobust.errors import InputError
from vitrobust.results import lock_path, locked, read_metrics, read_results, update_results, write_results

WORKERS = 4
WRITES = 50


def run_workers(target, path) -> None:
    ctx = mp.get_context("spawn")  # a fresh interpreter each: no state shared with the test process
    barrier = ctx.Barrier(WORKERS)
    procs = [ctx.Process(target=target, args=(str(path), WRITES, w, barrier)) for w in range(WORKERS)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=300)
    assert [p.exitcode for p in procs] == [0] * WORKERS


def test_concurrent_writers_keep_every_entry(tmp_path):
    path = tmp_path / "results.json"
    write_results(path, {"clean": {"top1": 0.5}})
    run_workers(write_entries, path)
    stored = read_results(path)
    for w in range(WORKERS):
        for i in range(WRITES):
            assert stored[entry_name(w, i)] == entry_value(w, i)
    assert stored["clean"] == {"top1": 0.5}
    assert stored["meta"] == {f"worker{w}": WRITES - 1 for w in range(WORKERS)}
    assert len(stored) == WORKERS * WRITES + 2


def test_concurrent_metrics_rows_are_whole_lines(tmp_path):
    run_workers(append_rows, tmp_path)
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == WORKERS * WRITES
    rows = [json.loads(line) for line in lines]  # a torn or interleaved line would not parse
    assert sorted((r["worker"], r["i"]) for r in rows) == [(w, i) for w in range(WORKERS) for i in range(WRITES)]
    assert all(r["payload"] == payload(r["worker"], r["i"]) for r in rows)
    assert len(read_metrics(tmp_path)) == WORKERS * WRITES


def _hold_lock(path: str, ready, release) -> None:
    from helpers_results import results_module

    with results_module().locked(path):
        ready.set()
        release.wait(timeout=120)


def test_a_lock_held_by_another_process_is_a_clear_error(tmp_path, monkeypatch):
    import vitrobust.results as results

    path = tmp_path / "results.json"
    write_results(path, {"clean": {"top1": 0.5}})
    ctx = mp.get_context("spawn")
    ready, release = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=_hold_lock, args=(str(path), ready, release))
    holder.start()
    try:
        assert ready.wait(timeout=120)
        monkeypatch.setattr(results, "LOCK_TIMEOUT_S", 0.2)
        with pytest.raises(InputError) as err:
            write_results(path, {"pgd": {"robust_top1": 0.1}})
        message = str(err.value)
        assert str(lock_path(path)) in message and "\n" not in message and "another vitrobust process" in message
    finally:
        release.set()
        holder.join(timeout=60)
    assert read_results(path) == {"clean": {"top1": 0.5}}  # the refused write changed nothing
    write_results(path, {"pgd": {"robust_top1": 0.1}})  # released: writes again
    assert set(read_results(path)) == {"clean", "pgd"}


def test_update_results_reads_and_writes_under_one_lock(tmp_path):
    path = tmp_path / "results.json"
    write_results(path, {"clean": {"top1": 0.5}}, {"model": "a"})
    seen = []

    def change(stored: dict) -> dict:
        seen.append(dict(stored))
        with locked(path):  # reentrant within the thread: no deadlock
            pass
        return {"pgd": {"robust_top1": stored["clean"]["top1"] / 2}}

    merged = update_results(path, change, {"run": "r"})
    assert seen[0]["clean"] == {"top1": 0.5}
    assert merged == read_results(path) == {"clean": {"top1": 0.5}, "pgd": {"robust_top1": 0.25},
                                            "meta": {"model": "a", "run": "r"}}
