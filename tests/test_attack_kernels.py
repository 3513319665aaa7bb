"""The fast AutoAttack engine's attack kernels: the same values and gradients as the model's own."""

from __future__ import annotations

import pytest
import timm
import torch
import torch.nn.functional as F

from vitrobust.attacks.kernels import attack_kernels, is_patchify

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize(("size", "bias"), [((32, 32), True), ((30, 35), False)])
def test_a_patchify_convolution_as_a_matrix_product_gives_the_same_values_and_gradients(size, bias):
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 6, 4, stride=4, bias=bias)
    assert is_patchify(conv) and not is_patchify(torch.nn.Conv2d(3, 6, 4, stride=2))
    x = torch.rand(2, 3, *size, requires_grad=True)
    (g_conv,) = torch.autograd.grad(conv(x).square().sum(), x)
    with attack_kernels(conv, x, reduced=False):
        out = conv(x)
    assert "forward" not in conv.__dict__  # the module is itself again after the block
    (g_mat,) = torch.autograd.grad(out.square().sum(), x)
    assert out.shape == F.conv2d(x, conv.weight, conv.bias, stride=4).shape  # rows/cols that fill no patch drop
    assert torch.allclose(out, conv(x), atol=1e-5) and torch.allclose(g_mat, g_conv, atol=1e-5)


def test_attack_kernels_keep_a_vit_and_pick_math_attention_only_for_reduced_gradient_passes():
    model = timm.create_model("vit_pico_patch8_32", num_classes=10, in_chans=1, depth=2).eval()
    x = torch.rand(4, 1, 32, 32)
    with torch.no_grad():
        ref = model(x)
        with attack_kernels(model, x, reduced=False):
            assert torch.allclose(model(x), ref, atol=1e-5)
    for reduced, grad, math_only in [(True, True, True), (True, False, False), (False, True, False)]:
        with torch.set_grad_enabled(grad), attack_kernels(model, x, reduced=reduced):
            assert torch.backends.cuda.flash_sdp_enabled() is not math_only
    assert torch.backends.cuda.flash_sdp_enabled()
