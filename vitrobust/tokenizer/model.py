"""The tokenizer as it is trained: the taming-layout network plus its training losses.

Two codebook update rules (tokenizer.codebook_update):
- "ema" (default): vector-quantize-pytorch's VectorQuantize owns the codebook while training (EMA
  of the assigned encoder outputs, optional k-means init and dead-code re-seeding). After every
  forward its codebook is copied into the tokenizer's `quantize.embedding.weight`, so the network
  that is saved, evaluated and later loaded is always the plain taming layout, and encodes exactly
  as VectorQuantize does. Its loss is the commitment term only.
- "loss": taming's rule, codebook_weight * |sg[z] - e|^2 + commitment_weight * |z - sg[e]|^2, with
  the codebook a trained parameter of the tokenizer itself.
Gradients reach the encoder straight through the quantizer in both (taming's estimator).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from vector_quantize_pytorch import VectorQuantize

from vitrobust.config import TokenizerConfig
from vitrobust.models.vqgan import VQTokenizer
from vitrobust.tokenizer.metrics import psnr


class TrainingTokenizer(nn.Module):
    def __init__(self, tokenizer: VQTokenizer, cfg: TokenizerConfig, pretrained_codebook: bool = False):
        super().__init__()
        self.tokenizer, self.cfg = tokenizer, cfg
        self.vq = None
        if cfg.codebook_update == "ema":
            self.vq = VectorQuantize(
                dim=tokenizer.embed_dim, codebook_size=tokenizer.n_embed, decay=cfg.codebook_decay,
                commitment_weight=cfg.commitment_weight, kmeans_init=cfg.kmeans_init and not pretrained_codebook,
                threshold_ema_dead_code=cfg.dead_code_threshold, accept_image_fmap=True,
                rotation_trick=False,
            )
            tokenizer.codebook.embedding.weight.requires_grad_(False)  # written from the EMA, never by the optimizer
            if pretrained_codebook:
                self._seed_ema(tokenizer.codebook.embedding.weight.detach())
            else:
                self._sync()

    @torch.no_grad()
    def _seed_ema(self, codes: torch.Tensor) -> None:
        """Start the EMA from given codes: VectorQuantize keeps embed = embed_avg / cluster_size."""
        book = self.vq._codebook
        self.vq.codebook = codes
        book.embed_avg.copy_(book.embed)
        book.cluster_size.fill_(1.0)
        book.initted.fill_(True)

    @torch.no_grad()
    def _sync(self) -> None:
        self.tokenizer.codebook.embedding.weight.copy_(self.vq.codebook)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(loss, logs) for a batch of [0,1] images."""
        tok, cfg = self.tokenizer, self.cfg
        z = tok.latent(x)
        if self.vq is not None:
            z_q, indices, vq_loss = self.vq(z)
            self._sync()
            logs = {"commit": vq_loss.detach()}
        else:
            indices = tok.codebook.nearest(z)
            q = tok.codes(indices)
            codebook, commit = F.mse_loss(q, z.detach()), F.mse_loss(z, q.detach())
            vq_loss = cfg.codebook_weight * codebook + cfg.commitment_weight * commit
            z_q = z + (q - z).detach()
            logs = {"codebook": codebook.detach(), "commit": commit.detach()}
        recon = tok.decode(z_q)
        recon_loss = F.l1_loss(recon, x) if cfg.recon_loss == "l1" else F.mse_loss(recon, x)
        loss = recon_loss + vq_loss
        counts = torch.bincount(indices.flatten(), minlength=tok.n_embed).float()
        p = counts / counts.sum()
        perplexity = torch.exp(-(p[p > 0] * p[p > 0].log()).sum())
        logs.update(loss=loss.detach(), recon=recon_loss.detach(),
                    psnr=psnr(recon.detach().clamp(0, 1), x).mean(), perplexity=perplexity)
        return loss, logs
