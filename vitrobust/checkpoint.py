"""Safe, atomic checkpoints. Weights are safetensors; trainer state is loaded with weights_only=True.

A vitrobust weights file carries the model spec (and the run's config) in its safetensors metadata,
so `load_model(file)` rebuilds the model from the file alone. Nothing here runs code from a file:
foreign torch files go through `load_torch_file`, which refuses pickled objects unless trusted.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as st_save

from vitrobust.errors import CheckpointError

FORMAT = "vitrobust-weights-v1"

_UMASK = os.umask(0)
os.umask(_UMASK)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary file in the same folder, fsync, then rename over the target."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; give the usual permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def save_weights(model: torch.nn.Module, path: Path, spec: dict, config_yaml: str = "", **meta) -> None:
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    metadata = {"format": FORMAT, "spec": json.dumps(spec), "config": config_yaml,
                **{k: json.dumps(v) for k, v in meta.items()}}
    atomic_write_bytes(path, st_save(tensors, metadata=metadata))


def read_weights(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(
            f"{path} is not a readable safetensors file ({err}); it is corrupt or truncated: "
            f"re-run the training (with --resume) or restore the file"
        ) from None
    return tensors, meta


def save_state(state: dict, path: Path) -> None:
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write_bytes(path, buf.getvalue())


def load_state(path: Path) -> dict:
    """Trainer state: tensors, numbers, strings and containers only (weights_only=True)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises UnpicklingError, RuntimeError or EOFError here
        first_line = (str(err).splitlines() or [""])[0][:200]  # EOFError() of an empty file has no text
        raise CheckpointError(
            f"{path} cannot be loaded safely ({type(err).__name__}: {first_line}); it is "
            f"corrupt, truncated or holds pickled objects, which vitrobust never executes. Delete it to "
            f"restart the run from scratch."
        ) from None


# --- foreign torch files -------------------------------------------------------------------


class _Placeholder(dict):
    """Stands in for any pickled object of a trusted checkpoint: keeps its data, runs none of its code."""

    def __new__(cls, *args, **kwargs):
        return dict.__new__(cls)

    def __init__(self, *args, **kwargs):
        super().__init__()
        self.args = args

    def __setstate__(self, state):
        self.state = state

    def append(self, item):
        self.setdefault("_items", []).append(item)

    def extend(self, items):
        self.setdefault("_items", []).extend(items)

    # identity semantics: placeholders serve as dict keys (Lightning keys callback states by class)
    __hash__ = object.__hash__
    __eq__ = object.__eq__


def _placeholders(names: list[str]) -> list[tuple[type, str]]:
    """One placeholder class per pickled global, registered under that global's dotted name."""
    return [(type(name.rsplit(".", 1)[-1], (_Placeholder,), {}), name) for name in names]


def load_torch_file(path: str | Path, trust: bool = False, trust_hint: str = "pass trust=True") -> Any:
    """A torch checkpoint's content, loaded without executing code from it.

    `torch.load(weights_only=True)` reads tensors, numbers, strings and containers. A file that also
    pickles objects (an argparse Namespace from timm's CheckpointSaver, Lightning's callbacks) is refused
    unless `trust`; even then no code from the file runs: every object the safe loader does not know is
    rebuilt as an inert placeholder that keeps its data. `trust_hint` says how the caller's user trusts a file.
    """
    path = Path(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # UnpicklingError, RuntimeError (zip), EOFError, ...
        first = (str(err).splitlines() or [""])[0][:160]
        try:
            unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
        except Exception:  # not a torch.save file at all
            unsafe = []
        if not unsafe:
            raise CheckpointError(f"{path} is not a readable torch checkpoint ({type(err).__name__}: {first}); "
                                  f"it is corrupt, truncated or not a checkpoint") from None
    shown = ", ".join(unsafe[:4]) + (" ..." if len(unsafe) > 4 else "")
    if not trust:
        raise CheckpointError(
            f"{path} holds pickled Python objects ({shown}) besides its weights; vitrobust loads it only if "
            f"you trust the file: {trust_hint}"
        )
    try:
        with torch.serialization.safe_globals(_placeholders(unsafe)):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise CheckpointError(f"{path}: its pickled objects ({shown}) cannot be read even as placeholders "
                              f"({type(err).__name__}: {str(err)[:160]}); re-save its state_dict with "
                              f"torch.save(ckpt['state_dict'], 'weights.pt') where it was made") from None
