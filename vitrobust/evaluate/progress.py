"""Predictions saved while a long evaluation pass runs, so an interrupted pass resumes where it stopped.

A pass (one shift set, one corruption at one severity) writes its predictions so far to
`<figures dir>/progress/predictions-<digest>[.rankR].pt` at most every `evaluate.checkpoint_seconds`
(atomically, via checkpoint.save_state). The digest covers what the predictions depend on: the model's
weights, the pass's own key (set, resize rule, corruption...) and the labels of the images, so a file
is only ever read back by the same pass. Each rank writes its own file and reads them all. `run_suite`
deletes a benchmark's files once its result is in results.json.
"""

from __future__ import annotations

import hashlib
import json
import time
import weakref
from pathlib import Path

import torch

from vitrobust.attacks.autoattack import model_digest
from vitrobust.checkpoint import load_state, save_state

PREFIX = "predictions-"
_DIGESTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> (tensor versions, digest)


def weights_digest(model: torch.nn.Module) -> str:
    """model_digest, computed once per model while its tensors are unchanged (hashing ViT-B takes ~1 s)."""
    versions = tuple(t._version for t in model.state_dict().values())
    cached = _DIGESTS.get(model)
    if cached is None or cached[0] != versions:
        cached = (versions, model_digest(model))
        _DIGESTS[model] = cached
    return cached[1]


def progress_dir(out_dir: Path | None) -> Path | None:
    return Path(out_dir) / "progress" if out_dir is not None else None


class PredictionStore:
    """index -> predicted label of one pass; `add` saves when `seconds` have passed since the last save."""

    def __init__(self, folder: Path | None, key: dict, model: torch.nn.Module, labels: torch.Tensor,
                 seconds: float, rank: int = 0):
        labels_digest = hashlib.sha256(labels.to(torch.int64).numpy().tobytes()).hexdigest()[:16]
        self.key = {**key, "model": weights_digest(model), "labels": labels_digest, "n": len(labels)}
        digest = hashlib.sha256(json.dumps(self.key, sort_keys=True, default=str).encode()).hexdigest()[:12]
        self.folder, self.stem, self.rank, self.seconds = folder, f"{PREFIX}{digest}", rank, seconds
        self.text = json.dumps(self.key, sort_keys=True, default=str)
        self.preds: dict[int, int] = {}  # every rank's saved predictions
        self.own: dict[int, int] = {}  # what this rank's file holds, plus what it predicted since
        self.last_save = time.monotonic()
        if folder is not None:
            for path in sorted(Path(folder).glob(f"{self.stem}.rank*.pt")):
                state = load_state(path)
                if state.get("key") != self.text:
                    continue
                found = dict(zip(state["index"].tolist(), state["preds"].tolist()))
                self.preds.update(found)
                if path == self.path:
                    self.own.update(found)

    @property
    def path(self) -> Path | None:
        return None if self.folder is None else Path(self.folder) / f"{self.stem}.rank{self.rank}.pt"

    def remaining(self, n: int) -> torch.Tensor:
        return torch.tensor([i for i in range(n) if i not in self.preds], dtype=torch.long)

    def add(self, index: torch.Tensor, preds: torch.Tensor) -> None:
        self.own.update(zip(index.tolist(), preds.tolist()))
        if time.monotonic() - self.last_save >= self.seconds:
            self.save()

    def save(self) -> None:
        if self.path is not None and self.own:
            save_state({"key": self.text, "index": torch.tensor(list(self.own)),
                        "preds": torch.tensor(list(self.own.values()))}, self.path)
        self.last_save = time.monotonic()


def clear(out_dir: Path | None, before: float | None = None) -> None:
    """Remove the saved passes (a benchmark finished: its result is stored); with `before` (a time.time()
    value) only files last written before it, so passes another rank began since are kept."""
    folder = progress_dir(out_dir)
    if folder is not None and folder.is_dir():
        for path in folder.glob(f"{PREFIX}*.pt"):
            if before is None or path.stat().st_mtime <= before:
                path.unlink(missing_ok=True)


__all__ = ["PredictionStore", "clear", "progress_dir"]
