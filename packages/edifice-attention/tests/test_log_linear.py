"""Signature and property tests of ``log_linear`` (Log-Linear Mamba-2, Guo et al. 2025).

fla's ``LogLinearMamba2`` layer runs only through its CUDA/Triton kernels (its CPU forward raises), so the CPU oracle
recomputes the layer from its weights with independent code around fla's pure-PyTorch ``naive_log_linear_attn`` (the
authors' masked form ``O = (Q Kᵀ ⊙ M^S ⊙ M^H) V``, eq. 7), in fp64; the GPU test compares with fla's layer itself.
With every λ equal the layer must be Mamba-2 (scalar-decay linear attention) scaled by that λ.
"""

from __future__ import annotations

import warnings
from typing import Any

import pytest
import torch
import torch.nn.functional as F

import edifice
from edifice import ops
from edifice.testing import mutate_op, signature

with warnings.catch_warnings():  # fla warns that it runs on CPU; its naive op is plain PyTorch
    warnings.simplefilter("ignore")
    from fla.ops.log_linear_attn.naive import naive_log_linear_attn

torch.testing.assert_close(torch.zeros(1), torch.zeros(1))

B, D = 2, 16


def build(seed: int = 0, **overrides: Any) -> Any:
    torch.manual_seed(seed)
    fields = {"d_model": D, "n_layers": 1, "n_heads": 2, "d_state": 8, "num_levels": 7, "chunk_size": 8, **overrides}
    model: Any = edifice.build("log_linear", **fields).eval()
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():  # move every parameter off its init (Λ = 1, D = 1) so each one is observable
        for p in model.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return model


def rms(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return x * torch.rsqrt(x.square().mean(-1, keepdim=True) + eps) * weight


def mixer_oracle(mixer: Any, x: torch.Tensor, *, flat: bool = False) -> torch.Tensor:
    """The layer of the module doc from the mixer's weights, its attention from fla's naive masked form (fp64)."""
    c = mixer.config
    H, L, N, P, inner = c.n_heads, c.num_levels, c.d_state, c.head_dim, c.inner_dim
    w = {k: p.detach().double() for k, p in mixer.named_parameters()}
    x = x.double()
    Bsz, T, _ = x.shape
    proj = x @ w["in_proj.weight"].T + w.get("in_proj.bias", 0)
    z, xbc, dt, dl = proj.split([inner, inner + 2 * N, H, H * L], dim=-1)
    kern = w["conv.weight"]  # [C, K]: y_t = Σ_j kern[:, j] x_{t - (K-1) + j}
    xbc_p = F.pad(xbc.transpose(1, 2), (kern.shape[1] - 1, 0))
    xbc = F.silu(F.conv1d(xbc_p, kern[:, None], w.get("conv.bias"), groups=kern.shape[0]).transpose(1, 2))
    xs, Bm, Cm = xbc.split([inner, N, N], dim=-1)
    dt = F.softplus(dt + w["dt_bias"])
    g = -torch.exp(w["A_log"]) * dt
    lam = F.softplus(w["level_weight"] * dl.view(Bsz, T, H, L))
    v = xs.view(Bsz, T, H, P) * dt[..., None]
    q, k = Cm[:, :, None].expand(Bsz, T, H, N), Bm[:, :, None].expand(Bsz, T, H, N)
    if flat:  # every λ the same constant: Mamba-2's attention (the linear-attention op) times that constant
        y, _ = ops.linear_attention(q, k, v, g, scale=1.0)
        y = y * lam[0, 0, 0, 0]
    else:
        y = naive_log_linear_attn(q, k, v, g, lam, scale=1.0)
    y = y + w["D"][:, None] * xs.view(Bsz, T, H, P)
    y = rms(y.flatten(2) * F.silu(z), w["norm.weight"], c.norm_eps)
    return y @ w["out_proj.weight"].T + w.get("out_proj.bias", 0)


def check_mixer(T: int = 21, dtype: torch.dtype = torch.float64) -> None:
    """Whole sequence, and prefill + single steps, against the fp64 oracle."""
    model = build().to(dtype)
    mixer = model.layers[0].mixer
    x = torch.randn(B, T, D, generator=torch.Generator().manual_seed(3), dtype=dtype)
    tol = 1e-6 if dtype == torch.float64 else 2e-5  # core rms_norm computes in fp32 even for fp64 input
    with torch.no_grad():
        want = mixer_oracle(mixer, x).to(dtype)
        torch.testing.assert_close(mixer(x), want, atol=tol, rtol=tol)
        state = mixer.init_state(B, dtype=dtype)
        state.levels = state.levels.to(dtype)
        cut = T // 3
        pos = torch.arange(T).expand(B, T)
        pieces = [mixer(x[:, :cut], positions=pos[:, :cut], state=state)]
        pieces += [mixer(x[:, t : t + 1], positions=pos[:, t : t + 1], state=state) for t in range(cut, T)]
    torch.testing.assert_close(torch.cat(pieces, 1), want, atol=tol, rtol=tol)


@signature("log_linear")
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
def test_log_linear_mixer_matches_the_masked_form_oracle(dtype: torch.dtype) -> None:
    check_mixer(dtype=dtype)


def test_signature_fails_without_the_level_weights() -> None:
    with mutate_op("log_linear_attention"), pytest.raises(AssertionError):
        check_mixer()


def test_equal_level_weights_reduce_to_mamba2() -> None:
    model = build().double()
    mixer = model.layers[0].mixer
    with torch.no_grad():
        mixer.level_weight.zero_()  # λ = softplus(0 · dλ) = log 2 at every level, head and step
    x = torch.randn(B, 19, D, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    with torch.no_grad():
        got = mixer(x)
        torch.testing.assert_close(got, mixer_oracle(mixer, x, flat=True), atol=1e-6, rtol=1e-6)
        with torch.no_grad():
            mixer.level_weight.normal_()
        assert (mixer(x) - got).abs().max() > 1e-3  # with unequal λ it is not Mamba-2


@pytest.mark.parametrize(
    ("T", "chunk"),
    [(1, 8), (21, 8), pytest.param(63, 16, marks=pytest.mark.slow), pytest.param(130, 32, marks=pytest.mark.slow)],
    ids=["T1", "T21-C8", "T63-C16", "T130-C32"],
)
def test_forward_equals_prefill_and_steps_from_a_nonzero_state(T: int, chunk: int) -> None:
    model = build(chunk_size=chunk, n_layers=2)
    x = torch.randn(B, T + 5, D, generator=torch.Generator().manual_seed(T))
    with torch.no_grad():
        want = model(x)
        state = model.init_state(B)
        head, _ = model.step(x[:, :5], state)  # a non-zero state before the segment under test
        y = [model.step(x[:, 5 : 5 + T], state)[0]]  # chunked continuation from it
        state2 = model.init_state(B)
        model.step(x[:, :5], state2)
        y2 = [model.step(x[:, t : t + 1], state2)[0] for t in range(5, T + 5)]  # the recurrence
    torch.testing.assert_close(torch.cat([head, *y], 1), want, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(torch.cat([head, *y2], 1), want, atol=1e-4, rtol=1e-4)
    for a, b in zip(state.layers, state2.layers, strict=True):
        torch.testing.assert_close(a.levels, b.levels, atol=1e-4, rtol=1e-4)
        assert a.levels.shape[2] == model.config.num_levels  # O(log T) states, not a cache


def test_op_matches_fla_naive_log_linear_attn() -> None:
    gen = torch.Generator().manual_seed(5)
    T, L = 37, 7
    q, k = torch.randn(2, T, 2, 3, generator=gen), torch.randn(2, T, 2, 3, generator=gen)
    v, lam = torch.randn(2, T, 2, 4, generator=gen), torch.rand(2, T, 2, L, generator=gen)
    g = -torch.rand(2, T, 2, generator=gen) * 0.3
    got, _ = ops.log_linear_attention(q, k, v, g, lam, chunk_size=8)
    torch.testing.assert_close(got, naive_log_linear_attn(q, k, v, g, lam, scale=None), atol=1e-5, rtol=1e-5)


def test_bad_config_and_padding_raise() -> None:
    with pytest.raises(ValueError, match="chunk_size"):
        edifice.build("log_linear", chunk_size=12)
    with pytest.raises(ValueError, match="n_heads"):
        edifice.build("log_linear", d_model=10, n_heads=3)
    model = build()
    mask = torch.ones(1, 4, dtype=torch.bool)
    mask[0, 0] = False
    with pytest.raises(ValueError, match="padding"):
        model(torch.randn(1, 4, D), attention_mask=mask)


@pytest.mark.gpu
def test_matches_fla_log_linear_mamba2_on_cuda() -> None:
    """fla's own layer (Triton kernels) with our weights mapped onto it, fp32."""
    from fla.layers import LogLinearMamba2

    from edifice_attention.log_linear import mixer_kwargs

    model = build(num_levels=15, chunk_size=64, d_state=16).float().cuda()
    mixer = model.layers[0].mixer
    ref = LogLinearMamba2(**{**mixer_kwargs(mixer), "backend": "triton"}).cuda().float().eval()
    sd = {
        "in_proj.weight": mixer.in_proj.weight,
        "conv1d.weight": mixer.conv.weight[:, None],
        "conv1d.bias": mixer.conv.bias,
        "dt_bias": mixer.dt_bias,
        "A_log": mixer.A_log,
        "L": mixer.level_weight,
        "D": mixer.D,
        "norm.weight": mixer.norm.weight,
        "out_proj.weight": mixer.out_proj.weight,
    }
    ref.load_state_dict({k: v.detach() for k, v in sd.items()}, strict=True)
    ref.norm.eps = mixer.config.norm_eps
    x = torch.randn(2, 130, D, device="cuda")
    with torch.no_grad():
        got, want = mixer(x), ref(x)[0]
    print(f"log_linear vs fla LogLinearMamba2 (cuda, fp32): max abs err {(got - want).abs().max().item():.3e}")
    # fla's Triton kernels multiply fp32 in TF32 (tl.dot's default): 2e-3, not 1e-5
    torch.testing.assert_close(got, want, atol=2e-3, rtol=2e-3)
