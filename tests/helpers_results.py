"""Workers for tests/test_results_files.py: processes started with "spawn" that write one results.json or
append to one metrics.jsonl at the same time.

A spawned child imports this module by name (pytest puts tests/ on sys.path, and the child inherits
it), so it imports nothing from vitrobust at module level: `results_module()` loads vitrobust.results
without running vitrobust/__init__.py, which imports every room (about 5 s a process on 2 cores).
Every worker waits at a barrier after its imports, so all of them write at once.
"""

from __future__ import annotations

import importlib.util
import sys

BARRIER_TIMEOUT_S = 120  # only reached when a sibling died before the barrier


def results_module():
    """vitrobust.results; in a fresh child, under a bare vitrobust package whose __init__ did not run."""
    if "vitrobust" not in sys.modules:
        spec = importlib.util.find_spec("vitrobust")
        sys.modules["vitrobust"] = importlib.util.module_from_spec(spec)  # __path__ set, body not run
    import vitrobust.results

    return vitrobust.results


def entry_name(worker: int, i: int) -> str:
    return f"bench_w{worker}_{i:03d}"


def entry_value(worker: int, i: int) -> dict:
    return {"top1": worker * 1000 + i, "n": i}


def payload(worker: int, i: int) -> str:
    """A 2,000-character field, one letter per worker, so a torn or interleaved line is visible."""
    return f"{worker}:{i}:" + chr(ord("a") + worker) * 2000


def write_entries(path: str, count: int, worker: int, barrier) -> None:
    """`count` calls of write_results, each with one new entry and a meta update."""
    results = results_module()
    barrier.wait(timeout=BARRIER_TIMEOUT_S)
    for i in range(count):
        results.write_results(path, {entry_name(worker, i): entry_value(worker, i)}, {f"worker{worker}": i})


def append_rows(run_dir: str, count: int, worker: int, barrier) -> None:
    """`count` MetricsLog rows, each with a 2,000-character payload."""
    results = results_module()
    log = results.MetricsLog(run_dir, enabled=True)
    barrier.wait(timeout=BARRIER_TIMEOUT_S)
    for i in range(count):
        log.log("train", worker=worker, i=i, payload=payload(worker, i))
