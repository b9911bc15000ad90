"""``ops.gated_rms_norm``: Mamba-2's gate-then-group-RMSNorm against its per-group loop, its mutation, bad arguments."""

from __future__ import annotations

import pytest
import torch

from edifice import ops
from edifice.ops.norm import gated_rms_norm_naive, gated_rms_norm_reference
from edifice.testing.mutate import ungated_rms_norm


def _inputs(D: int = 12, dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 5, D, generator=gen, dtype=dtype)
    z = torch.randn(2, 5, D, generator=gen, dtype=dtype)
    weight = 1 + 0.1 * torch.randn(D, generator=gen, dtype=dtype)
    return x, z, weight


@pytest.mark.parametrize("group_size", [None, 4, 12])
def test_reference_equals_the_per_group_loop(group_size: int | None) -> None:
    x, z, weight = _inputs()
    want = gated_rms_norm_naive(x, z, weight, 1e-6, group_size)
    torch.testing.assert_close(gated_rms_norm_reference(x, z, weight, 1e-6, group_size), want, rtol=0, atol=1e-12)
    torch.testing.assert_close(ops.gated_rms_norm(x, z, weight, 1e-6, group_size), want, rtol=0, atol=1e-12)


def test_each_group_has_unit_rms_before_the_gain() -> None:
    x, z, _ = _inputs()
    y = ops.gated_rms_norm(x, z, None, 0.0, 4)
    rms = y.unflatten(-1, (3, 4)).square().mean(-1).sqrt()
    torch.testing.assert_close(rms, torch.ones_like(rms))


def test_gradients_match_the_loop() -> None:
    x, z, weight = (t.requires_grad_() for t in _inputs())
    grads = torch.autograd.grad(ops.gated_rms_norm(x, z, weight, 1e-6, 4).square().sum(), (x, z, weight))
    want = torch.autograd.grad(gated_rms_norm_naive(x, z, weight, 1e-6, 4).square().sum(), (x, z, weight))
    for got, ref in zip(grads, want, strict=True):
        torch.testing.assert_close(got, ref)


def test_the_mutation_drops_the_gate() -> None:
    x, z, weight = _inputs()
    ungated = ungated_rms_norm(x, z, weight, 0.0, 4)
    plain = x.unflatten(-1, (3, 4))
    plain = (plain * torch.rsqrt(plain.square().mean(-1, keepdim=True))).flatten(-2) * weight
    torch.testing.assert_close(ungated, plain)
    assert not torch.allclose(ungated, ops.gated_rms_norm(x, z, weight, 0.0, 4))


def test_bf16_computes_in_fp32_and_returns_bf16() -> None:
    x, z, weight = _inputs(dtype=torch.float32)
    y = ops.gated_rms_norm(x.bfloat16(), z.bfloat16(), weight, 1e-6, 4)
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), gated_rms_norm_reference(x.bfloat16().float(), z.bfloat16().float(),
                                                                    weight, 1e-6, 4), atol=2e-2, rtol=2e-2)  # fmt: skip


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"z": torch.zeros(2, 5, 11)}, "z must have x's shape"),
        ({"group_size": 5}, "group_size must be a positive divisor of D = 12"),
        ({"weight": torch.ones(5)}, "weight must be"),
    ],
)
def test_bad_arguments_name_the_expected_layout(kwargs: dict[str, object], words: str) -> None:
    x, z, weight = _inputs()
    args = {"x": x, "z": z, "weight": weight, **kwargs}
    with pytest.raises(ValueError, match=words):
        ops.gated_rms_norm(args["x"], args["z"], args["weight"], 1e-6, kwargs.get("group_size"))  # type: ignore[arg-type]
