"""The op overrides edifice-kernels provides, as :class:`edifice.spec.OpOverride` records (torch- and Triton-free).

Each names its kernel, shape predicate and probe as import strings: nothing is imported until a call on a CUDA
tensor could use it (DESIGN §6). A probe compiles the kernel's forward and backward on a tiny call and compares
them with the reference on the running card, so a kernel that fails to compile, or compiles wrongly, falls back to
the reference with one ``OpWarning``.
"""

from __future__ import annotations

from edifice.spec import OpOverride

__all__ = ["OVERRIDES", "PRIORITY"]

#: Above core's own overrides (``torch_sdpa`` is -100) and the default 0 of other plugins' generic ones.
PRIORITY = 10


def _kernel(op: str, module: str, impl: str, predicate: str = "supports", probe: str = "probe") -> OpOverride:
    path = f"edifice_kernels.{module}"
    return OpOverride(
        op=op,
        name=f"triton_{op}",
        impl=f"{path}:{impl}",
        device="cuda",
        dtypes=("float32", "bfloat16", "float16"),
        predicate=f"{path}:{predicate}",
        probe=f"{path}:{probe}",
        priority=PRIORITY,
    )


#: Every override, in no particular order (dispatch ranks them by priority).
OVERRIDES: tuple[OpOverride, ...] = (
    _kernel("rms_norm", "rms_norm", "rms_norm"),
    _kernel("gated_rms_norm", "rms_norm", "gated_rms_norm", "supports_gated", "probe_gated"),
    _kernel("causal_conv1d", "causal_conv1d", "causal_conv1d"),
    _kernel("linear_recurrence", "linear_scan", "linear_recurrence"),
    _kernel("log_scan", "linear_scan", "log_scan", "supports_log", "probe_log"),
    _kernel("selective_scan", "selective_scan", "selective_scan"),
)
