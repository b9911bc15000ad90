"""edifice-kernels' Triton kernels against the PyTorch references they override (issue 12's benchmark).

    python bench/kernels.py --out DIR [--dtype float32 bfloat16] [--only selective_scan ...]

Every case runs each implementation in the same process on the same inputs, forward alone and forward + backward,
timed by ``bench/harness.py`` (``triton.testing.do_bench`` medians); the relative L2 error of each row's output
against the reference is recorded beside its time. Rows:

* ``selective_scan`` at Mamba-1's B = 8, T = 2048, d_model 1024 (d_inner 2048, N = 16): the kernel, our reference,
  and the ``mambapy`` parallel scan as transformers' ``use_mambapy`` path runs it (when ``mambapy`` is installed);
  plus the achieved memory throughput of the kernel (bytes of its inputs and outputs / time; about 3.0 TB/s is an
  H100's measured copy bandwidth);
* ``linear_recurrence`` and ``log_scan`` at minGRU's training sizes (B = 64, T = 512 and 4096, d = 256), and their
  T = 1 decode step at B = 1 and 32 with an fp32 state, graphed (``graph_ms``) against the state-traffic roofline;
* ``causal_conv1d`` at Mamba's (8, 2048, 2048), K = 4, and its decode step (T = 1, B = 32) graphed;
* ``rms_norm`` at (8 x 2048) rows of 1024 and 4096 features.

Writes ``kernels_<dtype>.json``/``.md``/``.png`` under ``--out``. Without CUDA it says so and exits at once.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))

from harness import Results, gpu_ms, graph_ms

#: An H100's measured device-to-device copy bandwidth (bytes/s), the roofline the issue measures against.
HBM_BYTES_PER_S = 3.0e12

Inputs = dict[str, Any]


def _rel_err(got: Any, want: Any) -> float:
    got = got[0] if isinstance(got, tuple) else got
    want = want[0] if isinstance(want, tuple) else want
    return float((got.float() - want.float()).norm() / want.float().norm().clamp_min(1e-30))


def _bytes(inputs: Inputs, out: Any) -> int:
    tensors = [t for t in inputs.values() if isinstance(t, torch.Tensor)]
    tensors += list(out) if isinstance(out, tuple) else [out]
    return sum(t.numel() * t.element_size() for t in tensors)


def _leaves(inputs: Inputs) -> Inputs:
    return {
        k: v.detach().requires_grad_() if isinstance(v, torch.Tensor) and v.is_floating_point() else v
        for k, v in inputs.items()
    }


def run_case(
    results: Results, case: str, shape: str, inputs: Inputs, impls: dict[str, Callable[..., Any]], reference: str
) -> None:
    """Time every implementation forward and forward + backward; the first of ``impls`` is the kernel."""
    with torch.no_grad():
        want = impls[reference](**inputs)
    for name, fn in impls.items():
        try:
            with torch.no_grad():
                got = fn(**inputs)
            err = _rel_err(got, want)

            def forward(fn: Callable[..., Any] = fn) -> None:
                with torch.no_grad():
                    fn(**inputs)

            ms = gpu_ms(forward)
            extra: dict[str, float | str] = {"rel_err": f"{err:.1e}"}
            if name == next(iter(impls)):
                extra["TB/s"] = round(_bytes(inputs, got) / (ms * 1e-3) / 1e12, 3)
            results.add(f"{case} forward", name, shape, ms, **extra)
            leaves = _leaves(inputs)
            out = fn(**leaves)
            out = out[0] if isinstance(out, tuple) else out
            grad = torch.randn_like(out)
            params = [v for v in leaves.values() if isinstance(v, torch.Tensor) and v.requires_grad]

            def train(fn: Callable[..., Any] = fn, leaves: Inputs = leaves, params: list[Any] = params) -> None:
                y = fn(**leaves)
                y = y[0] if isinstance(y, tuple) else y
                torch.autograd.grad(y, params, grad)  # noqa: B023 - timed before the next loop rebinds grad

            results.add(f"{case} fwd+bwd", name, shape, gpu_ms(train), rel_err=f"{err:.1e}")
        except torch.OutOfMemoryError:
            results.add(f"{case} forward", name, shape, float("nan"), rel_err="out of memory")
        torch.cuda.empty_cache()
    kernel = next(iter(impls))
    for mode in ("forward", "fwd+bwd"):
        for other in impls:
            if other != kernel:
                try:
                    ratio = results.ratio(f"{case} {mode}", shape, other, kernel)
                    print(f"  {case} {mode}: the kernel is {ratio:.1f}x faster than {other}")
                except KeyError:
                    pass


def _randn(*shape: int, dtype: torch.dtype, scale: float = 1.0) -> torch.Tensor:
    return torch.randn(*shape, device="cuda", dtype=dtype) * scale


def _mambapy_scan() -> Callable[..., Any] | None:
    """The selective scan as transformers' ``use_mambapy`` path computes it (fp32 scan by ``mambapy.pscan``)."""
    try:
        from mambapy.pscan import pscan
    except ImportError:
        return None

    def run(u: Any, delta: Any, A: Any, B: Any, C: Any, D: Any, z: Any, delta_bias: Any) -> torch.Tensor:
        dt = F.softplus(delta.float() + delta_bias.float())  # (B, T, D)
        dA = torch.exp(dt.unsqueeze(-1) * A)  # (B, T, D, N)
        dBu = dt.unsqueeze(-1) * B.float().unsqueeze(2) * u.float().unsqueeze(-1)
        hs = pscan(dA, dBu)
        y = (hs @ C.float().unsqueeze(-1)).squeeze(-1) + u.float() * D
        out: torch.Tensor = (y * F.silu(z.float())).to(u.dtype)
        return out

    return run


def bench_selective_scan(results: Results, dtype: torch.dtype) -> None:
    from edifice.ops.selective_scan import selective_scan_reference
    from edifice_kernels.selective_scan import selective_scan

    B, T, D, N = 8, 2048, 2048, 16
    inputs = {
        "u": _randn(B, T, D, dtype=dtype),
        "delta": _randn(B, T, D, dtype=dtype, scale=0.5),
        "A": -torch.rand(D, N, device="cuda").mul(4).add(0.5),
        "B": _randn(B, T, N, dtype=dtype),
        "C": _randn(B, T, N, dtype=dtype),
        "D": torch.randn(D, device="cuda"),
        "z": _randn(B, T, D, dtype=dtype),
        "delta_bias": torch.randn(D, device="cuda") * 0.3,
    }
    impls: dict[str, Callable[..., Any]] = {
        "triton kernel": selective_scan,
        "edifice reference": selective_scan_reference,
    }
    mambapy = _mambapy_scan()
    if mambapy is not None:
        impls["mambapy pscan (transformers use_mambapy)"] = mambapy
    else:
        print("  mambapy is not installed: its row is skipped")
    run_case(results, "selective_scan", f"B={B} T={T} D={D} N={N}", inputs, impls, "edifice reference")


def bench_scans(results: Results, dtype: torch.dtype) -> None:
    from edifice.ops.log_scan import log_scan_reference
    from edifice.ops.recurrence import linear_recurrence_reference
    from edifice_kernels.linear_scan import linear_recurrence, log_scan

    d = 256
    for T in (512, 4096):
        B = 64
        a = torch.rand(B, T, d, device="cuda").mul(0.9).add(0.05)
        lin = {"a": a.to(dtype), "b": _randn(B, T, d, dtype=dtype), "initial": _randn(B, d, dtype=dtype)}
        run_case(results, "linear_recurrence", f"B={B} T={T} d={d}", lin,
                 {"triton kernel": linear_recurrence, "edifice reference": linear_recurrence_reference},
                 "edifice reference")  # fmt: skip
        logs = {
            "log_a": a.log().to(dtype),
            "log_b": _randn(B, T, d, dtype=dtype),
            "log_initial": _randn(B, d, dtype=dtype),
        }
        run_case(results, "log_scan", f"B={B} T={T} d={d}", logs,
                 {"triton kernel": log_scan, "edifice reference": log_scan_reference}, "edifice reference")  # fmt: skip
    for B in (1, 32):
        # The decode step: one fp32 state updated in place, T = 1, graphed.
        for name, kernel, reference, log in (
            ("linear_recurrence", linear_recurrence, linear_recurrence_reference, False),
            ("log_scan", log_scan, log_scan_reference, True),
        ):
            a = torch.rand(B, 1, d, device="cuda").mul(0.9).add(0.05)
            a = (a.log() if log else a).to(dtype)
            x = _randn(B, 1, d, dtype=dtype)
            h = torch.randn(B, d, device="cuda")
            traffic = a.numel() * a.element_size() + x.numel() * x.element_size() + 2 * h.numel() * 4
            for impl, fn in (("triton kernel", kernel), ("edifice reference", reference)):

                def step(fn: Callable[..., Any] = fn, a: Any = a, x: Any = x, h: Any = h) -> None:
                    with torch.no_grad():
                        h.copy_(fn(a, x, h)[:, 0])

                ms = graph_ms(step)
                roofline = traffic / HBM_BYTES_PER_S * 1e3
                results.add(f"{name} decode step (graphed)", impl, f"B={B} d={d}", ms,
                            roofline_ms=round(roofline, 5), roofline_frac=round(roofline / ms, 4))  # fmt: skip


def bench_conv(results: Results, dtype: torch.dtype) -> None:
    from edifice.ops.conv import causal_conv1d_reference
    from edifice_kernels.causal_conv1d import causal_conv1d

    B, T, C, K = 8, 2048, 2048, 4
    inputs = {"x": _randn(B, T, C, dtype=dtype), "weight": _randn(C, K, dtype=dtype), "bias": _randn(C, dtype=dtype),
              "initial_state": _randn(B, C, K - 1, dtype=dtype)}  # fmt: skip
    impls = {"triton kernel": causal_conv1d, "edifice reference": causal_conv1d_reference}
    run_case(results, "causal_conv1d", f"B={B} T={T} C={C} K={K}", inputs, impls, "edifice reference")
    Bd = 32
    x, s = _randn(Bd, 1, C, dtype=dtype), _randn(Bd, C, K - 1, dtype=dtype)
    w, b = inputs["weight"], inputs["bias"]
    for impl, fn in impls.items():

        def step(fn: Callable[..., Any] = fn) -> None:
            with torch.no_grad():
                fn(x, w, b, s)

        results.add("causal_conv1d decode step (graphed)", impl, f"B={Bd} C={C} K={K}", graph_ms(step))


def bench_rms_norm(results: Results, dtype: torch.dtype) -> None:
    from edifice.ops.norm import rms_norm_reference
    from edifice_kernels.rms_norm import rms_norm

    for D in (1024, 4096):
        inputs = {"x": _randn(8 * 2048, D, dtype=dtype), "weight": _randn(D, dtype=dtype)}
        impls = {"triton kernel": rms_norm, "edifice reference": rms_norm_reference}
        run_case(results, "rms_norm", f"M={8 * 2048} D={D}", inputs, impls, "edifice reference")


CASES = {"selective_scan": bench_selective_scan, "scans": bench_scans, "causal_conv1d": bench_conv,
         "rms_norm": bench_rms_norm}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="bench-results", help="folder for the .json/.md/.png results")
    parser.add_argument("--dtype", nargs="+", default=["float32", "bfloat16"], choices=("float32", "bfloat16"))
    parser.add_argument("--only", nargs="+", choices=sorted(CASES), help="run only these cases")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("bench/kernels.py: no CUDA device here; the Triton kernels only run on a GPU. Nothing measured.")
        return
    for label in args.dtype:
        dtype = getattr(torch, label)
        results = Results(f"kernels_{label}", f"edifice-kernels against the PyTorch references ({label})")
        for case in args.only or list(CASES):
            CASES[case](results, dtype)
        for path in results.write(args.out):
            print(f"wrote {path}")


if __name__ == "__main__":
    main()
