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
