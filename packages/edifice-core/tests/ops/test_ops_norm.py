"""edifice.ops.rms_norm: vs the row loop, vs torch.nn.functional.rms_norm, fp32 statistics for half inputs."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F

from edifice import ops
from edifice.ops.norm import rms_norm_naive, rms_norm_reference

TOL = 1e-5


def randn(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize(
    ("shape", "weight", "eps"), [((2, 7, 60), True, 1e-6), ((60,), False, 1e-5), ((3, 1, 5), True, 0.1)]
)
def test_reference_matches_naive_and_torch(shape: tuple[int, ...], weight: bool, eps: float, agree: Any) -> None:
    x = randn(*shape, seed=0)
    w = randn(shape[-1], seed=1) if weight else None
    out = agree(rms_norm_reference, rms_norm_naive, x, w, eps, atol=TOL, rtol=TOL)
    torch.testing.assert_close(out, F.rms_norm(x, (shape[-1],), w, eps), atol=TOL, rtol=TOL)
    torch.testing.assert_close(ops.rms_norm(x, w, eps=eps), out, atol=0, rtol=0)


def test_statistics_in_fp32(relative_l2: Any) -> None:
    # 1000^2 overflows fp16 (max 65504): squaring in the input dtype would give inf and zeros out.
    x = randn(4, 64, seed=2) * 1000
    w = randn(64, seed=3)
    want = rms_norm_reference(x, w)
    for dtype in (torch.float16, torch.bfloat16):
        out = ops.rms_norm(x.to(dtype), w.to(dtype))
        assert out.dtype == dtype
        assert torch.isfinite(out).all()
        assert relative_l2(out, want) <= 2e-2


def test_mixed_weight_dtype_follows_x() -> None:
    x = randn(3, 8, seed=4).bfloat16()
    assert ops.rms_norm(x, torch.ones(8)).dtype == torch.bfloat16


@pytest.mark.parametrize(
    ("x", "w", "eps", "error", "match"),
    [
        (torch.zeros(2, 8), torch.zeros(7), 1e-6, ValueError, r"weight must be \[D\] = \[8\], got \[7\]"),
        (torch.zeros(2, 8), None, -1.0, ValueError, r"eps must be >= 0"),
        (torch.zeros(2, 8, dtype=torch.long), None, 1e-6, TypeError, r"x must be a floating-point"),
        (torch.tensor(1.0), None, 1e-6, ValueError, r"x must be \[\.\.\., D\] \(at least 1-D\), got a 0-D tensor"),
        ([1.0], None, 1e-6, TypeError, r"x must be a tensor"),
    ],
)
def test_invalid_arguments_raise_clear_errors(
    x: torch.Tensor, w: torch.Tensor | None, eps: float, error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        ops.rms_norm(x, w, eps)
