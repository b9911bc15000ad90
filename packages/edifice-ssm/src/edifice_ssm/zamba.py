"""Zamba: a Mamba backbone with a single attention + MLP block whose weights are shared by all its applications.

Every layer is a pre-norm residual Mamba block. Once every ``attn_layer_period`` layers (every 6 in the 7B model),
the *globally shared* attention block (GSA, Fig. 2) first reads the concatenation of the residual stream and
the original input embeddings -- "an additional path for the model to remember the inputs" -- and its output, mapped
back by a linear projection owned by that layer, is added to the Mamba block's input. The attention and MLP weights
are the same at every application (stored once); each application keeps its own KV cache.

Paper: Paolo Glorioso, Quentin Anthony, Yury Tokpanov, James Whittington, Jonathan Pilault, Adam Ibrahim and Beren
Millidge, "Zamba: A Compact 7B SSM Hybrid Model", 2024, https://arxiv.org/abs/2405.16712.

Equations (Fig. 2; ``x_0`` the input embeddings, ``x_l`` the residual stream entering layer ``l``)::

    Mamba layer:   x_{l+1} = x_l + Mamba(RMSNorm(x_l))                                     (Gu & Dao eqs. 2a-2b, 4)
    hybrid layer:  g_l = MLP(RMSNorm(Attn(RMSNorm([x_l, x_0]))))        shared Attn, MLP and norms
                   x_{l+1} = x_l + Mamba(RMSNorm(x_l + W_l g_l))        W_l [d, d] per application
    Attn:  causal softmax attention over 2d features, head_dim = 2d / n_heads, scale (head_dim / 2)^-1/2, output d
    MLP:   GeGLU  down(GELU(gate(x)) ⊙ up(x));   no residual connection inside the shared block

The Mamba mixer is the released model's multi-head Mamba-1 (``n_mamba_heads``): the inner channels split into heads
with their own ``x_proj``/``dt_proj``, hence their own B, C and Δ (one head is Mamba exactly); see
:class:`edifice_ssm._hybrid_mamba.ZambaMambaMixer`. There is no positional encoding.

Initialisation: the paper gives none. Mamba mixers use Mamba's; the shared block, the per-layer projections ``W_l``
and the embeddings are N(0, init_std = 0.02), the released model's initializer_range.

Deviations: none in the forward computation (checked against transformers' ``ZambaForCausalLM``); the layer
schedule defaults to one application every ``attn_layer_period`` layers, where the released config starts with a
hybrid layer at index 2 (give it through ``hybrid_layers``; the converter does).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from edifice.blocks.attention import Attention
from edifice.blocks.backbone import SequenceBackbone, SequenceOutput, SequenceState
from edifice.blocks.ffn import GatedFeedForward
from edifice.blocks.kv_cache import DynamicKVCache, KVCache, StaticKVCache
from edifice.blocks.norms import get_norm
from edifice.config import ArchConfig
from edifice.graphs import is_capturing
from edifice.outputs import model_output
from edifice_ssm._hybrid_mamba import ZambaMambaMixer, positions_from_mask, run_layers
from edifice_ssm.configs.zamba import ZambaConfig
from edifice_ssm.mamba import MambaState

__all__ = ["Zamba", "ZambaAttention", "ZambaHybridState", "ZambaLayer", "ZambaMambaMixer", "ZambaSharedBlock"]


@model_output
class ZambaHybridState:
    """Decoding state of a layer that applies the shared block: its Mamba state and its own KV cache."""

    mamba: MambaState
    """The Mamba mixer's conv and SSM state (constant size)."""
    attn: KVCache
    """The shared attention's keys and values at this application (each application caches its own)."""


class ZambaAttention(Attention):
    """The shared attention: reads ``[x_l, x_0]`` (``2 d_model`` wide), writes ``d_model``, scale ``(D / 2)^-1/2``."""

    def __init__(self, d_model: int, n_heads: int, *, head_dim: int, n_kv_heads: int | None = None) -> None:
        super().__init__(
            2 * d_model, n_heads, n_kv_heads=n_kv_heads, head_dim=head_dim, causal=True, scale=(head_dim / 2) ** -0.5
        )
        self.o_proj = nn.Linear(n_heads * head_dim, d_model, bias=False)  # back to the residual width


class ZambaSharedBlock(nn.Module):
    """``MLP(RMSNorm(Attn(RMSNorm([h, x_0]))))``: the globally shared block, without inner residuals (Fig. 2)."""

    def __init__(self, config: ZambaConfig) -> None:
        super().__init__()
        c = config
        self.input_layernorm = get_norm("rmsnorm", 2 * c.d_model, eps=c.norm_eps)
        self.self_attn = ZambaAttention(c.d_model, c.n_heads, head_dim=c.attn_head_dim, n_kv_heads=c.n_kv_heads)
        self.pre_ff_layernorm = get_norm("rmsnorm", c.d_model, eps=c.norm_eps)
        self.feed_forward = GatedFeedForward(c.d_model, c.ffn_dim, activation=c.activation)

    def forward(
        self,
        h: Tensor,
        embeddings: Tensor,
        *,
        mask: Tensor | None = None,
        positions: Tensor | None = None,
        state: KVCache | None = None,
    ) -> Tensor:
        """``h``, ``embeddings [B, T, d_model]`` -> ``g [B, T, d_model]``; ``state`` is this application's KV cache."""
        joint = self.input_layernorm(torch.cat([h, embeddings], dim=-1))  # (B, T, 2d)
        attended = self.self_attn(joint, mask=mask, positions=positions, state=state)  # (B, T, d)
        return self.feed_forward(self.pre_ff_layernorm(attended))  # type: ignore[no-any-return]


class ZambaLayer(nn.Module):
    """A pre-norm residual Mamba block; a hybrid layer first adds ``W_l`` times the shared block's output."""

    def __init__(self, config: ZambaConfig, *, hybrid: bool) -> None:
        super().__init__()
        c = config
        self.input_layernorm = get_norm("rmsnorm", c.d_model, eps=c.norm_eps)
        self.mamba = ZambaMambaMixer(
            c.d_model,
            n_mamba_heads=c.n_mamba_heads,
            d_state=c.d_state,
            expand=c.expand,
            d_conv=c.d_conv,
            dt_rank=c.time_step_rank,
            conv_bias=c.conv_bias,
            bias=c.bias,
            dt_min=c.dt_min,
            dt_max=c.dt_max,
            dt_init_floor=c.dt_init_floor,
            dt_scale=c.dt_scale,
            dt_init=c.dt_init,
            scan=c.scan,
        )
        self.linear = nn.Linear(c.d_model, c.d_model, bias=False) if hybrid else None
        self.dropout = nn.Dropout(c.dropout)
        self.kv_heads = c.n_kv_heads if c.n_kv_heads is not None else c.n_heads
        self.kv_head_dim = c.attn_head_dim

    @property
    def hybrid(self) -> bool:
        """Whether this layer applies the shared block."""
        return self.linear is not None

    def forward(
        self,
        h: Tensor,
        *,
        mask: Tensor | None = None,
        positions: Tensor | None = None,
        state: MambaState | ZambaHybridState | None = None,
        embeddings: Tensor | None = None,
        shared: ZambaSharedBlock | None = None,
    ) -> Tensor:
        """``h [B, T, d_model]`` -> same; a hybrid layer needs the input ``embeddings`` and the ``shared`` block."""
        mixer_input, mamba_state = h, state
        if self.linear is not None:
            if embeddings is None or shared is None:
                raise ValueError("ZambaLayer: a hybrid layer needs embeddings [B, T, d_model] and the shared block")
            attn_state = None
            if isinstance(state, ZambaHybridState):
                mamba_state, attn_state = state.mamba, state.attn
            g = shared(h, embeddings, mask=mask, positions=positions, state=attn_state)  # (B, T, d)
            mixer_input = h + self.linear(g)
        assert mamba_state is None or isinstance(mamba_state, MambaState)
        out: Tensor = self.mamba(self.input_layernorm(mixer_input), mask=mask, state=mamba_state)
        y: Tensor = h + self.dropout(out)
        return y

    def init_state(
        self,
        batch_size: int,
        *,
        max_len: int | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> MambaState | ZambaHybridState:
        """The Mamba state, plus a KV cache (static with ``max_len``) for a hybrid layer."""
        mamba = self.mamba.init_state(batch_size, max_len=max_len, device=device, dtype=dtype)
        if self.linear is None:
            return mamba
        weight = self.linear.weight
        device = weight.device if device is None else device
        dtype = weight.dtype if dtype is None else dtype
        attn: KVCache
        if max_len is None:
            attn = DynamicKVCache.empty(batch_size, self.kv_heads, self.kv_head_dim, device=device, dtype=dtype)
        else:
            attn = StaticKVCache.empty(batch_size, self.kv_heads, self.kv_head_dim, max_len, device=device, dtype=dtype)
        return ZambaHybridState(mamba=mamba, attn=attn)


class Zamba(SequenceBackbone):
    """Zamba: ``n_layers`` Mamba blocks and one shared attention + MLP block applied at the hybrid layers."""

    config_class: ClassVar[type[ArchConfig]] = ZambaConfig
    config: ZambaConfig

    def __init__(self, config: ZambaConfig) -> None:
        super().__init__(config)
        hybrid = any(config.is_hybrid(i) for i in range(config.n_layers))
        self.shared = ZambaSharedBlock(config) if hybrid else None
        self.reset_parameters()

    def build_layer(self, index: int) -> nn.Module:
        """Layer ``index``: a Mamba block, hybrid (with its own ``W_l``) where the schedule says so."""
        return ZambaLayer(self.config, hybrid=self.config.is_hybrid(index))

    def build_norm(self) -> nn.Module:
        """The final RMSNorm."""
        return get_norm("rmsnorm", self.config.d_model, eps=self.config.norm_eps)

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Mamba's init in the mixers; N(0, init_std) for the shared block, the ``W_l``, embeddings and head."""
        std = self.config.init_std
        shared = getattr(self, "shared", None)  # absent while the base constructor builds the layers
        normal: list[nn.Module] = []
        for layer in self.layers:
            assert isinstance(layer, ZambaLayer)
            layer.input_layernorm.reset_parameters()  # type: ignore[operator]
            layer.mamba.reset_parameters()
            if layer.linear is not None:
                normal.append(layer.linear)
        if shared is not None:
            shared.input_layernorm.reset_parameters()
            shared.pre_ff_layernorm.reset_parameters()
            normal.append(shared)
        for module in normal:
            for sub in module.modules():
                if isinstance(sub, nn.Linear):
                    nn.init.normal_(sub.weight, std=std)
        self.norm.reset_parameters()  # type: ignore[operator]
        if self.embed_tokens is not None:
            nn.init.normal_(self.embed_tokens.weight, std=std)
        if isinstance(self.input_proj, nn.Linear):
            self.input_proj.reset_parameters()
        if self.lm_head is not None and not self.config.tie_embeddings:
            nn.init.normal_(self.lm_head.weight, std=std)

    def forward(
        self, x: Tensor | None = None, input_ids: Tensor | None = None, attention_mask: Tensor | None = None
    ) -> Tensor | SequenceOutput:
        """Run on ``x [B, T, d_in]`` or ``input_ids [B, T]``; ``attention_mask [B, T]`` marks the valid tokens."""
        self.check_inputs(x=x, input_ids=input_ids, attention_mask=attention_mask)
        inputs = input_ids if self.embed_tokens is not None else x
        assert inputs is not None
        positions = None if attention_mask is None else positions_from_mask(attention_mask)  # (B, T)
        h = self.embed_dropout(self.embed_positions(self.embed_inputs(inputs), positions))  # x_0
        h, _ = run_layers(self, h, mask=attention_mask, positions=positions, embeddings=h, shared=self.shared)
        return self._output(self.pool(self.norm(h), attention_mask), None)

    def step(
        self, x: Tensor, state: SequenceState, *, attention_mask: Tensor | None = None
    ) -> tuple[Tensor | SequenceOutput, SequenceState]:
        """Advance by ``t >= 1`` positions of the primary input (see :meth:`SequenceBackbone.step`)."""
        if not is_capturing():
            self.check_inputs(**{self.primary_input: x, "attention_mask": attention_mask})
        if attention_mask is None:
            positions = state.position[:, None] + torch.arange(x.shape[1], device=state.position.device)  # (B, t)
            state.position.add_(x.shape[1])
        else:
            positions = state.position[:, None] + positions_from_mask(attention_mask)  # (B, t)
            state.position.add_(attention_mask.sum(dim=-1))
        h = self.embed_dropout(self.embed_positions(self.embed_inputs(x), positions))
        kwargs: dict[str, Any] = {"embeddings": h, "shared": self.shared}
        h, _ = run_layers(self, h, mask=attention_mask, positions=positions, states=state.layers, **kwargs)
        return self._output(self.norm(h), None), state
