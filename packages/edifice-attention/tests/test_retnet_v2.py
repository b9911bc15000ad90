"""Signature tests of ``retnet_v2`` (YOCO's gated retention) against flash-linear-attention's ``YOCOGatedRetention``.

fla's layer runs only through Triton, so the oracle recomputes it from a random set of its weights (fla's names) with
independent code and fla's pure-PyTorch ``naive_recurrent_simple_gla`` (the token loop of ``S_t = γ_t S_{t-1} +
k_t v_tᵀ``): projections as matrix products, YOCO's interleaved RoPE as a complex rotation of neighbouring channels,
``log γ = logsigmoid(x W_γ) / 16``, and the gain-free RMSNorm gated by ``swish(x W_G)`` with fla's ``rms_norm_ref``.
Our mixer gets those weights through :func:`map_yoco_gated_retention` (which permutes the q/k rows for the half-pair
rotation) and must match on a whole sequence (chunked form) and when stepped (prefill, then one token at a time).
"""

from __future__ import annotations

import warnings
from typing import Any

import pytest
import torch
import torch.nn.functional as F

import edifice
from edifice.testing import mutate_op, signature
from edifice_attention.retnet_v2 import map_yoco_gated_retention

with warnings.catch_warnings():  # fla warns that it runs on CPU; these functions are plain PyTorch
    warnings.simplefilter("ignore")
    from fla.modules.norm.layernorm_gated import rms_norm_ref
    from fla.ops.simple_gla.naive import naive_recurrent_simple_gla

torch.testing.assert_close(torch.zeros(1), torch.zeros(1))  # pay the first call's import at collection

TOL = 2e-5
B, T, D, H = 2, 11, 16, 2


def yoco_weights(seed: int) -> dict[str, torch.Tensor]:
    """A random ``YOCOGatedRetention(hidden_size=16, num_heads=2)`` state dict (fla's names and shapes)."""
    gen = torch.Generator().manual_seed(seed)
    shapes = {f"{n}_proj.weight": (D, D) for n in "qkvgo"} | {"gk_proj.weight": (H, D)}
    return {name: torch.randn(shape, generator=gen) * 0.3 for name, shape in shapes.items()}


def interleaved_rope(x: torch.Tensor, base: float = 10000.0) -> torch.Tensor:
    """YOCO's RoPE of ``x [B, T, H, d]`` at positions 0..T-1: pairs ``(x_2i, x_2i+1)`` rotated by ``t θ_i``."""
    d = x.shape[-1]
    theta = base ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)
    turn = torch.polar(torch.ones(x.shape[1], d // 2, dtype=torch.float64), torch.arange(x.shape[1])[:, None] * theta)
    z = torch.view_as_complex(x.double().reshape(*x.shape[:-1], d // 2, 2).contiguous()) * turn[:, None, :]
    return torch.view_as_real(z).reshape(x.shape).to(x.dtype)


def yoco_oracle(w: dict[str, torch.Tensor], x: torch.Tensor, eps: float) -> torch.Tensor:
    """``YOCOGatedRetention`` on ``x [B, T, d]`` from its weights (module doc)."""
    q, k, v, g = (x @ w[f"{n}_proj.weight"].T for n in "qkvg")
    q, k, v = (y.view(B, -1, H, D // H) for y in (q, k, v))
    gk = F.logsigmoid(x @ w["gk_proj.weight"].T) / 16
    o, _ = naive_recurrent_simple_gla(interleaved_rope(q), interleaved_rope(k), v, gk)
    o = rms_norm_ref(o, torch.ones(D // H), None, z=g.view_as(o), eps=eps)
    return o.flatten(2) @ w["o_proj.weight"].T


def check_mixer(**overrides: Any) -> None:
    model: Any = edifice.build("retnet_v2", d_model=D, n_layers=1, n_heads=H, chunk_size=4, **overrides).eval()
    mixer = model.layers[0].mixer
    w = yoco_weights(seed=3)
    mixer.load_state_dict(map_yoco_gated_retention(w, H), strict=True)
    x = torch.randn(B, T, D, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = yoco_oracle(w, x, model.config.norm_eps)
        torch.testing.assert_close(mixer(x), want, atol=TOL, rtol=TOL)
        state = mixer.init_state(B)
        positions = torch.arange(T).expand(B, T)
        pieces = [mixer(x[:, :4], positions=positions[:, :4], state=state)]
        pieces += [mixer(x[:, t : t + 1], positions=positions[:, t : t + 1], state=state) for t in range(4, T)]
    torch.testing.assert_close(torch.cat(pieces, 1), want, atol=TOL, rtol=TOL)


@signature("retnet_v2")
def test_gated_retention_matches_fla_yoco_gated_retention() -> None:
    check_mixer()


def fixed_decay(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: Any = None, **kwargs: Any) -> Any:
    """RetNet's retention with its fixed γ_h in place of the data-dependent γ_t: v1 where v2 is asked."""
    from edifice.ops.linear_attention import linear_attention_reference
    from edifice_attention.retnet import retention_decays

    fixed = retention_decays(q.shape[2]).expand(*q.shape[:3])
    return linear_attention_reference(q, k, v, fixed, **kwargs)


@pytest.mark.parametrize("wrong", [None, fixed_decay], ids=["exclusive", "fixed-decay"])
def test_signature_fails_when_the_mechanism_breaks(wrong: Any) -> None:
    with mutate_op("linear_attention", wrong), pytest.raises(AssertionError):
        check_mixer()


def test_decay_is_data_dependent_and_in_range() -> None:
    """γ_t = σ(x W_γ)^{1/16} ∈ (0, 1): different inputs give different decays, one per head."""
    model: Any = edifice.build("retnet_v2", d_model=16, n_layers=1, n_heads=2, d_in=3)
    mixer = model.layers[0].mixer
    x = torch.randn(1, 5, 16, generator=torch.Generator().manual_seed(0))
    g = mixer.log_decay(x)
    assert g.shape == (1, 5, 2) and (g < 0).all() and g.std() > 0
    with torch.no_grad():
        torch.testing.assert_close(g, F.logsigmoid(x @ mixer.gk_proj.weight.T) / 16)
    assert mixer.o_norm.weight is None  # YOCO's per-head RMSNorm has no gain


def test_mapping_refuses_unknown_keys() -> None:
    with pytest.raises(edifice.CheckpointError, match="unexpected keys"):
        map_yoco_gated_retention({**yoco_weights(0), "g_norm.weight": torch.ones(8)}, H)
