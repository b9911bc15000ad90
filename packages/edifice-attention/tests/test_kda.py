"""Signature and converter tests of ``kda`` (Kimi Delta Attention) against flash-linear-attention's KDA.

fla's ``KimiDeltaAttention`` runs only through Triton, so the oracle recomputes it from its weights (fla's names) with
independent code and fla's pure-PyTorch references ``naive_kda_gate`` (``log α = -exp(A_log) softplus(x W_α↓ W_α↑ +
dt_bias)``) and ``naive_recurrent_kda`` (the token loop ``S ← S ⊙ α; S ← S + β k (v - Sᵀk)ᵀ``): q, k, v as SiLU of a
left-zero-padded depthwise ``F.conv1d``, q/k L2-normalised, ``β = σ(x W_β)``, and the read-out
``RMSNorm_h(o) ⊙ σ(x W_g↓ W_g↑ + b)`` through ``W_o``. The mixer must match whole (chunked WY form) and stepped; the
converter must turn fla's ``KDAForCausalLM`` into a model whose logits match the oracle run on fla's own weights.
"""

from __future__ import annotations

import warnings
from typing import Any

import pytest
import torch
import torch.nn.functional as F

import edifice
from edifice.testing import mutate_op, signature

with warnings.catch_warnings():  # fla warns that it runs on CPU; these functions are plain PyTorch
    warnings.simplefilter("ignore")
    from fla.models import KDAConfig, KDAForCausalLM
    from fla.ops.kda.gate import naive_kda_gate
    from fla.ops.kda.naive import naive_recurrent_kda

torch.testing.assert_close(torch.zeros(1), torch.zeros(1))  # pay the first call's import at collection

TOL = 2e-5
B, T, D, H, HEAD = 2, 11, 16, 2, 8


def rms(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return x * torch.rsqrt(x.square().mean(-1, keepdim=True) + eps) * weight


def l2(x: torch.Tensor) -> torch.Tensor:
    return x / torch.sqrt(x.square().sum(-1, keepdim=True) + 1e-6)


def kda_oracle(w: dict[str, torch.Tensor], x: torch.Tensor, eps: float) -> torch.Tensor:
    """fla's ``KimiDeltaAttention`` on ``x [B, T, d]`` from its weights ``w`` (module doc)."""
    bt = x.shape[:2]
    heads = []
    for name in "qkv":
        y = x @ w[f"{name}_proj.weight"].T
        if f"{name}_conv1d.weight" in w:
            kernel = w[f"{name}_conv1d.weight"]
            y = F.conv1d(F.pad(y.transpose(1, 2), (kernel.shape[-1] - 1, 0)), kernel, groups=kernel.shape[0])
            y = y.transpose(1, 2)
        heads.append(F.silu(y).reshape(*bt, H, -1))
    q, k, v = heads
    g = naive_kda_gate((x @ w["f_proj.0.weight"].T @ w["f_proj.1.weight"].T).view(*bt, H, -1), w["A_log"], w["dt_bias"])
    beta = torch.sigmoid(x @ w["b_proj.weight"].T)
    o, _ = naive_recurrent_kda(l2(q), l2(k), v, g, beta)
    gate = (x @ w["g_proj.0.weight"].T @ w["g_proj.1.weight"].T + w["g_proj.1.bias"]).view_as(o)
    return (rms(o, w["o_norm.weight"], eps) * torch.sigmoid(gate)).flatten(2) @ w["o_proj.weight"].T


def fla_model(seed: int, **overrides: Any) -> Any:
    """A tiny random ``KDAForCausalLM`` with noise on every parameter (unit gains and zero biases become visible)."""
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fields = {"hidden_size": D, "num_heads": H, "head_dim": HEAD, "vocab_size": 40, "intermediate_size": 24}
        model = KDAForCausalLM(KDAConfig(**{"num_hidden_layers": 2, **fields, **overrides}))
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=gen))
    return model


def layer_weights(model: Any, index: int = 0) -> dict[str, torch.Tensor]:
    prefix = f"model.layers.{index}.attn."
    return {k.removeprefix(prefix): v for k, v in model.state_dict().items() if k.startswith(prefix)}


def check_mixer(fla_oracle: Any, use_short_conv: bool = True, **overrides: Any) -> None:
    """Our mixer, loaded through the converter's key map, against the oracle: whole, then prefill + single steps."""
    w = layer_weights(fla_model(3, use_short_conv=use_short_conv))
    model: Any = edifice.build(
        "kda", d_model=D, n_layers=1, n_heads=H, expand_k=1.0, use_short_conv=use_short_conv, chunk_size=4, **overrides
    ).eval()
    mixer = model.layers[0].mixer
    fla_oracle.load_layer(mixer, w)
    x = torch.randn(B, T, D, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = kda_oracle(w, x, model.config.norm_eps)
        torch.testing.assert_close(mixer(x), want, atol=TOL, rtol=TOL)
        state = mixer.init_state(B)
        pieces = [mixer(x[:, :4], state=state)] + [mixer(x[:, t : t + 1], state=state) for t in range(4, T)]
    torch.testing.assert_close(torch.cat(pieces, 1), want, atol=TOL, rtol=TOL)


@signature("kda")
@pytest.mark.parametrize("use_short_conv", [True, False], ids=["short-conv", "no-conv"])
def test_kda_mixer_matches_fla_naive_recurrent_kda(use_short_conv: bool, fla_oracle: Any) -> None:
    check_mixer(fla_oracle, use_short_conv)


def scalar_decay(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, a: Any, b: Any, g: torch.Tensor, **kw: Any) -> Any:
    """Gated DeltaNet in place of KDA: the per-channel decay replaced by its mean over channels (one α per head)."""
    from edifice.ops.delta_rule import generalized_delta_rule_reference

    g_mean = g.mean(-1, keepdim=True).expand_as(g)
    a = a / g.exp() * g_mean.exp()  # a = -α ⊙ k with the scalar α
    return generalized_delta_rule_reference(q, k, v, a, b, g_mean, **kw)


@pytest.mark.parametrize("wrong", [None, scalar_decay], ids=["no-removal", "scalar-decay"])
def test_signature_fails_when_the_mechanism_breaks(wrong: Any, fla_oracle: Any) -> None:
    with mutate_op("generalized_delta_rule", wrong), pytest.raises(AssertionError):
        check_mixer(fla_oracle)


def test_decay_init_is_the_authors() -> None:
    """A = exp(A_log) ∈ [1, 16] per head, softplus(dt_bias) ∈ [1e-3, 0.1] per key channel."""
    model: Any = edifice.build("kda", d_model=32, n_layers=2, n_heads=4, d_in=3)
    for layer in model.layers:
        mixer = layer.mixer
        A, dt = mixer.A_log.exp(), F.softplus(mixer.dt_bias)
        assert A.shape == (4,) and ((A >= 1 - 1e-5) & (A <= 16 + 1e-4)).all()
        assert dt.shape == (32,) and ((dt >= 1e-3 - 1e-6) & (dt <= 0.1 + 1e-6)).all()
        g = mixer.log_decay(torch.randn(1, 3, 32))
        assert g.shape == (1, 3, 4, 8) and (g < 0).all()


def test_converter_from_fla_matches_its_weights(fla_oracle: Any) -> None:
    fla = fla_model(4)
    model: Any = edifice.convert("fla.models.KDAForCausalLM", fla, chunk_size=4)
    assert model.config.arch == "kda" and model.config.head_k_dim == HEAD
    ids = torch.randint(0, 40, (B, T), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        eps = fla.config.norm_eps
        want = fla_oracle.lm_logits(fla.state_dict(), ids, lambda w, h: kda_oracle(w, h, eps), 2, eps)
        torch.testing.assert_close(model(input_ids=ids), want, atol=TOL, rtol=TOL)
        again: Any = edifice.convert("fla.models.KDAForCausalLM", (fla.config.to_dict(), fla.state_dict()))
        torch.testing.assert_close(again(input_ids=ids), want, atol=TOL, rtol=TOL)


def test_converter_refuses_what_it_cannot_express() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hf = KDAConfig(hidden_size=D, num_hidden_layers=1, num_heads=2, head_dim=8, lower_bound=-5.0, vocab_size=40)
    with pytest.raises(edifice.CheckpointError, match=r"lower_bound=-5\.0 is not supported"):
        edifice.convert("fla.models.KDAForCausalLM", (hf, {}))
