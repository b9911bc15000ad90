"""Hot mechanisms as named ops: a vectorised pure-PyTorch reference, a naive loop oracle, and kernel overrides.

Call an op like a function (``edifice.ops.sdpa(q, k, v, causal=True)``); it picks its implementation at call time:

* a :func:`swap` in force (``edifice.testing.mutate_op`` is built on it) wins over everything;
* ``use("reference")`` (or ``EDIFICE_OPS=reference`` at import) forces the reference;
* otherwise the best :class:`~edifice.spec.OpOverride` that fits the call — registered by a plugin's
  ``register_ops`` hook or by core, matched on the first tensor's device type (``"*"`` = any) and dtype, its
  predicate and its probe, highest ``priority`` first — else the reference.

Core registers one override itself: ``torch_sdpa`` (priority -100) runs :func:`sdpa` through
``torch.nn.functional.scaled_dot_product_attention`` when no window, mask, positions or soft-capping is asked.

Introspection: :func:`names`, :func:`implementations`, :func:`selected`, :func:`mode`. Every op carries
``.reference`` and ``.naive`` (the test oracle). Dispatch traces under ``torch.compile(fullgraph=True)``.
"""

from __future__ import annotations

from edifice.ops._registry import (
    Implementation,
    Op,
    OpWarning,
    get_op,
    implementations,
    mode,
    names,
    selected,
    swap,
    use,
)
from edifice.ops.attention import sdpa
from edifice.ops.attention_variants import variant_attention
from edifice.ops.block_sparse_attention import block_sparse_attention
from edifice.ops.conv import causal_conv1d, causal_conv1d_state
from edifice.ops.damped_ema import damped_ema
from edifice.ops.delta_rule import delta_rule, gated_delta_rule, generalized_delta_rule
from edifice.ops.linear_attention import gated_linear_attention, linear_attention
from edifice.ops.log_linear_attention import log_linear_attention
from edifice.ops.log_scan import log_scan
from edifice.ops.long_conv import long_conv
from edifice.ops.memory_gd import memory_gd
from edifice.ops.mimo_ssd import mimo_ssd
from edifice.ops.mlstm import mlstm
from edifice.ops.multi_token_attention import multi_token_attention
from edifice.ops.norm import gated_rms_norm, rms_norm
from edifice.ops.nystrom_attention import nystrom_attention
from edifice.ops.recurrence import linear_recurrence
from edifice.ops.selective_scan import selective_scan
from edifice.ops.ssd import ssd

__all__ = [
    "Implementation",
    "Op",
    "OpWarning",
    "block_sparse_attention",
    "causal_conv1d",
    "causal_conv1d_state",
    "damped_ema",
    "delta_rule",
    "gated_delta_rule",
    "gated_linear_attention",
    "gated_rms_norm",
    "generalized_delta_rule",
    "get_op",
    "implementations",
    "linear_attention",
    "linear_recurrence",
    "log_linear_attention",
    "log_scan",
    "long_conv",
    "memory_gd",
    "mimo_ssd",
    "mlstm",
    "mode",
    "multi_token_attention",
    "names",
    "nystrom_attention",
    "rms_norm",
    "sdpa",
    "selected",
    "selective_scan",
    "ssd",
    "swap",
    "use",
    "variant_attention",
]
