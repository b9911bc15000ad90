"""Signature tests of ``linear_transformer`` against flash-linear-attention's pure-PyTorch linear attention.

The oracle recomputes the mixer from its weights with independent code: projections as matrix products, the paper's
``φ(x) = elu(x) + 1`` written out, and ``fla.ops.linear_attn.naive.naive_recurrent_linear_attn(normalize=True)`` (the
token loop of eq. 5 with its normaliser ``φ(q_i)ᵀ Σ_j φ(k_j)``). The mixer must match on a whole sequence (chunked
form) and when stepped (prefill, then one token at a time).
"""

from __future__ import annotations

import warnings
from typing import Any

import pytest
import torch
import torch.nn.functional as F

import edifice
from edifice.testing import mutate_op, signature

with warnings.catch_warnings():  # fla warns that it runs on CPU; this function is plain PyTorch
    warnings.simplefilter("ignore")
    from fla.ops.linear_attn.naive import naive_recurrent_linear_attn

TOL = 2e-5
B, T, D, H = 2, 11, 16, 2


def oracle(mixer: Any, x: torch.Tensor) -> torch.Tensor:
    """eq. 5 with φ = elu + 1 through fla's naive recurrent linear attention (normalised), then ``W_O``."""
    w = {name: p.detach() for name, p in mixer.named_parameters()}
    q, k, v = ((x @ w[f"{n}_proj.weight"].T).view(B, T, H, -1) for n in "qkv")
    q, k = F.elu(q) + 1, F.elu(k) + 1
    o, _ = naive_recurrent_linear_attn(q, k, v, normalize=True)
    return o.flatten(2) @ w["o_proj.weight"].T


def check_mixer() -> None:
    """The first mixer of a tiny model against the oracle: forward, and prefill + single steps."""
    torch.manual_seed(0)
    model: Any = edifice.build("linear_transformer", d_model=D, n_layers=1, n_heads=H, chunk_size=4).eval()
    mixer = model.layers[0].mixer
    x = torch.randn(B, T, D, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = oracle(mixer, x)
        torch.testing.assert_close(mixer(x), want, atol=TOL, rtol=TOL)
        state = mixer.init_state(B)
        pieces = [mixer(x[:, :4], state=state)] + [mixer(x[:, t : t + 1], state=state) for t in range(4, T)]
    torch.testing.assert_close(torch.cat(pieces, 1), want, atol=TOL, rtol=TOL)


@signature("linear_transformer")
def test_linear_transformer_matches_fla_naive_normalized_linear_attention() -> None:
    check_mixer()


def test_signature_fails_when_the_diagonal_is_lost() -> None:
    with mutate_op("linear_attention"), pytest.raises(AssertionError):
        check_mixer()


def test_unnormalized_is_a_different_mechanism() -> None:
    """Without the normaliser the output differs: the signature covers eq. 5's denominator."""
    torch.manual_seed(0)
    x = torch.randn(1, 5, D)
    outs = []
    for normalize in (True, False):
        torch.manual_seed(0)
        model: Any = edifice.build("linear_transformer", d_model=D, n_layers=1, n_heads=H, normalize=normalize)
        with torch.no_grad():
            outs.append(model.layers[0].mixer(x))
    assert not torch.allclose(*outs, atol=1e-3)


def test_state_carries_the_normaliser_and_the_feature_map_is_positive() -> None:
    model: Any = edifice.build("linear_transformer", d_model=D, n_layers=1, n_heads=H, d_in=3)
    state = model.layers[0].mixer.init_state(2)
    assert state.recurrent.shape == (2, H, D // H, D // H + 1)  # [s, z] (eqs. 18-19)
    phi = model.layers[0].mixer.feature_map(torch.tensor([-50.0, 0.0, 2.0]))
    torch.testing.assert_close(phi, torch.tensor([0.0, 1.0, 3.0]))
    with pytest.raises(edifice.ConfigError, match="normalize"):
        edifice.config("linear_transformer", feature_map="identity")


def test_padding_is_exact() -> None:
    model: Any = edifice.build("linear_transformer", d_model=D, n_layers=1, n_heads=H, d_in=5).eval()
    x = torch.randn(1, 7, 5, generator=torch.Generator().manual_seed(2))
    padded = torch.cat([torch.randn(1, 3, 5), x], 1)
    mask = torch.tensor([[False] * 3 + [True] * 7])
    with torch.no_grad():
        torch.testing.assert_close(model(padded, attention_mask=mask)[:, 3:], model(x), atol=TOL, rtol=TOL)


# -- converter from fla's LinearAttentionForCausalLM ---------------------------------------------------------------
def rms(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return x * torch.rsqrt(x.square().mean(-1, keepdim=True) + eps) * weight


def fla_model_oracle(sd: dict[str, torch.Tensor], ids: torch.Tensor, n_layers: int, eps: float) -> torch.Tensor:
    """fla's logits from its state dict: pre-norm RMSNorm blocks, normalised elu+1 attention, per-head RMSNorm."""
    h = sd["model.embeddings.weight"][ids]
    for i in range(n_layers):
        p = f"model.layers.{i}."
        a = rms(h, sd[p + "attn_norm.weight"], eps)
        q, k, v = ((a @ sd[f"{p}attn.{n}_proj.weight"].T).view(*ids.shape, H, -1) for n in "qkv")
        o, _ = naive_recurrent_linear_attn(F.elu(q) + 1, F.elu(k) + 1, v, normalize=True)
        h = h + rms(o, sd[p + "attn.norm.weight"], eps).flatten(2) @ sd[p + "attn.o_proj.weight"].T
        m = rms(h, sd[p + "mlp_norm.weight"], eps)
        gate, up, down = (sd[f"{p}mlp.{n}_proj.weight"] for n in ("gate", "up", "down"))
        h = h + (F.silu(m @ gate.T) * (m @ up.T)) @ down.T
    return rms(h, sd["model.norm.weight"], eps) @ sd["lm_head.weight"].T


def test_converter_from_fla_matches_its_weights() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from fla.models import LinearAttentionConfig, LinearAttentionForCausalLM

        hf = LinearAttentionConfig(
            hidden_size=D, num_hidden_layers=2, num_heads=H, vocab_size=40, intermediate_size=24,
            feature_map="elu", norm_feature_map=True,
        )  # fmt: skip
        torch.manual_seed(0)
        fla_model = LinearAttentionForCausalLM(hf)
    gen = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for p in fla_model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=gen))
    model: Any = edifice.convert("fla.models.LinearAttentionForCausalLM", fla_model, chunk_size=4)
    assert model.config.arch == "linear_transformer" and model.config.normalize
    ids = torch.randint(0, 40, (B, T), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        want = fla_model_oracle(fla_model.state_dict(), ids, 2, hf.norm_eps)
        torch.testing.assert_close(model(input_ids=ids), want, atol=TOL, rtol=TOL)
    hf.feature_map = "hedgehog"
    with pytest.raises(edifice.CheckpointError, match="feature_map='hedgehog'"):
        edifice.convert("fla.models.LinearAttentionForCausalLM", (hf.to_dict(), fla_model.state_dict()))
