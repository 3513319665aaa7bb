"""Batched augmentation of [0,1] tensors on the training device.

Crop, flip and colour jitter draw their parameters per SAMPLE from a generator seeded by
(seed, epoch), so a sample gets the same augmentation whatever the batch layout, number of
ranks or resume point. RandAugment (timm, PIL) runs per sample in the dataset instead.
Foreground masks get the same crop/flip grid per sample (`warp_mask`), sampled with nearest neighbour.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from vitrobust.config import AugmentConfig


class BatchAugment:
    def __init__(self, cfg: AugmentConfig, num_samples: int, seed: int):
        self.cfg = cfg
        self.num_samples = num_samples
        self.seed = seed
        self.params: torch.Tensor | None = None
        self.active = cfg.crop != "none" or cfg.hflip or cfg.color_jitter > 0

    def set_epoch(self, epoch: int) -> None:
        """Draw this epoch's parameters for every sample: (N, 8) uniform [0,1) numbers."""
        if not self.active:
            return
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        self.params = torch.rand(self.num_samples, 8, generator=gen)

    def __call__(self, x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        if not self.active:
            return x
        u = self.params[index].to(x.device, x.dtype)
        if self.cfg.crop != "none" or self.cfg.hflip:
            mode = self.cfg.interpolation if self.cfg.crop == "rrc" else "bilinear"  # pad-crop shifts are exact
            x = F.grid_sample(x, self._grid(u, x), mode=mode, padding_mode="zeros", align_corners=False)
        if self.cfg.color_jitter > 0:
            x = self._jitter(x, u[:, 4:7])
        return x.clamp_(0.0, 1.0)

    def warp_mask(self, mask: torch.Tensor, index: torch.Tensor, mode: str = "nearest") -> torch.Tensor:
        """The same crop and flip as `__call__` on a float N x 1 x H x W mask (colour jitter does not apply).

        Nearest sampling keeps a 0/1 mask binary; pad-crop shifts and flips land on pixel centres, so
        there the mask moves exactly with the image. Outside the image the mask is background (zeros).
        """
        if not self.active or not (self.cfg.crop != "none" or self.cfg.hflip):
            return mask
        u = self.params[index].to(mask.device, mask.dtype)
        return F.grid_sample(mask, self._grid(u, mask), mode=mode, padding_mode="zeros", align_corners=False)

    def _grid(self, u: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        sx = torch.ones(n, device=x.device, dtype=x.dtype)
        sy, tx, ty = sx.clone(), torch.zeros_like(sx), torch.zeros_like(sx)
        if self.cfg.crop == "rrc":
            lo, hi = self.cfg.crop_scale
            area = lo + (hi - lo) * u[:, 0]
            rlo, rhi = math.log(self.cfg.crop_ratio[0]), math.log(self.cfg.crop_ratio[1])
            ratio = torch.exp(rlo + (rhi - rlo) * u[:, 1])
            sx = torch.sqrt(area * ratio).clamp(max=1.0)  # crop width / image width
            sy = torch.sqrt(area / ratio).clamp(max=1.0)
            tx = (1 - sx) * (2 * u[:, 2] - 1)
            ty = (1 - sy) * (2 * u[:, 3] - 1)
        elif self.cfg.crop == "pad":
            p = self.cfg.crop_padding
            # integer shifts in [-p, p] pixels: an exact pad-and-crop with zero fill
            tx = 2 * torch.floor(u[:, 2] * (2 * p + 1) - p) / w
            ty = 2 * torch.floor(u[:, 3] * (2 * p + 1) - p) / h
        if self.cfg.hflip:
            sx = torch.where(u[:, 7] < 0.5, -sx, sx)
        theta = torch.zeros(n, 2, 3, device=x.device, dtype=x.dtype)
        theta[:, 0, 0], theta[:, 0, 2], theta[:, 1, 1], theta[:, 1, 2] = sx, tx, sy, ty
        return F.affine_grid(theta, list(x.shape), align_corners=False)

    def _jitter(self, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        j = self.cfg.color_jitter
        f = 1 + j * (2 * u - 1)  # brightness, contrast, saturation factors in [1-j, 1+j]
        x = x * f[:, 0, None, None, None]
        gray = _gray(x)
        mean = gray.mean(dim=(1, 2, 3), keepdim=True)
        x = (x - mean) * f[:, 1, None, None, None] + mean
        if x.shape[1] == 3:
            gray = _gray(x)
            x = (x - gray) * f[:, 2, None, None, None] + gray
        return x


def _gray(x: torch.Tensor) -> torch.Tensor:
    if x.shape[1] == 1:
        return x
    return (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]).clamp(0, 1)


def randaugment_transform(config_str: str, in_chans: int, img_size: int):
    """timm's RandAugment on one uint8 CHW tensor (via PIL)."""
    from timm.data.auto_augment import rand_augment_transform

    hparams = {"translate_const": int(img_size * 0.45), "img_mean": (128,) * in_chans}
    ra = rand_augment_transform(config_str, hparams)

    def apply(img: torch.Tensor) -> torch.Tensor:
        arr = img.permute(1, 2, 0).numpy()
        pil = Image.fromarray(arr[:, :, 0] if in_chans == 1 else arr)
        out = torch.from_numpy(np.asarray(ra(pil)).copy())
        return out.unsqueeze(0) if out.ndim == 2 else out.permute(2, 0, 1)

    return apply
