"""Signature tests of ``rla`` (and the shared code of ``rdn``): an fp64 token loop of the paper's recurrence.

The oracle recomputes a whole mixer from its weights with independent code (projections as matrix products, the
short convolutions with ``F.conv1d``, the Mamba-2 decay, L2-normalised q and k) and then runs Lai et al.'s equations
one token at a time in their own layout, states ``S, R ∈ R^{d_v×d_k}``:

    r_t = Clip(v_t - S_{t-1} k_t),   S_t = α_t S_{t-1} [(I - β_t k_t k_tᵀ)] + β_t v_t k_tᵀ,
    R_t = α_t R_{t-1} [(I - γ_t k_t k_tᵀ)] + γ_t r_t k_tᵀ,   o_t = α_t S_{t-1} q_t + γ_t R_t q_t

(bracketed factors: RDN only). The clip threshold is small enough that clipping is active. The mixer must match on a
whole sequence (chunked), when stepped, and from a non-zero state; its op forms agree at odd lengths.
"""

from __future__ import annotations

import importlib.util
import pathlib
from typing import Any

import pytest
import torch
import torch.nn.functional as F

import edifice
from edifice.ops.linear_attention import linear_attention_parallel, linear_attention_recurrent
from edifice.testing import mutate_op, signature

B, T, D, H = 2, 13, 16, 2
CLIP = 0.3
#: fp64 inputs, but not fp64 throughout: the shared layer's read-out norm and gate, and the chunk hand-over of
#: ``ops.linear_recurrence``, compute in fp32. A wrong mechanism is off by O(0.1).
OUT = STATE = {"atol": 2e-6, "rtol": 2e-6}


def projections(mixer: Any, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """q, k, v ``[B, T, H, d]`` and the gates ``[B, T, H]`` from the mixer's weights (fp64, whole sequence)."""
    w = {name: p.detach().double() for name, p in mixer.named_parameters()}
    n = x.shape[1]
    out = {}
    for i, name in enumerate("qkv"):
        h = x @ w[f"{name}_proj.weight"].T  # (B, T, C)
        conv = w[f"convs.{i}.weight"]  # (C, K)
        h = F.conv1d(F.pad(h.transpose(1, 2), (conv.shape[1] - 1, 0)), conv[:, None], groups=conv.shape[0])
        out[name] = F.silu(h.transpose(1, 2)).view(B, n, H, -1)
    out["q"], out["k"] = (out[n] / out[n].norm(dim=-1, keepdim=True) for n in "qk")
    out["alpha"] = torch.exp(-w["A_log"].exp() * F.softplus(x @ w["a_proj.weight"].T + w["dt_bias"]))
    out["beta"] = torch.sigmoid(x @ w["b_proj.weight"].T)
    out["gamma"] = torch.sigmoid(x @ w["c_proj.weight"].T)
    return out


def paper_loop(p: dict[str, torch.Tensor], delta: bool, S: torch.Tensor, R: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The recurrence of the module doc, token by token; S, R ``[B, H, d_v, d_k]``. Returns (o, S, R, clipped)."""
    q, k, v = p["q"] * p["q"].shape[-1] ** -0.5, p["k"], p["v"]
    eye = torch.eye(k.shape[-1], dtype=k.dtype)
    outs, clipped = [], False
    for t in range(q.shape[1]):
        a, b, c = (p[n][:, t, :, None, None] for n in ("alpha", "beta", "gamma"))
        kt, vt, qt = k[:, t], v[:, t], q[:, t]
        residual = vt - (S @ kt[..., None])[..., 0]
        clipped |= bool((residual.abs() > CLIP).any())
        r = residual.clamp(-CLIP, CLIP)
        outer_k = kt[..., :, None] * kt[..., None, :]
        base = a[..., 0] * (S @ qt[..., None])[..., 0]
        S_new = a * (S @ (eye - b * outer_k) if delta else S) + b * vt[..., :, None] * kt[..., None, :]
        R = a * (R @ (eye - c * outer_k) if delta else R) + c * r[..., :, None] * kt[..., None, :]
        outs.append(base + c[..., 0] * (R @ qt[..., None])[..., 0])
        S = S_new
    return torch.stack(outs, 1), S, R, torch.tensor(clipped)


def oracle(mixer: Any, x: torch.Tensor, delta: bool, S0: torch.Tensor, R0: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The mixer's output from the paper's loop, then per-head RMSNorm, SiLU gate and W_O."""
    w = {name: p.detach().double() for name, p in mixer.named_parameters()}
    o, S, R, clipped = paper_loop(projections(mixer, x), delta, S0, R0)
    o = o * torch.rsqrt(o.square().mean(-1, keepdim=True) + mixer.o_norm.eps) * w["o_norm.weight"]
    o = o * F.silu(x @ w["g_proj.weight"].T).view_as(o)
    return o.flatten(2) @ w["o_proj.weight"].T, S, R, clipped


def build_mixer(name: str, seed: int = 0) -> Any:
    torch.manual_seed(seed)
    model: Any = edifice.build(name, d_model=D, n_layers=1, n_heads=H, chunk_size=4, clip_threshold=CLIP)
    mixer = model.layers[0].mixer.double().eval()
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():  # larger weights: decays well below one, residuals beyond the clip
        for p in mixer.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return mixer


def check_mixer(name: str) -> None:
    """Whole sequence from zero, stepped (prefill + single tokens), and from a non-zero state, against the loop."""
    delta = name == "rdn"
    mixer = build_mixer(name)
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(B, T, D, generator=gen, dtype=torch.float64)
    V, K = D // H, D // H
    zero = torch.zeros(B, H, V, K, dtype=torch.float64)
    with torch.no_grad():
        want, S, R, clipped = oracle(mixer, x, delta, zero, zero)
        assert clipped, "the residual clip must be active for the test to cover it"
        torch.testing.assert_close(mixer(x), want, **OUT)
        state = mixer.init_state(B, dtype=torch.float64)
        state.recurrent = state.recurrent.double()
        pieces = [mixer(x[:, :5], state=state)] + [mixer(x[:, t : t + 1], state=state) for t in range(5, T)]
        torch.testing.assert_close(torch.cat(pieces, 1), want, **OUT)
        # the state is [S, R] (transposed to [d_k, d_v]); continuing from it is the loop from S_T, R_T
        torch.testing.assert_close(state.recurrent, torch.cat([S, R], -2).transpose(-1, -2), **STATE)
        y = torch.randn(B, 6, D, generator=gen, dtype=torch.float64)
        full = oracle(mixer, torch.cat([x, y], 1), delta, zero, zero)[0][:, T:]
        torch.testing.assert_close(mixer(y, state=state), full, **OUT)


@signature("rla")
def test_rla_matches_the_papers_recurrence_in_fp64() -> None:
    check_mixer("rla")


def test_rla_signature_fails_when_the_diagonal_is_lost() -> None:
    with mutate_op("linear_attention"), pytest.raises(AssertionError):
        check_mixer("rla")


def test_the_residual_state_matters() -> None:
    """With γ forced to zero (no correction) the output is plain gated linear attention's base read-out: different."""
    mixer = build_mixer("rla")
    x = torch.randn(1, 9, D, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    with torch.no_grad():
        full = mixer(x)
        mixer.c_proj.weight.fill_(0.0)
        mixer.c_proj.weight.data[:] = -1e4 * torch.sign(x.mean((0, 1)))[None]  # γ ≈ 0 on these inputs
        assert not torch.allclose(full, mixer(x), atol=1e-4)


def test_config_and_state() -> None:
    with pytest.raises(edifice.ConfigError, match="clip_threshold"):
        edifice.config("rla", clip_threshold=0.0)
    with pytest.raises(edifice.ConfigError, match="variant"):
        edifice.config("rla", variant="delta")  # fixed by the name: build 'rdn'
    assert edifice.config("rdn").variant == "delta" and edifice.config("rla").variant == "linear"
    model: Any = edifice.build("rla", d_model=D, n_layers=1, n_heads=H)
    assert model.layers[0].mixer.init_state(3).recurrent.shape == (3, H, D // H, 2 * D // H)  # [S, R]
    A = model.layers[0].mixer.A_log.exp()
    assert ((A >= 1) & (A <= 16)).all()


def test_padding_is_exact() -> None:
    model: Any = edifice.build("rla", d_model=D, n_layers=1, n_heads=H, d_in=5).eval()
    x = torch.randn(1, 7, 5, generator=torch.Generator().manual_seed(2))
    padded = torch.cat([torch.randn(1, 3, 5), x], 1)
    mask = torch.tensor([[False] * 3 + [True] * 7])
    with torch.no_grad():
        torch.testing.assert_close(model(padded, attention_mask=mask)[:, 3:], model(x), atol=2e-5, rtol=2e-5)


# -- three forms of the op inside the model ------------------------------------------------------------------------
_spec = importlib.util.spec_from_file_location(
    "_flash", pathlib.Path(__file__).with_name("test_flash_linear_attention.py")
)
assert _spec is not None and _spec.loader is not None
flash_tests = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(flash_tests)


def forms_agree(name: str, op: str, forms: dict[str, Any], length: int) -> None:
    """fp32 chunk hand-over (see ``STATE``); the gradient, summed over T positions, gets ten times that."""
    flash_tests.forms_agree(build_mixer(name), length, op, forms, STATE["atol"], 10 * STATE["atol"])


@pytest.mark.parametrize("length", [1, 63, 130])
def test_rla_chunked_parallel_and_recurrent_forms_agree(length: int) -> None:
    forms = {"parallel": linear_attention_parallel, "recurrent": linear_attention_recurrent}
    forms_agree("rla", "linear_attention", forms, length)
