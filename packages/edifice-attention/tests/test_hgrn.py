"""Signature and converter tests of ``hgrn`` (HGRN-1) against flash-linear-attention (the authors' HGRN code).

fla's ``HGRNAttention`` runs only through Triton, so the oracle recomputes it from its weights with independent code
and fla's pure-PyTorch ``naive_recurrent_hgrn`` (the token loop ``h_t = e^{g_t} h_{t-1} + x_t``): ``log λ =
logaddexp(log γ, log(1 - γ) + logsigmoid(x W_f))``, input ``SiLU(x W_i) ⊙ (1 - λ)`` (fla's ``swiglu``), read-out
``RMSNorm(h) ⊙ SiLU(x W_g)``, ``W_o``. The mixer must match whole and stepped, with and without a lower bound; the
converter must turn fla's ``HGRNForCausalLM`` (lower bounds perturbed) into a model whose logits match.
"""

from __future__ import annotations

import warnings
from typing import Any

import pytest
import torch
import torch.nn.functional as F

import edifice
from edifice.testing import mutate_op, signature

with warnings.catch_warnings():  # fla warns that it runs on CPU; these are plain PyTorch
    warnings.simplefilter("ignore")
    from fla.models import HGRNConfig, HGRNForCausalLM
    from fla.ops.hgrn.naive import naive_recurrent_hgrn

torch.testing.assert_close(torch.zeros(1), torch.zeros(1))  # pay the first call's import at collection

TOL = 2e-5
B, T, D = 2, 11, 16


def rms(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return x * torch.rsqrt(x.square().mean(-1, keepdim=True) + eps) * weight


def mixer_oracle(w: dict[str, torch.Tensor], x: torch.Tensor, bound: torch.Tensor | None, eps: float) -> Any:
    """fla's HGRNAttention on ``x`` from fla-named weights ``w`` (``i_proj``, ``f_proj``, ``g_proj``, ``g_norm``)."""
    f = F.logsigmoid(x @ w["f_proj.weight"].T)
    if bound is not None:
        f = torch.logaddexp(bound.log(), torch.log1p(-bound) + f)
    i = F.silu(x @ w["i_proj.weight"].T) * (1 - f.exp())
    h, _ = naive_recurrent_hgrn(i, f)
    return (rms(h, w["g_norm.weight"], eps) * F.silu(x @ w["g_proj.weight"].T)) @ w["o_proj.weight"].T


def check_mixer(with_bound: bool) -> None:
    """Our HGRU against the oracle, forward and prefill + single steps, with an explicit lower bound or none."""
    torch.manual_seed(0)
    model: Any = edifice.build("hgrn", d_model=D, n_layers=1).eval()
    mixer = model.layers[0].mixer
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in mixer.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=gen))
    bound = torch.rand(D, generator=gen) * 0.9 if with_bound else None
    extra = {} if bound is None else {"lower_bound": bound}
    w = {"g_norm.weight" if k == "o_norm.weight" else k: p.detach() for k, p in mixer.named_parameters()}
    x = torch.randn(B, T, D, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = mixer_oracle(w, x, bound, model.config.norm_eps)
        torch.testing.assert_close(mixer(x, **extra), want, atol=TOL, rtol=TOL)
        state = mixer.init_state(B)
        pieces = [mixer(x[:, :4], state=state, **extra)]
        pieces += [mixer(x[:, t : t + 1], state=state, **extra) for t in range(4, T)]
    torch.testing.assert_close(torch.cat(pieces, 1), want, atol=TOL, rtol=TOL)


@signature("hgrn")
@pytest.mark.parametrize("with_bound", [False, True], ids=["first-layer", "lower-bound"])
def test_hgrn_mixer_matches_fla_naive_recurrent_hgrn(with_bound: bool) -> None:
    check_mixer(with_bound)


def test_signature_fails_without_the_decay() -> None:
    with mutate_op("linear_recurrence"), pytest.raises(AssertionError):
        check_mixer(True)


def fla_model_oracle(sd: dict[str, torch.Tensor], ids: torch.Tensor, n_layers: int, eps: float) -> torch.Tensor:
    """fla's HGRNForCausalLM logits from its state dict: embeddings, pre-norm blocks with lower bounds, SwiGLU."""
    from edifice_attention._lower_bounds import layer_lower_bounds

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
        hf = HGRNConfig(hidden_size=D, num_hidden_layers=3, vocab_size=40, intermediate_size=24)
        fla_model = HGRNForCausalLM(hf)
    gen = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for p in fla_model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=gen))
    model: Any = edifice.convert("fla.models.HGRNForCausalLM", fla_model)
    assert model.config.arch == "hgrn" and model.lower_bounds.shape == (3, D)
    ids = torch.randint(0, 40, (B, T), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        want = fla_model_oracle(fla_model.state_dict(), ids, 3, hf.norm_eps)
        torch.testing.assert_close(model(input_ids=ids), want, atol=TOL, rtol=TOL)
        again: Any = edifice.convert("fla.models.HGRNForCausalLM", (hf.to_dict(), fla_model.state_dict()))
        torch.testing.assert_close(again(input_ids=ids), want, atol=TOL, rtol=TOL)


def test_padding_is_exact() -> None:
    model: Any = edifice.build("hgrn", d_model=D, n_layers=2, d_in=5).eval()
    x = torch.randn(1, 7, 5, generator=torch.Generator().manual_seed(2))
    padded = torch.cat([torch.randn(1, 3, 5), x], 1)
    mask = torch.tensor([[False] * 3 + [True] * 7])
    with torch.no_grad():
        torch.testing.assert_close(model(padded, attention_mask=mask)[:, 3:], model(x), atol=TOL, rtol=TOL)
