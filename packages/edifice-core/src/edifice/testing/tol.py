"""Tolerances of the contract (DESIGN §8) and comparisons that say how far off a tensor is, and where.

* ``FP32`` -- 1e-5 absolute and relative: two fp32 computations of the same function (save/load, batch independence,
  causality, ``torch.compile`` with the eager backend).
* ``SCAN`` -- 1e-4: scans, chunked forms and step-by-step decoding against the parallel ``forward`` (the summation
  order differs, so rounding accumulates over time).
* ``BF16_REL_L2`` -- 2e-2: bf16 autocast against fp32, as a relative L2 error over the whole tensor (elementwise
  tolerances are meaningless with an 8-bit mantissa).

The fp32 tolerances assume fp32 products: :func:`exact_fp32` turns TF32 off on CUDA while a comparison's inputs are
computed (the contract's checks run under it).

Every helper reports the worst element -- its index, both values and how many elements are out of tolerance -- so a
failing test says more than "not close".
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator

import torch

__all__ = [
    "BF16_REL_L2",
    "EXACT",
    "FP32",
    "SCAN",
    "Mismatch",
    "Tolerance",
    "assert_close",
    "assert_finite",
    "assert_relative_l2",
    "compare",
    "exact_fp32",
    "first_nonfinite",
    "relative_l2",
    "tolerance_for",
]


@dataclasses.dataclass(frozen=True)
class Tolerance:
    """An elementwise tolerance: ``|actual - expected| <= atol + rtol * |expected|``."""

    atol: float
    rtol: float

    def __str__(self) -> str:
        return f"atol={self.atol:g}, rtol={self.rtol:g}"


#: Two fp32 computations of the same function.
FP32 = Tolerance(atol=1e-5, rtol=1e-5)
#: Scans, chunked forms and step-by-step decoding against the parallel forward.
SCAN = Tolerance(atol=1e-4, rtol=1e-4)
#: Bit-for-bit equality (save -> load).
EXACT = Tolerance(atol=0.0, rtol=0.0)
#: bf16 autocast against fp32: the largest allowed ``||actual - expected||_2 / ||expected||_2``.
BF16_REL_L2 = 2e-2


def tolerance_for(dtype: torch.dtype) -> Tolerance:
    """The elementwise tolerance that suits computations carried out in ``dtype``."""
    if dtype == torch.float64:
        return Tolerance(atol=1e-10, rtol=1e-10)
    if dtype in (torch.bfloat16, torch.float16):
        return Tolerance(atol=1e-2, rtol=1e-2)
    return FP32


@dataclasses.dataclass(frozen=True)
class Mismatch:
    """Where two tensors differ most, and how many elements are out of tolerance."""

    max_abs: float
    index: tuple[int, ...]
    actual: float
    expected: float
    n_bad: int
    numel: int
    tol: Tolerance

    def __str__(self) -> str:
        return (
            f"max abs error {self.max_abs:.3g} at {self.index} (got {self.actual:.6g}, expected {self.expected:.6g}); "
            f"{self.n_bad} of {self.numel} elements outside {self.tol}"
        )


def _shape(t: torch.Tensor) -> str:
    return "[" + ", ".join(str(s) for s in t.shape) + "]"


def compare(actual: torch.Tensor, expected: torch.Tensor, tol: Tolerance = FP32) -> Mismatch | None:
    """Compare elementwise; ``None`` when every element is within ``tol``, else the worst element.

    NaN never matches anything (not even NaN) and counts as an infinite error; infinities match only themselves.
    Shapes must be equal (no broadcasting), otherwise ``ValueError`` names both.
    """
    if actual.shape != expected.shape:
        raise ValueError(f"shape mismatch: got {_shape(actual)}, expected {_shape(expected)}")
    a = actual.detach().to(torch.float64).cpu()
    e = expected.detach().to(torch.float64).cpu()
    close = torch.isclose(a, e, rtol=tol.rtol, atol=tol.atol)
    if bool(close.all()):
        return None
    diff = (a - e).abs()
    # NaN differences (and inf - inf) rank as the worst possible error so that they are the element reported.
    diff = torch.where(torch.isnan(diff), torch.full_like(diff, float("inf")), diff)
    diff = torch.where(close, torch.zeros_like(diff), diff)
    flat = int(torch.argmax(diff.reshape(-1)))
    index = _unravel(flat, tuple(a.shape))
    return Mismatch(
        max_abs=float(diff.reshape(-1)[flat]),
        index=index,
        actual=float(a.reshape(-1)[flat]),
        expected=float(e.reshape(-1)[flat]),
        n_bad=int((~close).sum()),
        numel=a.numel(),
        tol=tol,
    )


def assert_close(actual: torch.Tensor, expected: torch.Tensor, tol: Tolerance = FP32, *, name: str = "tensor") -> None:
    """Raise ``AssertionError`` naming ``name`` and the worst element when ``actual`` is not within ``tol``."""
    try:
        mismatch = compare(actual, expected, tol)
    except ValueError as exc:
        raise AssertionError(f"{name}: {exc}") from None
    if mismatch is not None:
        raise AssertionError(f"{name}: {mismatch}")


def relative_l2(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """``||actual - expected||_2 / ||expected||_2`` in fp64 (0 when both are zero, inf when only ``expected`` is)."""
    if actual.shape != expected.shape:
        raise ValueError(f"shape mismatch: got {_shape(actual)}, expected {_shape(expected)}")
    a = actual.detach().to(torch.float64).cpu()
    e = expected.detach().to(torch.float64).cpu()
    err = float(torch.linalg.vector_norm(a - e))
    ref = float(torch.linalg.vector_norm(e))
    if ref == 0.0:
        return 0.0 if err == 0.0 else float("inf")
    return err / ref


def assert_relative_l2(
    actual: torch.Tensor, expected: torch.Tensor, limit: float = BF16_REL_L2, *, name: str = "tensor"
) -> None:
    """Raise ``AssertionError`` when the relative L2 error exceeds ``limit``, also naming the worst element."""
    try:
        err = relative_l2(actual, expected)
    except ValueError as exc:
        raise AssertionError(f"{name}: {exc}") from None
    if not err <= limit:  # also catches NaN
        worst = compare(actual, expected, EXACT)
        raise AssertionError(f"{name}: relative L2 error {err:.3g} exceeds {limit:g}; {worst}")


def first_nonfinite(t: torch.Tensor) -> tuple[int, tuple[int, ...]] | None:
    """``(count, index of the first)`` of the NaN/inf elements of ``t``, or ``None`` when all are finite."""
    if not (t.is_floating_point() or t.is_complex()):
        return None
    bad = ~torch.isfinite(t.detach())
    count = int(bad.sum())
    if count == 0:
        return None
    first = tuple(int(i) for i in bad.nonzero()[0]) if t.dim() else ()
    return count, first


def assert_finite(t: torch.Tensor, *, name: str = "tensor") -> None:
    """Raise ``AssertionError`` naming how many elements of ``t`` are NaN or infinite, and where the first is."""
    found = first_nonfinite(t)
    if found is not None:
        count, index = found
        value = float(t.detach()[index]) if t.dim() else float(t.detach())
        raise AssertionError(f"{name}: {count} of {t.numel()} values are not finite (first at {index}: {value})")


def _unravel(flat: int, shape: tuple[int, ...]) -> tuple[int, ...]:
    """The multi-index of position ``flat`` in a row-major tensor of ``shape`` (``()`` for a scalar).

    Plain integer arithmetic: ``torch.unravel_index`` imports ``torch._refs`` on first use (seconds), which landed
    inside whichever test failed first.
    """
    index = []
    for size in reversed(shape):
        flat, i = divmod(flat, size)
        index.append(i)
    return tuple(reversed(index))


@contextlib.contextmanager
def exact_fp32() -> Iterator[None]:
    """Turn TF32 off for cuDNN and cuBLAS inside the block (fp32 tolerances assume fp32 products).

    cuDNN's RNNs and convolutions use TF32 on CUDA by default: a ~1e-3 relative rounding that the CPU never has and
    that would fail ``FP32``/``SCAN`` comparisons of, e.g., a cuDNN LSTM against its own step.
    """
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved
