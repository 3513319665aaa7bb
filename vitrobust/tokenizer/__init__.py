"""Training and judging VQ tokenizers (the network itself is vitrobust.models.vqgan)."""

from vitrobust.tokenizer.metrics import code_usage, evaluate_tokenizer, psnr
from vitrobust.tokenizer.train import TokenizerTrainer, train_tokenizer

__all__ = ["TokenizerTrainer", "code_usage", "evaluate_tokenizer", "psnr", "train_tokenizer"]
