"""GPU checks (``-m gpu``): core's torch_sdpa override against the reference on CUDA, and every reference on CUDA."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from edifice import ops
from edifice.ops.attention import sdpa_reference

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def _leaves(*shapes: tuple[int, ...], dtype: torch.dtype, seed: int) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=gen).to("cuda", dtype).requires_grad_() for s in shapes]


def _run(fn: Any, leaves: list[torch.Tensor], **kwargs: Any) -> tuple[torch.Tensor, list[torch.Tensor]]:
    copies = [t.detach().clone().requires_grad_() for t in leaves]
    out = fn(*copies, **kwargs)
    gen = torch.Generator().manual_seed(1)
    out.backward(torch.randn(out.shape, generator=gen).to(out))
    return out.detach().float(), [c.grad.float() for c in copies if c.grad is not None]


def _rel(x: torch.Tensor, y: torch.Tensor) -> float:
    return float((x - y).norm() / y.norm().clamp_min(1e-12))


def _assert_bf16_close(got: torch.Tensor, ref: torch.Tensor) -> None:
    """Relative L2 within 2e-2, with an RMS floor of 1e-3 for references that are exactly zero (T=1 gradients)."""
    assert (got - ref).norm() <= 2e-2 * ref.norm() + 1e-3 * ref.numel() ** 0.5


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize(
    ("Hq", "Hk", "Tq", "Tk", "D", "Dv", "causal"),
    [
        (4, 4, 1, 1, 64, 64, True),
        (4, 2, 63, 63, 60, 60, True),
        (4, 1, 130, 130, 64, 64, True),
        (4, 2, 1, 130, 64, 64, True),
        (2, 2, 63, 130, 60, 32, False),
    ],
)
def test_torch_sdpa_matches_reference(
    Hq: int, Hk: int, Tq: int, Tk: int, D: int, Dv: int, causal: bool, dtype: torch.dtype
) -> None:
    q, k, v = _leaves((2, Hq, Tq, D), (2, Hk, Tk, D), (2, Hk, Tk, Dv), dtype=dtype, seed=0)
    assert ops.selected("sdpa", q, k, v, causal=causal) == "torch_sdpa"
    out, grads = _run(ops.sdpa, [q, k, v], causal=causal)
    want, want_grads = _run(sdpa_reference, [q, k, v], causal=causal)
    for got, ref in zip([out, *grads], [want, *want_grads], strict=True):
        assert torch.isfinite(got).all()
        if dtype == torch.float32:
            torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
        else:
            _assert_bf16_close(got, ref)


def test_references_run_on_cuda_like_on_cpu() -> None:
    gen = torch.Generator().manual_seed(2)
    x, a = torch.randn(2, 63, 8, generator=gen), torch.rand(2, 63, 8, generator=gen)
    w = torch.randn(8, 4, generator=gen)
    q = torch.randn(2, 4, 63, 60, generator=gen)
    mask = torch.rand(2, 1, 1, 63, generator=gen) > 0.5
    cases: list[tuple[Any, tuple[Any, ...], dict[str, Any]]] = [
        (ops.linear_recurrence, (a, x, x[:, 0]), {}),
        (ops.causal_conv1d, (x, w), {}),
        (ops.rms_norm, (x, x[0, 0]), {}),
        (ops.sdpa, (q, q, q), {"causal": True, "window": 7, "softcap": 5.0, "attn_mask": mask}),
    ]
    for op, args, kwargs in cases:
        cpu = op(*args, **kwargs)
        cuda = op(*[t.cuda() for t in args], **{k: v.cuda() if torch.is_tensor(v) else v for k, v in kwargs.items()})
        torch.testing.assert_close(cuda.cpu(), cpu, atol=1e-4, rtol=1e-4, msg=lambda m, op=op: f"{op.name}: {m}")


def test_compile_on_cuda() -> None:
    q = torch.randn(2, 4, 63, 64, device="cuda", dtype=torch.bfloat16)

    def attend(q: torch.Tensor) -> torch.Tensor:
        return ops.sdpa(q, q, q, causal=True) + ops.sdpa(q, q, q, causal=True, softcap=5.0)

    compiled = torch.compile(attend, fullgraph=True, backend="eager")
    assert _rel(compiled(q), attend(q)) <= 1e-3
