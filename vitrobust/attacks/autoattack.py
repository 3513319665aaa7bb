"""AutoAttack (Croce & Hein, ICML 2020) through the authors' own implementation (PyPI `pyautoattack`).

The attack strength is the authors' by construction: every attack runs inside their
`AutoAttack.run_standard_evaluation`, with their versions and hyper-parameters. This module adds
what an evaluation pipeline needs around it:

- chunks: the images are attacked in chunks of `batch_size` consecutive samples (chunk k holds
  samples k*batch_size ...), each chunk being one call of the authors' code with that batch size.
  The authors seed every attack per call and draw random starts for the whole batch, so results
  depend on how images are grouped; fixing the grouping to these chunks makes them independent of
  the number of ranks and of interruptions. With n <= batch_size this is exactly one call of the
  authors' code on all images.
- per-attack results: for deterministic models (versions standard, plus, custom) the attacks of a
  chunk run one at a time, each on the points still robust, in the authors' order and with one
  AutoAttack object per chunk, which is what the authors' loop does, so each sample records the
  attack that broke it. Version rand (EOT for randomized defences) runs in one call per chunk.
- resumable: after each chunk the per-sample results are written atomically to a JSON progress
  file keyed by the attack config and a digest of the model weights; a rerun skips finished chunks.
- sharded: rank r attacks chunks k with k % world == r; results are gathered over ranks.
- quiet: the authors' prints and log lines are captured unless verbose; the warnings of their own
  checks (randomized or dynamic defence, probabilities, zero gradients) are returned as `messages`.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import json
import logging
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pyautoattack
import torch
from pyautoattack import AutoAttack

from vitrobust.attacks.pgd import check_attack_args
from vitrobust.attacks.straight_through import resolve_gradient, straight_through
from vitrobust.checkpoint import atomic_write_text
from vitrobust.distributed import all_gather_objects, barrier
from vitrobust.errors import InputError
from vitrobust.registry import ATTACK_ENGINES
from vitrobust.threat import eps_problem

ATTACKS = ("apgd-ce", "apgd-dlr", "fab", "square", "apgd-t", "fab-t")
VERSIONS = {
    "standard": ("apgd-ce", "apgd-t", "fab-t", "square"),
    "plus": ("apgd-ce", "apgd-dlr", "fab", "square", "apgd-t", "fab-t"),
    "rand": ("apgd-ce", "apgd-dlr"),
}
MIN_CLASSES = {"apgd-dlr": 3, "apgd-t": 4, "fab-t": 2}  # the DLR losses read the 3rd / 4th largest logit
PROGRESS_FORMAT = "vitrobust-autoattack-progress-v1"
BALL_TOL = 1e-5  # float slack when checking that adversarial examples lie in the eps-ball

ChunkCallback = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, list[dict]], None]


def check_eps(eps: float, norm: str, x: torch.Tensor | None = None) -> None:
    """eps >= 0, Linf eps <= 1; with images x: x in [0,1] and L2 eps <= the diameter of the [0,1] cube."""
    check_attack_args(x if x is not None else torch.zeros(1), eps, norm)
    problem = eps_problem(eps, norm, x[0].numel()) if x is not None else None
    if problem:
        raise InputError(problem)


def model_in_eval_mode(model: torch.nn.Module) -> None:
    training = [name or type(model).__name__ for name, m in model.named_modules() if m.training]
    if training:
        raise InputError(f"the model (or its submodules {', '.join(training[:3])}{', ...' if len(training) > 3 else ''}) "
                         f"is in train mode: call model.eval() before attacking it (dropout and norm statistics "
                         f"change the outputs)")


@dataclass(frozen=True)
class AutoAttackSpec:
    """What is attacked and how; `batch_size` is both the authors' batch size and the chunk size."""

    norm: str = "Linf"
    eps: float = 8 / 255
    version: str = "standard"
    attacks: tuple[str, ...] | None = None
    seed: int = 0
    batch_size: int = 250
    engine: str = "authors"  # the implementation (ATTACK_ENGINES) that attacks each chunk

    def __post_init__(self):
        if self.version not in (*VERSIONS, "custom"):
            raise InputError(f"AutoAttack version must be standard, plus, rand or custom, got {self.version!r}")
        if self.version == "custom":
            if not self.attacks:
                raise InputError(f"version=custom needs a list of attacks (e.g. [apgd-ce, apgd-t]) from {', '.join(ATTACKS)}")
            unknown = [a for a in self.attacks if a not in ATTACKS]
            if unknown:
                raise InputError(f"unknown AutoAttack attack(s) {', '.join(map(repr, unknown))}; known: {', '.join(ATTACKS)}")
            if len(set(self.attacks)) != len(self.attacks):
                raise InputError(f"AutoAttack attacks are listed twice: {list(self.attacks)}")
        elif self.attacks:
            raise InputError(f"attacks={list(self.attacks)} is only used with version=custom (version {self.version} "
                             f"runs {', '.join(VERSIONS[self.version])})")
        if self.batch_size < 1:
            raise InputError(f"batch_size must be >= 1, got {self.batch_size}")
        check_eps(self.eps, self.norm)
        ATTACK_ENGINES.get(self.engine)

    @property
    def attack_list(self) -> list[str]:
        return list(self.attacks) if self.version == "custom" else list(VERSIONS[self.version])

    def key(self) -> dict:
        key = {"norm": self.norm, "eps": self.eps, "version": self.version, "attacks": self.attack_list,
               "seed": self.seed, "batch_size": self.batch_size}
        return key if self.engine == "authors" else {**key, "engine": self.engine}


@dataclass
class AutoAttackResult:
    """Per-sample outcomes, keyed by the sample's position in the evaluated set.

    A record holds `label`, `clean` (correct on the clean image), `robust` (correct after every
    attack), `attack` (the attack that broke it; None when robust or misclassified clean; "unknown"
    for version rand) and `delta` (norm of the successful perturbation, else null).
    """

    spec: AutoAttackSpec
    gradient: str
    samples: dict[int, dict]
    attacked: list[int] = field(default_factory=list)  # chunk ids attacked in this call by this rank
    resumed: list[int] = field(default_factory=list)  # chunk ids found finished in a progress file
    messages: list[str] = field(default_factory=list)  # warnings from the authors' checks
    progress_path: Path | None = None

    @property
    def n(self) -> int:
        return len(self.samples)

    @property
    def indices(self) -> list[int]:
        return sorted(self.samples)

    def flags(self, what: str) -> torch.Tensor:
        return torch.tensor([bool(self.samples[i][what]) for i in self.indices], dtype=torch.bool)

    @property
    def clean_top1(self) -> float:
        return self.flags("clean").float().mean().item() if self.n else float("nan")

    @property
    def robust_top1(self) -> float:
        return self.flags("robust").float().mean().item() if self.n else float("nan")

    def robust_after(self) -> dict[str, float] | None:
        """Robust accuracy after each attack in order (the authors' running numbers), or None (rand)."""
        if self.spec.version == "rand" or not self.n:
            return None
        remaining = self.flags("clean").sum().item()
        out = {}
        for attack in self.spec.attack_list:
            remaining -= sum(1 for r in self.samples.values() if r["attack"] == attack)
            out[attack] = remaining / self.n
        return out

    def max_delta(self) -> float:
        return max((r["delta"] for r in self.samples.values() if r.get("delta") is not None), default=0.0)


# --- the authors' code ----------------------------------------------------------------------


class _Collect(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if message not in self.messages:
            self.messages.append(message)


@contextlib.contextmanager
def _authors_output(verbose: bool) -> Iterator[_Collect]:
    """Collect the warnings of the authors' logger; hide their prints and debug lines unless verbose."""
    logger = logging.getLogger("auto-attack")
    collect = _Collect()
    saved = (logger.level, logger.propagate)
    stream = logging.StreamHandler(sys.stderr) if verbose else None
    logger.addHandler(collect)
    if stream:
        logger.addHandler(stream)
    logger.setLevel(logging.DEBUG if verbose else logging.WARNING)
    logger.propagate = False
    try:
        with contextlib.redirect_stdout(sys.stdout if verbose else io.StringIO()):
            yield collect
    finally:
        logger.removeHandler(collect)
        if stream:
            logger.removeHandler(stream)
        logger.setLevel(saved[0])
        logger.propagate = saved[1]


@contextlib.contextmanager
def _own_rng(device: torch.device) -> Iterator[None]:
    """The authors re-seed the global RNG in every attack: keep the caller's RNG state untouched."""
    devices = []
    if device.type == "cuda":
        devices = [device.index if device.index is not None else torch.cuda.current_device()]
    with torch.random.fork_rng(devices=devices):
        yield


def build_autoattack(model: torch.nn.Module, spec: AutoAttackSpec, device: torch.device, n_classes: int | None = None,
                     verbose: bool = False) -> AutoAttack:
    """The authors' AutoAttack object for `spec`. With fewer than 10 classes the targeted attacks get
    n_classes - 1 target classes (the authors' 9 would index past the last class)."""
    aa = AutoAttack(model, norm=spec.norm, eps=spec.eps, version=spec.version, seed=spec.seed, device=device,
                    attacks=spec.attack_list if spec.version == "custom" else None)
    aa.verbose = verbose
    if n_classes is not None:
        for attack in (aa.apgd_targeted, aa.fab):
            attack.n_target_classes = min(attack.n_target_classes, n_classes - 1)
    return aa


def _check_classes(spec: AutoAttackSpec, n_classes: int) -> None:
    for attack in spec.attack_list:
        if n_classes < MIN_CLASSES.get(attack, 2):
            raise InputError(f"{attack} needs at least {MIN_CLASSES[attack]} classes, the model has {n_classes}: use "
                             f"version=custom with attacks from apgd-ce, fab, square")


def _delta_norm(delta: torch.Tensor, norm: str) -> torch.Tensor:
    flat = delta.flatten(1).double()
    return flat.abs().amax(1) if norm == "Linf" else flat.norm(dim=1)


@functools.partial(ATTACK_ENGINES.add, "authors")
def attack_chunk(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, spec: AutoAttackSpec, *,
                 gradient: str = "exact", verbose: bool = False) -> tuple[list[dict], torch.Tensor, list[str]]:
    """Run the authors' AutoAttack on one chunk: per-sample records, adversarial images, messages.

    This is the `authors` engine (ATTACK_ENGINES): every engine takes these arguments and returns these
    three things; chunking, resuming and sharding around it are the same for all engines."""
    if len(x) > spec.batch_size:
        raise InputError(f"a chunk has {len(x)} images, more than batch_size={spec.batch_size}")
    device = x.device
    with torch.no_grad():
        logits = model(x)
    clean = (logits.argmax(-1) == y).cpu()
    robust = clean.clone()
    attack_of: list[str | None] = [None] * len(x)
    x_adv = x.detach().clone()
    _check_classes(spec, logits.shape[-1])
    if spec.eps == 0 or not robust.any():
        return _records(y, clean, robust, attack_of, x, x_adv, spec), x_adv, []
    with _own_rng(device), _authors_output(verbose) as log:
        aa = build_autoattack(model, spec, device, logits.shape[-1], verbose=verbose)
        with straight_through(model, enabled=gradient == "straight-through"):
            if spec.version == "rand":
                adv, y_adv = aa.run_standard_evaluation(x, y, batch_size=spec.batch_size)
                broken = (y_adv != y).cpu() & clean
                robust &= ~broken
                x_adv[broken.to(device)] = adv[broken.to(device)]
                attack_of = ["unknown" if b else None for b in broken.tolist()]
            else:
                for attack in spec.attack_list:
                    idx = robust.nonzero().flatten()
                    if not len(idx):
                        break
                    aa.attacks_to_run = [attack]
                    on = idx.to(device)
                    adv, y_adv = aa.run_standard_evaluation(x[on], y[on], batch_size=spec.batch_size)
                    broken = (y_adv != y[on]).cpu()
                    robust[idx[broken]] = False
                    x_adv[on[broken.to(device)]] = adv[broken.to(device)]
                    for i in idx[broken].tolist():
                        attack_of[i] = attack
    if float(x_adv.min()) < 0 or float(x_adv.max()) > 1:
        raise RuntimeError("AutoAttack returned images outside [0,1]; this is a bug, please report it")
    return _records(y, clean, robust, attack_of, x, x_adv, spec), x_adv, log.messages


def _records(y, clean, robust, attack_of, x, x_adv, spec) -> list[dict]:
    delta = _delta_norm(x_adv - x, spec.norm).cpu().tolist()
    return [{"label": int(label), "clean": bool(c), "robust": bool(r), "attack": a,
             "delta": float(d) if a is not None else None}
            for label, c, r, a, d in zip(y.tolist(), clean.tolist(), robust.tolist(), attack_of, delta)]


def square_check(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, *, norm: str, eps: float, n_queries: int,
                 seed: int = 0, verbose: bool = False) -> torch.Tensor:
    """The authors' Square attack (black-box) with `n_queries`; True where it fooled the model."""
    spec = AutoAttackSpec(norm=norm, eps=eps, version="custom", attacks=("square",), seed=seed, batch_size=max(len(x), 1))
    if not len(x) or eps == 0:
        return torch.zeros(len(x), dtype=torch.bool)
    with _own_rng(x.device), _authors_output(verbose), torch.no_grad():
        aa = build_autoattack(model, spec, x.device, verbose=verbose)
        aa.square.n_queries = n_queries
        _, y_adv = aa.run_standard_evaluation(x, y, batch_size=len(x))
    return (y_adv != y).cpu()


# --- progress files -------------------------------------------------------------------------


def model_digest(model: torch.nn.Module) -> str:
    """A hash of the weights and buffers (names, shapes, dtypes, bytes)."""
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


class ProgressStore:
    """Per-sample results on disk, one JSON file per rank (a single file without sharding).

    `path` is a .json file or a folder (the file is then named after the key's digest). Every rank
    reads all files of the key, so a run may resume with another number of ranks.
    """

    def __init__(self, path: str | Path | None, key: dict, rank: int = 0, world: int = 1):
        self.key, self.rank, self.world = key, rank, world
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
        if path is not None:
            path = Path(path)
            if path.suffix != ".json":
                path = path / f"autoattack-{digest}.json"
        self.path = path

    @property
    def own(self) -> Path | None:
        if self.path is None or self.world == 1:
            return self.path
        return self.path.with_name(f"{self.path.stem}.rank{self.rank}.json")

    def files(self) -> list[Path]:
        if self.path is None:
            return []
        return [p for p in [self.path, *sorted(self.path.parent.glob(f"{self.path.stem}.rank*.json"))] if p.is_file()]

    def load(self) -> dict[int, dict]:
        samples: dict[int, dict] = {}
        for path in self.files():
            try:
                data = json.loads(path.read_text())
            except (json.JSONDecodeError, OSError) as err:
                raise InputError(f"AutoAttack progress file {path} is unreadable ({err}); delete it to start over") from None
            if data.get("format") != PROGRESS_FORMAT or data.get("key") != self.key:
                raise InputError(f"AutoAttack progress file {path} was written for another attack or model "
                                 f"({data.get('key')}); delete it or use another progress path")
            samples.update({int(i): rec for i, rec in data["samples"].items()})
        return samples

    def save(self, samples: dict[int, dict], path: Path | None = None) -> None:
        path = path or self.own
        if path is None:
            return
        payload = {"format": PROGRESS_FORMAT, "key": self.key, "pyautoattack": pyautoattack.__version__,
                   "samples": {str(i): samples[i] for i in sorted(samples)}}
        atomic_write_text(path, json.dumps(payload, separators=(",", ":")))

    def merge(self, samples: dict[int, dict], main: bool) -> None:
        """After gathering: rank 0 writes everything to the shared file, ranks drop their own files."""
        if self.path is None or self.world == 1:
            return
        if main:
            self.save(samples, self.path)
        barrier()
        if self.own is not None:
            self.own.unlink(missing_ok=True)


# --- the adapter ----------------------------------------------------------------------------


def autoattack_chunks(
    model: torch.nn.Module, chunks: Iterable[tuple[torch.Tensor, torch.Tensor, torch.Tensor]], n: int,
    spec: AutoAttackSpec, *, gradient: str = "auto", progress: str | Path | None = None, rank: int = 0,
    world: int = 1, gather: bool = True, verbose: bool = False, on_chunk: ChunkCallback | None = None,
    checkpoint_seconds: float | None = None,
) -> AutoAttackResult:
    """Attack `chunks` of (indices, images, labels) out of an evaluation set of n images.

    Each chunk must hold the consecutive indices k*batch_size ... of chunk k (this rank's chunks
    only). Samples already in the progress files are skipped (a chunk interrupted half-way resumes with
    its other half). With `checkpoint_seconds` a chunk is attacked in pieces sized from the measured speed
    to end within that time, each saved when done (without it: one piece per chunk, as the authors' code
    attacks a batch). With `gather` the per-sample results
    of every rank are collected (collective call: every rank must call it) and cover all n images.
    `on_chunk(indices, x, x_adv, records)` is called after each newly attacked piece.
    """
    model_in_eval_mode(model)
    mode = resolve_gradient(model, gradient)
    engine = ATTACK_ENGINES.get(spec.engine)
    key = {**spec.key(), "gradient": mode, "model": model_digest(model)}
    store = ProgressStore(progress, key, rank, world)
    samples = store.load()
    attacked, resumed, messages = [], [], []
    seconds_per_image = None  # measured on the pieces attacked so far
    for index, x, y in chunks:
        index = index.cpu()
        chunk = int(index[0]) // spec.batch_size
        expected = torch.arange(chunk * spec.batch_size, min((chunk + 1) * spec.batch_size, n))
        if not torch.equal(index, expected):
            raise InputError(f"chunk {chunk} must hold samples {int(expected[0])}..{int(expected[-1])} in order "
                             f"(chunks of batch_size={spec.batch_size} consecutive images)")
        wrong = [i for i, label in zip(index.tolist(), y.tolist()) if i in samples and samples[i]["label"] != label]
        if wrong:
            raise InputError(f"progress file {store.path} has other labels for samples {wrong[:5]}: it was written "
                             f"for other images; delete it to start over")
        todo = torch.tensor([i not in samples for i in index.tolist()])
        if not todo.any():
            resumed.append(chunk)
            continue
        check_eps(spec.eps, spec.norm, x)
        idx, xs, ys = index[todo], x[todo.to(x.device)], y[todo.to(y.device)]
        start = 0
        while start < len(idx):  # pieces sized to end within checkpoint_seconds (one piece without it)
            size = len(idx) if checkpoint_seconds is None else piece_size(seconds_per_image, checkpoint_seconds,
                                                                           len(idx) - start)
            stop = start + size
            t0 = time.perf_counter()
            records, x_adv, log = engine(model, xs[start:stop], ys[start:stop], spec, gradient=mode, verbose=verbose)
            seconds_per_image = (time.perf_counter() - t0) / size
            samples.update(zip(idx[start:stop].tolist(), records))
            messages += [m for m in log if m not in messages]
            if on_chunk is not None:
                on_chunk(idx[start:stop], xs[start:stop], x_adv, records)
            store.save(samples)
            start = stop
        attacked.append(chunk)
    if gather:
        parts = all_gather_objects((samples, messages))
        samples = {i: rec for part, _ in parts for i, rec in part.items()}
        messages = list(dict.fromkeys(m for _, msgs in parts for m in msgs))
        store.merge(samples, main=rank == 0)
        samples = {i: samples[i] for i in range(n) if i in samples}
        missing = n - len(samples)
        if missing:
            raise RuntimeError(f"{missing} of {n} samples have no AutoAttack result: every rank must pass its chunks")
    else:
        mine = {i for c in (*attacked, *resumed) for i in range(c * spec.batch_size, min((c + 1) * spec.batch_size, n))}
        samples = {i: samples[i] for i in sorted(mine)}
    return AutoAttackResult(spec=spec, gradient=mode, samples=samples, attacked=attacked, resumed=resumed,
                            messages=messages, progress_path=store.path)


FIRST_PIECE = 16  # images in the first piece of a run that checkpoints by time (its speed is not known yet)


def piece_size(seconds_per_image: float | None, checkpoint_seconds: float, left: int) -> int:
    """Images in the next piece: as many as fit in checkpoint_seconds at the measured speed."""
    if seconds_per_image is None:
        return min(left, FIRST_PIECE)
    return max(1, min(left, int(checkpoint_seconds / max(seconds_per_image, 1e-9))))


def shard_chunks(x: torch.Tensor, y: torch.Tensor, batch_size: int, rank: int = 0, world: int = 1,
                 device: torch.device | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """This rank's chunks (k % world == rank) of in-memory images."""
    for chunk, start in enumerate(range(0, len(x), batch_size)):
        if chunk % world == rank:
            stop = min(start + batch_size, len(x))
            yield torch.arange(start, stop), x[start:stop].to(device or x.device), y[start:stop].to(device or x.device)


def run_autoattack(
    model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, *, norm: str = "Linf", eps: float = 8 / 255,
    version: str = "standard", attacks: Iterable[str] | None = None, seed: int = 0, batch_size: int = 250,
    gradient: str = "auto", device: torch.device | str | None = None, progress: str | Path | None = None,
    rank: int = 0, world: int = 1, gather: bool = True, verbose: bool = False, on_chunk: ChunkCallback | None = None,
    checkpoint_seconds: float | None = None, engine: str = "authors",
) -> AutoAttackResult:
    """AutoAttack on in-memory [0,1] images `x` (N x C x H x W) with labels `y`.

    `version` standard (APGD-CE, APGD-T, FAB-T, Square), plus, rand (APGD-CE and APGD-DLR with EOT,
    for randomized defences) or custom with `attacks`. See the module docstring for chunks,
    resuming (`progress`: a .json file or a folder) and sharding (`rank`, `world`). `engine`: the
    ATTACK_ENGINES implementation (authors, or fast: vitrobust.attacks.fast_engine).
    """
    spec = AutoAttackSpec(norm=norm, eps=float(eps), version=version, attacks=tuple(attacks) if attacks else None,
                          seed=seed, batch_size=batch_size, engine=engine)
    if len(x) != len(y):
        raise InputError(f"{len(x)} images but {len(y)} labels")
    check_eps(spec.eps, norm, x)
    device = torch.device(device) if device is not None else next(model.parameters()).device
    chunks = shard_chunks(x, y.long(), batch_size, rank, world, device)
    return autoattack_chunks(model, chunks, len(x), spec, gradient=gradient, progress=progress, rank=rank, world=world,
                             gather=gather, verbose=verbose, on_chunk=on_chunk, checkpoint_seconds=checkpoint_seconds)


__all__ = ["ATTACKS", "VERSIONS", "AutoAttackResult", "AutoAttackSpec", "ProgressStore", "attack_chunk",
           "autoattack_chunks", "build_autoattack", "check_eps", "model_digest", "model_in_eval_mode",
           "run_autoattack", "shard_chunks", "square_check"]
