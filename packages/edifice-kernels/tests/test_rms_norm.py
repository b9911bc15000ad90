"""Fused RMSNorm and gated RMSNorm against their references: outputs, every gradient, NaN-filled buffers."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("triton")

from edifice import ops
from edifice.ops.norm import rms_norm_reference
from edifice_kernels.rms_norm import gated_rms_norm, rms_norm

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def gated_reference(
    x: torch.Tensor,
    z: torch.Tensor,
    weight: torch.Tensor | None = None,
    eps: float = 1e-6,
    group_size: int | None = None,
) -> torch.Tensor:
    """``RMSNorm(x * silu(z)) * weight`` per group, in fp32 (edifice.ops.gated_rms_norm's definition)."""
    D = x.shape[-1]
    gs = D if group_size is None else group_size
    g = (x.float() * F.silu(z.float())).unflatten(-1, (D // gs, gs))
    y = (g * torch.rsqrt(g.square().mean(-1, keepdim=True) + eps)).flatten(-2)
    return (y if weight is None else y * weight.float()).to(x.dtype)


def _inputs(shape: tuple[int, ...], dtype: torch.dtype, weight: bool, gate: bool = False) -> dict[str, Any]:
    gen = torch.Generator().manual_seed(0)

    def rand(*s: int) -> torch.Tensor:
        return torch.randn(*s, generator=gen).to(device=DEVICE, dtype=dtype)

    out: dict[str, Any] = {"x": rand(*shape)}
    if gate:
        out["z"] = rand(*shape)
    out["weight"] = rand(shape[-1]) if weight else None
    return out


@pytest.mark.usefixtures("nan_empty")
@pytest.mark.parametrize(
    ("shape", "dtype", "weight"),
    [((2, 7, 33), torch.float32, True), ((1, 33), torch.float32, False), ((2, 1, 60), torch.bfloat16, True)],
)
def test_rms_norm_matches_the_reference(
    compare_with_reference: Callable[..., None], shape: tuple[int, ...], dtype: torch.dtype, weight: bool
) -> None:
    compare_with_reference(rms_norm, rms_norm_reference, _inputs(shape, dtype, weight), dtype, eps=1e-5)


@pytest.mark.usefixtures("nan_empty")
@pytest.mark.parametrize(("group_size", "dtype"), [(None, torch.float32), (5, torch.float32), (5, torch.bfloat16)])
def test_gated_rms_norm_matches_its_definition(
    compare_with_reference: Callable[..., None], group_size: int | None, dtype: torch.dtype
) -> None:
    inputs = _inputs((2, 3, 15), dtype, weight=True, gate=True)
    compare_with_reference(gated_rms_norm, gated_reference, inputs, dtype, eps=1e-5, group_size=group_size)


def test_gated_reference_is_the_core_op_where_core_has_it(assert_matches: Callable[..., None]) -> None:
    """Once ``edifice.ops.gated_rms_norm`` exists, the definition tested above must be its reference."""
    op = getattr(ops, "gated_rms_norm", None)
    if op is None:
        pytest.skip("edifice.ops has no gated_rms_norm op yet")
    inputs = _inputs((2, 3, 15), torch.float32, weight=True, gate=True)
    want = gated_reference(**inputs, eps=1e-5, group_size=5)
    assert_matches(op.reference(**inputs, eps=1e-5, group_size=5), want, torch.float32, "gated_rms_norm reference")


# --- GPU: through op dispatch, at the odd widths -------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.usefixtures("nan_empty")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("T", "D"), [(1, 60), (63, 128), (130, 60), (130, 4096)])
def test_rms_norm_dispatch_on_gpu(
    compare_with_reference: Callable[..., None], dtype: torch.dtype, T: int, D: int
) -> None:
    inputs = _inputs((3, T, D), dtype, weight=True)
    assert ops.selected("rms_norm", **inputs) == "triton_rms_norm"
    compare_with_reference(ops.rms_norm, rms_norm_reference, inputs, dtype, eps=1e-6)


@pytest.mark.gpu
@pytest.mark.usefixtures("nan_empty")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("T", "D", "group_size"), [(1, 128, None), (63, 120, 60), (130, 256, 128)])
def test_gated_rms_norm_on_gpu(
    compare_with_reference: Callable[..., None], dtype: torch.dtype, T: int, D: int, group_size: int | None
) -> None:
    inputs = _inputs((2, T, D), dtype, weight=True, gate=True)
    op = getattr(ops, "gated_rms_norm", None)
    kernel: Callable[..., Any] = gated_rms_norm
    if op is not None:
        assert ops.selected("gated_rms_norm", **inputs, group_size=group_size) == "triton_gated_rms_norm"
        kernel = op
    compare_with_reference(kernel, gated_reference, inputs, dtype, eps=1e-5, group_size=group_size)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_output_and_a_low_precision_weight_may_be_modified_in_place(
    assert_in_place_allowed: Callable[..., None], dtype: torch.dtype
) -> None:
    # The output was a view made inside forward (no in-place allowed); the reference copies a non-fp32 weight.
    inputs = _inputs((2, 3, 8), dtype, weight=True)
    targets = ["out0"] + (["weight"] if dtype != torch.float32 else [])
    assert_in_place_allowed(rms_norm, rms_norm_reference, inputs, targets, dtype, eps=1e-5)
    gated = _inputs((2, 3, 8), dtype, weight=True, gate=True)
    assert_in_place_allowed(gated_rms_norm, gated_reference, gated, targets, dtype, group_size=4)
