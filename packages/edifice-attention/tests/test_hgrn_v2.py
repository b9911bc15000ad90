"""Signature and converter tests of ``hgrn_v2`` against flash-linear-attention (the authors' HGRN-2 code).

fla's ``HGRN2Attention`` runs only through Triton, so the oracle recomputes it from its weights with independent code
and fla's pure-PyTorch ``naive_recurrent_gla`` (the token loop of ``H_t = Diag(f_t) H_{t-1} + k_t ⊗ i_t``): ``q =
SiLU(x W_q)``, ``log f = logaddexp(log γ, log(1 - γ) + logsigmoid(x W_f))``, ``k = 1 - f``, one RMSNorm over all
heads, ``W_o``. The mixer must match whole and stepped, with and without a lower bound; the converter must turn fla's
``HGRN2ForCausalLM`` (lower bounds perturbed, so every layer's bound differs) into a model whose logits match the
oracle run on fla's own weights.
"""

from __future__ import annotations

import warnings
from typing import Any

import pytest
import torch
import torch.nn.functional as F

import edifice
from edifice.testing import mutate_op, signature
from edifice_attention.hgrn_v2 import layer_lower_bounds

with warnings.catch_warnings():  # fla warns that it runs on CPU; these are plain PyTorch
    warnings.simplefilter("ignore")
    from fla.models import HGRN2Config, HGRN2ForCausalLM
    from fla.ops.gla.naive import naive_recurrent_gla

torch.testing.assert_close(torch.zeros(1), torch.zeros(1))  # pay the first call's import at collection

TOL = 2e-5
B, T, D, H = 2, 11, 16, 2


def rms(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return x * torch.rsqrt(x.square().mean(-1, keepdim=True) + eps) * weight


def mixer_oracle(w: dict[str, torch.Tensor], x: torch.Tensor, bound: torch.Tensor | None, eps: float) -> Any:
    """fla's HGRN2Attention on ``x`` from fla-named weights ``w`` (``q_proj``, ``f_proj``, ``i_proj``, ``g_norm``)."""
    bt = x.shape[:2]
    q = F.silu(x @ w["q_proj.weight"].T)
    g = F.logsigmoid(x @ w["f_proj.weight"].T)
    if bound is not None:
        g = torch.logaddexp(bound.log(), torch.log1p(-bound) + g)
    i = x @ w["i_proj.weight"].T
    q, k, g, i = (t.view(*bt, H, -1) for t in (q, 1 - g.exp(), g, i))
    o, _ = naive_recurrent_gla(q, k, i, g)
    return rms(o.flatten(2), w["g_norm.weight"], eps) @ w["o_proj.weight"].T


def fla_names(mixer: Any) -> dict[str, torch.Tensor]:
    rename = {"k_proj.weight": "f_proj.weight", "v_proj.weight": "i_proj.weight", "o_norm.weight": "g_norm.weight"}
    return {rename.get(k, k): p.detach() for k, p in mixer.named_parameters()}


def check_mixer(with_bound: bool) -> None:
    """Our mixer against the oracle, forward and prefill + single steps, with an explicit lower bound or none."""
    torch.manual_seed(0)
    model: Any = edifice.build("hgrn_v2", d_model=D, n_layers=1, n_heads=H, chunk_size=4).eval()
    mixer = model.layers[0].mixer
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in mixer.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=gen))
    bound = torch.rand(D, generator=gen) * 0.9 if with_bound else None
    extra = {} if bound is None else {"lower_bound": bound}
    x = torch.randn(B, T, D, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = mixer_oracle(fla_names(mixer), x, bound, model.config.norm_eps)
        torch.testing.assert_close(mixer(x, **extra), want, atol=TOL, rtol=TOL)
        state = mixer.init_state(B)
        pieces = [mixer(x[:, :4], state=state, **extra)]
        pieces += [mixer(x[:, t : t + 1], state=state, **extra) for t in range(4, T)]
    torch.testing.assert_close(torch.cat(pieces, 1), want, atol=TOL, rtol=TOL)


@signature("hgrn_v2")
@pytest.mark.parametrize("with_bound", [False, True], ids=["first-layer", "lower-bound"])
def test_hgrn2_mixer_matches_fla_naive_recurrent_gla(with_bound: bool) -> None:
    check_mixer(with_bound)


def test_signature_fails_without_the_decay() -> None:
    with mutate_op("gated_linear_attention"), pytest.raises(AssertionError):
        check_mixer(True)


def test_lower_bounds_rise_with_depth_from_zero() -> None:
    """Γ = 0 gives γ^l = l/L: layer 0 unbounded, deeper layers forget less (HGRN §3.3)."""
    model: Any = edifice.build("hgrn_v2", d_model=16, n_layers=4, n_heads=2, d_in=3)
    assert model.lower_bounds.shape == (4, 16) and not model.lower_bounds.any()
    bounds = layer_lower_bounds(model.lower_bounds)
    torch.testing.assert_close(bounds, torch.arange(4.0)[:, None].expand(4, 16) / 4)
    inputs = model.layer_inputs()
    assert inputs[0] == {} and torch.equal(inputs[3]["lower_bound"], bounds[3])
    assert edifice.build("hgrn_v2", d_model=16, n_layers=2, n_heads=2, use_lower_bound=False).lower_bounds is None


def fla_model_oracle(sd: dict[str, torch.Tensor], ids: torch.Tensor, n_layers: int, eps: float) -> torch.Tensor:
    """fla's HGRN2ForCausalLM logits from its state dict: embeddings, pre-norm blocks with lower bounds, SwiGLU."""
    h = sd["model.embeddings.weight"][ids]
    bounds = layer_lower_bounds(sd["model.lower_bounds"])
    for i in range(n_layers):
        p = f"model.layers.{i}."
        attn = {k.removeprefix(p + "attn."): v for k, v in sd.items() if k.startswith(p + "attn.")}
        h = h + mixer_oracle(attn, rms(h, sd[p + "attn_norm.weight"], eps), bounds[i] if i else None, eps)
        m = rms(h, sd[p + "mlp_norm.weight"], eps)
        gate, up, down = (sd[f"{p}mlp.{n}_proj.weight"] for n in ("gate", "up", "down"))
        h = h + (F.silu(m @ gate.T) * (m @ up.T)) @ down.T
    return rms(h, sd["model.norm.weight"], eps) @ sd["lm_head.weight"].T


def test_converter_from_fla_matches_its_weights() -> None:
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hf = HGRN2Config(hidden_size=D, num_hidden_layers=3, expand_ratio=8, vocab_size=40, intermediate_size=24)
        fla_model = HGRN2ForCausalLM(hf)
    gen = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for p in fla_model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=gen))
    model: Any = edifice.convert("fla.models.HGRN2ForCausalLM", fla_model, chunk_size=4)
    assert model.config.arch == "hgrn_v2" and model.config.n_heads == 2
    ids = torch.randint(0, 40, (B, T), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        want = fla_model_oracle(fla_model.state_dict(), ids, 3, hf.norm_eps)
        torch.testing.assert_close(model(input_ids=ids), want, atol=TOL, rtol=TOL)
        again: Any = edifice.convert("fla.models.HGRN2ForCausalLM", (hf.to_dict(), fla_model.state_dict()))
        torch.testing.assert_close(again(input_ids=ids), want, atol=TOL, rtol=TOL)
