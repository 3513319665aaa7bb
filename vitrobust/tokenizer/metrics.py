"""How good a tokenizer is: reconstruction PSNR and how much of its codebook it uses."""

from __future__ import annotations

import math

import torch

from vitrobust.data import BatchLoader, ImageSet


def psnr(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB of [0,1] images (peak 1); an exact copy is capped at 100 dB."""
    mse = (x.float() - y.float()).pow(2).flatten(1).mean(1)
    return (-10 * torch.log10(mse.clamp_min(1e-10))).clamp_max(100.0)


def code_usage(counts: torch.Tensor) -> dict[str, float | int]:
    """Perplexity exp(H) of the code histogram (= n_embed when all codes are used equally), used and dead codes."""
    total = counts.sum().clamp_min(1)
    p = counts.double() / total
    entropy = -(p[p > 0] * p[p > 0].log()).sum()
    used = int((counts > 0).sum())
    return {"perplexity": float(math.exp(float(entropy))), "used_codes": used, "dead_codes": counts.numel() - used}


@torch.no_grad()
def evaluate_tokenizer(tokenizer, data: ImageSet, device: torch.device, batch_size: int = 500) -> dict:
    """PSNR (mean over images) of reconstruct(x) and the code histogram, on `data` in order."""
    was_training = tokenizer.training
    tokenizer.eval()
    counts = torch.zeros(tokenizer.n_embed, dtype=torch.long, device=device)
    scores = []
    for batch in BatchLoader(data, batch_size, device, train=False):
        z_q, indices = tokenizer.quantize(batch.x)
        scores.append(psnr(tokenizer.decode(z_q).clamp(0, 1), batch.x))
        counts += torch.bincount(indices.flatten(), minlength=tokenizer.n_embed)
    tokenizer.train(was_training)
    return {"psnr": float(torch.cat(scores).mean()), **code_usage(counts.cpu()), "n_embed": tokenizer.n_embed,
            "n": len(data)}
