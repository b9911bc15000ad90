"""RMSNorm and LayerNorm against their formulas; the norm factory."""

from __future__ import annotations

import pytest
import torch

from edifice.blocks.norms import LayerNorm, RMSNorm, get_norm, norm_names


def _rms_formula(x: torch.Tensor, gain: torch.Tensor, eps: float) -> torch.Tensor:
    # Zhang & Sennrich eq. 4: x / sqrt(mean(x²) + eps) * g
    ms = (x.double() ** 2).sum(-1, keepdim=True) / x.shape[-1]
    return (x.double() / torch.sqrt(ms + eps) * gain.double()).float()


def _ln_formula(x: torch.Tensor, gain: torch.Tensor, bias: torch.Tensor, eps: float) -> torch.Tensor:
    x = x.double()
    mu = x.sum(-1, keepdim=True) / x.shape[-1]
    var = ((x - mu) ** 2).sum(-1, keepdim=True) / x.shape[-1]  # biased, as Ba et al.
    return ((x - mu) / torch.sqrt(var + eps) * gain.double() + bias.double()).float()


def test_rmsnorm_matches_formula() -> None:
    torch.manual_seed(0)
    norm = RMSNorm(12, eps=1e-5)
    with torch.no_grad():
        norm.weight.normal_()
    x = torch.randn(3, 5, 12) * 3
    torch.testing.assert_close(norm(x), _rms_formula(x, norm.weight.detach(), 1e-5))


def test_zero_centered_rmsnorm_uses_one_plus_w() -> None:
    torch.manual_seed(1)
    norm = RMSNorm(8, zero_centered=True)
    x = torch.randn(4, 8)
    assert torch.count_nonzero(norm.weight) == 0
    torch.testing.assert_close(norm(x), RMSNorm(8)(x))  # w = 0 is unit gain
    with torch.no_grad():
        norm.weight.normal_()
    torch.testing.assert_close(norm(x), _rms_formula(x, 1 + norm.weight.detach(), 1e-6))


def test_rmsnorm_without_affine_and_bf16() -> None:
    torch.manual_seed(2)
    norm = RMSNorm(16, elementwise_affine=False)
    assert norm.weight is None
    assert not list(norm.parameters())
    x = torch.randn(2, 16)
    torch.testing.assert_close(norm(x), _rms_formula(x, torch.ones(16), 1e-6))
    y = norm(x.bfloat16())
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), norm(x), rtol=2e-2, atol=2e-2)
    with pytest.raises(ValueError, match=r"expected input \[\.\.\., 16\], got \[2, 8\]"):
        norm(torch.randn(2, 8))
    with pytest.raises(ValueError, match="needs elementwise_affine"):
        RMSNorm(4, elementwise_affine=False, zero_centered=True)


@pytest.mark.parametrize("bias", [True, False])
def test_layernorm_matches_formula(bias: bool) -> None:
    torch.manual_seed(3)
    norm = LayerNorm(10, bias=bias)
    assert (norm.bias is not None) == bias
    with torch.no_grad():
        norm.weight.normal_()
        if norm.bias is not None:
            norm.bias.normal_()
    x = torch.randn(2, 3, 10) * 2 + 1
    b = norm.bias.detach() if norm.bias is not None else torch.zeros(10)
    torch.testing.assert_close(norm(x), _ln_formula(x, norm.weight.detach(), b, 1e-5))
    assert norm(x.bfloat16()).dtype == torch.bfloat16
    with pytest.raises(ValueError, match=r"expected input \[\.\.\., 10\]"):
        norm(torch.randn(2, 9))


def test_get_norm() -> None:
    assert isinstance(get_norm("rmsnorm", 4, eps=1e-5), RMSNorm)
    assert get_norm("RMS_Norm", 4).eps == 1e-6
    assert get_norm("gemma_rmsnorm", 4).zero_centered
    assert get_norm("layernorm_nobias", 4).bias is None
    assert isinstance(get_norm("layernorm", 4), LayerNorm)
    assert isinstance(get_norm("none", 4), torch.nn.Identity)
    assert {"rmsnorm", "layernorm"} <= set(norm_names())
    with pytest.raises(ValueError, match=r"unknown norm 'rmsnrom'; valid names: .*Did you mean 'rmsnorm'"):
        get_norm("rmsnrom", 4)
    with pytest.raises(ValueError, match="fixes bias"):
        get_norm("layernorm_nobias", 4, bias=True)
    with pytest.raises(TypeError):
        get_norm(None, 4)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="dim must be > 0"):
        RMSNorm(0)
