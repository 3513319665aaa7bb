"""Cheaper kernels for the fast AutoAttack engine's attack passes, with the same mathematics.

`attack_kernels(model, x)` is a context manager that the engine's `Forward` enters around every attack
pass (never around the fp32 checks, which run the model as it is):

- patchify convolutions (kernel size == stride, no padding, dilation or groups, as in every ViT's patch
  embedding) run as one matrix product over the image's patches: the same sums, but their input
  gradient is a matrix product too, where the convolution's backward kernel on CPU is several times
  slower (see benchmarks/README.md, fast engine);
- on CPU in bf16/fp16, a pass with a gradient computes scaled dot-product attention with the math kernel
  (matmul, softmax, matmul), whose backward is far faster there than the fused kernel's in reduced
  precision (passes without a gradient keep the fused kernel, faster for them).

See docs/architecture.md, "AutoAttack engines".
"""

from __future__ import annotations

import contextlib
import functools
import weakref
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel


def _patchify(conv: torch.nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """conv(x) for a patchify convolution, as a product of flattened patches with the flattened kernel."""
    (kh, kw), (n, c, h, w) = conv.kernel_size, x.shape
    gh, gw = h // kh, w // kw  # a convolution without padding leaves out the rows and columns that do not fill a patch
    patches = x[:, :, :gh * kh, :gw * kw].reshape(n, c, gh, kh, gw, kw).permute(0, 2, 4, 1, 3, 5)
    out = F.linear(patches.reshape(n, gh, gw, c * kh * kw), conv.weight.flatten(1), conv.bias)
    return out.permute(0, 3, 1, 2)


def is_patchify(module: torch.nn.Module) -> bool:
    return (type(module) is torch.nn.Conv2d and module.kernel_size == module.stride and module.groups == 1
            and module.padding in ((0, 0), "valid") and module.dilation == (1, 1))


_convs: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> its patchify convolutions


def _patchify_convs(model: torch.nn.Module) -> tuple[torch.nn.Conv2d, ...]:
    if model not in _convs:
        _convs[model] = tuple(m for m in model.modules() if is_patchify(m))
    return _convs[model]


@contextlib.contextmanager
def attack_kernels(model: torch.nn.Module, x: torch.Tensor, reduced: bool) -> Iterator[None]:
    """Within: the model's patchify convolutions as matrix products and, on CPU for a pass with a gradient
    when `reduced`, math attention. Like torch's sdpa_kernel, whose flags are process-wide, it changes the
    model for everyone while it lasts: one attack at a time per model."""
    convs = _patchify_convs(model)
    for conv in convs:
        conv.forward = functools.partial(_patchify, conv)
    try:
        math = reduced and x.device.type == "cpu" and torch.is_grad_enabled()
        with sdpa_kernel([SDPBackend.MATH]) if math else contextlib.nullcontext():
            yield
    finally:
        for conv in convs:
            del conv.forward


__all__ = ["attack_kernels", "is_patchify"]
