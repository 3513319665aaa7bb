"""Corrupted copies of any dataset, made with `imagecorruptions` (Hendrycks & Dietterich's 15 + 4).

- Seeding: imagecorruptions draws from numpy's global RNG. Each image is corrupted right after
  `np.random.seed(image_seed(seed, corruption, severity, index))`, with `index` its position in the
  dataset, so a corrupted set does not depend on batch layout or worker count. The caller's global
  RNG state is restored afterwards.
- Grey images (1 channel) are repeated to RGB, corrupted, and the FIRST channel is kept: a noise
  corruption then keeps its published per-pixel strength (a mean over three independently noised
  channels would divide the noise std by sqrt(3)).
- `CorruptionPool` corrupts one fixed set of clean images under many (corruption, severity) pairs,
  in worker processes when asked; `CorruptionCache` keeps generated sets on disk (safetensors, with
  the key and a CRC32 in the header; a damaged file is reported and regenerated, never used).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.metadata
import inspect
import json
import math
import multiprocessing
import sys
import types
import warnings
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from vitrobust.checkpoint import atomic_write_bytes
from vitrobust.data.base import ImageSet
from vitrobust.errors import InputError, suggest

COMMON = (
    "gaussian_noise",
    "shot_noise",
    "impulse_noise",
    "defocus_blur",
    "glass_blur",
    "motion_blur",
    "zoom_blur",
    "snow",
    "frost",
    "fog",
    "brightness",
    "contrast",
    "elastic_transform",
    "pixelate",
    "jpeg_compression",
)
EXTRA = ("speckle_noise", "gaussian_blur", "spatter", "saturate")  # held out in ImageNet-C ("validation")
GROUPS = {"common": COMMON, "extra": EXTRA, "all": COMMON + EXTRA}
SEVERITIES = (1, 2, 3, 4, 5)
MIN_SIZE = 32  # imagecorruptions refuses smaller images
CACHE_FORMAT = 1


class CacheWarning(UserWarning):
    """A cached corrupted set could not be used (damaged or foreign file); it is regenerated."""


# --- imagecorruptions, patched for current numpy / scikit-image ----------------------------------


class _Overlay(types.ModuleType):
    """Stands in for a module inside imagecorruptions: a few names replaced, every other forwarded."""

    def __init__(self, module: types.ModuleType, **replaced):
        super().__init__(module.__name__)
        self._module = module
        self.__dict__.update(replaced)

    def __getattr__(self, name: str):  # only reached for names not replaced
        return getattr(self._module, name)


def _patch(impl: types.ModuleType) -> None:
    """Make imagecorruptions 1.1.2 run, and run reproducibly, on numpy 2 and scikit-image >= 0.19.

    1. `gaussian(..., multichannel=True)` (glass_blur, gaussian_blur): scikit-image removed
       `multichannel` in favour of `channel_axis=-1`.
    2. `np.float_` (fog's plasma_fractal): removed in numpy 2; it was float64.
    3. `sk.util.random_noise` (impulse_noise) takes its own fresh RNG (`rng=None`) in current
       scikit-image, so it ignored the global seed: it now gets a seed drawn from the global RNG.
    Each patch replaces only a name inside imagecorruptions.corruptions; numpy and scikit-image
    themselves are untouched.
    """
    import skimage
    import skimage.filters
    import skimage.util

    gaussian = skimage.filters.gaussian
    if "multichannel" not in inspect.signature(gaussian).parameters:

        def gaussian_compat(image, sigma=1, multichannel=None, **kwargs):
            if multichannel is not None:
                kwargs["channel_axis"] = -1 if multichannel else None
            return gaussian(image, sigma=sigma, **kwargs)

        impl.gaussian = gaussian_compat
    if not hasattr(np, "float_"):
        impl.np = _Overlay(np, float_=np.float64)
    random_noise = skimage.util.random_noise
    params = inspect.signature(random_noise).parameters
    seed_arg = "rng" if "rng" in params else "seed" if "seed" in params else None
    if seed_arg:

        def random_noise_seeded(image, mode="gaussian", **kwargs):
            if kwargs.get(seed_arg) is None:
                kwargs[seed_arg] = int(np.random.randint(0, 2**31 - 1))
            return random_noise(image, mode=mode, **kwargs)

        impl.sk = _Overlay(skimage, util=_Overlay(skimage.util, random_noise=random_noise_seeded))


@functools.cache
def imagecorruptions_module() -> types.ModuleType:
    """The patched `imagecorruptions` package, imported on first use (it pulls in cv2 and scipy)."""
    with warnings.catch_warnings():
        # imagecorruptions imports pkg_resources (needs setuptools<81) and a deprecated scipy path
        warnings.filterwarnings("ignore", message="pkg_resources is deprecated", category=UserWarning)
        warnings.filterwarnings(
            "ignore", message=".*scipy.ndimage.interpolation", category=DeprecationWarning
        )
        import imagecorruptions
        from imagecorruptions import corruptions as impl
    _patch(impl)
    return imagecorruptions


def imagecorruptions_version() -> str:
    try:
        return importlib.metadata.version("imagecorruptions")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


# --- names, severities, sizes ----------------------------------------------------------------


def corruption_names(names: str | Sequence[str]) -> list[str]:
    """'common' (the 15 of ImageNet-C), 'extra' (the 4 held out), 'all', or a list of names."""
    if isinstance(names, str):
        if names in GROUPS:
            return list(GROUPS[names])
        names = [names]
    names = list(names)
    if not names:
        raise InputError(
            "evaluate.corruptions.names is empty: give corruption names, or common / extra / all"
        )
    known = list(GROUPS["all"])
    for name in names:
        if name not in known:
            raise InputError(
                f"unknown corruption {name!r}; {suggest(name, known)}known: {', '.join(known)} "
                f"(or the groups common, extra, all)"
            )
    if len(set(names)) != len(names):
        raise InputError(f"evaluate.corruptions.names lists a corruption twice: {names}")
    return names


def check_severities(severities: Sequence[int]) -> list[int]:
    out = sorted(set(int(s) for s in severities))
    if not out or any(s not in SEVERITIES for s in out):
        raise InputError(f"corruption severities must be among 1..5, got {list(severities)}")
    return out


def check_image_size(height: int, width: int) -> None:
    if height < MIN_SIZE or width < MIN_SIZE:
        raise InputError(
            f"corruptions need images of at least {MIN_SIZE}x{MIN_SIZE} px (imagecorruptions' minimum), "
            f"these are {height}x{width}: set data.img_size >= {MIN_SIZE}"
        )


# --- corrupting images -----------------------------------------------------------------------


def image_seed(seed: int, name: str, severity: int, index: int) -> int:
    """The numpy seed of one corrupted image: a hash of (seed, corruption, severity, sample index)."""
    entropy = [seed % 2**64, zlib.crc32(name.encode()), severity, index]
    return int(np.random.SeedSequence(entropy).generate_state(1)[0])


def corrupt_rows(
    images: np.ndarray, indices: Sequence[int], name: str, severity: int, seed: int
) -> np.ndarray:
    """NHWC uint8 (C = 1 or 3) -> corrupted NHWC uint8; row i is seeded by its dataset index indices[i]."""
    impl = imagecorruptions_module()
    out = np.empty_like(images)
    state = np.random.get_state()
    try:
        for row, (image, index) in enumerate(zip(images, indices)):
            np.random.seed(image_seed(seed, name, severity, int(index)))
            rgb = np.repeat(image, 3, axis=2) if image.shape[2] == 1 else image
            result = impl.corrupt(np.ascontiguousarray(rgb), severity=severity, corruption_name=name)
            if result.shape != rgb.shape:
                raise RuntimeError(
                    f"imagecorruptions' {name} returned shape {result.shape} for an image of {rgb.shape}"
                )
            out[row] = result[:, :, :1] if image.shape[2] == 1 else result
    finally:
        np.random.set_state(state)
    return out


_WORKER: dict = {}


def _init_worker(images: np.ndarray, indices: np.ndarray) -> None:
    _WORKER.update(images=images, indices=indices)


def _work(start: int, stop: int, name: str, severity: int, seed: int) -> np.ndarray:
    return corrupt_rows(_WORKER["images"][start:stop], _WORKER["indices"][start:stop], name, severity, seed)


@contextlib.contextmanager
def _opencv_sequential():
    """OpenCV's thread pool does not survive fork: a forked child that touches it (even through
    cv2.setNumThreads) can wait forever on a lock of a thread that no longer exists. Workers forked while
    OpenCV runs sequentially never use the pool; the parent's setting is restored once they exist."""
    try:
        import cv2
    except ImportError:
        yield
        return
    threads = cv2.getNumThreads()
    cv2.setNumThreads(0)  # 0: run every function sequentially
    try:
        yield
    finally:
        cv2.setNumThreads(threads)


def _start_method() -> str:
    # fork shares the clean images without copying and starts in milliseconds; a spawned worker
    # would re-import torch and vitrobust (seconds). Elsewhere (macOS, Windows) spawn is the safe choice.
    return "fork" if sys.platform.startswith("linux") else "spawn"


class CorruptionPool:
    """One fixed set of clean images, corrupted under any (corruption, severity, seed).

    `images`: uint8 NCHW; `indices`: their positions in the dataset (default 0..N-1), which seed
    them. `workers` > 0 spreads the images over that many processes (started once, reused for every
    corruption); the result is byte-identical to workers=0.
    """

    def __init__(
        self,
        images: torch.Tensor | np.ndarray,
        indices: Sequence[int] | None = None,
        workers: int = 0,
        start_method: str | None = None,
    ):
        array = images.numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
        if array.dtype != np.uint8 or array.ndim != 4 or array.shape[1] not in (1, 3):
            raise InputError(
                f"corruptions take uint8 images of shape N x 1|3 x H x W, got {array.dtype} {array.shape}"
            )
        check_image_size(array.shape[2], array.shape[3])
        self.images = np.ascontiguousarray(array.transpose(0, 2, 3, 1))
        self.indices = np.arange(len(array)) if indices is None else np.asarray(indices, dtype=np.int64)
        if len(self.indices) != len(array):
            raise InputError(f"{len(self.indices)} indices given for {len(array)} images")
        self.workers = workers
        self._pool = None
        imagecorruptions_module()  # imported (and patched) before forking, so workers inherit it
        if workers > 0 and len(array) > 0:
            ctx = multiprocessing.get_context(start_method or _start_method())
            with _opencv_sequential():  # multiprocessing.Pool starts (forks) every worker right here
                self._pool = ctx.Pool(workers, initializer=_init_worker, initargs=(self.images, self.indices))

    def __len__(self) -> int:
        return len(self.images)

    def corrupt(self, name: str, severity: int, seed: int = 0) -> torch.Tensor:
        """The corrupted images, uint8 NCHW, in the order they were given."""
        corruption_names([name])
        check_severities([severity])
        n = len(self.images)
        if self._pool is None:
            out = corrupt_rows(self.images, self.indices, name, severity, seed)
        else:
            chunk = max(1, math.ceil(n / (self.workers * 4)))  # a few chunks per worker balance slow images
            tasks = [(start, min(start + chunk, n), name, severity, seed) for start in range(0, n, chunk)]
            out = np.concatenate(self._pool.starmap(_work, tasks, chunksize=1))
        return torch.from_numpy(np.ascontiguousarray(out.transpose(0, 3, 1, 2)))

    def close(self) -> None:
        if self._pool is not None:
            self._pool.terminate()  # every result is in (or an error is on its way): nothing to wait for
            self._pool.join()
            self._pool = None

    def __enter__(self) -> CorruptionPool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def corrupt_images(
    images: torch.Tensor | np.ndarray,
    name: str,
    severity: int,
    seed: int = 0,
    indices: Sequence[int] | None = None,
    workers: int = 0,
) -> torch.Tensor:
    """Corrupt uint8 NCHW images once (for many corruptions, keep a CorruptionPool open instead)."""
    with CorruptionPool(images, indices, workers) as pool:
        return pool.corrupt(name, severity, seed)


# --- cache -----------------------------------------------------------------------------------


def cache_key(data: ImageSet, n: int, name: str, severity: int, seed: int, size: tuple[int, int]) -> dict:
    """What a cached corrupted set depends on: the dataset (name and folder), which images (the digest of
    the first n, naming their positions: a balanced sample never reuses a set cached when subsets were
    prefixes), the corruption, severity, seed, image size and channels, and the imagecorruptions version."""
    return {
        "format": CACHE_FORMAT,
        "dataset": data.name,
        "root": str(data.info.get("root", "")),
        "n": int(n),
        "images": data.digest(n),
        "corruption": name,
        "severity": int(severity),
        "seed": int(seed),
        "size": [int(size[0]), int(size[1])],
        "channels": int(data.in_chans),
        "imagecorruptions": imagecorruptions_version(),
    }


class CorruptionCache:
    """Corrupted sets on disk, one safetensors file per key."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder).expanduser()

    def path(self, key: dict) -> Path:
        digest = hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
        stem = (
            f"{key['dataset'] or 'data'}-{key['corruption']}-s{key['severity']}-n{key['n']}-seed{key['seed']}"
        )
        return self.folder / f"{stem}-{key['size'][0]}x{key['size'][1]}-{digest}.safetensors"

    def load(self, key: dict) -> torch.Tensor | None:
        """The cached images (uint8 NCHW), or None when absent; a damaged file warns and gives None."""
        from safetensors import SafetensorError, safe_open

        path = self.path(key)
        if not path.is_file():
            return None
        expected = (key["n"], key["channels"], key["size"][0], key["size"][1])
        try:
            with safe_open(str(path), framework="numpy") as fh:
                meta = fh.metadata() or {}
                images = fh.get_tensor("images")
        except (SafetensorError, OSError, ValueError, KeyError) as err:
            return self._damaged(path, f"unreadable: {err}")
        if json.loads(meta.get("key", "null")) != key:
            return self._damaged(path, "its key does not match the requested set")
        if images.dtype != np.uint8 or tuple(images.shape) != expected:
            return self._damaged(
                path, f"holds {images.dtype} {tuple(images.shape)}, expected uint8 {expected}"
            )
        if meta.get("crc32") != str(zlib.crc32(images.tobytes())):
            return self._damaged(path, "checksum mismatch")
        return torch.from_numpy(np.ascontiguousarray(images))

    def save(self, key: dict, images: torch.Tensor) -> Path:
        from safetensors.numpy import save

        array = np.ascontiguousarray(images.numpy())
        path = self.path(key)
        meta = {"key": json.dumps(key), "crc32": str(zlib.crc32(array.tobytes()))}
        atomic_write_bytes(path, save({"images": array}, metadata=meta))
        return path

    @staticmethod
    def _damaged(path: Path, why: str) -> None:
        warnings.warn(
            f"corruption cache file {path} cannot be used ({why}); regenerating it",
            CacheWarning,
            stacklevel=3,
        )
        return None


__all__ = [
    "COMMON",
    "EXTRA",
    "GROUPS",
    "MIN_SIZE",
    "SEVERITIES",
    "CacheWarning",
    "CorruptionCache",
    "CorruptionPool",
    "cache_key",
    "check_image_size",
    "check_severities",
    "corrupt_images",
    "corrupt_rows",
    "corruption_names",
    "image_seed",
    "imagecorruptions_module",
    "imagecorruptions_version",
]
