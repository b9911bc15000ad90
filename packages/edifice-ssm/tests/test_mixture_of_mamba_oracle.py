"""Signature test of mixture_of_mamba: the paper's block as a naive fp64 loop with per-token projections, and decoding.

No pip package implements Mixture-of-Mamba (the authors' reference needs the ``mamba_ssm`` CUDA kernels), so the
oracle writes the block out by hand: for every token, the ``in_proj``, ``x_proj``, ``dt_proj`` and ``out_proj`` of
its own modality, the shared causal convolution, and the selective scan with the shared ``A`` and ``D`` as a loop
over positions (Mamba eqs. 2a-2b, 4). The sequences interleave the modalities, so the scan must run across them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

import edifice
from edifice.testing import signature
from edifice.testing.tol import SCAN, Tolerance, assert_close
from edifice_ssm.mixture_of_mamba import MixtureOfMamba, MixtureOfMambaMixer

TINY = {"d_model": 16, "n_layers": 2, "d_in": 5, "d_state": 4, "d_conv": 3, "n_modalities": 3, "bias": True}
ORACLE = Tolerance(atol=2e-5, rtol=2e-5)  # fp32 model (fp32 scan state) against fp64 loops


def _build(seed: int = 0, **overrides: object) -> MixtureOfMamba:
    torch.manual_seed(seed)
    model = edifice.build("mixture_of_mamba", **{**TINY, **overrides})
    assert isinstance(model, MixtureOfMamba)
    with torch.no_grad():  # random gains, skips and biases make the norms, D and every bias observable
        for name, p in model.named_parameters():
            if name.endswith(("norm.weight", ".D")):
                p.uniform_(0.5, 1.5)
            elif name.endswith(("in_proj.bias", "out_proj.bias")):
                p.normal_(0.0, 0.3)
    return model.eval()


def _inputs(batch: int, length: int, seed: int = 1) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, length, TINY["d_in"], generator=g)
    modality = torch.randint(0, TINY["n_modalities"], (batch, length), generator=g)
    return x, modality


def _mixer(mixer: MixtureOfMambaMixer, u: Tensor, modality: Tensor) -> Tensor:
    """The Mixture-of-Mamba block for one sequence ``u [T, d]`` with ``modality [T]``, position by position."""
    p = {n: t.detach().double() for n, t in mixer.named_parameters()}
    T, E, N, R = u.shape[0], mixer.d_inner, mixer.d_state, mixer.dt_rank

    def proj(name: str, m: int, v: Tensor) -> Tensor:  # projection `name` of modality m (index 0 when shared)
        k = m if name in mixer.split else 0
        out = p[f"{name}.weight"][k] @ v
        return out + p[f"{name}.bias"][k] if f"{name}.bias" in p else out

    ms = modality.tolist()
    xz = torch.stack([proj("in_proj", ms[t], u[t]) for t in range(T)])
    x, z = xz[:, :E], xz[:, E:]
    K = p["conv1d.weight"].shape[-1]
    xc = torch.zeros(T, E, dtype=torch.float64)
    for t in range(T):  # the shared causal convolution runs across modalities
        acc = p["conv1d.bias"].clone()
        for k in range(K):
            if t - (K - 1) + k >= 0:
                acc = acc + p["conv1d.weight"][:, 0, k] * x[t - (K - 1) + k]
        xc[t] = F.silu(acc)
    A = -torch.exp(p["A_log"])  # shared (E, N)
    h = torch.zeros(E, N, dtype=torch.float64)
    ys = []
    for t in range(T):
        dbc = proj("x_proj", ms[t], xc[t])
        dt, B, C = dbc[:R], dbc[R : R + N], dbc[R + N :]
        delta = F.softplus(proj("dt_proj", ms[t], dt))  # (E,), the modality's own bias inside
        h = torch.exp(delta[:, None] * A) * h + (delta * xc[t])[:, None] * B[None, :]  # eqs. 2a, 4
        y = (h @ C + p["D"] * xc[t]) * F.silu(z[t])  # eq. 2b and the gate
        ys.append(proj("out_proj", ms[t], y))
    return torch.stack(ys)


def _oracle(model: MixtureOfMamba, x: Tensor, modality: Tensor) -> Tensor:
    c = model.config
    outs = []
    for sample, mods in zip(x.double(), modality, strict=True):
        h = sample @ model.input_proj.weight.double().T + model.input_proj.bias.double()
        for layer in model.layers:
            u = h / torch.sqrt(h.pow(2).mean(-1, keepdim=True) + c.norm_eps) * layer.mixer_norm.weight.double()
            h = h + _mixer(layer.mixer, u, mods)
        outs.append(h / torch.sqrt(h.pow(2).mean(-1, keepdim=True) + c.norm_eps) * model.norm.weight.double())
    return torch.stack(outs)


@signature("mixture_of_mamba")
def test_mixture_of_mamba_matches_the_paper_and_decodes() -> None:
    model = _build(seed=2)
    x, modality = _inputs(2, 10, seed=3)
    with torch.no_grad():
        got = model(x=x, modality_mask=modality)
        assert_close(got, _oracle(model, x, modality).float(), ORACLE, name="mixture_of_mamba vs the naive oracle")
        # Prefill, one-token steps and a chunk, each with its tokens' modalities: equals forward at every position.
        state = model.init_state(2)
        pieces = []
        for start, stop in ((0, 4), (4, 5), (5, 6), (6, 10)):
            y, state = model.step(x[:, start:stop], state, modality_mask=modality[:, start:stop])
            pieces.append(y)
        assert_close(torch.cat(pieces, 1), got, SCAN, name="mixture_of_mamba: prefill + decode vs forward")
        # The ablation with only in_proj and out_proj decoupled follows the same oracle.
        partial = _build(seed=4, split_projections=("in_proj", "out_proj"))
        assert partial.layers[0].mixer.x_proj.weight.shape[0] == 1
        assert_close(partial(x=x, modality_mask=modality), _oracle(partial, x, modality).float(), ORACLE)
