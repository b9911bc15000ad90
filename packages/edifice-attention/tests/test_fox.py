"""``fox``: the Forgetting Transformer against flash-linear-attention's (the authors' FoX is in fla).

fla's ``ForgettingAttention`` runs its parallel kernel through Triton only, so the oracle recomputes the layer from
its weights with independent code around fla's pure-PyTorch ``naive_forgetting_attn`` (softmax of ``qk^T/sqrt(d) +
c_i - c_j``, ``c`` the cumulative ``logsigmoid`` forget gates), with GQA and the output gate; the converter must turn
fla's ``ForgettingTransformerForCausalLM`` into a model whose logits match, whole and decoded through a static cache.
With every forget gate 1, forgetting attention is softmax attention.
"""

from __future__ import annotations

import warnings
from typing import Any

import pytest
import torch
import torch.nn.functional as F

import edifice
from edifice.ops.attention import sdpa_reference
from edifice.testing import mutate_op, redraw_parameters, signature

with warnings.catch_warnings():  # fla warns that it runs on CPU; these are plain PyTorch
    warnings.simplefilter("ignore")
    from fla.layers import ForgettingAttention as FlaForgettingAttention
    from fla.models import ForgettingTransformerConfig, ForgettingTransformerForCausalLM
    from fla.ops.forgetting_attn.naive import naive_forgetting_attn

torch.testing.assert_close(torch.zeros(1), torch.zeros(1))  # pay the first call's import at collection

TOL = 2e-5
B, T, D = 2, 11, 32


def fla_attention_oracle(w: dict[str, torch.Tensor], x: torch.Tensor, H: int, Hk: int, gate: bool) -> torch.Tensor:
    """fla's ForgettingAttention on ``x`` from fla-named weights, through ``naive_forgetting_attn``."""
    Bx, Tx, _ = x.shape
    q = (x @ w["q_proj.weight"].T).view(Bx, Tx, H, -1)
    k = (x @ w["k_proj.weight"].T).view(Bx, Tx, Hk, -1)
    v = (x @ w["v_proj.weight"].T).view(Bx, Tx, Hk, -1)
    g = F.logsigmoid(x @ w["f_proj.weight"].T + w["f_proj.bias"])  # (B, T, H)
    o = naive_forgetting_attn(q, k, v, g).reshape(Bx, Tx, -1)
    if gate:
        o = torch.sigmoid(x @ w["g_proj.weight"].T) * o
    return o @ w["o_proj.weight"].T


def check_mixer(helpers: Any, gate: bool) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.manual_seed(0)
        fla_layer = FlaForgettingAttention(hidden_size=D, num_heads=4, num_kv_heads=2, use_output_gate=gate)
    redraw_parameters(fla_layer, seed=1)
    w = {k: p.detach() for k, p in fla_layer.state_dict().items()}
    model: Any = edifice.build("fox", d_model=D, n_layers=1, n_heads=4, n_kv_heads=2, output_gate=gate).eval()
    mixer = model.layers[0].mixer
    mixer.load_state_dict(w, strict=True)
    x = torch.randn(B, T, D, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        want = fla_attention_oracle(w, x, 4, 2, gate)
    helpers.mixer_matches(mixer, x, want, atol=TOL)


@signature("fox")
@pytest.mark.parametrize("gate", [False, True], ids=["fox", "output-gate"])
def test_forgetting_attention_matches_fla(gate: bool, variant_helpers: Any) -> None:
    check_mixer(variant_helpers, gate)


def test_signature_fails_without_the_forget_gate(variant_helpers: Any) -> None:
    with mutate_op("variant_attention"), pytest.raises(AssertionError):
        check_mixer(variant_helpers, False)


@signature("fox")
def test_unit_forget_gates_give_softmax_attention() -> None:
    # f_t = σ(0·x + 100) = 1 - e^-100: log f rounds to 0, D = 0, and FoX is causal softmax attention (no RoPE).
    torch.manual_seed(0)
    model: Any = edifice.build("fox", d_model=D, n_layers=1, n_heads=4).eval()
    mixer = redraw_parameters(model, seed=3).layers[0].mixer
    x = torch.randn(B, T, D, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        mixer.f_proj.weight.zero_()
        mixer.f_proj.bias.fill_(100.0)
        q, k, v = (p(x).view(B, T, 4, 8).transpose(1, 2) for p in (mixer.q_proj, mixer.k_proj, mixer.v_proj))
        want = mixer.o_proj(sdpa_reference(q, k, v, causal=True).transpose(1, 2).reshape(B, T, D))
        torch.testing.assert_close(mixer(x), want, atol=1e-6, rtol=1e-6)
        mixer.f_proj.bias.fill_(0.0)  # f = 1/2: the gate now decays the past
        assert (mixer(x) - want).abs().max() > 1e-2


def fla_model_oracle(sd: dict[str, torch.Tensor], ids: torch.Tensor, hf: Any) -> torch.Tensor:
    """fla's ForgettingTransformerForCausalLM logits from its state dict (pre-norm blocks, SwiGLU)."""

    def rms(h: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return h * torch.rsqrt(h.square().mean(-1, keepdim=True) + hf.norm_eps) * weight

    h = sd["model.embeddings.weight"][ids]
    for i in range(hf.num_hidden_layers):
        p = f"model.layers.{i}."
        attn = {k.removeprefix(p + "attn."): v for k, v in sd.items() if k.startswith(p + "attn.")}
        a = fla_attention_oracle(attn, rms(h, sd[p + "attn_norm.weight"]), hf.num_heads, hf.num_kv_heads, False)
        h = h + a
        m = rms(h, sd[p + "mlp_norm.weight"])
        gate, up, down = (sd[f"{p}mlp.{n}_proj.weight"] for n in ("gate", "up", "down"))
        h = h + (F.silu(m @ gate.T) * (m @ up.T)) @ down.T
    return rms(h, sd["model.norm.weight"]) @ sd["lm_head.weight"].T


@signature("fox")
def test_converter_from_fla_matches_its_weights(variant_helpers: Any) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hf = ForgettingTransformerConfig(
            hidden_size=D, num_hidden_layers=2, num_heads=4, num_kv_heads=2, vocab_size=40, intermediate_size=48
        )
        torch.manual_seed(0)
        fla_model = ForgettingTransformerForCausalLM(hf)
    redraw_parameters(fla_model, seed=5)
    model: Any = edifice.convert("fla.models.ForgettingTransformerForCausalLM", fla_model).eval()
    ids = torch.randint(0, 40, (B, T), generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        want = fla_model_oracle(fla_model.state_dict(), ids, hf)
        torch.testing.assert_close(model(input_ids=ids), want, atol=TOL, rtol=TOL)
    variant_helpers.decode_matches(model, ids, atol=TOL)


def test_padding_is_exact() -> None:
    torch.manual_seed(0)
    model: Any = redraw_parameters(edifice.build("fox", d_model=D, n_layers=2, n_heads=4, d_in=5).eval(), seed=7)
    x = torch.randn(1, 7, 5, generator=torch.Generator().manual_seed(8))
    padded = torch.cat([torch.randn(1, 3, 5), x], 1)
    mask = torch.tensor([[False] * 3 + [True] * 7])
    with torch.no_grad():
        torch.testing.assert_close(model(x=padded, attention_mask=mask)[:, 3:], model(x=x), atol=1e-5, rtol=1e-5)


def test_decoding_with_a_dynamic_cache_and_padded_prompt() -> None:
    torch.manual_seed(0)
    model: Any = redraw_parameters(edifice.build("fox", **edifice.get_spec("fox").tiny).eval(), seed=9)
    ids = torch.randint(0, 64, (2, 9), generator=torch.Generator().manual_seed(10))
    mask = torch.ones(2, 9, dtype=torch.bool)
    mask[0, :2] = False  # the first prompt is left-padded
    with torch.no_grad():
        want = model(input_ids=ids, attention_mask=mask)
        state = model.init_state(2)
        outs = [model.step(ids[:, :5], state, attention_mask=mask[:, :5])[0]]
        outs += [model.step(ids[:, t : t + 1], state)[0] for t in range(5, 9)]
    torch.testing.assert_close(torch.cat(outs, 1)[1], want[1], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(torch.cat(outs, 1)[0, 2:], want[0, 2:], atol=1e-4, rtol=1e-4)


def test_bad_config_raises() -> None:
    with pytest.raises(edifice.ConfigError, match="positional"):
        edifice.config("fox", d_model=32, positional="sinusoidal")
