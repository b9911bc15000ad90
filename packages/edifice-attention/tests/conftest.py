"""Shared helpers: tiny random transformers reference models (fp32, eager attention, eval mode)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch

from edifice.testing import redraw_parameters

transformers = pytest.importorskip("transformers")
# transformers imports model classes lazily (seconds each); resolve them once at collection, not in a timed test.
LlamaConfig, LlamaForCausalLM = transformers.LlamaConfig, transformers.LlamaForCausalLM
MistralConfig, MistralForCausalLM = transformers.MistralConfig, transformers.MistralForCausalLM
MixtralConfig, MixtralForCausalLM = transformers.MixtralConfig, transformers.MixtralForCausalLM

VOCAB = 40


def _tiny(config_cls: Any, model_cls: Any, seed: int, **overrides: Any) -> Any:
    fields = {
        "vocab_size": VOCAB,
        "hidden_size": 32,
        "intermediate_size": 48,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 16,
        **overrides,
    }
    config = config_cls(**fields)
    config._attn_implementation = "eager"
    torch.manual_seed(seed)
    model = model_cls(config).eval()
    # transformers initialises norm gains to one, biases to zero and weights to N(0, 0.02): noise on every parameter
    # makes each of them (and the positions' effect on the logits) observable.
    return redraw_parameters(model, seed=seed)


@pytest.fixture
def make_llama() -> Callable[..., Any]:
    """Build a tiny random ``LlamaForCausalLM`` (overrides are LlamaConfig fields)."""
    return lambda seed=0, **kw: _tiny(LlamaConfig, LlamaForCausalLM, seed, **kw)


@pytest.fixture
def make_mistral() -> Callable[..., Any]:
    """Build a tiny random ``MistralForCausalLM`` (sliding-window attention)."""
    return lambda seed=0, **kw: _tiny(MistralConfig, MistralForCausalLM, seed, **kw)


@pytest.fixture
def make_mixtral() -> Callable[..., Any]:
    """Build a tiny random ``MixtralForCausalLM`` with 4 experts, top-2."""
    defaults = {"num_local_experts": 4, "num_experts_per_tok": 2, "intermediate_size": 24}
    return lambda seed=0, **kw: _tiny(MixtralConfig, MixtralForCausalLM, seed, **{**defaults, **kw})


@pytest.fixture
def token_ids() -> Callable[..., torch.Tensor]:
    """Random token ids ``[batch, length]`` below the tiny vocabulary."""
    return lambda batch=2, length=12, seed=0: torch.randint(
        0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed)
    )


# -- helpers of the softmax-attention variants' tests (diff_transformer, gated_attention, ssmax, fox, ...) ---------
def _rope64(x: torch.Tensor, positions: torch.Tensor, base: float = 10000.0, rotary_dim: int | None = None) -> Any:
    """RoFormer eq. 34 in the rotate-half layout, in fp64: ``x [B, H, T, D]`` at ``positions [T]``."""
    R = x.shape[-1] if rotary_dim is None else rotary_dim
    inv = base ** (-torch.arange(0, R, 2, dtype=torch.float64) / R)
    angles = positions.double()[:, None] * inv[None, :]  # (T, R/2)
    cos, sin = torch.cat([angles.cos()] * 2, -1), torch.cat([angles.sin()] * 2, -1)
    rot, rest = x[..., :R], x[..., R:]
    half = torch.cat([-rot[..., R // 2 :], rot[..., : R // 2]], -1)
    return torch.cat([rot * cos + half * sin, rest], -1)


def _causal_scores(q: torch.Tensor, k: torch.Tensor, scale: float) -> torch.Tensor:
    """``q k^T * scale`` with ``-inf`` above the diagonal (queries are the last ``Tq`` of ``Tk`` positions)."""
    Tq, Tk = q.shape[-2], k.shape[-2]
    s = (q @ k.transpose(-1, -2)) * scale
    return s.masked_fill(torch.ones(Tq, Tk, dtype=torch.bool).triu(Tk - Tq + 1), float("-inf"))


def _decode_matches(model: Any, inputs: torch.Tensor, *, prefill: int = 3, atol: float = 1e-4) -> float:
    """Prefill + single steps through a static cache equal ``forward`` at every position; returns the max error."""
    with torch.no_grad():
        want = model(**{model.primary_input: inputs})
        state = model.init_state(inputs.shape[0], max_len=inputs.shape[1] + 2)
        outs = [model.step(inputs[:, :prefill], state)[0]]
        outs += [model.step(inputs[:, t : t + 1], state)[0] for t in range(prefill, inputs.shape[1])]
    got = torch.cat(outs, 1)
    torch.testing.assert_close(got, want, atol=atol, rtol=atol)
    return float((got - want).abs().max())


@pytest.fixture
def variant_helpers() -> Any:
    """fp64 RoPE (``rope``), causal scores (``causal_scores``) and the step-vs-forward check (``decode_matches``)."""
    from types import SimpleNamespace

    return SimpleNamespace(rope=_rope64, causal_scores=_causal_scores, decode_matches=_decode_matches)
