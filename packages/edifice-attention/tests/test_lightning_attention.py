"""Signature tests of ``lightning_attention`` against transformers' ``MiniMaxLightningAttention`` (MiniMax-01's layer).

transformers' layer is pure PyTorch (its own block-tiled Lightning Attention-2 loop with MiniMax-01's slopes, the
joint RMSNorm and the sigmoid gate), so it runs on CPU as an independent implementation: its fused ``qkv_proj``
(rows ordered head, then q/k/v, then channel) is split into this entry's three projections and both layers run on
the same input, at two depths (the decay depends on the layer index), whole and stepped.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

import edifice
from edifice.testing import mutate_op, signature
from edifice_attention.lightning_attention import lightning_log_decays

minimax = pytest.importorskip("transformers.models.minimax.modeling_minimax")
MiniMaxConfig = pytest.importorskip("transformers").MiniMaxConfig

TOL = 2e-5
B, T, D, H, L = 2, 11, 16, 2, 3


def reference_layer(layer: int) -> Any:
    """transformers' lightning-attention layer ``layer`` of an ``L``-layer tiny MiniMax, with seeded weights."""
    config = MiniMaxConfig(
        hidden_size=D, num_attention_heads=H, num_key_value_heads=H, num_hidden_layers=L, block_size=4,
        layer_types=["linear_attention"] * L, vocab_size=8, intermediate_size=8,
    )  # fmt: skip
    ref = minimax.MiniMaxLightningAttention(config, layer_idx=layer).eval()
    gen = torch.Generator().manual_seed(3 + layer)
    with torch.no_grad():
        for p in ref.parameters():
            p.copy_(0.3 * torch.randn(p.shape, generator=gen))
    return ref


def load_reference(mixer: Any, ref: Any) -> None:
    """Split the fused ``W_qkv [H·3·d, d_model]`` into ``W_q, W_k, W_v``; the rest maps one to one."""
    qkv = ref.qkv_proj.weight.detach().view(H, 3, -1, D)
    with torch.no_grad():
        for i, proj in enumerate((mixer.q_proj, mixer.k_proj, mixer.v_proj)):
            proj.weight.copy_(qkv[:, i].reshape(-1, D))
        mixer.g_proj.weight.copy_(ref.output_gate.weight)
        mixer.o_norm.weight.copy_(ref.norm.weight)
        mixer.o_proj.weight.copy_(ref.out_proj.weight)


def check_mixer(layer: int) -> None:
    """Our mixer of layer ``layer`` against transformers' on a whole sequence and stepped (prefill, then tokens)."""
    model: Any = edifice.build("lightning_attention", d_model=D, n_layers=L, n_heads=H, chunk_size=4).eval()
    mixer, ref = model.layers[layer].mixer, reference_layer(layer)
    load_reference(mixer, ref)
    x = torch.randn(B, T, D, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want, _ = ref(x, position_embeddings=None, attention_mask=None)
        torch.testing.assert_close(mixer(x), want, atol=TOL, rtol=TOL)
        state = mixer.init_state(B)
        pieces = [mixer(x[:, :4], state=state)] + [mixer(x[:, t : t + 1], state=state) for t in range(4, T)]
    torch.testing.assert_close(torch.cat(pieces, 1), want, atol=TOL, rtol=TOL)


@signature("lightning_attention")
@pytest.mark.parametrize("layer", [0, 1])  # the last layer barely decays: see the decays test
def test_lightning_attention_matches_transformers_minimax(layer: int) -> None:
    check_mixer(layer)


@pytest.mark.parametrize("wrong", [None, "no-decay"])
def test_signature_fails_when_the_mechanism_breaks(wrong: str | None) -> None:
    def no_decay(q: Any, k: Any, v: Any, g: Any = None, **kwargs: Any) -> Any:
        from edifice.ops.linear_attention import linear_attention_reference

        return linear_attention_reference(q, k, v, None, **kwargs)

    with mutate_op("linear_attention", no_decay if wrong else None), pytest.raises(AssertionError):
        check_mixer(0)


def test_decays_are_minimax_slopes_scheduled_by_depth() -> None:
    """``λ_h = exp(-2^{-8(h+1)/H} (1 - l/(L-1) + 1e-5))``: fastest forgetting in layer 0, almost none in the last."""
    g = lightning_log_decays(4, 0, 3)
    torch.testing.assert_close(g, -(2.0 ** (-2.0 * torch.arange(1.0, 5.0))) * (1 + 1e-5))
    assert float(lightning_log_decays(4, 2, 3).abs().max()) < 1e-4
    model: Any = edifice.build("lightning_attention", d_model=16, n_layers=3, n_heads=4, d_in=3)
    assert [m.layer for m in model.mixers()] == [0, 1, 2]
    assert not any("decay" in name for name, _ in model.named_parameters())
