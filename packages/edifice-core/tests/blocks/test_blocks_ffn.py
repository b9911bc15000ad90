"""Feed-forward blocks against Vaswani eq. 2 and Shazeer's GLU equations; Llama MLP weights load one to one."""

from __future__ import annotations

import math

import pytest
import torch

from edifice.blocks.ffn import FeedForward, GatedFeedForward, ffn_kinds, get_ffn


def _gelu(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * x * (1 + torch.erf(x / math.sqrt(2)))


def _swish(x: torch.Tensor) -> torch.Tensor:
    return x / (1 + torch.exp(-x))


def test_mlp_matches_eq2() -> None:
    torch.manual_seed(0)
    ffn = FeedForward(6, 10)
    x = torch.randn(2, 3, 6)
    w1, b1 = ffn.up_proj.weight.detach(), ffn.up_proj.bias.detach()
    w2, b2 = ffn.down_proj.weight.detach(), ffn.down_proj.bias.detach()
    torch.testing.assert_close(ffn(x), _gelu(x @ w1.T + b1) @ w2.T + b2)


@pytest.mark.parametrize(
    ("kind", "act"),
    [("swiglu", _swish), ("geglu", _gelu), ("reglu", lambda z: z.clamp(min=0))],
)
def test_glu_variants_match_shazeer(kind: str, act: object) -> None:
    torch.manual_seed(1)
    ffn = get_ffn(kind, 6, 8)
    assert isinstance(ffn, GatedFeedForward)
    assert sorted(n for n, _ in ffn.named_parameters()) == ["down_proj.weight", "gate_proj.weight", "up_proj.weight"]
    x = torch.randn(5, 6)
    W, V, W2 = ffn.gate_proj.weight.detach(), ffn.up_proj.weight.detach(), ffn.down_proj.weight.detach()
    # FFN_GLU(x) = (act(xW) ⊙ xV) W2  (Shazeer 2020, eqs. 5-6)
    expected = (act(x @ W.T) * (x @ V.T)) @ W2.T  # type: ignore[operator]
    torch.testing.assert_close(ffn(x), expected)


def test_llama_mlp_weights_map_one_to_one() -> None:
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaMLP

    torch.manual_seed(2)
    reference = LlamaMLP(LlamaConfig(hidden_size=8, intermediate_size=12, num_attention_heads=2, hidden_act="silu"))
    ours = GatedFeedForward(8, 12)
    ours.load_state_dict(reference.state_dict(), strict=True)
    x = torch.randn(2, 4, 8)
    torch.testing.assert_close(ours(x), reference(x))


def test_factory_kinds_and_errors() -> None:
    assert ffn_kinds() == ["geglu", "glu", "mlp", "reglu", "swiglu"]
    mlp = get_ffn("mlp", 4, 8, activation="relu2", bias=False)
    assert isinstance(mlp, FeedForward)
    assert mlp.activation == "relu2"
    assert mlp.up_proj.bias is None
    assert get_ffn("glu", 4, 8, activation="gelu_tanh").activation == "gelu_tanh"
    assert get_ffn("swiglu", 4, 8, activation="silu").activation == "silu"
    with pytest.raises(ValueError, match=r"unknown feed-forward kind 'swigl'.*Did you mean 'swiglu'"):
        get_ffn("swigl", 4, 8)
    with pytest.raises(ValueError, match="fixes activation='gelu'; use kind='glu'"):
        get_ffn("geglu", 4, 8, activation="relu")
    with pytest.raises(ValueError, match="d_model and d_hidden must be > 0"):
        FeedForward(0, 4)
    with pytest.raises(ValueError, match=r"dropout must lie in \[0, 1\)"):
        GatedFeedForward(4, 4, dropout=1.0)


def test_dropout_acts_on_hidden_in_training_only() -> None:
    torch.manual_seed(3)
    ffn = GatedFeedForward(4, 64, dropout=0.5, bias=True)
    x = torch.randn(3, 4)
    ffn.eval()
    reference = ffn(x)
    torch.testing.assert_close(ffn(x), reference)
    ffn.train()
    assert not torch.allclose(ffn(x), reference)
    # reset_parameters redraws the weights
    before = ffn.gate_proj.weight.detach().clone()
    ffn.reset_parameters()
    assert not torch.equal(before, ffn.gate_proj.weight)
