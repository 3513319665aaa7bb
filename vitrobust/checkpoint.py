"""Safe, atomic checkpoints. Weights are safetensors; trainer state is loaded with weights_only=True.

A vitrobust weights file carries the model spec (and the run's config) in its safetensors metadata,
so `load_model(file)` rebuilds the model from the file alone. Nothing here unpickles objects.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
from pathlib import Path

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
