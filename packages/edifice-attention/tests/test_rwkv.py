"""RWKV-7 (``rwkv``) against flash-linear-attention's ``RWKV7ForCausalLM``, recomputed with fla's PyTorch references.

fla's RWKV-7 layer runs only through Triton (no CPU driver), so the oracle recomputes fla's model from its own state
dict with fla's pure-PyTorch pieces: ``token_shift_ref``, ``torch_addcmul_rwkv7`` (the six token-shift lerps),
``k_update_ref`` (the replacement key), ``dplr_recurrence`` (the generalized delta rule's token loop, which scales the
query by ``K^-1/2``: RWKV-7 reads with scale 1, so the oracle passes ``r·sqrt(K)``), ``gate_output_correction_ref``
(bonus and gate) and ``channel_mixing_rwkv7_torch``; the LoRAs, norms and projections are plain matrix products.
The converted model must match it on a whole sequence (chunked form) and when stepped (prefill, then one token at a
time); a removal-free or decay-free state update must fail the same check.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import pytest
import torch
import torch.nn.functional as F

import edifice
from edifice.testing import mutate_op, signature

with warnings.catch_warnings():  # fla warns that it runs on CPU and that its RWKV-7 may differ from the authors'
    warnings.simplefilter("ignore")
    from fla.models import RWKV7Config, RWKV7ForCausalLM
    from fla.modules.token_shift import token_shift_ref
    from fla.ops.generalized_delta_rule.dplr.naive import dplr_recurrence
    from fla.ops.rwkv7.channel_mixing import channel_mixing_rwkv7_torch
    from fla.ops.rwkv7.fused_addcmul import torch_addcmul_rwkv7
    from fla.ops.rwkv7.fused_k_update import k_update_ref
    from fla.ops.rwkv7.gate_output_correction import gate_output_correction_ref

torch.testing.assert_close(torch.zeros(1), torch.zeros(1))  # pay torch.testing's first-call import at collection

TOL = 2e-5
B, T, D, HEAD, VOCAB = 2, 11, 32, 16, 40
Weights = Mapping[str, torch.Tensor]


# -- the oracle -----------------------------------------------------------------------------------------------------
def lora(w: Weights, name: str, x: torch.Tensor, act: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """fla's ``LoRA``: ``Linear(act(Linear(x)))`` with an optional bias."""
    y = act(x @ w[f"{name}.lora.0.weight"].T) @ w[f"{name}.lora.2.weight"].T
    return y + w[f"{name}.lora.2.bias"] if f"{name}.lora.2.bias" in w else y


def time_mix_oracle(w: Weights, x: torch.Tensor, v_first: torch.Tensor | None, eps: float) -> Any:
    """fla's ``RWKV7Attention.forward`` on ``x [B, T, d]`` from its weights ``w`` (``attn.`` prefix removed)."""
    Bx, Tx, C = x.shape
    H = C // HEAD
    delta = token_shift_ref(x)
    xr, xw, xk, xv, xa, xg = torch_addcmul_rwkv7(x, delta, *(w[f"x_{n}"] for n in "rwkvag"))
    r, k, v = xr @ w["r_proj.weight"].T, xk @ w["k_proj.weight"].T, xv @ w["v_proj.weight"].T
    log_w = -0.6065306597126334 * lora(w, "w_lora", xw, torch.tanh).sigmoid()
    if v_first is None:
        v_first = v
    else:
        v = torch.lerp(v, v_first, lora(w, "v_lora", xv, lambda t: t).sigmoid())
    a = lora(w, "a_lora", xa, lambda t: t).sigmoid()
    g = lora(w, "g_lora", xg, torch.sigmoid)
    kk = F.normalize((k * w["k_k"]).view(Bx, Tx, H, HEAD), dim=-1)
    k = k_update_ref(k, a, w["k_a"])
    heads = [t.view(Bx, Tx, H, HEAD) for t in (r, k, v, a, log_w)]
    r_h, k_h, v_h, a_h, w_h = heads
    args = (r_h * math.sqrt(HEAD), k_h, v_h, -kk, kk * a_h, w_h)  # dplr_recurrence scales q by K^-1/2
    o, _ = dplr_recurrence(*(t.transpose(1, 2) for t in args))
    o = F.group_norm(o.transpose(1, 2).reshape(Bx * Tx, C), H, w["g_norm.weight"], w["g_norm.bias"], HEAD * eps)
    o = gate_output_correction_ref(o.view(Bx, Tx, C), r_h, k_h, w["r_k"], v_h, g)
    return o @ w["o_proj.weight"].T, v_first


def fla_model_oracle(sd: Weights, ids: torch.Tensor, n_layers: int, eps: float) -> torch.Tensor:
    """fla's ``RWKV7ForCausalLM`` logits from its own state dict."""

    def ln(x: torch.Tensor, name: str) -> torch.Tensor:
        return F.layer_norm(x, x.shape[-1:], sd[f"{name}.weight"], sd[f"{name}.bias"], eps)

    h = sd["model.embeddings.weight"][ids]
    v_first = None
    for i in range(n_layers):
        p = f"model.layers.{i}."
        if i == 0:
            h = ln(h, p + "pre_norm")
        attn = {k.removeprefix(p + "attn."): v for k, v in sd.items() if k.startswith(p + "attn.")}
        y, v_first = time_mix_oracle(attn, ln(h, p + "attn_norm"), v_first, eps)
        h = h + y
        x = ln(h, p + "ffn_norm")
        ffn, _ = channel_mixing_rwkv7_torch(
            x, torch.zeros_like(x[:, 0]), sd[p + "ffn.x_k"], sd[p + "ffn.key.weight"].T, sd[p + "ffn.value.weight"].T
        )
        h = h + ffn
    return ln(h, "model.norm") @ sd["lm_head.weight"].T


def perturb(module: torch.nn.Module, seed: int, std: float = 0.1) -> None:
    """Seeded noise on every parameter, so that zero-initialised projections and unit gains prove their mapping."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(std * torch.randn(p.shape, generator=gen))


def fla_model(n_layers: int = 2, **extra: Any) -> Any:
    """A tiny random fla ``RWKV7ForCausalLM`` (its own RWKV-7 initialisation, then noise on every parameter)."""
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hf = RWKV7Config(
            hidden_size=D,
            num_hidden_layers=n_layers,
            head_dim=HEAD,
            vocab_size=VOCAB,
            intermediate_size=48,
            decay_low_rank_dim=8,
            a_low_rank_dim=8,
            v_low_rank_dim=4,
            gate_low_rank_dim=8,
            **extra,
        )
        model = RWKV7ForCausalLM(hf)
    perturb(model, seed=4)
    return model


def check_against_fla(chunk_size: int = 4) -> None:
    """The converted model's logits equal the oracle's, whole (chunked) and stepped (prefill 4, then single tokens)."""
    source = fla_model()
    model: Any = edifice.convert("fla.models.RWKV7ForCausalLM", source, chunk_size=chunk_size).eval()
    ids = torch.randint(0, VOCAB, (B, T), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        want = fla_model_oracle(source.state_dict(), ids, 2, source.config.norm_eps)
        torch.testing.assert_close(model(input_ids=ids), want, atol=TOL, rtol=TOL)
        state = model.init_state(B)
        pieces = [model.step(ids[:, :4], state)[0]]
        pieces += [model.step(ids[:, t : t + 1], state)[0] for t in range(4, T)]
    torch.testing.assert_close(torch.cat(pieces, 1), want, atol=TOL, rtol=TOL)


# -- signature ------------------------------------------------------------------------------------------------------
@signature("rwkv")
def test_rwkv_matches_fla_rwkv7_oracle() -> None:
    check_against_fla()


def plain_linear_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
    """The state update replaced by plain linear attention (no removal, no decay)."""
    from edifice.ops.linear_attention import linear_attention_reference

    return linear_attention_reference(q, k, v, None, **kwargs)


@pytest.mark.parametrize("wrong", [None, plain_linear_attention], ids=["no-removal", "plain-linear-attention"])
def test_signature_fails_without_the_generalized_delta_rule(wrong: Callable[..., Any] | None) -> None:
    with mutate_op("generalized_delta_rule", wrong), pytest.raises(AssertionError):
        check_against_fla()


# -- the mechanism's own properties ---------------------------------------------------------------------------------
def test_decay_is_exp_of_minus_exp_minus_half_sigmoid() -> None:
    """w = exp(-e^{-0.5} σ(d)) (§4): every per-channel decay lies in (e^{-e^{-0.5}}, 1) ≈ (0.545, 1)."""
    model: Any = edifice.build("rwkv", d_model=16, n_layers=1, head_dim=8, d_in=3, decay_low_rank_dim=4)
    captured: dict[str, torch.Tensor] = {}

    def spy(*args: Any, **kwargs: Any) -> Any:
        captured["g"] = args[5]
        from edifice.ops.delta_rule import generalized_delta_rule_reference

        return generalized_delta_rule_reference(*args, **kwargs)

    for bias, want in ((1e4, -math.exp(-0.5)), (-1e4, 0.0)):
        with torch.no_grad():
            model.layers[0].time_mix.w_lora.up.bias.fill_(bias)
        with torch.no_grad(), edifice.ops.swap("generalized_delta_rule", spy):
            model(torch.randn(1, 3, 3))
        torch.testing.assert_close(captured["g"], torch.full_like(captured["g"], want))


def test_padding_is_exact() -> None:
    """Left-padded rows give the unpadded result: pads are zero input, write nothing and decay nothing."""
    model: Any = edifice.build("rwkv", d_model=16, n_layers=2, head_dim=8, d_in=5, chunk_size=4).eval()
    perturb(model, seed=1, std=0.3)
    x = torch.randn(1, 7, 5, generator=torch.Generator().manual_seed(2))
    padded = torch.cat([torch.randn(1, 3, 5), x], 1)
    mask = torch.tensor([[False] * 3 + [True] * 7])
    with torch.no_grad():
        torch.testing.assert_close(model(padded, attention_mask=mask)[:, 3:], model(x), atol=TOL, rtol=TOL)


def test_authors_initialisation() -> None:
    """BlinkDL's RWKV_Tmix_x070 init: zero W_o and LoRA down-projections, k_a = 1.02, r_k = -0.04, decay biases
    rising from about -6 + 0.5 to 0.5 over the channels (with the zigzag), GroupNorm gain ((l + 1) / L)^0.7."""
    model: Any = edifice.build("rwkv", d_model=32, n_layers=2, head_dim=16, d_in=3)
    for index, block in enumerate(model.layers):
        tm = block.time_mix
        assert not tm.o_proj.weight.any() and not tm.w_lora.down.weight.any()
        assert not block.channel_mix.value.weight.any()
        torch.testing.assert_close(tm.k_a, torch.full_like(tm.k_a, 1.02))
        torch.testing.assert_close(tm.r_k, torch.full_like(tm.r_k, -0.04))
        torch.testing.assert_close(tm.norm_weight, torch.full_like(tm.norm_weight, ((index + 1) / 2) ** 0.7))
        bias = tm.w_lora.up.bias
        assert float(bias[0]) == pytest.approx(-6 + 0.5 - 2.5) and float(bias[-1]) == pytest.approx(0.5 + 2.5)
    assert model.layers[0].time_mix.v_lora is None and model.layers[1].time_mix.v_lora is not None


def test_converter_refuses_what_it_cannot_express() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hf = RWKV7Config(hidden_size=D, num_hidden_layers=1, head_dim=HEAD, vocab_size=VOCAB, hidden_act="swish")
    with pytest.raises(edifice.CheckpointError, match="hidden_act='swish' is not supported"):
        edifice.convert("fla.models.RWKV7ForCausalLM", (hf, {}))


def test_converter_accepts_a_config_dict() -> None:
    source = fla_model()  # fla's own initialisation divides by n_layers - 1: two layers
    model: Any = edifice.convert("fla.models.RWKV7ForCausalLM", (source.config.to_dict(), source.state_dict()))
    assert model.config.n_layers == 2 and model.config.head_dim == HEAD and model.config.d_ff == 48
