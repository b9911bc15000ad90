"""Signature and converter tests of the linear-attention entries (``retnet``, ``gla``) against flash-linear-attention.

fla's layers (``MultiScaleRetention``, ``GatedLinearAttention``) run only through Triton, which has no CPU driver, so
the oracle recomputes them from their weights with independent code and fla's pure-PyTorch references: projections as
matrix products, the short convolution as a padded ``F.conv1d``, RoPE as a complex rotation, the recurrence with
``fla.ops.retention.naive.naive_retention`` (RetNet's parallel form with its γ_h) or
``fla.ops.gla.naive.naive_recurrent_gla`` (GLA's token loop), and the gated norm with fla's ``rms_norm_ref``. The
mixers must match on a whole sequence (chunked form) and when stepped (prefill, then one token at a time); the
converters must turn fla's ``*ForCausalLM`` into models whose logits match the oracle run on fla's own weights.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from typing import Any

import pytest
import torch
import torch.nn.functional as F

import edifice
from edifice.testing import mutate_op, signature
from edifice_attention._linear_attention import LinearAttentionMixer

with warnings.catch_warnings():  # fla warns that it runs on CPU; these functions are plain PyTorch
    warnings.simplefilter("ignore")
    from fla.models import GLAConfig, GLAForCausalLM, RetNetConfig, RetNetForCausalLM
    from fla.modules.norm.layernorm_gated import rms_norm_ref
    from fla.ops.gla.naive import naive_recurrent_gla
    from fla.ops.retention.naive import naive_retention

# The first assert_close of a process imports torch.distributed.tensor (seconds): pay it at collection.
torch.testing.assert_close(torch.zeros(1), torch.zeros(1))

TOL = 2e-5
B, T, D = 2, 11, 16
Weights = Mapping[str, torch.Tensor]


# -- the oracle -----------------------------------------------------------------------------------------------------
def short_conv(y: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """SiLU of the causal depthwise convolution of ``y [B, T, C]`` by ``weight [C, K]`` (left zero padding)."""
    K = weight.shape[-1]
    out = F.conv1d(F.pad(y.transpose(1, 2), (K - 1, 0)), weight.reshape(-1, 1, K), groups=y.shape[-1])
    return F.silu(out.transpose(1, 2))


def rope(x: torch.Tensor, base: float = 10000.0) -> torch.Tensor:
    """RoPE of ``x [B, T, H, D]`` at positions 0..T-1 as a complex rotation of the pairs ``(x_i, x_{i+D/2})``."""
    half = x.shape[-1] // 2
    theta = base ** (-2 * torch.arange(half, dtype=torch.float64) / x.shape[-1])
    turn = torch.polar(torch.ones(x.shape[1], half, dtype=torch.float64), torch.arange(x.shape[1])[:, None] * theta)
    z = torch.complex(x[..., :half].double(), x[..., half:].double()) * turn[:, None, :]
    return torch.cat([z.real, z.imag], -1).to(x.dtype)


def mixer_oracle(w: Weights, x: torch.Tensor, kind: str, H: int, eps: float, output_norm: str = "rmsnorm") -> Any:
    """The mixer's output on ``x [B, T, d]`` from fla-named weights ``w`` (``q_proj.weight``, ...), module doc."""
    bt = x.shape[:2]
    q, k, v = (x @ w[f"{n}_proj.weight"].T for n in "qkv")
    if "q_conv1d.weight" in w:
        q, k, v = (short_conv(y, w[f"{n}_conv1d.weight"]) for y, n in zip((q, k, v), "qkv", strict=True))
    q, k, v = q.view(*bt, H, -1), k.view(*bt, H, -1), v.view(*bt, H, -1)
    if kind == "retnet":
        heads = (t.transpose(1, 2) for t in (rope(q), rope(k), v))  # fla's retention oracle is head-major
        o = naive_retention(*heads).transpose(1, 2)
    else:
        gk = F.logsigmoid(x @ w["gk_proj.0.weight"].T @ w["gk_proj.1.weight"].T + w["gk_proj.1.bias"]) / 16
        o, _ = naive_recurrent_gla(q, k, v, gk.view_as(q))
    gate = (x @ w["g_proj.weight"].T).view_as(o)
    if output_norm == "rmsnorm":
        o = rms_norm_ref(o, w["g_norm_swish_gate.weight"], None, z=gate, eps=eps)
    else:  # GroupNorm over heads: a LayerNorm of each head's channels
        o = F.layer_norm(o, o.shape[-1:], w["g_norm.weight"], w["g_norm.bias"], eps) * F.silu(gate)
    return o.flatten(2) @ w["o_proj.weight"].T


def fla_names(mixer: LinearAttentionMixer) -> dict[str, torch.Tensor]:
    """Our mixer's weights under fla's names (the inverse of the converter's map, written out independently)."""
    rename = {"o_norm.weight": "g_norm_swish_gate.weight"}
    if isinstance(mixer.o_norm, torch.nn.LayerNorm):
        rename = {"o_norm.weight": "g_norm.weight", "o_norm.bias": "g_norm.bias"}
    rename |= {f"convs.{i}.weight": f"{n}_conv1d.weight" for i, n in enumerate("qkv")}
    return {rename.get(k, k): p.detach() for k, p in mixer.named_parameters()}


def perturb(module: torch.nn.Module, seed: int) -> None:
    """Seeded noise on every parameter, so that unit norm gains and zero biases prove their mapping too."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=gen))


def check_mixer(arch: str, kind: str, **overrides: Any) -> None:
    """Build ``arch``, take its first mixer, and compare forward and stepped outputs with the oracle."""
    torch.manual_seed(0)
    model: Any = edifice.build(arch, d_model=D, n_layers=1, n_heads=2, chunk_size=4, **overrides).eval()
    mixer = model.layers[0].mixer
    perturb(mixer, seed=3)
    x = torch.randn(B, T, D, generator=torch.Generator().manual_seed(1))
    c = model.config
    with torch.no_grad():
        want = mixer_oracle(fla_names(mixer), x, kind, c.n_heads, c.norm_eps, c.output_norm)
        torch.testing.assert_close(mixer(x), want, atol=TOL, rtol=TOL)
        # Recurrent form: a prefill of 4, then one token at a time, carrying conv histories and the state.
        state = mixer.init_state(B)
        positions = torch.arange(T).expand(B, T)
        pieces = [mixer(x[:, :4], positions=positions[:, :4], state=state)]
        pieces += [mixer(x[:, t : t + 1], positions=positions[:, t : t + 1], state=state) for t in range(4, T)]
    torch.testing.assert_close(torch.cat(pieces, 1), want, atol=TOL, rtol=TOL)


def no_decay(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: Any = None, **kwargs: Any) -> Any:
    """Linear attention with the decay dropped (γ = 1, α = 1): a plausible wrong mechanism for both entries."""
    from edifice.ops.linear_attention import linear_attention_reference

    return linear_attention_reference(q, k, v, None, **kwargs)


# -- signature tests ------------------------------------------------------------------------------------------------
RETNET_OPTIONS = {
    "paper": {},
    "fla": {"output_norm": "rmsnorm", "norm": "rmsnorm", "ffn": "swiglu"},
}
GLA_OPTIONS = {"paper": {}, "short-conv": {"use_short_conv": True, "expand_k": 1.0, "expand_v": 2.0}}


@signature("retnet")
@pytest.mark.parametrize("options", RETNET_OPTIONS.values(), ids=list(RETNET_OPTIONS))
def test_retnet_mixer_matches_fla_naive_retention(options: dict[str, Any]) -> None:
    check_mixer("retnet", "retnet", **options)


@signature("gla")
@pytest.mark.parametrize("options", GLA_OPTIONS.values(), ids=list(GLA_OPTIONS))
def test_gla_mixer_matches_fla_naive_recurrent_gla(options: dict[str, Any]) -> None:
    check_mixer("gla", "gla", **options)


@pytest.mark.parametrize(
    ("arch", "kind", "op", "wrong"),
    [
        ("retnet", "retnet", "linear_attention", None),
        ("retnet", "retnet", "linear_attention", no_decay),
        ("gla", "gla", "gated_linear_attention", None),
    ],
    ids=["retnet-exclusive", "retnet-no-decay", "gla-no-decay"],
)
def test_signature_fails_when_the_mechanism_breaks(arch: str, kind: str, op: str, wrong: Callable | None) -> None:
    with mutate_op(op, wrong), pytest.raises(AssertionError):
        check_mixer(arch, kind)


def test_retnet_decays_are_the_papers() -> None:
    """γ_h = 1 - 2^{-5-h} (eq. 8): 0.96875, 0.984375, ... for the heads, fixed (no parameter)."""
    model: Any = edifice.build("retnet", d_model=16, n_layers=1, n_heads=4, d_in=3)
    g = model.layers[0].mixer.log_decay(torch.zeros(1, 2, 16))
    torch.testing.assert_close(g[0, 0].exp(), 1 - 2.0 ** (-5.0 - torch.arange(4.0)))
    assert not any("decay" in name for name, _ in model.named_parameters())


def test_gla_gate_is_low_rank_with_temperature() -> None:
    """log α = logsigmoid(x W_α1 W_α2 + b_α) / 16 (§4.4): every decay lies in (2^{-1/16}·0, 1) ⊂ (0, 1)."""
    model: Any = edifice.build("gla", d_model=16, n_layers=1, n_heads=2, d_in=3, gate_low_rank_dim=4)
    mixer = model.layers[0].mixer
    assert mixer.gk_proj[0].weight.shape == (4, 16)
    with torch.no_grad():
        mixer.gk_proj[1].bias.fill_(-1e4)  # σ → 0: log α → -1e4 / 16, decays to 0 but stays finite
        g = mixer.log_decay(torch.zeros(1, 2, 16))
    torch.testing.assert_close(g, torch.full_like(g, -1e4 / 16))


def test_padding_is_exact() -> None:
    """Left-padded rows give the unpadded result: pads write nothing (k = 0) and decay nothing (g = 0)."""
    for arch in ("retnet", "gla"):
        model: Any = edifice.build(arch, d_model=16, n_layers=1, n_heads=2, d_in=5, use_short_conv=True).eval()
        x = torch.randn(1, 7, 5, generator=torch.Generator().manual_seed(2))
        padded = torch.cat([torch.randn(1, 3, 5), x], 1)
        mask = torch.tensor([[False] * 3 + [True] * 7])
        with torch.no_grad():
            torch.testing.assert_close(model(padded, attention_mask=mask)[:, 3:], model(x), atol=TOL, rtol=TOL)


# -- converters from fla checkpoints --------------------------------------------------------------------------------
def rms(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return x * torch.rsqrt(x.square().mean(-1, keepdim=True) + eps) * weight


def fla_model_oracle(sd: Weights, ids: torch.Tensor, kind: str, n_layers: int, H: int, eps: float) -> torch.Tensor:
    """fla's ``*ForCausalLM`` logits from its own state dict: pre-norm RMSNorm blocks, mixer, SwiGLU MLP."""
    h = sd["model.embeddings.weight"][ids]
    for i in range(n_layers):
        p = f"model.layers.{i}."
        attn = {k.removeprefix(p + "attn."): v for k, v in sd.items() if k.startswith(p + "attn.")}
        attn = {k: v.squeeze(1) if k.endswith("conv1d.weight") else v for k, v in attn.items()}
        h = h + mixer_oracle(attn, rms(h, sd[p + "attn_norm.weight"], eps), kind, H, eps)
        m = rms(h, sd[p + "mlp_norm.weight"], eps)
        gate, up, down = (sd[f"{p}mlp.{n}_proj.weight"] for n in ("gate", "up", "down"))
        h = h + (F.silu(m @ gate.T) * (m @ up.T)) @ down.T
    return rms(h, sd["model.norm.weight"], eps) @ sd["lm_head.weight"].T


FLA_MODELS = {
    "retnet": ("fla.models.RetNetForCausalLM", RetNetConfig, RetNetForCausalLM, {}),
    "gla": ("fla.models.GLAForCausalLM", GLAConfig, GLAForCausalLM, {"use_short_conv": True}),
}


@pytest.mark.parametrize("arch", list(FLA_MODELS))
def test_converter_from_fla_matches_its_weights(arch: str) -> None:
    name, config_cls, model_cls, extra = FLA_MODELS[arch]
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hf = config_cls(hidden_size=D, num_hidden_layers=2, num_heads=2, vocab_size=40, intermediate_size=24, **extra)
        fla_model = model_cls(hf)
    perturb(fla_model, seed=4)
    model: Any = edifice.convert(name, fla_model, chunk_size=4)
    assert model.config.arch == arch
    ids = torch.randint(0, 40, (B, T), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        want = fla_model_oracle(fla_model.state_dict(), ids, arch, 2, 2, hf.norm_eps)
        torch.testing.assert_close(model(input_ids=ids), want, atol=TOL, rtol=TOL)
    # The same from a (config dict, state dict) pair.
    again: Any = edifice.convert(name, (hf.to_dict(), fla_model.state_dict()), chunk_size=4)
    with torch.no_grad():
        torch.testing.assert_close(again(input_ids=ids), want, atol=TOL, rtol=TOL)


def test_converter_refuses_what_it_cannot_express() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hf = GLAConfig(hidden_size=D, num_hidden_layers=1, num_heads=2, num_kv_heads=1, vocab_size=40)
    with pytest.raises(edifice.CheckpointError, match="num_kv_heads=1 is not supported"):
        edifice.convert("fla.models.GLAForCausalLM", (hf, {}))
