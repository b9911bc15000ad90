"""Signature tests of ``gla_v2`` (GLA with short convolutions) against flash-linear-attention's GLA layer.

fla's ``GatedLinearAttention(use_short_conv=True)`` runs only through Triton, so the oracle recomputes it from its
weights (fla's names) with independent code and fla's pure-PyTorch ``naive_recurrent_gla``: each of q, k, v is
``SiLU`` of a left-zero-padded depthwise ``F.conv1d`` of its projection, ``log α = logsigmoid(x W_α1 W_α2 + b_α)/16``,
and the read-out ``RMSNorm_h(o) ⊙ swish(x W_g)`` (fla's ``rms_norm_ref``) through ``W_o``. Our mixer (weights
mapped by the converter's key map, conftest's ``fla_oracle``) must match whole and stepped; removing the short
convolutions, or a short convolution that forgets its history between steps, must fail. The forget-gate init is
checked by its statistics.
"""

from __future__ import annotations

import warnings
from contextlib import ExitStack
from typing import Any

import pytest
import torch
import torch.nn.functional as F

import edifice
from edifice.testing import mutate_op, signature

with warnings.catch_warnings():  # fla warns that it runs on CPU; these functions are plain PyTorch
    warnings.simplefilter("ignore")
    from fla.models import GLAConfig, GLAForCausalLM
    from fla.modules.norm.layernorm_gated import rms_norm_ref
    from fla.ops.gla.naive import naive_recurrent_gla

torch.testing.assert_close(torch.zeros(1), torch.zeros(1))  # pay the first call's import at collection

TOL = 2e-5
B, T, D, H = 2, 11, 16, 2


def fla_layer_weights(seed: int, key_dim: int = 8, value_dim: int = 16, taps: int = 4) -> dict[str, torch.Tensor]:
    """A random fla ``GatedLinearAttention(use_short_conv=True)`` state dict (its names, ``nn.Conv1d`` shapes)."""
    gen = torch.Generator().manual_seed(seed)
    shapes = {
        "q_proj.weight": (key_dim, D),
        "k_proj.weight": (key_dim, D),
        "v_proj.weight": (value_dim, D),
        "g_proj.weight": (value_dim, D),
        "o_proj.weight": (D, value_dim),
        "gk_proj.0.weight": (16, D),
        "gk_proj.1.weight": (key_dim, 16),
        "gk_proj.1.bias": (key_dim,),
        "q_conv1d.weight": (key_dim, 1, taps),
        "k_conv1d.weight": (key_dim, 1, taps),
        "v_conv1d.weight": (value_dim, 1, taps),
        "g_norm_swish_gate.weight": (value_dim // H,),
    }
    return {name: torch.randn(shape, generator=gen) * 0.4 for name, shape in shapes.items()}


def gla_short_conv_oracle(w: dict[str, torch.Tensor], x: torch.Tensor, eps: float) -> torch.Tensor:
    """fla's GLA layer with short convolutions on ``x [B, T, d]`` (module doc)."""
    heads = []
    for name in "qkv":
        kernel = w[f"{name}_conv1d.weight"]
        y = (x @ w[f"{name}_proj.weight"].T).transpose(1, 2)  # (B, C, T)
        y = F.conv1d(F.pad(y, (kernel.shape[-1] - 1, 0)), kernel, groups=kernel.shape[0])
        heads.append(F.silu(y).transpose(1, 2).reshape(B, -1, H, kernel.shape[0] // H))
    q, k, v = heads
    gk = F.logsigmoid(x @ w["gk_proj.0.weight"].T @ w["gk_proj.1.weight"].T + w["gk_proj.1.bias"]) / 16
    o, _ = naive_recurrent_gla(q, k, v, gk.view_as(q))
    o = rms_norm_ref(o, w["g_norm_swish_gate.weight"], None, z=(x @ w["g_proj.weight"].T).view_as(o), eps=eps)
    return o.flatten(2) @ w["o_proj.weight"].T


def check_mixer(fla_oracle: Any, **overrides: Any) -> None:
    model: Any = edifice.build("gla_v2", d_model=D, n_layers=1, n_heads=H, chunk_size=4, **overrides).eval()
    mixer = model.layers[0].mixer
    w = fla_layer_weights(seed=3)
    fla_oracle.load_layer(mixer, w, strict=False)  # without short convolutions their weights are left out
    x = torch.randn(B, T, D, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = gla_short_conv_oracle(w, x, model.config.norm_eps)
        torch.testing.assert_close(mixer(x), want, atol=TOL, rtol=TOL)
        state = mixer.init_state(B)
        pieces = [mixer(x[:, :4], state=state)] + [mixer(x[:, t : t + 1], state=state) for t in range(4, T)]
    torch.testing.assert_close(torch.cat(pieces, 1), want, atol=TOL, rtol=TOL)


@signature("gla_v2")
def test_gla_v2_mixer_matches_fla_gla_with_short_convolutions(fla_oracle: Any) -> None:
    check_mixer(fla_oracle)


@pytest.mark.parametrize(
    ("op", "overrides"),
    [
        ("gated_linear_attention", {}),  # α = 1: no forgetting
        ("causal_conv1d", {}),  # a short convolution that forgets its history between steps
        (None, {"use_short_conv": False}),  # plain GLA (v1) in place of v2
    ],
    ids=["no-decay", "stateless-conv", "no-short-conv"],
)
def test_signature_fails_when_the_mechanism_breaks(op: str | None, overrides: dict[str, Any], fla_oracle: Any) -> None:
    with ExitStack() as stack:
        if op is not None:
            stack.enter_context(mutate_op(op))
        with pytest.raises(AssertionError):
            check_mixer(fla_oracle, **overrides)


def test_forget_gate_init_gives_long_memory() -> None:
    """b_α = forget_gate_init in every layer: at x = 0, α = σ(3)^{1/16} ≈ 0.997, where GLA's zero bias gives 0.958."""
    model: Any = edifice.build("gla_v2", d_model=16, n_layers=2, n_heads=2, d_in=3, gate_low_rank_dim=4)
    for layer in model.layers:
        bias = layer.mixer.gk_proj[1].bias
        torch.testing.assert_close(bias, torch.full_like(bias, 3.0))
        alpha = layer.mixer.log_decay(torch.zeros(1, 1, 16)).exp()
        torch.testing.assert_close(alpha, torch.full_like(alpha, torch.sigmoid(torch.tensor(3.0)).item() ** (1 / 16)))
    gla: Any = edifice.build("gla", d_model=16, n_layers=1, n_heads=2, d_in=3, gate_low_rank_dim=4)
    assert not gla.layers[0].mixer.gk_proj[1].bias.any()  # the v1 init differs
    custom: Any = edifice.build("gla_v2", d_model=16, n_layers=1, n_heads=2, forget_gate_init=-1.0)
    assert (custom.layers[0].mixer.gk_proj[1].bias == -1.0).all()


def test_catalogue_options() -> None:
    """``head_dim`` sets the key size per head; ``conv_kernel_size`` is the short convolutions' taps."""
    model: Any = edifice.build("gla_v2", d_model=16, n_layers=1, n_heads=2, head_dim=6, conv_kernel_size=3)
    mixer = model.layers[0].mixer
    assert mixer.q_proj.weight.shape == (12, 16) and mixer.gk_proj[1].weight.shape == (12, 16)
    assert mixer.convs[0].kernel_size == 3
    with pytest.raises(ValueError, match="head_dim"):
        edifice.config("gla_v2", head_dim=0)


def test_converter_from_fla_keeps_the_short_convolutions() -> None:
    """fla's ``GLAForCausalLM(use_short_conv=True)`` -> ``gla_v2`` gives the same logits as -> ``gla``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hf = GLAConfig(hidden_size=D, num_hidden_layers=2, num_heads=2, vocab_size=40, use_short_conv=True)
        fla_model = GLAForCausalLM(hf)
    from edifice_attention.gla_v2 import from_fla

    model: Any = from_fla(fla_model, chunk_size=4).eval()
    assert model.config.arch == "gla_v2" and model.config.use_short_conv
    reference: Any = edifice.convert("fla.models.GLAForCausalLM", fla_model, chunk_size=4)
    ids = torch.randint(0, 40, (B, T), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids), reference(input_ids=ids), atol=TOL, rtol=TOL)
