"""Signature tests of delta_net, gated_delta_net and delta_product: each mixer against an oracle from the papers.

The oracle recomputes a layer from its weights with independent code: projections as matrix products, the short
convolution as a padded ``F.conv1d``, the recurrence with flash-linear-attention's naive token loops
(``delta_rule_recurrence``, ``naive_recurrent_gated_delta_rule``) or, for DeltaProduct, an explicit loop over tokens
and Householder steps (Siems et al. 2025, eq. 4), and the output norm with fla's ``rms_norm_ref``. The mixer must match
it both on a whole sequence (chunked WY form) and when stepped through the sequence in pieces (recurrent form).
"""

from __future__ import annotations

import warnings
from typing import Any

import pytest
import torch
import torch.nn.functional as F

import edifice
from edifice.testing import redraw_parameters, signature
from edifice_recurrent._delta_layers import DeltaMixer

with warnings.catch_warnings():  # fla warns that it runs on CPU; these functions are plain PyTorch
    warnings.simplefilter("ignore")
    from fla.modules.norm.layernorm_gated import rms_norm_ref
    from fla.ops.delta_rule.naive import delta_rule_recurrence
    from fla.ops.gated_delta_rule.naive import naive_recurrent_gated_delta_rule

# The first assert_close of a process imports torch.distributed.tensor (seconds): pay it at collection.
torch.testing.assert_close(torch.zeros(1), torch.zeros(1))

TOL = 2e-5
B, T, D_IN = 2, 11, 16


def short_conv(y: torch.Tensor, conv: Any) -> torch.Tensor:
    """SiLU of the causal depthwise convolution of ``y [B, T, C]`` (left zero padding of K - 1)."""
    K = conv.weight.shape[1]
    out = F.conv1d(F.pad(y.transpose(1, 2), (K - 1, 0)), conv.weight[:, None], conv.bias, groups=y.shape[-1])
    return F.silu(out.transpose(1, 2))


def l2(x: torch.Tensor) -> torch.Tensor:
    return x / torch.sqrt((x * x).sum(-1, keepdim=True) + 1e-6)


def householder_loop(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, beta: torch.Tensor, g: torch.Tensor | None
) -> torch.Tensor:
    """DeltaProduct eq. 4 per token: S <- α (I - β_1 k_1 k_1ᵀ) S + β_1 k_1 v_1ᵀ, then the remaining n_h - 1 steps.

    q ``[B, T, H, K]``, k ``[B, T, n, H, K]``, v ``[B, T, n, H, V]``, beta ``[B, T, n, H]``, g ``[B, T, H]``.
    """
    b, t_len, n, h, dk = k.shape
    S = torch.zeros(b, h, dk, v.shape[-1])
    outs = []
    for t in range(t_len):
        if g is not None:
            S = S * g[:, t].exp()[..., None, None]
        for j in range(n):
            kj, vj, bj = k[:, t, j], v[:, t, j], beta[:, t, j][..., None, None]
            S = S - bj * kj[..., :, None] * torch.einsum("bhk,bhkv->bhv", kj, S)[..., None, :]
            S = S + bj * kj[..., :, None] * vj[..., None, :]
        outs.append(torch.einsum("bhk,bhkv->bhv", q[:, t] * dk**-0.5, S))
    return torch.stack(outs, 1)


def oracle(mixer: DeltaMixer, x: torch.Tensor) -> torch.Tensor:
    """The mixer's output on ``x [B, T, d]`` recomputed from its weights (module doc)."""
    H, K, V, n = mixer.n_heads, mixer.head_dim, mixer.head_v_dim, mixer.n_householder
    bt = x.shape[:2]
    assert mixer.convs is not None
    q = short_conv(x @ mixer.q_proj.weight.T, mixer.convs[0])
    k = short_conv(x @ mixer.k_proj.weight.T, mixer.convs[1])
    v = short_conv(x @ mixer.v_proj.weight.T, mixer.convs[2])
    q, k, v = l2(q.view(*bt, H, K)), l2(k.view(*bt, n, H, K)), v.view(*bt, n, H, V)
    beta = torch.sigmoid(x @ mixer.b_proj.weight.T).view(*bt, n, H) * (2.0 if mixer.allow_neg_eigval else 1.0)
    g = None
    if mixer.gated:
        assert mixer.a_proj is not None and mixer.A_log is not None and mixer.dt_bias is not None
        g = -mixer.A_log.exp() * F.softplus(x @ mixer.a_proj.weight.T + mixer.dt_bias)  # (B, T, H)
    if n > 1:
        o = householder_loop(q, k, v, beta, g)
    elif g is not None:
        o, _ = naive_recurrent_gated_delta_rule(q, k[:, :, 0], v[:, :, 0], beta[:, :, 0], g, output_final_state=True)
    else:
        heads = (t.transpose(1, 2) for t in (q, k[:, :, 0], v[:, :, 0], beta[:, :, 0]))  # fla's [B, H, T, *] layout
        o, _ = delta_rule_recurrence(*heads)
        o = o.transpose(1, 2)
    gate = None if mixer.g_proj is None else (x @ mixer.g_proj.weight.T).view(*bt, H, V)
    o = rms_norm_ref(o, mixer.o_norm_weight, None, z=gate, eps=mixer.norm_eps)
    return o.flatten(2) @ mixer.o_proj.weight.T


def check_mixer(arch: str, **overrides: Any) -> None:
    """Build ``arch``, take its first mixer, and compare forward and stepped outputs with the oracle."""
    torch.manual_seed(0)
    model = edifice.build(arch, d_model=D_IN, n_layers=1, n_heads=2, head_dim=4, chunk_size=4, **overrides).eval()
    mixer = model.layers[0].mixer
    assert isinstance(mixer, DeltaMixer)
    # Every parameter redrawn: the N(0, 0.02) weights and unit gains of the initialisation would hide a wrong one.
    redraw_parameters(mixer, seed=2)
    x = torch.randn(B, T, D_IN, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = oracle(mixer, x)
        torch.testing.assert_close(mixer(x), want, atol=TOL, rtol=TOL)
        # Recurrent form: a prefill of 4, then one token at a time, carrying conv histories and the state.
        state = mixer.init_state(B)
        pieces = [mixer(x[:, :4], state=state)] + [mixer(x[:, t : t + 1], state=state) for t in range(4, T)]
    torch.testing.assert_close(torch.cat(pieces, 1), want, atol=TOL, rtol=TOL)


@signature("delta_net")
@pytest.mark.parametrize("options", [{}, {"use_gate": True, "allow_neg_eigval": True}], ids=["paper", "gated-out"])
def test_delta_net_mixer_matches_fla_naive_delta_rule(options: dict[str, Any]) -> None:
    check_mixer("delta_net", **options)


@signature("gated_delta_net")
@pytest.mark.parametrize("options", [{}, {"use_gate": False, "expand_v": 1.0}], ids=["paper", "no-out-gate"])
def test_gated_delta_net_mixer_matches_fla_naive_gated_delta_rule(options: dict[str, Any]) -> None:
    check_mixer("gated_delta_net", **options)


@signature("delta_product")
@pytest.mark.parametrize(
    "options",
    [{"n_householder": 2}, {"n_householder": 3, "use_forget_gate": True, "allow_neg_eigval": False}],
    ids=["nh2", "nh3-gated"],
)
def test_delta_product_mixer_matches_householder_loop(options: dict[str, Any]) -> None:
    check_mixer("delta_product", **options)
