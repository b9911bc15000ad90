"""xLSTM: residual stacks of mLSTM and sLSTM blocks (entries ``xlstm``, ``mlstm``, ``slstm``).

Beck, Pöppel, Spanring, Auer, Prudnikova, Kopp, Klambauer, Brandstetter, Hochreiter, "xLSTM: Extended Long
Short-Term Memory", NeurIPS 2024, https://arxiv.org/abs/2405.04517. xLSTM revisits the LSTM with exponential gating
and a log-domain stabiliser, in two cells:

* **sLSTM** (§2.2, eqs. 8-17): a scalar memory per unit with recurrent connections, block-diagonal over heads::

      z_t = tanh(z̃_t),  i_t = exp(ĩ_t),  f_t = sigmoid(f̃_t),  o_t = sigmoid(õ_t)      (eqs. 11-14)
      with  (z̃, ĩ, f̃, õ)_t = W x_t + R h_{t-1} + b,  R block-diagonal over heads           (§2.2, "head-wise")
      c_t = f_t c_{t-1} + i_t z_t,   n_t = f_t n_{t-1} + i_t,   h_t = o_t c_t / n_t        (eqs. 8-10)
      m_t = max(log f_t + m_{t-1}, ĩ_t),  i'_t = exp(ĩ_t - m_t),  f'_t = exp(log f_t + m_{t-1} - m_t)  (eqs. 15-17)

  ``c`` and ``n`` are kept scaled by ``exp(-m_t)``, which cancels in ``h_t``, so no exponential exceeds 1. As in the
  official implementation the first step takes ``m_1 = ĩ_1`` (``n = 0`` marks an empty memory, whose ``m`` is
  treated as ``-inf``). The recurrence through ``h_{t-1}`` admits no parallel form (§2.2), so this cell runs a
  loop over time (the input projection ``W x`` is computed for all steps at once).
* **mLSTM** (§2.3, eqs. 19-27): a matrix memory ``C_t = f_t C_{t-1} + i_t k_t v_t^T`` read out by a query, with no
  hidden-to-hidden connections, so it is parallelisable; :func:`edifice.ops.mlstm` computes it chunkwise-parallel
  (the stabiliser as above, state in fp32). The output gate is ``o_t = sigmoid(W_o x_t)`` (eq. 27).

Blocks (§2.4): every block is pre-norm residual, ``x + cell_layer(Norm(x))`` followed by ``x + FFN(Norm(x))``:

* an sLSTM block is the paper's *post up-projection* block (Fig. 9): sLSTM, per-head GroupNorm, then a gated
  feed-forward with GeLU and projection factor 4/3;
* an mLSTM block uses the layout of xLSTM 7B (Beck et al. 2025, "xLSTM 7B: A Recurrent LLM for Fast and Efficient
  Inference", arXiv:2503.13427, §3, Fig. 3), which is what transformers' ``xLSTMModel`` implements: q, k, v, the
  output gate and the scalar input/forget gates are projected from the block input, gate pre-activations are
  soft-capped ``15·tanh(x/15)``, the cell output gets a per-head LayerNorm and the output gate, then an output
  projection; then a SwiGLU feed-forward.

Initialisation of the sLSTM cell, as the defaults of the authors' ``xlstm`` package: ``R = 0``, small-init ``W``,
zero input/cell/output-gate biases and a per-unit power-law forget-gate bias that deepens with the block's depth
(:meth:`SLSTMLayer.reset_parameters`).

Deviations from the 2024 paper: (1) the mLSTM block is xLSTM 7B's post-up-projection block instead of the paper's
pre-up-projection block (Fig. 10: 2x up-projection, causal conv4, learnable skip, block-diagonal q/k/v); (2) the
sLSTM block omits the optional causal conv4 in front of the input and forget gates, and its input projection ``W``
is dense rather than block-diagonal; (3) norms are RMSNorm (xLSTM 7B) rather than LayerNorm; (4) the mLSTM
normaliser adds ``eps`` to ``max(|n^T q|, exp(-m))`` (xLSTM 7B kernels). Padding (``attention_mask``) is exact:
a padded step leaves every cell state untouched (``ĩ = -inf`` and ``f = 1`` for the mLSTM).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from edifice import ops
from edifice.blocks.backbone import SequenceBackbone
from edifice.blocks.ffn import GatedFeedForward
from edifice.blocks.norms import get_norm
from edifice.blocks.transformer import TransformerBlock
from edifice.config import ArchConfig
from edifice.errors import CheckpointError
from edifice.outputs import model_output
from edifice_recurrent.configs.xlstm import MLSTMConfig, XLSTMConfig

__all__ = [
    "XLSTM",
    "MLSTMLayer",
    "MLSTMState",
    "MultiHeadNorm",
    "SLSTMLayer",
    "SLSTMState",
    "from_transformers",
    "map_transformers_state_dict",
    "soft_cap",
    "xlstm_config_from_transformers",
]


def soft_cap(x: Tensor, cap: float | None) -> Tensor:
    """``cap * tanh(x / cap)`` (identity for ``cap=None``): bounds gate pre-activations (xLSTM 7B §3)."""
    return x if cap is None else cap * torch.tanh(x / cap)


class MultiHeadNorm(nn.Module):
    """LayerNorm of each head's features without a bias, with one gain over all heads (the paper's GroupNorm)."""

    def __init__(self, n_heads: int, head_dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.n_heads, self.head_dim, self.eps = n_heads, head_dim, eps
        self.weight = nn.Parameter(torch.ones(n_heads * head_dim))

    def reset_parameters(self) -> None:
        """Unit gain."""
        nn.init.ones_(self.weight)

    def forward(self, x: Tensor) -> Tensor:
        """``x [B, T, H, D]`` -> ``[B, T, H·D]``, normalised per head in fp32."""
        y = F.layer_norm(x.float(), (self.head_dim,), eps=self.eps).flatten(2)
        return (y * self.weight.float()).to(x.dtype)


# -- mLSTM ----------------------------------------------------------------------------------------------------------
@model_output
class MLSTMState:
    """Decoding state of one mLSTM layer (fp32, constant size), updated in place."""

    C: Tensor
    """Matrix memory ``[B, H, K, V]``, scaled by ``exp(-m)``."""
    n: Tensor
    """Normaliser ``[B, H, K]``, scaled by ``exp(-m)``."""
    m: Tensor
    """Stabiliser ``[B, H]``."""


class MLSTMLayer(nn.Module):
    """The mLSTM token mixer ``[B, T, d_model] -> [B, T, d_model]`` of xLSTM 7B (module doc)."""

    def __init__(self, config: XLSTMConfig) -> None:
        super().__init__()
        d, H, bias = config.d_model, config.n_heads, config.bias
        self.n_heads, self.qk_dim, self.v_dim = H, config.qk_dim, config.v_dim
        self.gate_soft_cap, self.chunk_size, self.eps = config.gate_soft_cap, config.chunk_size, config.eps
        self.q = nn.Linear(d, self.qk_dim, bias=bias)
        self.k = nn.Linear(d, self.qk_dim, bias=bias)
        self.v = nn.Linear(d, self.v_dim, bias=bias)
        self.ogate_preact = nn.Linear(d, self.v_dim, bias=bias)
        self.igate_preact = nn.Linear(d, H, bias=True)
        self.fgate_preact = nn.Linear(d, H, bias=True)
        self.multihead_norm = MultiHeadNorm(H, self.v_dim // H, eps=config.norm_eps)
        self.out_proj = nn.Linear(self.v_dim, d, bias=bias)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Linear defaults; forget-gate biases ``linspace(3, 6)`` over heads, as the authors' mLSTM cell, and zero
        input-gate biases, so memories start long."""
        for module in self.children():
            module.reset_parameters()  # type: ignore[operator]
        with torch.no_grad():
            self.fgate_preact.bias.copy_(torch.linspace(3.0, 6.0, self.n_heads))
            nn.init.zeros_(self.igate_preact.bias)

    def init_state(
        self,
        batch_size: int,
        *,
        max_len: int | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> MLSTMState:
        """The empty memory ``(C, n, m) = 0`` in fp32; constant size, so ``max_len`` and ``dtype`` are not needed."""
        device = self.out_proj.weight.device if device is None else device
        H, K, V = self.n_heads, self.qk_dim // self.n_heads, self.v_dim // self.n_heads
        zeros = torch.zeros
        return MLSTMState(
            C=zeros(batch_size, H, K, V, device=device),
            n=zeros(batch_size, H, K, device=device),
            m=zeros(batch_size, H, device=device),
        )

    def forward(
        self,
        x: Tensor,
        *,
        mask: Tensor | None = None,
        positions: Tensor | None = None,
        state: MLSTMState | None = None,
    ) -> Tensor:
        """``x [B, T, d_model]`` -> ``[B, T, d_model]``; ``mask [B, T]`` marks valid steps; ``state`` is updated."""
        B, T, _ = x.shape
        H = self.n_heads
        q, k, v = (proj(x).view(B, T, H, -1).transpose(1, 2) for proj in (self.q, self.k, self.v))  # (B, H, T, .)
        i = soft_cap(self.igate_preact(x), self.gate_soft_cap).transpose(1, 2)  # (B, H, T)
        f = soft_cap(self.fgate_preact(x), self.gate_soft_cap).transpose(1, 2)
        if mask is not None:
            # A padded step writes nothing (i = exp(-inf) = 0) and forgets nothing (f = sigmoid(inf) = 1).
            valid = mask[:, None, :]  # (B, 1, T)
            i = torch.where(valid, i, -math.inf)
            f = torch.where(valid, f, math.inf)
        initial = None if state is None else (state.C, state.n, state.m)
        h, (C, n, m) = ops.mlstm(q, k, v, i, f, initial, chunk_size=self.chunk_size, eps=self.eps)  # (B, H, T, V)
        if state is not None:
            state.C.copy_(C)
            state.n.copy_(n)
            state.m.copy_(m)
        h = self.multihead_norm(h.transpose(1, 2))  # (B, T, H·V)
        return self.out_proj(torch.sigmoid(self.ogate_preact(x)) * h)  # type: ignore[no-any-return]


# -- sLSTM ----------------------------------------------------------------------------------------------------------
@model_output
class SLSTMState:
    """Decoding state of one sLSTM layer (fp32, constant size ``[B, d_model]`` each), updated in place."""

    h: Tensor
    """Hidden state ``h_{t-1}``, fed back through the recurrent weights."""
    c: Tensor
    """Cell state, scaled by ``exp(-m)``."""
    n: Tensor
    """Normaliser state, scaled by ``exp(-m)`` (0 marks an empty memory)."""
    m: Tensor
    """Stabiliser."""


def slstm_forget_bias(head_dim: int, block_index: int, n_blocks: int) -> Tensor:
    """The authors' per-unit power-law forget-gate bias ``5 - 12 (j/(D-1))^(0.3 + 1.3 r)``, ``[head_dim]``."""
    depth = block_index / (n_blocks - 1) if n_blocks > 1 else 0.0
    position = torch.arange(head_dim, dtype=torch.float32) / max(head_dim - 1, 1)
    return 5.0 - 12.0 * position ** (0.3 + 1.3 * depth)


class SLSTMLayer(nn.Module):
    """The sLSTM token mixer ``[B, T, d_model] -> [B, T, d_model]``: eqs. 8-17, heads, per-head GroupNorm."""

    #: Gate order in the projections' outputs.
    GATES: ClassVar[tuple[str, ...]] = ("i", "f", "z", "o")

    def __init__(self, config: XLSTMConfig, *, block_index: int = 0) -> None:
        super().__init__()
        d, H = config.d_model, config.n_heads
        self.n_heads, self.head_dim = H, d // H
        # The forget-gate bias depends on the block's depth in the stack (the authors' "powerlaw_blockdependent").
        self.block_index, self.n_blocks = block_index, config.n_layers
        self.W = nn.Linear(d, 4 * d, bias=True)  # input weights W_{i,f,z,o} and biases b (eqs. 11-14)
        # Recurrent weights R, block-diagonal over heads: R[h] maps head h of h_{t-1} to its 4 gates.
        self.R = nn.Parameter(torch.empty(H, self.head_dim, 4 * self.head_dim))
        self.group_norm = MultiHeadNorm(H, self.head_dim, eps=config.norm_eps)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The authors' sLSTM initialisation (``xlstm`` package, ``blocks/slstm/layer.py`` and ``cell.py`` defaults).

        ``W ~ N(0, 2/(5d))`` (``small_init``, Nguyen & Salazar 2019); ``R = 0`` (``recurrent_weight_init="zeros"``);
        the i, z and o biases 0; the forget-gate bias of unit ``j`` of every head ``5 - 12 (j/(D-1))^(0.3 + 1.3 r)``
        with ``r`` the block's relative depth ``block_index / (n_blocks - 1)`` (``"powerlaw_blockdependent"``), so
        each head spans slow (``σ(5)``) to fast (``σ(-7)``) forgetting, faster in deeper blocks.
        """
        d = self.n_heads * self.head_dim
        nn.init.normal_(self.W.weight, std=math.sqrt(2 / (5 * d)))
        nn.init.zeros_(self.R)
        self.group_norm.reset_parameters()
        with torch.no_grad():
            bias = self.W.bias.view(4, self.n_heads, self.head_dim)  # gates in GATES order: i, f, z, o
            bias.zero_()
            bias[1].copy_(slstm_forget_bias(self.head_dim, self.block_index, self.n_blocks))

    def init_state(
        self,
        batch_size: int,
        *,
        max_len: int | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> SLSTMState:
        """Zero ``h, c, n, m`` in fp32; constant size, so ``max_len`` and ``dtype`` are not needed."""
        device = self.R.device if device is None else device
        d = self.n_heads * self.head_dim
        zeros = [torch.zeros(batch_size, d, device=device) for _ in range(4)]
        return SLSTMState(h=zeros[0], c=zeros[1], n=zeros[2], m=zeros[3])

    @staticmethod
    def _cell(pre: Tensor, R: Tensor, state: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        """One stabilised step (eqs. 8-17): ``W x_t + b`` ``[B, 4, H, D]``, fp32 ``R`` -> new ``(h, c, n, m)``."""
        h, c, n, m = state  # each (B, H, D) fp32
        B, H, D = h.shape
        rec = torch.matmul(h.transpose(0, 1), R)  # (H, B, 4D): R h_{t-1}, head by head
        rec = rec.view(H, B, 4, D).permute(1, 2, 0, 3)  # (B, 4, H, D)
        i_pre, f_pre, z_pre, o_pre = (pre + rec).unbind(1)  # (B, H, D) each
        log_f = F.logsigmoid(f_pre)
        # Eq. 15. An empty memory (n = 0) has m = -inf: then m_1 = ĩ_1 and f' = 0 (not exp(log f - ĩ), which
        # overflows for a very negative ĩ and would multiply the empty c into NaN).
        m = torch.where(n == 0, -math.inf, m)
        m_new = torch.maximum(log_f + m, i_pre)
        i_act, f_act = torch.exp(i_pre - m_new), torch.exp(log_f + m - m_new)  # eqs. 16-17, both <= 1
        c = f_act * c + i_act * torch.tanh(z_pre)  # eq. 8
        n = f_act * n + i_act  # eq. 9
        h = torch.sigmoid(o_pre) * c / n  # eq. 10
        return h, c, n, m_new

    def forward(
        self,
        x: Tensor,
        *,
        mask: Tensor | None = None,
        positions: Tensor | None = None,
        state: SLSTMState | None = None,
    ) -> Tensor:
        """``x [B, T, d_model]`` -> ``[B, T, d_model]``; ``mask [B, T]`` marks valid steps; ``state`` is updated."""
        B, T, d = x.shape
        H, D = self.n_heads, self.head_dim
        pre = self.W(x).float().view(B, T, 4, H, D)  # W x_t + b for every step at once
        if state is None:
            cur = tuple(x.new_zeros(B, H, D, dtype=torch.float32) for _ in range(4))
        else:
            cur = tuple(s.view(B, H, D) for s in (state.h, state.c, state.n, state.m))
        R = self.R.float()
        outs = []
        for t in range(T):  # h_{t-1} feeds the gates (R), so the steps are sequential (§2.2)
            new = self._cell(pre[:, t], R, cur)
            if mask is not None:
                valid = mask[:, t, None, None]  # (B, 1, 1): a padded step keeps the state
                new = tuple(torch.where(valid, a, b) for a, b in zip(new, cur, strict=True))
            cur = new
            outs.append(cur[0])
        if state is not None:
            for dst, src in zip((state.h, state.c, state.n, state.m), cur, strict=True):
                dst.copy_(src.reshape(B, d))
        y: Tensor = self.group_norm(torch.stack(outs, 1))  # (B, T, H, D) -> (B, T, d)
        return y.to(x.dtype)


# -- the stack ------------------------------------------------------------------------------------------------------
class XLSTM(SequenceBackbone):
    """A pre-norm stack of mLSTM blocks (+ SwiGLU FFN) and sLSTM blocks (+ GeLU-gated FFN) (module doc)."""

    config_class: ClassVar[type[ArchConfig]] = XLSTMConfig
    config: XLSTMConfig

    def __init__(self, config: XLSTMConfig) -> None:
        super().__init__(config)
        self.reset_parameters()

    def build_norm(self) -> nn.Module:
        """The final RMSNorm, with the config's ``norm_eps`` like every other norm of the stack."""
        return get_norm("rmsnorm", self.config.d_model, eps=self.config.norm_eps)

    def build_layer(self, index: int) -> nn.Module:
        """An sLSTM block if ``index`` is in ``slstm_at``, else an mLSTM block."""
        cfg = self.config
        mixer: nn.Module
        if index in cfg.slstm_blocks:
            mixer = SLSTMLayer(cfg, block_index=index)
            ffn = GatedFeedForward(cfg.d_model, cfg.slstm_ffn_dim, activation="gelu", bias=cfg.bias)
        else:
            mixer = MLSTMLayer(cfg)
            ffn = GatedFeedForward(cfg.d_model, cfg.mlstm_ffn_dim, activation="silu", bias=cfg.bias)
        return TransformerBlock(
            cfg.d_model, mixer, ffn, norm="rmsnorm", norm_eps=cfg.norm_eps, norm_position="pre", dropout=cfg.dropout
        )


# -- checkpoint conversion ------------------------------------------------------------------------------------------
# transformers xLSTMModel names -> this module's (a TransformerBlock around an MLSTMLayer, same leaf names).
_HF_BLOCK_KEYS = {
    "norm_mlstm": "mixer_norm",
    "mlstm_layer": "mixer",
    "norm_ffn": "ffn_norm",
    "ffn.proj_up_gate": "ffn.gate_proj",
    "ffn.proj_up": "ffn.up_proj",
    "ffn.proj_down": "ffn.down_proj",
}


def _hf_get(config: Any, name: str, default: Any = None) -> Any:
    return config.get(name, default) if isinstance(config, Mapping) else getattr(config, name, default)


def xlstm_config_from_transformers(hf: Any, **overrides: Any) -> XLSTMConfig:
    """The ``mlstm`` config of a transformers ``xLSTMConfig`` (or its ``config.json`` dict); ``overrides`` win."""
    if _hf_get(hf, "weight_mode", "single") != "single":
        raise CheckpointError("xLSTM converter: only weight_mode='single' checkpoints are supported (not 'fused')")
    if _hf_get(hf, "use_bias", False):
        raise CheckpointError("xLSTM converter: use_bias=True adds norm biases this model does not have")
    fields: dict[str, Any] = {
        "d_model": _hf_get(hf, "hidden_size"),
        "n_layers": _hf_get(hf, "num_blocks") or _hf_get(hf, "num_hidden_layers"),
        "n_heads": _hf_get(hf, "num_heads"),
        "vocab_size": _hf_get(hf, "vocab_size"),
        "qk_dim_factor": _hf_get(hf, "qk_dim_factor", 0.5),
        "v_dim_factor": _hf_get(hf, "v_dim_factor", 1.0),
        "ffn_factor": _hf_get(hf, "ffn_proj_factor", 2.667),
        "ffn_multiple_of": _hf_get(hf, "ffn_round_up_to_multiple_of", 64),
        "gate_soft_cap": _hf_get(hf, "gate_soft_cap", 15.0),
        "chunk_size": _hf_get(hf, "chunk_size", 64),
        "norm_eps": _hf_get(hf, "norm_eps", 1e-6),
        "eps": _hf_get(hf, "eps", 1e-6),
        "tie_embeddings": bool(_hf_get(hf, "tie_word_embeddings", False)),
    }
    return MLSTMConfig(**{**fields, **overrides})


def map_transformers_state_dict(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Rename a transformers ``xLSTMModel``/``xLSTMForCausalLM`` state dict to this module's names (copies)."""
    out: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        name = key.removeprefix("backbone.")
        if name.startswith("blocks."):
            _, index, rest = name.split(".", 2)
            module = next((m for m in _HF_BLOCK_KEYS if rest.startswith(m + ".")), None)
            if module is None:
                raise CheckpointError(f"xLSTM converter: unexpected key {key!r}")
            name = f"layers.{index}.{_HF_BLOCK_KEYS[module]}{rest[len(module) :]}"
        elif name.startswith(("embeddings.", "out_norm.", "lm_head.")):
            prefix, leaf = name.split(".", 1)
            name = {"embeddings": "embed_tokens", "out_norm": "norm", "lm_head": "lm_head"}[prefix] + "." + leaf
        else:
            raise CheckpointError(f"xLSTM converter: unexpected key {key!r}")
        out[name] = value.detach().clone()
    return out


def from_transformers(source: Any, **overrides: Any) -> XLSTM:
    """Convert a transformers ``xLSTMModel`` (or a ``(config, state_dict)`` pair) to an ``mlstm`` model.

    ``xLSTMModel`` has no LM head, so the model takes features ``x`` (transformers' ``inputs_embeds``) and returns
    ``last_hidden_state``; the token embedding is dropped.
    """
    if isinstance(source, tuple) and len(source) == 2:
        hf_config, state_dict = source
    elif hasattr(source, "config") and hasattr(source, "state_dict"):
        hf_config, state_dict = source.config, source.state_dict()
    else:
        raise TypeError(f"xLSTM converter: source must be a transformers model or (config, state_dict), got {source!r}")
    weights = map_transformers_state_dict(state_dict)
    if "lm_head.weight" in weights:
        raise CheckpointError("xLSTM converter: xLSTMForCausalLM (soft-capped logits) is not supported; use xLSTMModel")
    weights.pop("embed_tokens.weight", None)
    config = xlstm_config_from_transformers(hf_config, **{"vocab_size": None, "tie_embeddings": False, **overrides})
    with torch.device("meta"):
        model = XLSTM(config)
    try:
        model.load_state_dict(weights, strict=True, assign=True)
    except RuntimeError as exc:
        raise CheckpointError(f"xLSTM converter: the mapped weights do not fit {config.arch}: {exc}") from None
    return model
